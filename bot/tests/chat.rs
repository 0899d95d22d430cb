//! `lattice-bot chat` against the stand-in and a bot on the placeholder LLM: the dev-stack combination.

mod common;

use std::{io::Write, process::Stdio};

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_prints_replies_and_marked_audit_lines_then_exits_0() {
    let pg = Postgres::start().await;
    assert!(pg.migrate().status.success());
    let discord = Discord::start().await;
    // The dev stack: placeholder LLM, no API key, any token.
    let bot = Bot::spawn(
        &pg,
        &discord,
        "http://127.0.0.1:9/unused",
        &[("LLM_PROVIDER", "placeholder"), ("OPENROUTER_API_KEY", "")],
    );
    bot.wait_healthy().await;

    let mut chat = std::process::Command::new(BIN)
        .args(["chat", "--url", &discord.base, "--wait", "60"])
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    chat.stdin.take().unwrap().write_all(b"hello bot\n!version\n").unwrap();
    let out = tokio::task::spawn_blocking(move || chat.wait_with_output().unwrap()).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.contains("lattice: (placeholder reply; 1 messages of context) You said: you: hello bot"),
        "{stdout}"
    );
    assert!(stdout.contains("lattice: lattice-bot "), "{stdout}");
    assert!(
        stdout.lines().any(|l| l.starts_with("[dream] audit msg=") && l.contains("model=placeholder")),
        "{stdout}"
    );
    bot.assert_no_secrets();
}

#[test]
fn chat_says_what_to_do_when_the_standin_is_not_up() {
    let url = format!("http://127.0.0.1:{}", free_port());
    let out = std::process::Command::new(BIN)
        .args(["chat", "--url", &url])
        .env_clear()
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is the dev stack up? run `cargo xtask dev`"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standin_passes_the_images_healthcheck() {
    let discord = Discord::start().await;
    let port = discord.base.rsplit(':').next().unwrap().to_owned();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(BIN)
            .arg("healthcheck")
            .env_clear()
            .env("HTTP_PORT", port)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("discord-standin"));
}
