//! Crash-safe handover, end to end: the real `lattice-bot run` (a leader and a standby) against a
//! real Postgres and the Discord stand-in, which counts IDENTIFYs, RESUMEs and live sessions.

mod common;

use std::{collections::HashMap, process::Command, sync::atomic::Ordering};

use common::*;
use serde_json::json;

/// Short leases, so a claim left by a killed leader is re-taken within the test's patience.
const ENV: &[(&str, &str)] = &[("REPLY_LEASE_SECS", "3"), ("USER_RATE_LIMIT", "1000")];

/// Posts `n` messages, one every 40 ms (25 a second), running `at(i)` before message `i`.
async fn stream(s: &Stack, n: usize, mut at: impl AsyncFnMut(usize)) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        at(i).await;
        ids.push(s.discord.say_as(&format!("user{}", i % 7), &format!("stream message {i}"), false).await);
        tokio::time::sleep(std::time::Duration::from_millis(40)).await;
    }
    ids
}

/// Waits until every message has a reply, then asserts each has exactly one.
async fn answered_exactly_once(s: &Stack, ids: &[String]) {
    let counts = wait_for("every message to be answered", || async {
        let mut counts: HashMap<String, usize> = HashMap::new();
        for p in s.discord.posted().await.into_iter().filter(|p| !p.dream) {
            if let Some(to) = p.reply_to {
                *counts.entry(to).or_default() += 1;
            }
        }
        ids.iter().all(|id| counts.contains_key(id)).then_some(counts)
    })
    .await;
    let twice: Vec<_> = ids.iter().filter(|id| counts[*id] > 1).collect();
    assert!(twice.is_empty(), "answered more than once: {twice:?}");
}

fn signal(bot: &Bot, sig: &str) {
    let ok = Command::new("kill").args([sig, &bot.child.id().to_string()]).status().unwrap();
    assert!(ok.success());
}

async fn standby(s: &Stack, extra: &[(&str, &str)]) -> Bot {
    let b = Bot::spawn(&s.pg, &s.discord, &s.llm_url, extra);
    let health = b.wait_healthy().await;
    assert_eq!((health["role"].as_str(), health["gateway"].as_str()), (Some("standby"), Some("standby")));
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_leader_under_a_stream_the_standby_resumes_and_every_message_is_answered_once() {
    let mut s = Stack::start_with(ENV).await;
    let next = standby(&s, ENV).await;
    let ids = stream(&s, 60, async |i| {
        if i == 25 {
            signal(&s.bot, "-KILL");
        }
    })
    .await;
    answered_exactly_once(&s, &ids).await;
    let state = s.discord.state().await;
    assert_eq!(state["identifies"], 1, "the successor resumed the stored session: {state}");
    assert!(state["resumes"].as_u64().unwrap() >= 1, "{state}");
    assert_eq!(state["max_live"], 1, "never two live gateway sessions: {state}");
    s.bot = next;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_a_slow_reply_is_in_flight_the_successor_answers_it_once() {
    let mut s = Stack::start_with(ENV).await;
    let next = standby(&s, ENV).await;
    let id = s.discord.say("take your time SLOW", 1).await;
    wait_for("the LLM request to be in flight", || async {
        (s.llm.requests.load(Ordering::SeqCst) >= 1).then_some(())
    })
    .await;
    signal(&s.bot, "-KILL");
    let (replies, _) = s.discord.answered(&id).await;
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert_eq!(next.metric("lattice_reply_leases_retaken_total").await, 1.0);
    // A later message is answered as usual, once.
    let id2 = s.discord.say("and now?", 1).await;
    answered_exactly_once(&s, &[id.clone(), id2]).await;
    assert_eq!(s.discord.state().await["max_live"], 1);
    s.bot = next;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_cannot_be_resumed_is_backfilled_and_every_message_is_answered() {
    let s = Stack::start_with(ENV).await;
    let ids = stream(&s, 40, async |i| {
        if i == 15 {
            // Discord goes away and forgets the session: messages meanwhile reach no gateway.
            s.discord.control_json("outage", json!({ "secs": 1.0 })).await;
            s.discord.control("invalidate").await;
        }
    })
    .await;
    answered_exactly_once(&s, &ids).await;
    let state = s.discord.state().await;
    assert!(state["identifies"].as_u64().unwrap() >= 2, "the session was identified anew: {state}");
    assert!(s.bot.metric("lattice_backfilled_messages_total").await >= 1.0);
    assert_eq!(state["max_live"], 1, "{state}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_under_a_leader_and_a_standby_never_two_handle_events() {
    let mut s = Stack::start_with(ENV).await;
    let other = standby(&s, ENV).await;
    let before = s.discord.say("before the restart", 1).await;
    s.discord.answered(&before).await;
    s.pg.stop();
    let during = s.discord.say("while the database restarts", 1).await;
    s.pg.start_again();
    s.pg.wait_ready().await;
    let after = s.discord.say("after the restart", 1).await;
    answered_exactly_once(&s, &[before, during, after]).await;
    let state = s.discord.state().await;
    assert_eq!(state["max_live"], 1, "never two instances with a live gateway session: {state}");
    // Exactly one of the two leads again.
    let roles = wait_for("one leader and one standby", || async {
        let (a, b) = (s.bot.health().await?, other.health().await?);
        let mut roles = [a.1["role"].as_str()?.to_owned(), b.1["role"].as_str()?.to_owned()];
        roles.sort();
        (roles == ["leader", "standby"]).then_some(roles)
    })
    .await;
    assert_eq!(roles, ["leader", "standby"]);
    s.bot = other;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_503_with_the_reason_while_discord_is_down_longer_than_the_grace() {
    let s = Stack::start_with(&[("GATEWAY_GRACE_SECS", "1")]).await;
    s.discord.control_json("outage", json!({ "secs": 6.0 })).await;
    let (_, body) = wait_for("/health to report the gateway down", || async {
        s.bot.health().await.filter(|(c, _)| *c == 503)
    })
    .await;
    assert_eq!(body["role"], "leader");
    let problems = body["problems"].to_string();
    assert!(problems.contains("gateway") && problems.contains("grace 1 s"), "{body}");
    let health = s.bot.wait_healthy().await;
    assert_eq!(health["gateway"], "connected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_wait_follows_a_sigterm_handover() {
    let mut s = Stack::start().await;
    let next = Bot::spawn(&s.pg, &s.discord, &s.llm_url, &[]);
    let wait = |bot: &Bot, state: &str, secs: &str| {
        Command::new(BIN)
            .args(["healthcheck", "--wait", state, "--timeout", secs])
            .env_clear()
            .env("HTTP_PORT", bot.http_port.to_string())
            .output()
            .unwrap()
    };
    let out = wait(&next, "standby", "60");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = wait(&next, "leader", "1");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("another instance leads"));
    assert_eq!(s.discord.state().await["identifies"], 1, "the standby never connected the gateway");
    signal(&s.bot, "-TERM");
    let out = wait(&next, "leader", "60");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let state = s.discord.state().await;
    assert_eq!(state["identifies"], 1, "resumed: {state}");
    s.bot = next;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standin_returns_the_first_message_for_a_repeated_enforced_nonce() {
    let discord = Discord::start().await;
    let url = format!("{}/api/v10/channels/{}/messages", discord.base, discord.world.main_channel_id);
    let post = |nonce: &str| {
        reqwest::Client::new()
            .post(&url)
            .header("authorization", "Bot t")
            .json(&json!({ "content": "hi", "nonce": nonce, "enforce_nonce": true }))
            .send()
    };
    let a: serde_json::Value = post("123-0").await.unwrap().json().await.unwrap();
    let b: serde_json::Value = post("123-0").await.unwrap().json().await.unwrap();
    let c: serde_json::Value = post("123-1").await.unwrap().json().await.unwrap();
    assert_eq!(a["id"], b["id"]);
    assert_ne!(a["id"], c["id"]);
    assert_eq!(discord.posted().await.len(), 2);
}
