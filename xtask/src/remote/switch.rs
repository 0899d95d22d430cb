//! The switch: point `current` at a release, bring it up, wait until healthy, record; unhealthy,
//! switch back to the previous release and record that too.
//!
//! **Architecture Invariant:** the switch protocol. All of it is one script (switch.sh), uploaded
//! as `.switch.sh` and started by the lock's own session, detached (`setsid nohup`): it inherits
//! the lock, so killing the client mid-switch changes nothing about the outcome, and `current`,
//! the running containers and `deploys.log` agree again before anyone else may deploy. Its last
//! act is writing `.switch.result`; the client follows `.switch.log` and reads the result.

use std::time::Instant;

use anyhow::{bail, Result};

use super::{
    history::{Action, Outcome},
    Layout, Lock, Server, HISTORY, SWITCH_BOT_LOGS, SWITCH_LOG, SWITCH_RESULT, SWITCH_SCRIPT,
};
use crate::{env::Env, plan::Cmd};

/// The switch script (see its header).
const SWITCH_SH: &str = include_str!("switch.sh");

/// What the switch script does: which release, from which, as what, how long to wait.
#[derive(Debug, Clone)]
pub struct Switch {
    pub sha: String,
    pub previous: Option<String>,
    /// `deploy` or `rollback`, as the history writes it.
    pub action: Action,
    pub timeout_secs: u64,
    pub who: String,
    /// Seconds the command ran before the switch, added to the recorded duration.
    pub elapsed_secs: u64,
    /// Test hook (`LATTICE_TEST_PAUSE_AT=switch|health`): print a marker and sleep 5 s there.
    pub pause_at: Option<String>,
}

impl Switch {
    /// The script's positional arguments: SHA PREVIOUS ACTION TIMEOUT WHO ELAPSED PROJECT IMAGE PAUSE.
    pub fn args(&self, layout: &Layout) -> Vec<String> {
        let or_none = |value: Option<&str>| value.filter(|v| !v.is_empty()).unwrap_or("-").to_string();
        vec![
            self.sha.clone(),
            or_none(self.previous.as_deref()),
            self.action.as_str().to_string(),
            self.timeout_secs.to_string(),
            self.who.replace(char::is_whitespace, "_"),
            self.elapsed_secs.to_string(),
            layout.settings.compose_project.clone(),
            layout.settings.image.clone(),
            or_none(self.pause_at.as_deref()),
        ]
    }

    /// What the script will run for these arguments, for the plan: the switch, the health wait
    /// and the record, and the way back.
    fn story(&self, layout: &Layout) -> String {
        let timeout = self.timeout_secs.to_string();
        let up = |sha: &str| {
            layout.compose(sha, &["up", "--detach", "--wait", "--wait-timeout", &timeout, "--remove-orphans"])
        };
        let record = |action: Action, sha: &str, outcome: Outcome| {
            Cmd::new("echo")
                .arg(
                    ["<time>", action.as_str(), sha, "<digest>", outcome.as_str(), "<seconds>s", &self.who]
                        .join(" "),
                )
                .append_to(HISTORY)
        };
        let sha = self.sha.as_str();
        let mut lines = vec![
            layout.switch(sha).to_string(),
            up(sha).to_string(),
            ["healthy: ", &record(self.action, sha, Outcome::Ok).to_string()].concat(),
            [
                "unhealthy: ",
                &layout
                    .compose(sha, &["logs", "--no-color", "--tail", "40", "bot"])
                    .write_to(SWITCH_BOT_LOGS)
                    .to_string(),
                "; ",
                &record(self.action, sha, Outcome::Unhealthy).to_string(),
            ]
            .concat(),
        ];
        match self.previous.as_deref().filter(|p| *p != sha) {
            Some(previous) => lines.extend([
                ["then back: ", &layout.switch(previous).to_string()].concat(),
                up(previous).to_string(),
                record(Action::SwitchBack, previous, Outcome::Ok).to_string(),
            ]),
            None => lines.push("then: no previous release to switch back to".into()),
        }
        lines.iter().map(|l| ["  ", l].concat()).collect::<Vec<_>>().join("\n")
    }

    /// Uploads the switch script, starts it from the lock's session and follows its log until it
    /// ends. Unhealthy: fails with the outcome of the switch back and the new container's last log
    /// lines.
    pub fn run(&self, server: &Server, lock: &mut Lock) -> Result<()> {
        let plan = server.plan();
        let layout = &server.layout;
        let (sha, timeout) = (&self.sha, self.timeout_secs);
        let args = self.args(layout);
        plan.note(&format!(
            "switch current to {sha} and wait up to {timeout} s for it to be healthy: {SWITCH_SCRIPT} (switch.sh) runs\n{}",
            self.story(layout)
        ));
        server.run_with_input(
            Cmd::of("cat")
                .write_to(&[SWITCH_SCRIPT, ".new"].concat())
                .and(Cmd::of("mv").arg([SWITCH_SCRIPT, ".new"].concat()).arg(SWITCH_SCRIPT))
                .and(Cmd::of("rm -f").args([SWITCH_RESULT, SWITCH_BOT_LOGS])),
            SWITCH_SH,
        )?;
        let pid = lock.detach(plan, &args)?;
        // Follows the script's output until it exits; a dead connection here does not stop it.
        server.run(Cmd::of("tail -n +1").arg(["--pid=", &pid].concat()).args(["-f", SWITCH_LOG]))?;
        let result =
            server.read(Cmd::of("cat").arg(SWITCH_RESULT).without_errors().or(Cmd::of("echo none")))?;
        if plan.is_dry_run() {
            return Ok(());
        }
        let back = match (result.trim(), self.previous.as_deref()) {
            ("healthy", _) => return Ok(()),
            ("back-ok", Some(previous)) => format!("switched back to {previous}, which serves again"),
            ("back-unhealthy", Some(previous)) => format!(
                "switched back to {previous}, but it is not healthy either: look at `cargo xtask logs --server`"
            ),
            ("no-previous", _) => "there is no previous release to switch back to".to_string(),
            (other, _) => bail!(
                "the switch script on the server ended without a result ({other:?}): read {root}/{SWITCH_LOG} there, \
                 then `cargo xtask status`",
                root = layout.root
            ),
        };
        let logs = server
            .read(Cmd::of("tail -n 40").arg(SWITCH_BOT_LOGS).without_errors().or(Cmd::of("true")))
            .unwrap_or_default();
        bail!("{sha} did not become healthy within {timeout} s; {back}. Its last log lines:\n{logs}")
    }
}

impl Switch {
    /// The switch of a deploy or rollback to `sha` started at `started`, with the project's
    /// timeout and test hook.
    pub fn new(
        env: &Env,
        layout: &Layout,
        sha: &str,
        previous: Option<&str>,
        action: Action,
        started: Instant,
    ) -> Switch {
        Switch {
            sha: sha.to_string(),
            previous: previous.map(str::to_string),
            action,
            timeout_secs: layout.settings.health_timeout_secs,
            who: super::who(env),
            elapsed_secs: started.elapsed().as_secs(),
            pause_at: pause_at(env),
        }
    }
}

/// The test hook `LATTICE_TEST_PAUSE_AT=pulled|migrate|switch|health`: the deploy prints
/// `lattice test pause: <step>` there and sleeps a few seconds, so an end-to-end test can kill it
/// at that exact point. Unset in real use.
pub fn pause_at(env: &Env) -> Option<String> {
    env.get("LATTICE_TEST_PAUSE_AT").map(str::to_string)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::{remote::history, settings::Settings};

    /// A `docker` for the switch script: `up` succeeds for the releases in FAKE_DOCKER_HEALTHY,
    /// every call is logged to FAKE_DOCKER_CALLS.
    const FAKE_DOCKER: &str = r#"#!/bin/sh
echo "$*" >>"$FAKE_DOCKER_CALLS"
case "$*" in
*inspect*) echo reg/bot@sha256:abc ;;
*logs*) echo 'panic: no gateway' ;;
*" up "*)
	for sha in $FAKE_DOCKER_HEALTHY; do
		case "$*" in *"releases/$sha/"*) exit 0 ;; esac
	done
	exit 1
	;;
esac
"#;

    /// Runs the switch script in a temp dir with the fake `docker`; returns the history as
    /// parsed, the result file, `current` and the docker calls.
    fn run_switch(
        previous: Option<&str>,
        healthy: &[&str],
    ) -> (Vec<history::Line>, String, String, Vec<String>) {
        let sh = xshell::Shell::new().unwrap();
        let dir = sh.create_temp_dir().unwrap();
        let d = dir.path();
        let bin = d.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::write(bin.join("docker"), FAKE_DOCKER).unwrap();
        std::fs::set_permissions(bin.join("docker"), std::fs::Permissions::from_mode(0o755)).unwrap();
        let layout = Layout::new(&Settings::default());
        let switch = Switch {
            sha: "bbbbbbb".into(),
            previous: previous.map(str::to_string),
            action: Action::Deploy,
            timeout_secs: 5,
            who: "ann on laptop".into(),
            elapsed_secs: 7,
            pause_at: None,
        };
        std::fs::write(d.join(SWITCH_SCRIPT), SWITCH_SH).unwrap();
        let path = std::env::var_os("PATH").unwrap();
        let path = std::env::join_paths(std::iter::once(bin).chain(std::env::split_paths(&path))).unwrap();
        let status = std::process::Command::new("sh")
            .arg(SWITCH_SCRIPT)
            .args(switch.args(&layout))
            .current_dir(d)
            .env("PATH", path)
            .env("FAKE_DOCKER_HEALTHY", healthy.join(" "))
            .env("FAKE_DOCKER_CALLS", d.join("calls"))
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        let log = std::fs::read_to_string(d.join(HISTORY)).unwrap();
        let result = std::fs::read_to_string(d.join(SWITCH_RESULT)).unwrap().trim().to_string();
        let current = std::fs::read_link(d.join("current")).unwrap().display().to_string();
        let calls = std::fs::read_to_string(d.join("calls")).unwrap().lines().map(str::to_string).collect();
        (history::parse(&log), result, current, calls)
    }

    #[test]
    fn the_switch_script_records_a_healthy_switch() {
        let (lines, result, current, _) = run_switch(Some("aaaaaaa"), &["bbbbbbb"]);
        assert_eq!((result.as_str(), current.as_str()), ("healthy", "releases/bbbbbbb"));
        assert_eq!(lines.len(), 1);
        let l = &lines[0];
        assert_eq!(
            (l.action.as_str(), l.sha.as_str(), l.digest.as_str()),
            ("deploy", "bbbbbbb", "reg/bot@sha256:abc")
        );
        assert_eq!(l.result, "ok");
        // The 7 s that ran before the switch, plus the script's own (short) time.
        let seconds: u64 = l.seconds.strip_suffix('s').and_then(|s| s.parse().ok()).expect(&l.seconds);
        assert!((7..37).contains(&seconds), "{}", l.seconds);
        assert_eq!(l.who, "ann_on_laptop");
    }

    #[test]
    fn the_switch_script_switches_back_when_unhealthy_and_records_both() {
        let (lines, result, current, _) = run_switch(Some("aaaaaaa"), &["aaaaaaa"]);
        assert_eq!((result.as_str(), current.as_str()), ("back-ok", "releases/aaaaaaa"));
        let got: Vec<(&str, &str, &str)> =
            lines.iter().map(|l| (l.action.as_str(), l.sha.as_str(), l.result.as_str())).collect();
        assert_eq!(got, [("deploy", "bbbbbbb", "unhealthy"), ("switch-back", "aaaaaaa", "ok")]);
        let (_, result, current, _) = run_switch(None, &[]);
        assert_eq!((result.as_str(), current.as_str()), ("no-previous", "releases/bbbbbbb"));
    }

    #[test]
    fn the_script_runs_the_compose_commands_the_plan_shows() {
        let layout = Layout::new(&Settings::default());
        let (_, _, _, calls) = run_switch(Some("aaaaaaa"), &["aaaaaaa"]);
        let words = |cmd: Cmd| cmd.arguments().join(" ");
        let up = |sha| {
            words(
                layout.compose(sha, &["up", "--detach", "--wait", "--wait-timeout", "5", "--remove-orphans"]),
            )
        };
        let logs = words(layout.compose("bbbbbbb", &["logs", "--no-color", "--tail", "40", "bot"]));
        let compose: Vec<&String> = calls.iter().filter(|c| c.starts_with("compose")).collect();
        assert_eq!(compose, [&up("bbbbbbb"), &logs, &up("aaaaaaa")], "{calls:#?}");
    }
}
