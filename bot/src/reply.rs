//! Pure pieces of answering: the prompt from memory, splitting for Discord, the dream-channel line.

use crate::{db::StoredMessage, llm::ChatMessage};

/// Discord's limit on a message's content, in characters.
pub const DISCORD_MESSAGE_LIMIT: usize = 2000;

pub const SYSTEM_PROMPT: &str = "You are Lattice, a friendly and concise member of a Discord server. \
Messages from people are prefixed with their name. Answer the latest message.";

/// The chat prompt: a system line, then the stored conversation, oldest first.
pub fn prompt(history: &[StoredMessage]) -> Vec<ChatMessage> {
    let mut out = vec![ChatMessage { role: "system", content: SYSTEM_PROMPT.to_owned() }];
    out.extend(history.iter().map(|m| {
        if m.is_bot {
            ChatMessage { role: "assistant", content: m.content.clone() }
        } else {
            ChatMessage { role: "user", content: format!("{}: {}", m.author_name, m.content) }
        }
    }));
    out
}

/// Splits `text` into chunks of at most `limit` characters, preferring paragraph, line, then word
/// boundaries; a word longer than the limit is cut.
pub fn split_message(text: &str, limit: usize) -> Vec<String> {
    let mut parts = Vec::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        if rest.chars().count() <= limit {
            parts.push(rest.to_owned());
            break;
        }
        // Byte index just past the `limit`-th character.
        let hard = rest.char_indices().nth(limit).map(|(i, _)| i).unwrap_or(rest.len());
        let window = &rest[..hard];
        let cut = ["\n\n", "\n", " "]
            .iter()
            .filter_map(|sep| window.rfind(sep).filter(|&i| i > 0))
            .next()
            .unwrap_or(hard);
        let (head, tail) = rest.split_at(cut);
        parts.push(head.trim_end().to_owned());
        rest = tail.trim_start();
    }
    parts
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
    if let Some(e) = &a.error {
        line.push_str(&format!(" error=\"{}\"", e.replace('"', "'")));
    }
    line.chars().take(DISCORD_MESSAGE_LIMIT).collect()
}

/// What the bot says in the main channel when the model failed.
pub const LLM_FAILURE_REPLY: &str =
    "Sorry, I couldn't reach my language model just now. Please try again in a moment.";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::PromptAudit;

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
            audit_line(&failed, 1),
            "audit msg=42 model=m/x tokens=? cost=$0.000120 latency=812ms finish=stop error=\"HTTP 500: 'boom'\""
        );
    }
}
