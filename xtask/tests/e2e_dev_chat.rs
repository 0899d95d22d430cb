//! The newcomer's first five minutes and the developer's loop, for real: a fresh clone with no
//! `.env`, `cargo xtask dev` brings the stack up healthy on the real Docker Engine and
//! `echo hello | cargo xtask chat` prints the bot's reply; then, under `cargo xtask dev --watch`,
//! saving a change to the reply text is all it takes for the bot to answer with it, a compile
//! error is shown once while the previous bot keeps answering, and Ctrl-C leaves the stack up.
//!
//! One cold build (the first `cargo xtask dev`); every build after it is incremental.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpListener,
    os::unix::process::CommandExt as _,
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

mod common;
use common::{show, workspace};

/// The file holding the placeholder reply, and the words of it the test rewrites.
const REPLY_FILE: &str = "bot/src/llm.rs";
const REPLY_WORDS: &str = "(placeholder reply;";
/// Generous bounds on an incremental rebuild and restart on a busy 2-core machine: only to fail
/// instead of hanging, never a measurement (that is `cargo xtask bench --only dev`).
const REBUILD_BOUND: Duration = Duration::from_secs(300);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct DevStack {
    clone: PathBuf,
    project: String,
    env: Vec<(String, String)>,
    watcher: Option<Child>,
}

impl DevStack {
    /// `program` run in the clone, in a newcomer's environment: no Discord token, no OpenRouter
    /// key, nothing of the caller's stack.
    fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        cmd.current_dir(&self.clone);
        for name in ["DISCORD_TOKEN", "OPENROUTER_API_KEY", "LLM_PROVIDER", "LATTICE_COMPOSE_PROJECT"] {
            cmd.env_remove(name);
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    fn xtask(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = self.command(env!("CARGO_BIN_EXE_xtask"));
        cmd.args(args);
        cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        if let Some(text) = stdin {
            child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        }
        child.wait_with_output().unwrap()
    }

    /// `echo <line> | cargo xtask chat`: the bot's replies (not the dream-channel lines).
    fn chat(&self, line: &str) -> Vec<String> {
        let chat = self.xtask(&["chat", "--wait", "60"], Some(&format!("{line}\n")));
        assert!(chat.status.success(), "chat failed:\n{}", show(&chat));
        String::from_utf8_lossy(&chat.stdout)
            .lines()
            .filter(|l| l.starts_with("lattice: "))
            .map(str::to_string)
            .collect()
    }

    /// Container ids of the running services, e.g. to see which ones were recreated.
    fn container(&self, service: &str) -> String {
        let out = Command::new("docker")
            .args(["ps", "--quiet", "--filter"])
            .arg(format!("label=com.docker.compose.project={}-dev", self.project))
            .arg("--filter")
            .arg(format!("label=com.docker.compose.service={service}"))
            .output()
            .unwrap();
        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(!id.is_empty(), "no running {service} container");
        id
    }

    fn edit(&self, from: &str, to: &str) {
        let path = self.clone.join(REPLY_FILE);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(from), "{REPLY_FILE} no longer contains {from:?}: update this test");
        std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
    }
}

impl Drop for DevStack {
    fn drop(&mut self) {
        if let Some(mut watcher) = self.watcher.take() {
            let _ = watcher.kill();
            let _ = watcher.wait();
        }
        let _ = Command::new("docker")
            .args(["compose", "-p", &format!("{}-dev", self.project)])
            .args(["-f", "compose/base.yml", "-f", "compose/dev.yml", "-f", "compose/standin.yml"])
            // With the build service's profile: `down` removes only the volumes of the services it sees.
            .args(["--profile", "build", "down", "--volumes", "--remove-orphans", "--timeout", "5"])
            .current_dir(&self.clone)
            .output();
        let _ = std::fs::remove_dir_all(&self.clone);
    }
}

/// Everything `cargo xtask dev --watch` printed so far, both streams, line by line as they came.
#[derive(Clone, Default)]
struct Transcript(Arc<Mutex<Vec<String>>>);

impl Transcript {
    fn follow(&self, stream: impl Read + Send + 'static) {
        let lines = self.0.clone();
        thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                lines.lock().unwrap().push(line);
            }
        });
    }

    fn text(&self) -> String {
        self.0.lock().unwrap().join("\n")
    }

    fn count(&self, needle: &str) -> usize {
        self.0.lock().unwrap().iter().filter(|line| line.contains(needle)).count()
    }

    /// Waits until `needle` has appeared in `n` lines.
    fn wait_for(&self, needle: &str, n: usize, bound: Duration) {
        let start = Instant::now();
        while self.count(needle) < n {
            assert!(
                start.elapsed() < bound,
                "`cargo xtask dev --watch` never printed {needle:?} (#{n}):\n{}",
                self.text()
            );
            thread::sleep(Duration::from_millis(200));
        }
    }
}

fn assert_replies_with(replies: &[String], words: &str, context: &str) {
    assert!(
        replies.iter().any(|r| r.contains(words)),
        "{context}: expected a reply containing {words:?}, got {replies:?}"
    );
}

#[test]
fn e2e_fresh_clone_dev_stack_answers_chat_and_reloads_on_save() {
    let clone = std::env::temp_dir().join(format!("lattice-dev-e2e-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&clone);
    let status = Command::new("git")
        .args(["clone", "--quiet", "--no-hardlinks"])
        .arg(workspace())
        .arg(&clone)
        .status()
        .unwrap();
    assert!(status.success(), "git clone failed");
    assert!(!clone.join(".env").exists(), "a fresh clone has no .env");

    let project = format!("lattice-e2e-{}", std::process::id());
    let bot_port = free_port();
    let env = vec![
        ("LATTICE_COMPOSE_PROJECT".to_string(), project.clone()),
        ("BOT_HTTP_PORT".to_string(), bot_port.to_string()),
        ("POSTGRES_PORT".to_string(), free_port().to_string()),
    ];
    let mut stack = DevStack { clone, project, env, watcher: None };

    // 1. The newcomer: `cargo xtask dev` (the one cold build), then a chat.
    let up = stack.xtask(&["dev"], None);
    let up_text = show(&up);
    assert!(up.status.success(), "cargo xtask dev failed:\n{up_text}");
    assert!(up_text.contains("stand-in"), "dev must say plainly it runs the Discord stand-in:\n{up_text}");
    assert!(up_text.contains(&format!("127.0.0.1:{bot_port}/health")), "{up_text}");
    assert!(up_text.contains("\"status\":\"ok\""), "the bot's /health answers ok:\n{up_text}");

    let chat = stack.xtask(&["chat", "--wait", "60"], Some("hello\n"));
    let chat_text = show(&chat);
    assert!(chat.status.success(), "chat failed:\n{chat_text}");
    let stdout = String::from_utf8_lossy(&chat.stdout);
    let replies: Vec<&str> =
        stdout.lines().filter(|l| !l.trim().is_empty() && !l.starts_with("[dream]")).collect();
    assert!(!replies.is_empty(), "no reply from the bot:\n{chat_text}");
    assert!(stdout.contains(REPLY_WORDS), "the placeholder reply:\n{chat_text}");
    assert!(stdout.lines().any(|l| l.starts_with("[dream]")), "no dream-channel audit line:\n{chat_text}");

    // 2. The developer: the stack under watch. Like a terminal's Ctrl-C, the test signals the
    // watcher's whole process group, with SIGINT's default action (a test runner started in the
    // background may have it ignored).
    let transcript = Transcript::default();
    let mut watch = stack.command("env");
    watch.args(["--default-signal=INT", env!("CARGO_BIN_EXE_xtask"), "dev", "--watch"]);
    watch.process_group(0).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut watcher = watch.spawn().unwrap();
    transcript.follow(watcher.stdout.take().unwrap());
    transcript.follow(watcher.stderr.take().unwrap());
    let pid = watcher.id();
    stack.watcher = Some(watcher);
    transcript.wait_for("watching bot/", 1, REBUILD_BOUND);
    let postgres = stack.container("postgres");
    let standin = stack.container("discord");
    let first_bot = stack.container("bot");
    assert_eq!(
        transcript.count("Recreate"),
        0,
        "nothing changed, nothing is recreated:\n{}",
        transcript.text()
    );

    // Save a new reply text: the bot answers with it, and nothing was run in between.
    stack.edit(REPLY_WORDS, "(hot-reloaded reply;");
    transcript.wait_for("bot restarted with the new build", 1, REBUILD_BOUND);
    assert_replies_with(&stack.chat("hi"), "(hot-reloaded reply;", "after saving a new reply text");

    // Break the build: the error is shown, once, and the previous bot keeps answering.
    stack.edit("(hot-reloaded reply;", "(broken reply;\" + 1 + \"");
    transcript.wait_for("build failed", 1, REBUILD_BOUND);
    let shown = transcript.text();
    assert!(shown.contains("error"), "the compiler's error is shown:\n{shown}");
    assert!(shown.contains(&format!("{REPLY_FILE}:")), "the error names the file and line:\n{shown}");
    assert_replies_with(&stack.chat("still there?"), "(hot-reloaded reply;", "while the build is broken");
    assert_eq!(transcript.count("build failed"), 1, "the failure is shown once:\n{}", transcript.text());
    assert_eq!(
        transcript.count("could not compile"),
        1,
        "the compiler's error is shown once:\n{}",
        transcript.text()
    );

    // Fix it: the new text appears.
    stack.edit("(broken reply;\" + 1 + \"", "(fixed reply;");
    transcript.wait_for("bot restarted with the new build", 2, REBUILD_BOUND);
    assert_replies_with(&stack.chat("and now?"), "(fixed reply;", "after fixing the build");

    // Only the bot was restarted: Postgres, the stand-in and the database are the same ones.
    assert_eq!(stack.container("postgres"), postgres, "Postgres was restarted");
    assert_eq!(stack.container("discord"), standin, "the Discord stand-in was restarted");
    assert_ne!(stack.container("bot"), first_bot, "the bot runs in a new container");

    // Ctrl-C: the watching stops, the stack stays as `cargo xtask dev` leaves it.
    let signalled = Command::new("kill").args(["-INT", "--", &format!("-{pid}")]).status().unwrap();
    assert!(signalled.success(), "could not signal the watcher");
    let mut watcher = stack.watcher.take().unwrap();
    let stopped = Instant::now();
    while watcher.try_wait().unwrap().is_none() {
        assert!(stopped.elapsed() < Duration::from_secs(60), "Ctrl-C did not stop the watcher");
        thread::sleep(Duration::from_millis(100));
    }
    let replies = stack.chat("after the watch");
    assert_replies_with(&replies, "(fixed reply;", "after Ctrl-C");
    // The conversation is remembered across the restarts: the database survived.
    assert!(
        replies.iter().any(|r| !r.contains("; 1 messages of context")),
        "the reply has the earlier messages as context: {replies:?}"
    );
    assert_eq!(stack.container("postgres"), postgres, "Postgres survived the watch");
}
