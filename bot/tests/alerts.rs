//! Runtime alerts end to end: the real bot, a real Postgres stopped under it, and a Discord webhook
//! on loopback. One message when the bot has been unhealthy longer than `ALERT_AFTER_SECS`, with
//! the reason `/health` gives, one when it recovers, none in between, and the webhook's URL (a
//! secret) never in the bot's output.

mod common;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{extract::State, http::StatusCode, routing::post, Json, Router};
use common::{wait_for, Stack};
use serde_json::Value;

const TOKEN: &str = "alert-webhook-token-secret-7Yh2";

/// A Discord webhook: 204 for every message, as Discord answers, and each message kept.
#[derive(Clone, Default)]
struct Webhook(Arc<Mutex<Vec<Value>>>);

impl Webhook {
    async fn start() -> (Webhook, String) {
        let hook = Webhook::default();
        let path = format!("/api/webhooks/42/{TOKEN}");
        let app = Router::new().route(&path, post(receive)).with_state(hook.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (hook, format!("http://{addr}{path}"))
    }

    fn contents(&self) -> Vec<String> {
        self.0.lock().unwrap().iter().map(|m| m["content"].as_str().unwrap_or("").to_owned()).collect()
    }
}

async fn receive(State(hook): State<Webhook>, Json(message): Json<Value>) -> StatusCode {
    hook.0.lock().unwrap().push(message);
    StatusCode::NO_CONTENT
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_is_posted_once_and_so_is_the_recovery() {
    let (hook, url) = Webhook::start().await;
    let s = Stack::start_with(&[("LATTICE_NOTIFY_WEBHOOK", &url), ("ALERT_AFTER_SECS", "3")]).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(hook.contents().is_empty(), "a healthy bot alerted: {:?}", hook.contents());

    s.pg.stop();
    let (_, body) = wait_for("/health to report the database down", || async {
        s.bot.health().await.filter(|(c, _)| *c == 503)
    })
    .await;
    let said = body["problems"][0].as_str().unwrap().to_owned();
    assert!(said.starts_with("unreachable"), "{body}");
    let alert = wait_for("the unhealthy alert", || async { hook.contents().first().cloned() }).await;
    assert!(alert.contains("UNHEALTHY for") && alert.contains("unreachable"), "{alert:?}");
    assert!(alert.contains("lattice-bot 0123456789ab ("), "the alert names the instance: {alert:?}");
    // Still down, several checks later: nothing more.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(hook.contents().len(), 1, "one message per change of state: {:?}", hook.contents());

    s.pg.start_again();
    s.pg.wait_ready().await;
    s.bot.wait_healthy().await;
    let recovered = wait_for("the recovery message", || async { hook.contents().get(1).cloned() }).await;
    assert!(recovered.contains("healthy again after"), "{recovered:?}");
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(hook.contents().len(), 2, "{:?}", hook.contents());

    let output = s.bot.output();
    assert!(output.contains("runtime alert posted"), "{output}");
    assert!(!output.contains(TOKEN), "the webhook's URL appeared in the bot's output:\n{output}");
    s.bot.assert_no_secrets();
}
