//! End to end: the real `lattice-bot run` against a real Postgres, the Discord stand-in (real v10
//! protocol, real twilight clients) and a fake OpenRouter (real reqwest client).

mod common;

use std::{process::Command, sync::atomic::Ordering};

use common::*;
use sqlx::Row;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_message_is_stored_answered_and_audited_in_the_dream_channel() {
    let s = Stack::start().await;
    let health = s.bot.wait_healthy().await;
    assert_eq!(health["status"], "ok");
    assert_eq!(health["sha"], "0123456789abcdef0123456789abcdef01234567");
    assert_eq!(health["schema_version"], 5);
    assert_eq!(health["gateway"], "connected");

    let id = s.discord.say("hello lattice", 1).await;
    let (replies, audit) = s.discord.answered(&id).await;
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert_eq!(replies[0].content, "echo: ada: hello lattice");
    assert_eq!(replies[0].channel_id, s.discord.world.main_channel_id.to_string());
    assert!(
        audit.contains("model=fake/model-1 tokens=11+7 cost=$0.000420") && audit.contains("finish=stop"),
        "{audit}"
    );
    // The LLM got the key as a bearer token and the conversation as context.
    assert_eq!(s.llm.last_auth.lock().unwrap().as_deref(), Some(format!("Bearer {OPENROUTER_KEY}").as_str()));

    // Stored: the user's message and the bot's reply, never the dream-channel line.
    let pool = s.pg.pool().await;
    let rows = sqlx::query("SELECT content, is_bot, channel_id FROM messages ORDER BY id")
        .fetch_all(&pool)
        .await
        .unwrap();
    let stored: Vec<(String, bool)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(stored, vec![("hello lattice".into(), false), ("echo: ada: hello lattice".into(), true)]);
    assert!(rows.iter().all(|r| r.get::<i64, _>(2) as u64 == s.discord.world.main_channel_id));
    let audit_row = sqlx::query(
        "SELECT model, prompt_tokens, completion_tokens, cost_usd, finish_reason, error FROM prompt_audits
         WHERE message_id = $1",
    )
    .bind(id.parse::<i64>().unwrap())
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(audit_row.get::<String, _>(0), "fake/model-1");
    assert_eq!((audit_row.get::<Option<i32>, _>(1), audit_row.get::<Option<i32>, _>(2)), (Some(11), Some(7)));
    assert_eq!(audit_row.get::<Option<f64>, _>(3), Some(0.00042));
    assert_eq!(audit_row.get::<Option<String>, _>(4).as_deref(), Some("stop"));
    assert_eq!(audit_row.get::<Option<String>, _>(5), None);

    // A second message carries the first exchange as context.
    let id2 = s.discord.say("and again", 1).await;
    s.discord.answered(&id2).await;
    let body = s.llm.last_body.lock().unwrap().clone().unwrap();
    let contents: Vec<&str> =
        body["messages"].as_array().unwrap().iter().map(|m| m["content"].as_str().unwrap()).collect();
    assert!(
        contents.ends_with(&["ada: hello lattice", "echo: ada: hello lattice", "ada: and again"]),
        "{contents:?}"
    );

    // The version command answers with the running sha and schema.
    let v = s.discord.say("!version", 1).await;
    let replies = wait_for("the !version reply", || async {
        let r = s.discord.replies_to(&v).await;
        (!r.is_empty()).then_some(r)
    })
    .await;
    assert!(
        replies[0].content.contains("sha 0123456789abcdef0123456789abcdef01234567"),
        "{}",
        replies[0].content
    );
    assert!(replies[0].content.contains("schema 5"), "{}", replies[0].content);

    // Metrics count what happened.
    let metrics = s.bot.metrics().await;
    for sample in [
        "lattice_replies_total 3",
        "lattice_llm_requests_total{result=\"ok\"} 2",
        "lattice_llm_tokens_total{kind=\"prompt\"} 22",
        "lattice_llm_cost_usd_total 0.000840",
        "lattice_llm_latency_seconds_count 2",
        "lattice_gateway_connected 1",
    ] {
        assert!(metrics.contains(sample), "missing `{sample}` in:\n{metrics}");
    }

    // The image's health check is the binary itself.
    let probe = Command::new(BIN)
        .arg("healthcheck")
        .env_clear()
        .env("HTTP_PORT", s.bot.http_port.to_string())
        .output()
        .unwrap();
    assert!(probe.status.success(), "{}", String::from_utf8_lossy(&probe.stderr));
    s.bot.assert_no_secrets();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_reply_is_split_into_discord_sized_messages() {
    let s = Stack::start().await;
    let id = s.discord.say("tell me something LONG", 1).await;
    let (replies, audit) = s.discord.answered(&id).await;
    assert_eq!(replies.len(), 3, "{:?}", replies.iter().map(|r| r.content.len()).collect::<Vec<_>>());
    assert!(replies.iter().all(|r| r.content.chars().count() <= 2000));
    let joined = replies.iter().map(|r| r.content.as_str()).collect::<Vec<_>>().join(" ");
    assert_eq!(joined, long_reply(), "the parts together are the whole reply");
    assert!(audit.contains("parts=3"), "{audit}");
    let pool = s.pg.pool().await;
    let n: i64 =
        sqlx::query_scalar("SELECT count(*) FROM messages WHERE is_bot").fetch_one(&pool).await.unwrap();
    assert_eq!(n, 3, "every part is stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicated_message_create_is_answered_once() {
    let s = Stack::start().await;
    let id = s.discord.say("hello twice", 2).await;
    s.discord.answered(&id).await;
    // Both copies were seen: wait until the second was recognised as a repeat.
    wait_for("the repeated event to be recognised", || async {
        (s.bot.metric("lattice_duplicate_events_total").await >= 1.0).then_some(())
    })
    .await;
    assert_eq!(s.discord.replies_to(&id).await.len(), 1);
    assert_eq!(s.llm.requests.load(Ordering::SeqCst), 1, "the LLM was asked once");
    let pool = s.pg.pool().await;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM prompt_audits").fetch_one(&pool).await.unwrap();
    assert_eq!(n, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llm_errors_are_audited_and_the_bot_keeps_serving() {
    let s = Stack::start_with(&[("LLM_TIMEOUT_SECS", "2")]).await;
    for (trigger, expected) in [
        ("ERROR200", "error=\"502: upstream provider overloaded\""),
        ("ERROR500", "error=\"HTTP 500: internal error\""),
        ("SLOW", "error=\"timeout waiting for the LLM\""),
    ] {
        let id = s.discord.say(&format!("please {trigger}"), 1).await;
        let (replies, audit) = s.discord.answered(&id).await;
        assert!(audit.contains(expected), "{audit}");
        assert_eq!(replies.len(), 1);
        assert!(replies[0].content.contains("couldn't reach my language model"), "{}", replies[0].content);
    }
    let pool = s.pg.pool().await;
    let errors: Vec<String> =
        sqlx::query_scalar("SELECT error FROM prompt_audits WHERE error IS NOT NULL ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        errors,
        vec!["502: upstream provider overloaded", "HTTP 500: internal error", "timeout waiting for the LLM"]
    );

    // Still alive and answering.
    let id = s.discord.say("are you ok?", 1).await;
    let (replies, _) = s.discord.answered(&id).await;
    assert_eq!(replies[0].content, "echo: ada: are you ok?");
    assert_eq!(s.bot.metric("lattice_llm_requests_total{result=\"error\"}").await, 3.0);
    s.bot.assert_no_secrets();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_under_a_running_bot() {
    let s = Stack::start().await;
    s.pg.stop();
    let (code, body) = wait_for("/health to report the database down", || async {
        s.bot.health().await.filter(|(c, _)| *c == 503)
    })
    .await;
    assert_eq!(code, 503);
    assert_eq!(body["status"], "unhealthy");
    assert!(body["database"].as_str().unwrap().starts_with("unreachable"), "{body}");

    // A message arriving while Postgres is down is held, not lost.
    let id = s.discord.say("are you there?", 1).await;
    s.pg.start_again();
    s.pg.wait_ready().await;
    let health = s.bot.wait_healthy().await;
    assert_eq!(health["schema_version"], 5);
    let (replies, _) = s.discord.answered(&id).await;
    assert_eq!(replies.len(), 1);
    let pool = s.pg.pool().await;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM messages").fetch_one(&pool).await.unwrap();
    assert_eq!(n, 2, "the message and its reply are stored after recovery");
    s.bot.assert_no_secrets();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_a_reply_is_in_flight_finishes_it_and_exits_0() {
    let mut s = Stack::start().await;
    let id = s.discord.say("take your time SLOW", 1).await;
    wait_for("the LLM request to be in flight", || async {
        (s.llm.requests.load(Ordering::SeqCst) >= 1).then_some(())
    })
    .await;
    let kill = Command::new("kill").args(["-TERM", &s.bot.child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let status = wait_for("the bot to exit", || {
        let r = s.bot.child.try_wait().unwrap();
        async move { r }
    })
    .await;
    assert!(status.success(), "exit status {status:?}\n{}", s.bot.output());
    // The in-flight reply was delivered before exiting.
    assert_eq!(s.discord.replies_to(&id).await.len(), 1);
    assert!(s.discord.audit_for(&id).await.is_some());
    let out = s.bot.output();
    assert!(out.contains("in-flight replies finished"), "{out}");
    // The session was stored for a successor to resume.
    let pool = s.pg.pool().await;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM gateway_sessions").fetch_one(&pool).await.unwrap();
    assert_eq!(n, 1);
    // A successor resumes that session instead of identifying afresh.
    let identifies = s.discord.state().await["identifies"].as_u64().unwrap();
    s.bot = Bot::spawn(&s.pg, &s.discord, &s.llm_url, &[]);
    s.bot.wait_healthy().await;
    let state = s.discord.state().await;
    assert_eq!(state["identifies"].as_u64().unwrap(), identifies, "{state}");
    assert!(state["resumes"].as_u64().unwrap() >= 1, "{state}");
    // Resuming a predecessor's session at start-up is not a reconnect.
    assert_eq!(s.bot.metric("lattice_gateway_reconnects_total").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_gateway_connection_resumes_and_replays_missed_events() {
    let s = Stack::start().await;
    s.discord.control("drop").await;
    // Posted while the bot is disconnected: the resume replays it.
    let id = s.discord.say("did you miss me?", 1).await;
    let (replies, _) = s.discord.answered(&id).await;
    assert_eq!(replies.len(), 1);
    wait_for("a reconnect to be counted", || async {
        (s.bot.metric("lattice_gateway_reconnects_total").await >= 1.0).then_some(())
    })
    .await;
    let state = s.discord.state().await;
    assert!(state["resumes"].as_u64().unwrap() >= 1, "{state}");
    assert_eq!(state["identifies"], 1, "resumed, not re-identified: {state}");
    s.bot.wait_healthy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_stands_by_and_takes_over_the_session_on_sigterm() {
    let mut s = Stack::start().await;
    let standby = Bot::spawn(&s.pg, &s.discord, &s.llm_url, &[]);
    let health = standby.wait_healthy().await;
    assert_eq!(health["gateway"], "standby", "{health}");

    // Only the leader answers.
    let id = s.discord.say("hello, how many of you are there?", 1).await;
    let (replies, _) = s.discord.answered(&id).await;
    assert_eq!(replies.len(), 1);
    assert_eq!(s.discord.state().await["identifies"], 1);

    // The leader stops; the standby takes the lock and resumes the stored session.
    let kill = Command::new("kill").args(["-TERM", &s.bot.child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let status = wait_for("the old leader to exit", || {
        let r = s.bot.child.try_wait().unwrap();
        async move { r }
    })
    .await;
    assert!(status.success(), "{}", s.bot.output());
    wait_for("the standby to take over", || async {
        standby.health().await.filter(|(c, b)| *c == 200 && b["gateway"] == "connected")
    })
    .await;
    let state = s.discord.state().await;
    assert_eq!(state["identifies"], 1, "the session was resumed, not re-identified: {state}");
    let id2 = s.discord.say("still there?", 1).await;
    let (replies, _) = s.discord.answered(&id2).await;
    assert_eq!(replies.len(), 1);
    assert_eq!(s.llm.requests.load(Ordering::SeqCst), 2, "each message reached the LLM once");
    s.bot = standby;
}
