//! Test harness: a real Postgres in Docker, the Discord stand-in in-process, a fake OpenRouter on
//! loopback, and the real `lattice-bot` binary as a child process.

#![allow(dead_code)] // each test file uses a different part of the harness

use std::{
    future::Future,
    io::Read,
    net::TcpListener,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use axum::{extract::State, routing::post, Json, Router};
use serde_json::{json, Value};

pub const BIN: &str = env!("CARGO_BIN_EXE_lattice-bot");
pub const PG_PASSWORD: &str = "pg-secret-5f1c2e";
pub const OPENROUTER_KEY: &str = "sk-or-test-secret-9d8e7f";
pub const DISCORD_TOKEN: &str = "discord-test-token-secret-4a4b";

/// Generous: the test machine may have two busy cores.
pub const DEADLINE: Duration = Duration::from_secs(90);

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Polls `cond` until it yields `Some`, failing the test with `what` after `DEADLINE`.
pub async fn wait_for<T, F, Fut>(what: &str, mut cond: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(v) = cond().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn docker(args: &[&str]) -> std::process::Output {
    Command::new("docker").args(args).output().unwrap_or_else(|e| {
        panic!(
            "cannot run `docker` ({e}): these tests need a running Docker Engine and the docker CLI on PATH"
        )
    })
}

/// A throwaway Postgres container, removed on drop (also when the test fails).
pub struct Postgres {
    pub name: String,
    pub port: u16,
}

static CONTAINER_SEQ: AtomicUsize = AtomicUsize::new(0);

impl Postgres {
    pub async fn start() -> Self {
        let image = std::env::var("POSTGRES_IMAGE").unwrap_or_else(|_| "postgres:16-bookworm".into());
        let v = docker(&["version", "--format", "{{.Server.Version}}"]);
        assert!(
            v.status.success(),
            "Docker Engine not reachable: {}\nstart Docker (the tests run a real Postgres in a container)",
            String::from_utf8_lossy(&v.stderr)
        );
        let inspect = docker(&["image", "inspect", "--format", "{{.Id}}", &image]);
        assert!(
            inspect.status.success(),
            "Postgres image `{image}` is not available locally. Pull or build it, or point POSTGRES_IMAGE at \
             an image that honours POSTGRES_USER/POSTGRES_PASSWORD/POSTGRES_DB (e.g. lattice-local/postgres:15)"
        );
        let name = format!(
            "lattice-bot-test-{}-{}",
            std::process::id(),
            CONTAINER_SEQ.fetch_add(1, Ordering::SeqCst)
        );
        let port = free_port();
        let pg = Postgres { name: name.clone(), port };
        let publish = format!("127.0.0.1:{port}:5432");
        let out = docker(&[
            "run",
            "-d",
            "--name",
            &name,
            "-e",
            "POSTGRES_USER=lattice",
            "-e",
            &format!("POSTGRES_PASSWORD={PG_PASSWORD}"),
            "-e",
            "POSTGRES_DB=lattice",
            "-p",
            &publish,
            &image,
        ]);
        assert!(out.status.success(), "docker run {image} failed: {}", String::from_utf8_lossy(&out.stderr));
        pg.wait_ready().await;
        pg
    }

    pub fn url(&self) -> String {
        format!("postgres://lattice:{PG_PASSWORD}@127.0.0.1:{}/lattice", self.port)
    }

    pub async fn wait_ready(&self) {
        let url = self.url();
        wait_for("Postgres to accept connections", || {
            let url = url.clone();
            async move {
                use sqlx::Connection;
                let mut c = sqlx::PgConnection::connect(&url).await.ok()?;
                sqlx::query("SELECT 1").execute(&mut c).await.ok()?;
                let _ = c.close().await;
                Some(())
            }
        })
        .await;
    }

    pub fn stop(&self) {
        let out = docker(&["stop", "-t", "5", &self.name]);
        assert!(out.status.success(), "docker stop: {}", String::from_utf8_lossy(&out.stderr));
    }

    pub fn start_again(&self) {
        let out = docker(&["start", &self.name]);
        assert!(out.status.success(), "docker start: {}", String::from_utf8_lossy(&out.stderr));
    }

    pub async fn pool(&self) -> sqlx::PgPool {
        sqlx::postgres::PgPoolOptions::new().max_connections(2).connect(&self.url()).await.unwrap()
    }

    /// Runs `lattice-bot migrate` against this database.
    pub fn migrate(&self) -> std::process::Output {
        Command::new(BIN)
            .arg("migrate")
            .env_clear()
            .env("DATABASE_URL", self.url())
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rm", "-f", "-v", &self.name]).output();
    }
}

/// The fake OpenRouter. Replies depend on the last user message:
/// `LONG` → a 4,839-character reply; `CODE` → a reply with a ``` block longer than one Discord
/// message; `ERROR200` → HTTP 200 with an `error` body; `ERROR500` → HTTP 500; `SLOW` → answers
/// after 3 s; anything else → `echo: <message>`. Every answer waits `delay_ms` first.
#[derive(Clone, Default)]
pub struct FakeLlm {
    pub requests: Arc<AtomicU64>,
    pub last_auth: Arc<Mutex<Option<String>>>,
    pub last_body: Arc<Mutex<Option<Value>>>,
    /// Every request body, in arrival order.
    pub bodies: Arc<Mutex<Vec<Value>>>,
    pub in_flight: Arc<AtomicU64>,
    /// The most requests in flight at once.
    pub max_in_flight: Arc<AtomicU64>,
    pub delay_ms: Arc<AtomicU64>,
}

/// The code block of the `CODE` reply: 150 numbered lines of Rust.
pub fn code_reply() -> String {
    let code: String = (0..150).map(|i| format!("    let value_{i} = compute({i}); // step {i}\n")).collect();
    format!("Here is the program.\n\n```rust\nfn main() {{\n{code}}}\n```\n\nThat is all.")
}

pub const LONG_WORD: &str = "lattice";

pub fn long_reply() -> String {
    // 450 words, 4,839 characters: three Discord messages.
    (0..450).map(|i| format!("{LONG_WORD}{i}")).collect::<Vec<_>>().join(" ")
}

impl FakeLlm {
    pub async fn start() -> (Self, String) {
        let fake = FakeLlm::default();
        let app = Router::new().route("/api/v1/chat/completions", post(completions)).with_state(fake.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (fake, format!("http://{addr}/api/v1"))
    }
}

async fn completions(
    State(f): State<FakeLlm>,
    headers: axum::http::HeaderMap,
    Json(body): Json<Value>,
) -> axum::response::Response {
    f.requests.fetch_add(1, Ordering::SeqCst);
    let now = f.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    f.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let response = answer(&f, headers, body).await;
    f.in_flight.fetch_sub(1, Ordering::SeqCst);
    response
}

async fn answer(f: &FakeLlm, headers: axum::http::HeaderMap, body: Value) -> axum::response::Response {
    use axum::response::IntoResponse;
    f.bodies.lock().unwrap().push(body.clone());
    let delay = f.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    *f.last_auth.lock().unwrap() =
        headers.get("authorization").and_then(|v| v.to_str().ok()).map(str::to_owned);
    *f.last_body.lock().unwrap() = Some(body.clone());
    let last = body["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_owned();
    let ok = |content: String| {
        Json(json!({
            "id": "gen-1", "model": "fake/model-1", "object": "chat.completion",
            "choices": [{ "index": 0, "message": { "role": "assistant", "content": content }, "finish_reason": "stop" }],
            "usage": { "prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18, "cost": 0.00042 }
        }))
        .into_response()
    };
    if last.contains("ERROR200") {
        return Json(json!({ "error": { "code": 502, "message": "upstream provider overloaded" } }))
            .into_response();
    }
    if last.contains("ERROR500") {
        return (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response();
    }
    if last.contains("LONG") {
        return ok(long_reply());
    }
    if last.contains("CODE") {
        return ok(code_reply());
    }
    if last.contains("SLOW") {
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    ok(format!("echo: {last}"))
}

/// The Discord stand-in, in-process: the same code as `lattice-bot discord-standin`.
pub struct Discord {
    pub base: String,
    pub world: lattice_bot::standin::World,
    http: reqwest::Client,
}

impl Discord {
    pub async fn start() -> Self {
        let world = lattice_bot::standin::World::default();
        let addr = lattice_bot::standin::spawn("127.0.0.1:0", world.clone()).await.unwrap();
        Discord { base: format!("http://{addr}"), world, http: reqwest::Client::new() }
    }

    /// Posts a user message in the main channel, dispatched `repeat` times; returns its id.
    pub async fn say(&self, content: &str, repeat: u32) -> String {
        let v = self
            .control_json("messages", json!({ "content": content, "author": "ada", "repeat": repeat }))
            .await;
        v["id"].as_str().unwrap().to_owned()
    }

    /// Posts a message as `author` (a bot's when `bot`) in the main channel; returns its id.
    pub async fn say_as(&self, author: &str, content: &str, bot: bool) -> String {
        let v =
            self.control_json("messages", json!({ "content": content, "author": author, "bot": bot })).await;
        v["id"].as_str().unwrap().to_owned()
    }

    /// Posts a message as `author` in `channel` of `guild`; returns its id.
    pub async fn say_in(&self, guild: u64, channel: u64, author: &str, content: &str) -> String {
        let body = json!({
            "content": content, "author": author,
            "guild_id": guild.to_string(), "channel_id": channel.to_string(),
        });
        let v = self.control_json("messages", body).await;
        v["id"].as_str().unwrap().to_owned()
    }

    /// Sends `body` to the stand-in's `/control/<action>`.
    pub async fn control_json(&self, action: &str, body: Value) -> Value {
        let resp =
            self.http.post(format!("{}/control/{action}", self.base)).json(&body).send().await.unwrap();
        assert!(resp.status().is_success(), "/control/{action}: {}", resp.status());
        resp.json().await.unwrap()
    }

    /// Every Create Message call the stand-in answered, in order.
    pub async fn rest(&self) -> Vec<lattice_bot::standin::RestHit> {
        let v: Value =
            self.http.get(format!("{}/control/rest", self.base)).send().await.unwrap().json().await.unwrap();
        serde_json::from_value(v["requests"].clone()).unwrap()
    }

    pub async fn posted(&self) -> Vec<lattice_bot::standin::Posted> {
        let v: Value = self
            .http
            .get(format!("{}/control/posted?after=0", self.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        serde_json::from_value(v["messages"].clone()).unwrap()
    }

    pub async fn state(&self) -> Value {
        self.http.get(format!("{}/control/state", self.base)).send().await.unwrap().json().await.unwrap()
    }

    pub async fn control(&self, action: &str) {
        self.http.post(format!("{}/control/{action}", self.base)).send().await.unwrap();
    }

    /// The bot's replies (main channel) to message `id`.
    pub async fn replies_to(&self, id: &str) -> Vec<lattice_bot::standin::Posted> {
        self.posted().await.into_iter().filter(|p| !p.dream && p.reply_to.as_deref() == Some(id)).collect()
    }

    /// The dream-channel audit line for message `id`, once posted.
    pub async fn audit_for(&self, id: &str) -> Option<String> {
        let key = format!("msg={id} ");
        self.posted().await.into_iter().find(|p| p.dream && p.content.contains(&key)).map(|p| p.content)
    }

    /// Waits for the audit line of `id` (posted after the reply), then returns (replies, audit line).
    pub async fn answered(&self, id: &str) -> (Vec<lattice_bot::standin::Posted>, String) {
        let audit = wait_for(&format!("the audit line for message {id}"), || self.audit_for(id)).await;
        (self.replies_to(id).await, audit)
    }
}

/// The real `lattice-bot run` binary, with stdout and stderr captured; killed on drop.
pub struct Bot {
    pub child: Child,
    pub output: Arc<Mutex<String>>,
    pub http_port: u16,
}

impl Bot {
    pub fn spawn(pg: &Postgres, discord: &Discord, llm_url: &str, extra: &[(&str, &str)]) -> Self {
        let http_port = free_port();
        let mut cmd = Command::new(BIN);
        cmd.arg("run")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "info")
            .env("DISCORD_TOKEN", DISCORD_TOKEN)
            .env("DISCORD_GUILD_ID", discord.world.guild_id.to_string())
            .env("DISCORD_MAIN_CHANNEL_ID", discord.world.main_channel_id.to_string())
            .env("DISCORD_DREAM_CHANNEL_ID", discord.world.dream_channel_id.to_string())
            .env("DISCORD_API_URL", &discord.base)
            .env("DISCORD_GATEWAY_URL", discord.base.replace("http://", "ws://"))
            .env("LLM_PROVIDER", "openrouter")
            .env("OPENROUTER_API_KEY", OPENROUTER_KEY)
            .env("OPENROUTER_MODEL", "fake/model-1")
            .env("OPENROUTER_BASE_URL", llm_url)
            .env("CONTEXT_MESSAGES", "5")
            .env("POSTGRES_HOST", "127.0.0.1")
            .env("POSTGRES_PORT", pg.port.to_string())
            .env("POSTGRES_USER", "lattice")
            .env("POSTGRES_PASSWORD", PG_PASSWORD)
            .env("POSTGRES_DB", "lattice")
            .env("HTTP_PORT", http_port.to_string())
            .env("LATTICE_GIT_SHA", "0123456789abcdef0123456789abcdef01234567")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawning lattice-bot run");
        let output = Arc::new(Mutex::new(String::new()));
        for mut stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let output = output.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    output.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            });
        }
        Bot { child, output, http_port }
    }

    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// `(status code, JSON body)` of `/health`, or `None` while nothing listens.
    pub async fn health(&self) -> Option<(u16, Value)> {
        let resp = reqwest::get(format!("http://127.0.0.1:{}/health", self.http_port)).await.ok()?;
        let code = resp.status().as_u16();
        Some((code, resp.json().await.ok()?))
    }

    pub async fn wait_healthy(&self) -> Value {
        wait_for("the bot's /health to answer 200", || async {
            self.health().await.filter(|(c, _)| *c == 200).map(|(_, b)| b)
        })
        .await
    }

    pub async fn metrics(&self) -> String {
        match reqwest::get(format!("http://127.0.0.1:{}/metrics", self.http_port)).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// The value of an unlabelled (or fully labelled) sample in `/metrics`.
    pub async fn metric(&self, sample: &str) -> f64 {
        let text = self.metrics().await;
        text.lines()
            .find_map(|l| l.strip_prefix(sample).and_then(|rest| rest.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(-1.0)
    }

    /// `VmHWM` (the peak resident memory) of the bot process, in MiB.
    pub fn peak_rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kb: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        kb / 1024.0
    }

    pub fn assert_no_secrets(&self) {
        let out = self.output();
        for secret in [PG_PASSWORD, OPENROUTER_KEY, DISCORD_TOKEN] {
            assert!(!out.contains(secret), "a secret appeared in the bot's output:\n{out}");
        }
    }
}

impl Drop for Bot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Everything one end-to-end case needs, started and migrated.
/// Fields drop in order: the bot stops before its database goes away.
pub struct Stack {
    pub bot: Bot,
    pub discord: Discord,
    pub llm: FakeLlm,
    pub llm_url: String,
    pub pg: Postgres,
}

impl Stack {
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// With extra (or overriding) environment variables for the bot.
    pub async fn start_with(extra: &[(&str, &str)]) -> Self {
        let pg = Postgres::start().await;
        let out = pg.migrate();
        assert!(out.status.success(), "migrate failed: {}", String::from_utf8_lossy(&out.stderr));
        let discord = Discord::start().await;
        let (llm, llm_url) = FakeLlm::start().await;
        let bot = Bot::spawn(&pg, &discord, &llm_url, extra);
        bot.wait_healthy().await;
        Stack { bot, discord, llm, llm_url, pg }
    }
}

/// A TLS server on loopback whose certificate is self-signed (`tests/fixtures/self-signed.*`, for
/// `localhost` and 127.0.0.1, valid 2000–2999): a client that verifies against public roots must
/// refuse it. Each connection gets a handshake and is closed; the server runs until the test ends.
pub struct SelfSignedTls {
    pub port: u16,
    /// What the server saw go wrong in each handshake (the client's alert, when it refused).
    pub handshake_errors: Arc<Mutex<Vec<String>>>,
}

impl SelfSignedTls {
    pub fn start() -> Self {
        use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
        let cert = CertificateDer::from_pem_slice(include_bytes!("../fixtures/self-signed.crt")).unwrap();
        let key = PrivateKeyDer::from_pem_slice(include_bytes!("../fixtures/self-signed.key")).unwrap();
        let config =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![cert], key)
                .unwrap();
        let config = Arc::new(config);
        // Loopback: a container on the host's network (`docker run --network host`) reaches it too.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let handshake_errors = Arc::new(Mutex::new(Vec::new()));
        let errors = handshake_errors.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                let mut conn = rustls::ServerConnection::new(config.clone()).unwrap();
                while conn.is_handshaking() {
                    if let Err(e) = conn.complete_io(&mut stream) {
                        errors.lock().unwrap().push(e.to_string());
                        break;
                    }
                }
            }
        });
        SelfSignedTls { port, handshake_errors }
    }

    /// The handshake errors once `n` handshakes have failed (the last may still be in progress
    /// when the client has exited), failing the test after `DEADLINE`.
    pub fn failed_handshakes(&self, n: usize) -> Vec<String> {
        let deadline = std::time::Instant::now() + DEADLINE;
        loop {
            let errors = self.handshake_errors.lock().unwrap().clone();
            if errors.len() >= n {
                return errors;
            }
            assert!(std::time::Instant::now() < deadline, "{n} failed handshakes expected, saw {errors:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// An HTTP server on loopback answering every request with 200 and `{"status":"ok"}`, as the bot's
/// `/health` does; runs until the test ends. Returns its port.
pub fn health_ok_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let body = r#"{"status":"ok"}"#;
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = std::io::Write::write_all(&mut stream, response.as_bytes());
        }
    });
    port
}
