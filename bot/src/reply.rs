//! Pure pieces of answering: the prompt from memory, splitting for Discord, the dream-channel line.

use crate::{
    db::{MessageKind, StoredMessage},
    llm::ChatMessage,
};

/// Discord's limit on a message's content, in characters.
pub const DISCORD_MESSAGE_LIMIT: usize = 2000;

pub const SYSTEM_PROMPT: &str = "You are Lattice, a friendly and concise member of a Discord server. \
Messages from people are prefixed with their name. Answer the latest message.";

/// The chat prompt: a system line, then the stored conversation, oldest first. Only Lattice's own
/// answers are the assistant's turns; everyone else, other bots included, speaks as a named user.
/// Notices and apologies never reach this far (`recent_messages` leaves them out).
pub fn prompt(history: &[StoredMessage]) -> Vec<ChatMessage> {
    let mut out = vec![ChatMessage { role: "system", content: SYSTEM_PROMPT.to_owned() }];
    out.extend(history.iter().filter(|m| m.kind != MessageKind::Notice).map(|m| {
        if m.kind == MessageKind::Answer {
            ChatMessage { role: "assistant", content: m.content.clone() }
        } else {
            ChatMessage { role: "user", content: format!("{}: {}", m.author_name, m.content) }
        }
    }));
    out
}

const FENCE: &str = "```";
/// Room kept for a closing fence (`\n` + three backticks) at the end of a part.
const FENCE_CLOSE_LEN: usize = 4;

/// Splits `text` into parts of at most `limit` characters. Each cut is at the best boundary in the
/// last half of the window — paragraph, line, sentence end, word — so no part is a tiny fragment;
/// only text without any of those is cut at the limit. A ``` code block cut in two is closed at
/// the end of one part and reopened, with its language, at the start of the next.
pub fn split_message(text: &str, limit: usize) -> Vec<String> {
    let mut parts = Vec::new();
    let mut rest = text.trim().to_owned();
    while !rest.is_empty() {
        if rest.chars().count() <= limit {
            parts.push(rest);
            break;
        }
        // Fences are kept balanced only where a part has room for more than its fence lines.
        let fences = limit > 64 && rest.contains(FENCE);
        let budget = if fences { limit - FENCE_CLOSE_LEN } else { limit };
        let hard = byte_index(&rest, budget);
        let floor = byte_index(&rest, budget / 2);
        let (head_end, tail_start) = best_cut(&rest[..hard], floor).unwrap_or((hard, hard));
        let mut head = rest[..head_end].trim_end().to_owned();
        let tail = &rest[tail_start..];
        rest = match open_fence(&head).filter(|_| fences) {
            Some(opening) => {
                head.push('\n');
                head.push_str(FENCE);
                format!("{opening}\n{tail}")
            }
            None => tail.trim_start().to_owned(),
        };
        parts.push(head);
    }
    parts
}

/// Byte index just past the `n`-th character (or the end).
fn byte_index(s: &str, n: usize) -> usize {
    s.char_indices().nth(n).map_or(s.len(), |(i, _)| i)
}

/// `(end of this part, start of the next)` at the best boundary in `window[floor..]`.
fn best_cut(window: &str, floor: usize) -> Option<(usize, usize)> {
    let after = |i: usize| i >= floor;
    if let Some(i) = window.rfind("\n\n").filter(|i| after(*i)) {
        return Some((i, i + 2));
    }
    if let Some(i) = window.rfind('\n').filter(|i| after(*i)) {
        return Some((i, i + 1));
    }
    let sentence = window
        .rmatch_indices(['.', '!', '?'])
        .take_while(|(i, _)| after(*i))
        .find(|(i, p)| window[i + p.len()..].starts_with([' ', '\t']));
    if let Some((i, p)) = sentence {
        return Some((i + p.len(), i + p.len() + 1));
    }
    window.rfind([' ', '\t']).filter(|i| after(*i)).map(|i| (i, i + 1))
}

/// The opening line (e.g. ```` ```rust ````) of a code block still open at the end of `text`.
fn open_fence(text: &str) -> Option<String> {
    let mut open = None;
    for line in text.lines() {
        let line = line.trim_start();
        if let Some(lang) = line.strip_prefix(FENCE) {
            open = match open {
                Some(_) => None,
                // Only a language word is carried over, never a long line of the text.
                None => Some(format!(
                    "{FENCE}{}",
                    lang.split_whitespace().next().unwrap_or("").chars().take(20).collect::<String>()
                )),
            };
        }
    }
    open
}

/// The compact line posted to the dream channel for every LLM call.
pub fn audit_line(a: &crate::db::PromptAudit, parts: usize) -> String {
    let tokens = match (a.prompt_tokens, a.completion_tokens) {
        (Some(p), Some(c)) => format!("{p}+{c}"),
        _ => "?".into(),
    };
    let cost = a.cost_usd.map(|c| format!("${c:.6}")).unwrap_or_else(|| "?".into());
    let mut line = format!(
        "audit msg={} model={} tokens={tokens} cost={cost} latency={}ms",
        a.message_id, a.model, a.latency_ms
    );
    if let Some(f) = &a.finish_reason {
        line.push_str(&format!(" finish={f}"));
    }
    if parts > 1 {
        line.push_str(&format!(" parts={parts}"));
    }
    if parts == 0 {
        line.push_str(" reply=not-posted");
    }
    if let Some(e) = &a.error {
        line.push_str(&format!(" error=\"{}\"", e.replace('"', "'")));
    }
    line.chars().take(DISCORD_MESSAGE_LIMIT).collect()
}

/// The dream-channel line for work dropped because the reply queue was full.
pub fn dropped_line(count: u64, queue: usize, ids: &[u64]) -> String {
    let shown: Vec<String> = ids.iter().take(10).map(u64::to_string).collect();
    let more = if ids.len() > 10 { format!(" (+{} more)", ids.len() - 10) } else { String::new() };
    format!(
        "audit dropped={count} reason=reply_queue_full queue={queue} msgs={}{more}: stored, not answered",
        shown.join(",")
    )
}

/// What the bot says, once, to someone sending faster than the per-user limit; then it is silent
/// towards them until the window has room again.
pub fn user_limit_notice(limit: u32, window_secs: u64) -> String {
    format!(
        "You're sending messages faster than I answer (at most {limit} every {window_secs} s per person). \
         I'll skip your messages for a little while."
    )
}

/// What the bot says in the main channel when the model failed.
pub const LLM_FAILURE_REPLY: &str =
    "Sorry, I couldn't reach my language model just now. Please try again in a moment.";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::PromptAudit;

    fn stored(author: &str, is_bot: bool, content: &str, kind: MessageKind) -> StoredMessage {
        StoredMessage {
            id: 1,
            channel_id: 2,
            author_id: 3,
            author_name: author.into(),
            is_bot,
            content: content.into(),
            kind,
        }
    }

    #[test]
    fn only_lattices_answers_are_assistant_turns() {
        let history = [
            stored("ada", false, "hi", MessageKind::Message),
            stored("lattice", true, "hello ada", MessageKind::Answer),
            stored("otherbot", true, "beep", MessageKind::Message),
            stored("lattice", true, LLM_FAILURE_REPLY, MessageKind::Notice),
        ];
        let p = prompt(&history);
        let turns: Vec<(&str, &str)> = p[1..].iter().map(|m| (m.role, m.content.as_str())).collect();
        assert_eq!(turns, vec![("user", "ada: hi"), ("assistant", "hello ada"), ("user", "otherbot: beep")]);
    }

    #[test]
    fn short_text_is_one_part() {
        assert_eq!(split_message("hello", 2000), vec!["hello"]);
    }

    #[test]
    fn long_text_splits_on_words_within_the_limit_and_loses_nothing() {
        let text = (0..900).map(|i| format!("w{i}")).collect::<Vec<_>>().join(" ");
        let parts = split_message(&text, 2000);
        assert!(parts.len() >= 2);
        assert!(parts.iter().all(|p| p.chars().count() <= 2000));
        assert_eq!(parts.join(" "), text);
    }

    #[test]
    fn prefers_paragraph_breaks() {
        let text = format!("{}\n\n{}", "a".repeat(10), "b".repeat(10));
        assert_eq!(split_message(&text, 15), vec!["a".repeat(10), "b".repeat(10)]);
    }

    #[test]
    fn an_early_paragraph_break_does_not_make_a_tiny_part() {
        let text = format!("Short intro.\n\n{}", "word ".repeat(2000));
        let parts = split_message(&text, 2000);
        assert!(parts.iter().all(|p| p.chars().count() <= 2000));
        assert!(
            parts[..parts.len() - 1].iter().all(|p| p.chars().count() >= 1000),
            "{:?}",
            parts.iter().map(|p| p.chars().count()).collect::<Vec<_>>()
        );
        assert!(parts[0].starts_with("Short intro.\n\nword"));
    }

    #[test]
    fn boundaries_are_preferred_paragraph_line_sentence_word() {
        let filler = |n| "x".repeat(n);
        let para = format!("{}\n{}\n\n{}", filler(60), filler(20), filler(40));
        assert_eq!(split_message(&para, 100)[0], format!("{}\n{}", filler(60), filler(20)));
        let line = format!("{}. {}\n{}", filler(60), filler(20), filler(40));
        assert_eq!(split_message(&line, 100)[0], format!("{}. {}", filler(60), filler(20)));
        let sentence = format!("{} {}. {} {}", filler(50), filler(20), filler(5), filler(40));
        assert_eq!(split_message(&sentence, 100)[0], format!("{} {}.", filler(50), filler(20)));
    }

    #[test]
    fn a_code_block_cut_in_two_is_closed_and_reopened_with_its_language() {
        let code: String = (0..200).map(|i| format!("    let x{i} = {i};\n")).collect();
        let text = format!("Here you go:\n\n```rust\n{code}```\nDone.");
        let parts = split_message(&text, 2000);
        assert!(parts.len() >= 2);
        for p in &parts {
            assert!(p.chars().count() <= 2000, "{}", p.chars().count());
            assert_eq!(p.matches("```").count() % 2, 0, "unbalanced fences in:\n{p}");
        }
        assert!(parts[0].ends_with("\n```"));
        assert!(parts[1].starts_with("```rust\n    let x"), "{}", &parts[1][..40]);
        // Nothing lost: without the added fences, the parts are the text.
        let rejoined = parts.join("\n").replace("\n```\n```rust\n", "\n");
        assert_eq!(rejoined.replace('\n', ""), text.replace('\n', ""));
    }

    #[test]
    fn unbroken_text_is_cut_at_the_limit_counting_characters() {
        let text = "é".repeat(4500);
        let parts = split_message(&text, 2000);
        assert_eq!(parts.iter().map(|p| p.chars().count()).collect::<Vec<_>>(), vec![2000, 2000, 500]);
    }

    #[test]
    fn audit_line_is_compact_and_complete() {
        let a = PromptAudit {
            message_id: 42,
            provider: "openrouter".into(),
            model: "m/x".into(),
            prompt_tokens: Some(10),
            completion_tokens: Some(5),
            cost_usd: Some(0.00012),
            latency_ms: 812,
            finish_reason: Some("stop".into()),
            error: None,
        };
        assert_eq!(
            audit_line(&a, 2),
            "audit msg=42 model=m/x tokens=10+5 cost=$0.000120 latency=812ms finish=stop parts=2"
        );
        let failed = PromptAudit { error: Some("HTTP 500: \"boom\"".into()), prompt_tokens: None, ..a };
        assert_eq!(
            audit_line(&failed, 0),
            "audit msg=42 model=m/x tokens=? cost=$0.000120 latency=812ms finish=stop reply=not-posted error=\"HTTP 500: 'boom'\""
        );
    }
}
