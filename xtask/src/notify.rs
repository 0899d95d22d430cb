//! Deploy notifications: one short line per deploy, rollback, automatic switch-back and failure —
//! sha, who, seconds, outcome — posted to the Discord webhook in `LATTICE_NOTIFY_WEBHOOK`, from the
//! machine running the xtask (never from the server).
//!
//! Sent with `curl`: the xtask has no HTTP client crate (`http.rs` speaks plain HTTP to loopback
//! only) and a real webhook is HTTPS. The webhook URL is a secret — whoever has it can post — so it
//! travels, with the message, in a curl config read from stdin (`--config -`): never in argv, so
//! never in the plan, an error or a process list. A notification never blocks or fails a deploy:
//! curl gives up after [`TIMEOUT_SECS`], and any failure is one warning line (curl's own words,
//! the URL cut out).

use std::time::Instant;

use crate::{
    env::Env,
    plan::{Cmd, Plan},
    remote::{who, Action},
};

pub const WEBHOOK_VAR: &str = "LATTICE_NOTIFY_WEBHOOK";

/// Whole seconds curl may take, connecting included.
const TIMEOUT_SECS: u64 = 10;

/// The end of a switch that went back to the previous release, carried inside the error so that
/// the failure's notification can say so and add the switch-back's own line.
#[derive(Debug)]
pub struct SwitchedBack {
    /// The release switched back to, and whether it leads again.
    pub previous: String,
    pub healthy: bool,
    /// The whole message for the terminal (it includes the new bot's last log lines).
    pub message: String,
}

impl std::fmt::Display for SwitchedBack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for SwitchedBack {}

/// Sends the lines that tell how `action` of `sha`, started at `started`, ended: one for the
/// action, and one more for an automatic switch-back.
pub fn outcome(
    plan: &Plan,
    env: &Env,
    action: Action,
    sha: &str,
    started: Instant,
    result: &anyhow::Result<()>,
) {
    if env.get(WEBHOOK_VAR).is_none() {
        return;
    }
    let (who, secs) = (who(env), started.elapsed().as_secs());
    let line = |action: Action, sha: &str, outcome: &str| {
        let sha: String = sha.chars().take(12).collect();
        format!("lattice: {} {sha} by {who}: {outcome} ({secs} s)", action.as_str())
    };
    match result {
        Ok(()) => send(plan, env, &line(action, sha, "ok")),
        Err(err) => match err.chain().find_map(|e| e.downcast_ref::<SwitchedBack>()) {
            Some(back) => {
                send(plan, env, &line(action, sha, "FAILED: never took over"));
                let outcome = if back.healthy { "ok" } else { "FAILED: not healthy either" };
                send(plan, env, &line(Action::SwitchBack, &back.previous, outcome));
            }
            None => send(plan, env, &line(action, sha, &["FAILED: ", &reason(err)].concat())),
        },
    }
}

/// An error chain on one line, short enough for a chat line (errors never hold secrets): a list
/// of problems keeps its first ones.
fn reason(err: &anyhow::Error) -> String {
    let text = format!("{err:#}");
    let one_line: Vec<&str> =
        text.lines().map(|l| l.trim().trim_start_matches("- ")).filter(|l| !l.is_empty()).collect();
    let one_line = one_line.join(" ");
    let mut short: String = one_line.chars().take(300).collect();
    if short.len() < one_line.len() {
        short.push('…');
    }
    short
}

/// Posts `text` to the webhook, if one is set; a failure is a warning, never an error.
pub fn send(plan: &Plan, env: &Env, text: &str) {
    let Some(url) = env.get(WEBHOOK_VAR).map(str::trim) else { return };
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        eprintln!(
            "warning: {WEBHOOK_VAR} is not an https:// URL (the value is not shown): no notification sent"
        );
        return;
    }
    if !plan.is_dry_run() && which::which("curl").is_err() {
        eprintln!("warning: no curl on PATH, so the deploy notification was not sent: install curl");
        return;
    }
    match plan.attempt(request(url, text)) {
        Ok(Ok(())) => {}
        Ok(Err(stderr)) => {
            eprintln!("warning: the deploy notification was not sent: {}", redacted(&stderr, url))
        }
        Err(err) => {
            eprintln!("warning: the deploy notification was not sent: {}", redacted(&format!("{err:#}"), url))
        }
    }
}

/// The curl step: options in argv, the URL and the message in the config on stdin.
fn request(url: &str, text: &str) -> Cmd {
    // `allowed_mentions` empty: a name with `@` in it pings nobody.
    let body = serde_json::json!({ "content": text, "allowed_mentions": { "parse": [] } }).to_string();
    let config = format!(
        "url = \"{}\"\nheader = \"Content-Type: application/json\"\ndata = \"{}\"\n",
        config_escaped(url),
        config_escaped(&body)
    );
    Cmd::of("curl --silent --show-error --fail --proto =https,http --max-time")
        .arg(TIMEOUT_SECS.to_string())
        .args(["--output", "/dev/null", "--config", "-"])
        .stdin(config)
}

/// A value inside double quotes in a curl config file: `\` and `"` escaped, line breaks as `\n`.
fn config_escaped(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n").replace('\r', "\\r")
}

/// `text` with the webhook URL, and its path (the token), cut out.
fn redacted(text: &str, url: &str) -> String {
    let path = url.splitn(4, '/').nth(3).filter(|p| p.len() > 3).unwrap_or(url);
    text.replace(url, "<webhook>").replace(path, "<webhook>")
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "https://discord.com/api/webhooks/123/secret-webhook-token";

    #[test]
    fn the_url_and_the_message_go_on_stdin_and_the_plan_shows_neither() {
        let cmd = request(URL, "lattice: deploy \"abc\" by me");
        let printed = cmd.to_string();
        assert!(printed.contains("--config -") && printed.contains("--max-time 10"), "{printed}");
        assert!(!printed.contains("secret-webhook-token") && !printed.contains("lattice:"), "{printed}");
        let stdin = String::from_utf8(cmd.input().unwrap().to_vec()).unwrap();
        assert!(stdin.contains(&format!("url = \"{URL}\"")), "{stdin}");
        assert!(stdin.contains(r#"\"content\":\"lattice: deploy \\\"abc\\\" by me\""#), "{stdin}");
        assert!(stdin.contains(r#"\"allowed_mentions\":{\"parse\":[]}"#), "{stdin}");
    }

    #[test]
    fn a_failure_is_reported_without_the_url() {
        let stderr = format!("curl: (22) The requested URL returned error: 404 for {URL}");
        let text = redacted(&stderr, URL);
        assert!(!text.contains("secret-webhook-token"), "{text}");
        assert!(text.contains("error: 404"), "{text}");
    }

    #[test]
    fn a_switch_back_is_found_through_the_error_context() {
        let err =
            anyhow::Error::new(SwitchedBack { previous: "b".repeat(40), healthy: true, message: "m".into() })
                .context("deploy x");
        let back = err.chain().find_map(|e| e.downcast_ref::<SwitchedBack>()).unwrap();
        assert!(back.healthy && back.previous.starts_with('b'));
        let problems = anyhow::anyhow!("2 problems:\n  - one\n  - two").context("deploy x");
        assert_eq!(reason(&problems), "deploy x: 2 problems: one two");
        assert!(reason(&anyhow::anyhow!("{}", "x".repeat(400))).ends_with("x…"));
    }

    #[test]
    fn a_dry_run_sends_nothing_and_prints_no_secret() {
        let sh = xshell::Shell::new().unwrap();
        let plan = Plan::new(&sh, true);
        let env = Env::from_pairs([(WEBHOOK_VAR, URL), ("USER", "me")]);
        outcome(&plan, &env, Action::Deploy, "0123456789abcdef", Instant::now(), &Ok(()));
        let steps = plan.steps().join("\n");
        assert!(steps.contains("curl --silent"), "{steps}");
        assert!(!steps.contains("secret-webhook-token"), "{steps}");
    }
}
