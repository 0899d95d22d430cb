//! The newcomer's first five minutes, for real: a fresh clone with no `.env`, `cargo xtask dev`
//! brings the stack up healthy on the real Docker Engine, and `echo hello | cargo xtask chat`
//! prints the bot's reply.

use std::{
    io::Write,
    net::TcpListener,
    path::PathBuf,
    process::{Command, Output, Stdio},
};

mod common;
use common::{show, workspace};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct DevStack {
    clone: PathBuf,
    project: String,
    env: Vec<(String, String)>,
}

impl DevStack {
    fn xtask(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_xtask"));
        cmd.args(args).current_dir(&self.clone);
        // A newcomer's machine: no Discord token, no OpenRouter key, nothing of the caller's stack.
        for name in ["DISCORD_TOKEN", "OPENROUTER_API_KEY", "LLM_PROVIDER", "LATTICE_COMPOSE_PROJECT"] {
            cmd.env_remove(name);
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        if let Some(text) = stdin {
            child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        }
        child.wait_with_output().unwrap()
    }
}

impl Drop for DevStack {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["compose", "-p", &format!("{}-dev", self.project)])
            .args(["-f", "compose/base.yml", "-f", "compose/dev.yml", "-f", "compose/standin.yml"])
            .args(["down", "--volumes", "--remove-orphans", "--timeout", "5"])
            .current_dir(&self.clone)
            .output();
        let _ = std::fs::remove_dir_all(&self.clone);
    }
}

#[test]
fn e2e_fresh_clone_dev_stack_answers_chat() {
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
    let stack = DevStack { clone, project, env };

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
    assert!(stdout.lines().any(|l| l.starts_with("[dream]")), "no dream-channel audit line:\n{chat_text}");
}
