//! A busy, hostile server, against the stand-in (real v10 protocol, real twilight gateway and
//! reqwest clients), a real Postgres and the fake OpenRouter: mass pings, Discord's 429s in every
//! shape, a flood from one user, bad bytes, unreadable events, other bots, long code replies.

mod common;

use std::sync::atomic::Ordering;

use common::*;
use lattice_bot::standin::{Posted, RestHit};
use serde_json::{json, Value};
use sqlx::Row;

/// What every post must carry: nothing in its text may notify anyone.
fn no_pings(replied_user: bool) -> Value {
    json!({ "parse": [], "users": [], "roles": [], "replied_user": replied_user })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_post_can_ping_everyone_a_role_or_a_user() {
    let s = Stack::start().await;
    let id = s.discord.say("@everyone <@&100000000000000050> <@100000000000000051> look!", 1).await;
    let (replies, _) = s.discord.answered(&id).await;
    // The model echoes the pings; they stay text.
    assert!(replies[0].content.contains("@everyone <@&100000000000000050>"), "{replies:?}");
    let failed = s.discord.say("@everyone ERROR500", 1).await;
    s.discord.answered(&failed).await;
    let posted = s.discord.posted().await;
    assert_eq!(posted.len(), 4, "two replies, two audit lines: {posted:?}");
    for p in &posted {
        // Only an answer notifies the person answered; apologies and audit lines notify no one.
        let answer = !p.dream && p.reply_to.as_deref() == Some(id.as_str());
        assert_eq!(p.allowed_mentions, Some(no_pings(answer)), "{p:?}");
    }
}

/// The first request after `hit` (on `channel`, or on any channel when `None`).
fn next_after<'a>(hits: &'a [RestHit], hit: &RestHit, channel: Option<&str>) -> &'a RestHit {
    hits.iter()
        .filter(|h| h.at_ms >= hit.at_ms && *h != hit)
        .find(|h| channel.is_none_or(|c| h.channel_id == c))
        .unwrap_or_else(|| panic!("no request after the 429 at {} ms: {hits:?}", hit.at_ms))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_shape_of_429_is_waited_out_and_retries_are_bounded() {
    let s = Stack::start().await;
    let main = s.discord.world.main_channel_id.to_string();
    for (shape, retry_after) in [("user", 1.2), ("shared", 1.2), ("global", 1.2), ("bare", 0.0)] {
        let before = s.discord.rest().await.len();
        s.discord
            .control_json("ratelimit", json!({ "shape": shape, "count": 1, "retry_after": retry_after }))
            .await;
        let id = s.discord.say(&format!("hello through a {shape} 429"), 1).await;
        let (replies, _) = s.discord.answered(&id).await;
        assert_eq!(replies.len(), 1, "{shape}: answered once: {replies:?}");
        let hits = s.discord.rest().await;
        let hits = &hits[before..];
        let limited = hits.iter().find(|h| h.status == 429).expect("the armed 429 was served");
        // A bucket's 429 holds back that route; a global one (or one that says nothing: a proxy's)
        // holds back every request. The bot's own back-off for a bare 429 is 1 s.
        let wait_ms = if shape == "bare" { 1000 } else { (retry_after * 1000.0) as u64 };
        let channel = matches!(shape, "user" | "shared").then_some(main.as_str());
        let next = next_after(hits, limited, channel);
        assert!(
            next.at_ms >= limited.at_ms + wait_ms - 50,
            "{shape}: retried {} ms after the 429, asked to wait {wait_ms} ms",
            next.at_ms - limited.at_ms
        );
    }
    let metrics = s.bot.metrics().await;
    for scope in ["user", "shared", "global", "unknown"] {
        let sample = format!("lattice_discord_rate_limited_total{{scope=\"{scope}\"}} 1");
        assert!(metrics.contains(&sample), "missing `{sample}` in:\n{metrics}");
    }

    // Rate limited on every try: the reply is given up after 4 attempts, not retried forever.
    let before = s.discord.rest().await.len();
    s.discord.control_json("ratelimit", json!({ "shape": "user", "count": 6, "retry_after": 0.2 })).await;
    let id = s.discord.say("this reply will not get through", 1).await;
    let audit = wait_for("the audit line", || s.discord.audit_for(&id)).await;
    assert!(audit.contains("reply=not-posted"), "{audit}");
    assert!(s.discord.replies_to(&id).await.is_empty());
    let hits = s.discord.rest().await;
    let main_tries = hits[before..].iter().filter(|h| h.channel_id == main).count();
    assert_eq!(main_tries, 4, "{:?}", &hits[before..]);
    assert!(s.bot.output().contains("still rate limited after 4 attempts"), "{}", s.bot.output());
    // And it keeps serving.
    let id = s.discord.say("and now?", 1).await;
    let (replies, _) = s.discord.answered(&id).await;
    assert_eq!(replies[0].content, "echo: ada: and now?");
    s.bot.assert_no_secrets();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_one_user_is_bounded_and_everyone_else_is_still_answered() {
    let s = Stack::start().await;
    // Like Discord: every channel is a bucket of 5 messages per second, with its headers.
    s.discord.control_json("ratelimit", json!({ "bucket_limit": 5, "bucket_reset_after": 1.0 })).await;
    s.llm.delay_ms.store(300, Ordering::SeqCst);

    const FLOOD: usize = 500;
    let mut senders = tokio::task::JoinSet::new();
    for lane in 0..5 {
        let base = s.discord.base.clone();
        senders.spawn(async move {
            let http = reqwest::Client::new();
            for i in (lane..FLOOD).step_by(5) {
                http.post(format!("{base}/control/messages"))
                    .json(&json!({ "content": format!("spam {i} @everyone"), "author": "mallory" }))
                    .send()
                    .await
                    .unwrap()
                    .error_for_status()
                    .unwrap();
            }
        });
    }
    // Others talk in the middle of the flood.
    let mut others = Vec::new();
    for who in ["ada", "bob", "cy"] {
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
        others.push(s.discord.say_as(who, &format!("hi, {who} here"), false).await);
    }
    while let Some(done) = senders.join_next().await {
        done.unwrap();
    }
    for (who, id) in ["ada", "bob", "cy"].iter().zip(&others) {
        let (replies, _) = s.discord.answered(id).await;
        assert_eq!(replies.len(), 1, "{who} was answered");
        assert!(replies[0].content.contains(&format!("{who}: hi")), "{replies:?}");
    }
    let pool = s.pg.pool().await;
    let stored = wait_for("every flood message to be stored", || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM messages WHERE author_name = 'mallory'")
            .fetch_one(&pool)
            .await
            .unwrap();
        (n == FLOOD as i64).then_some(n)
    })
    .await;
    assert_eq!(stored, FLOOD as i64);
    // Mallory got at most the per-user limit of answers (6 a minute), then one notice, then silence.
    let to_mallory = wait_for("mallory's answers and notice", || async {
        let ids: Vec<String> =
            sqlx::query_scalar("SELECT id::text FROM messages WHERE author_name = 'mallory'")
                .fetch_all(&pool)
                .await
                .unwrap();
        let replies: Vec<Posted> = s
            .discord
            .posted()
            .await
            .into_iter()
            .filter(|p| !p.dream && p.reply_to.as_ref().is_some_and(|r| ids.contains(r)))
            .collect();
        (replies.len() >= 7).then_some(replies)
    })
    .await;
    let notices: Vec<&Posted> =
        to_mallory.iter().filter(|p| p.content.contains("faster than I answer")).collect();
    assert_eq!(notices.len(), 1, "{to_mallory:?}");
    assert_eq!(to_mallory.len(), 7, "6 answers and one notice: {to_mallory:?}");
    let asked_for_mallory = s
        .llm
        .bodies
        .lock()
        .unwrap()
        .iter()
        .filter(|b| {
            b["messages"]
                .as_array()
                .and_then(|m| m.last())
                .and_then(|m| m["content"].as_str())
                .is_some_and(|c| c.starts_with("mallory: "))
        })
        .count();
    assert_eq!(asked_for_mallory, 6, "the LLM was asked only within the limit");
    let max = s.llm.max_in_flight.load(Ordering::SeqCst);
    assert!(max <= 4, "{max} LLM calls at once, more than LLM_CONCURRENCY=4");

    // No 429 storm: the bot waits for the buckets it is told about, and stays under 50 requests/s.
    let state = s.discord.state().await;
    assert!(state["rate_limited"].as_u64().unwrap() <= 5, "{state}");
    assert!(state["max_rest_per_second"].as_u64().unwrap() <= 50, "{state}");
    // Memory stays bounded: the debug build idles near 20 MiB.
    let peak = s.bot.peak_rss_mib();
    eprintln!("flood: peak RSS {peak:.1} MiB, {max} LLM calls at most at once, stand-in {state}");
    assert!(peak < 150.0, "peak RSS {peak:.1} MiB during the flood");
    // Every stored message is counted.
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM messages").fetch_one(&pool).await.unwrap();
    let counted = wait_for("the stored-message counter to settle", || async {
        let m = s.bot.metric("lattice_messages_stored_total").await;
        (m == total as f64).then_some(m)
    })
    .await;
    assert_eq!(counted, total as f64);
    assert_eq!(s.bot.metric("lattice_messages_ignored_total{reason=\"user_rate_limit\"}").await, 493.0);
    s.bot.assert_no_secrets();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_reply_queue_drops_answers_stores_the_messages_and_says_so_in_the_dream_channel() {
    let s = Stack::start_with(&[("REPLY_QUEUE", "1"), ("LLM_CONCURRENCY", "1"), ("LLM_TIMEOUT_SECS", "10")])
        .await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(s.discord.say_as(&format!("user{i}"), &format!("SLOW question {i}"), false).await);
    }
    let line = wait_for("the dropped-work line", || async {
        s.discord
            .posted()
            .await
            .into_iter()
            .find(|p| p.dream && p.content.contains("reason=reply_queue_full"))
    })
    .await;
    // Whatever was not dropped is answered; what was dropped is named in the line, and stored.
    let mut answered = 0;
    let mut dropped = Vec::new();
    for id in &ids {
        if line.content.contains(id.as_str()) {
            dropped.push(id.clone());
        } else {
            s.discord.answered(id).await;
            answered += 1;
        }
    }
    assert!(!dropped.is_empty() && answered >= 1, "{}", line.content);
    assert!(line.content.contains(&format!("dropped={}", dropped.len())), "{}", line.content);
    assert_eq!(line.allowed_mentions, Some(no_pings(false)));
    let pool = s.pg.pool().await;
    for id in &dropped {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM messages WHERE id = $1")
            .bind(id.parse::<i64>().unwrap())
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(n, 1, "dropped message {id} is still stored");
        assert!(s.discord.replies_to(id).await.is_empty());
    }
    assert_eq!(s.bot.metric("lattice_dropped_total{kind=\"answer\"}").await, dropped.len() as f64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_cleaned_or_skipped_at_once_and_never_logged() {
    let s = Stack::start().await;
    // A NUL byte: Postgres rejects it; the bot removes it, says so, and answers at once.
    let id = s.discord.say("nul\u{0}byte here", 1).await;
    let (replies, _) = s.discord.answered(&id).await;
    assert_eq!(replies[0].content, "echo: ada: nulbyte here");
    let out = s.bot.output();
    assert!(out.contains("removed NUL bytes before storing"), "{out}");
    assert!(!out.contains("database unavailable"), "{out}");

    // Empty and whitespace-only messages (an attachment, a stray newline) never reach the LLM.
    let asked = s.llm.requests.load(Ordering::SeqCst);
    let blank = [s.discord.say("", 1).await, s.discord.say(" \n\t ", 1).await];
    let id = s.discord.say("after the blanks", 1).await;
    s.discord.answered(&id).await;
    assert_eq!(s.llm.requests.load(Ordering::SeqCst), asked + 1);
    for b in &blank {
        assert!(s.discord.replies_to(b).await.is_empty());
    }
    assert_eq!(s.bot.metric("lattice_messages_ignored_total{reason=\"empty\"}").await, 2.0);

    // A gateway payload that cannot be read: its type and size are logged, never its content.
    let d = json!({ "id": "100000000000000777", "channel_id": s.discord.world.main_channel_id.to_string(),
                    "content": "my-private-words-in-a-broken-event" });
    s.discord.control_json("raw", json!({ "t": "MESSAGE_CREATE", "d": d })).await;
    let logged = wait_for("the unreadable event to be logged", || async {
        let out = s.bot.output();
        out.lines().find(|l| l.contains("could not be deserialised")).map(str::to_owned)
    })
    .await;
    assert!(logged.contains("MESSAGE_CREATE") && logged.contains("\"bytes\":"), "{logged}");
    assert!(!s.bot.output().contains("my-private-words"), "{}", s.bot.output());
    let id = s.discord.say("still there?", 1).await;
    s.discord.answered(&id).await;
    assert_eq!(s.bot.metric("lattice_gateway_unreadable_total").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_lattices_own_answers_are_the_assistants_turns() {
    let s = Stack::start().await;
    let first = s.discord.say("first question", 1).await;
    s.discord.answered(&first).await;
    let failed = s.discord.say("this one ERROR500", 1).await;
    s.discord.answered(&failed).await;
    s.discord.say_as("otherbot", "beep boop, I am another bot", true).await;
    let last = s.discord.say("what did we say?", 1).await;
    s.discord.answered(&last).await;
    let body = s.llm.last_body.lock().unwrap().clone().unwrap();
    let turns: Vec<(String, String)> = body["messages"].as_array().unwrap()[1..]
        .iter()
        .map(|m| (m["role"].as_str().unwrap().to_owned(), m["content"].as_str().unwrap().to_owned()))
        .collect();
    let t = |r: &str, c: &str| (r.to_owned(), c.to_owned());
    assert_eq!(
        turns,
        vec![
            t("user", "ada: first question"),
            t("assistant", "echo: ada: first question"),
            t("user", "ada: this one ERROR500"),
            t("user", "otherbot: beep boop, I am another bot"),
            t("user", "ada: what did we say?"),
        ],
        "the apology is not context, the other bot is a named user"
    );
    assert_eq!(body["max_tokens"], 1024);
    let pool = s.pg.pool().await;
    let kinds: Vec<(String, String)> = sqlx::query("SELECT author_name, kind FROM messages ORDER BY id")
        .fetch_all(&pool)
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(kinds.contains(&("lattice".into(), "notice".into())), "{kinds:?}");
    assert!(kinds.contains(&("otherbot".into(), "message".into())), "{kinds:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_code_reply_is_split_at_lines_with_its_fence_closed_and_reopened() {
    let s = Stack::start().await;
    let id = s.discord.say("show me CODE", 1).await;
    let (replies, audit) = s.discord.answered(&id).await;
    assert!(replies.len() >= 2, "{replies:?}");
    assert!(audit.contains(&format!("parts={}", replies.len())), "{audit}");
    for (i, r) in replies.iter().enumerate() {
        assert!(r.content.chars().count() <= 2000);
        assert!(r.content.chars().count() >= 1000 || i == replies.len() - 1, "a tiny part: {:?}", r.content);
        assert_eq!(r.content.matches("```").count() % 2, 0, "part {i} leaves a fence open:\n{}", r.content);
    }
    assert!(replies[1].content.starts_with("```rust\n    let value_"), "{}", replies[1].content);
    assert!(
        replies[0].content.ends_with(";\n```") || replies[0].content.ends_with("\n```"),
        "{}",
        replies[0].content
    );
    // Every line of the code arrives whole.
    let all: String = replies.iter().map(|r| r.content.as_str()).collect::<Vec<_>>().join("\n");
    for i in 0..150 {
        assert!(
            all.contains(&format!("    let value_{i} = compute({i}); // step {i}\n")),
            "line {i} was cut"
        );
    }
    // The LLM latency is a histogram.
    let metrics = s.bot.metrics().await;
    assert!(metrics.contains("# TYPE lattice_llm_latency_seconds histogram"), "{metrics}");
    assert!(metrics.contains("lattice_llm_latency_seconds_bucket{le=\"+Inf\"} 1"), "{metrics}");
}
