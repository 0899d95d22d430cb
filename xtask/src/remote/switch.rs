//! The switch: point `current` at a release, hand the bot over to it make-before-break (its bot
//! started beside the old one, a ready standby, the old one stopped, the new one leads), record;
//! failed, switch back to the previous release, whose bot serves again, and record that too.
//!
//! **Architecture Invariant:** the switch protocol. All of it is one script (switch.sh), uploaded
//! as `.switch.sh` and started by the lock's own session, detached (`setsid nohup`): it inherits
//! the lock, so killing the client mid-switch changes nothing about the outcome, and `current`,
//! the running containers and `deploys.log` agree again before anyone else may deploy. Its last
//! act is writing `.switch.result`; the client follows `.switch.log` and reads the result.

use std::time::Instant;

use anyhow::{bail, Result};

use super::{
    connection_lost,
    history::{Action, Outcome},
    schema, Detached, Layout, Lock, Server, HISTORY, SWITCH_BOT_LOGS, SWITCH_LOG, SWITCH_RESULT,
    SWITCH_SCRIPT,
};
use crate::{
    env::Env,
    notify::SwitchedBack,
    plan::{Cmd, Steps},
};

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
    /// Whether the previous release may run again should this one fail.
    pub back: SwitchBack,
}

/// What the schema allows of a switch-back, as the deploy found it after migrating.
#[derive(Debug, Clone, Default)]
pub struct SwitchBack {
    /// Applied migrations the previous release's code does not know and that are not declared
    /// backward-compatible (rollback's schema check): when there are any, the previous release is
    /// not started again.
    pub blocking: Vec<i64>,
    /// The snapshot taken before the migrations, for the way back.
    pub snapshot: Option<String>,
}

impl Switch {
    /// The script's positional arguments: SHA PREVIOUS ACTION TIMEOUT WHO ELAPSED PROJECT IMAGE PAUSE
    /// BLOCKING.
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
            or_none(Some(&self.back.blocking.iter().map(i64::to_string).collect::<Vec<_>>().join(","))),
        ]
    }

    /// What the script will run for these arguments, for the plan: the make-before-break
    /// handover, the record, and the way back.
    fn story(&self, layout: &Layout) -> String {
        let timeout = self.timeout_secs.to_string();
        let wait = |container: &str, state: &str| {
            Cmd::of("docker exec")
                .arg(container)
                .args(["lattice-bot", "healthcheck", "--wait", state, "--timeout", &timeout])
                .to_string()
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
        let keep_logs = Cmd::of("docker logs --tail 40").arg("<new>").write_to(SWITCH_BOT_LOGS).to_string();
        let drop_new = Cmd::of("docker rm --force").arg("<new>").to_string();
        let start_old = Cmd::of("docker start").arg("<old>").to_string();
        let unhealthy = record(self.action, sha, Outcome::Unhealthy).to_string();
        let mut lines = vec![
            layout.switch(sha).to_string(),
            ["<old> = ", &running_bots(layout).to_string()].concat(),
            layout
                .compose(
                    sha,
                    &["up", "--detach", "--no-recreate", "--remove-orphans", "--scale", "bot=<old + 1>"],
                )
                .to_string(),
            wait("<new>", "standby"),
            [
                &Cmd::of("docker stop").arg("<old>").to_string(),
                "   # SIGTERM, its stop grace period: it hands over (no <old>: the new one leads at once)",
            ]
            .concat(),
            wait("<new>", "leader"),
            [
                "leads: ",
                &Cmd::of("docker rm <old>").to_string(),
                "; ",
                &record(self.action, sha, Outcome::Ok).to_string(),
            ]
            .concat(),
            ["never a standby: ", &keep_logs, "; ", &drop_new, "; ", &unhealthy, "   # <old> never stopped"]
                .concat(),
            ["fails after taking over: ", &keep_logs, "; ", &drop_new, "; ", &start_old, "; ", &unhealthy]
                .concat(),
        ];
        match self.previous.as_deref().filter(|p| *p != sha) {
            Some(previous) if !self.back.blocking.is_empty() => lines.extend([
                format!(
                    "then: {previous} is not started again (migrations {} are applied, which its code does not know): \
                     {}",
                    schema::list(&self.back.blocking),
                    Cmd::of("docker rm --force").arg("<old>")
                ),
                record(Action::SwitchBack, previous, Outcome::Refused).to_string(),
            ]),
            Some(previous) => lines.extend([
                ["then back: ", &layout.switch(previous).to_string()].concat(),
                wait("<old>", "leader"),
                record(Action::SwitchBack, previous, Outcome::Ok).to_string(),
            ]),
            None => lines.push("then: no previous release to switch back to".into()),
        }
        lines.iter().map(|l| ["  ", l].concat()).collect::<Vec<_>>().join("\n")
    }

    /// Uploads the switch script, starts it from the lock's session and follows its log until it
    /// ends, a step line each time it reports one (`lattice step: NAME`; every line under
    /// `--verbose`). Unhealthy: fails with the outcome of the switch back and the new container's
    /// last log lines.
    pub fn run(&self, server: &Server, lock: &mut Lock, steps: &mut Steps) -> Result<()> {
        let plan = server.plan();
        let layout = &server.layout;
        let (sha, timeout) = (&self.sha, self.timeout_secs);
        let args = self.args(layout);
        plan.note(&format!(
            "switch current to {sha} and hand the bot over to it, waiting up to {timeout} s per step: {SWITCH_SCRIPT} (switch.sh) runs\n{}",
            self.story(layout)
        ));
        lock.write(plan, SWITCH_SCRIPT, SWITCH_SH)?;
        let verbose = plan.is_verbose();
        let mut each_line = |line: &str, at: Instant| match line.strip_prefix(STEP_MARKER) {
            Some(step) => {
                let (name, detail) = step.split_once(' ').unwrap_or((step, ""));
                steps.done_at(name, detail, at)
            }
            // The test hook's marker is shown as it comes (see pause_at).
            None if verbose || line.starts_with("lattice test pause: ") => eprintln!("{line}"),
            None => {}
        };
        let result = match lock.detach(plan, &args, &mut each_line)? {
            Detached::Ended(result) => result,
            Detached::Lost { pid, seen } => {
                // A dead connection does not stop the script: the client connects again, follows
                // its log to its end (the lines not seen yet) and reads its result.
                let follow = || {
                    Cmd::of("tail -n +1")
                        .arg(["--pid=", &pid].concat())
                        .args(["-f", SWITCH_LOG])
                        .then(Cmd::of("echo").arg(RESULT_MARKER))
                        .then(Cmd::of("cat").arg(SWITCH_RESULT).without_errors().or(Cmd::of("echo none")))
                };
                let mut attempts = 0;
                let out = loop {
                    let err = match server.reconnect().and_then(|()| server.read(follow())) {
                        Ok(out) => break out,
                        Err(err) => err,
                    };
                    attempts += 1;
                    if !connection_lost(&err) || attempts > 3 {
                        return Err(err.context(
                            "the connection dropped while following the switch, which goes on on the server, and \
                             connecting again failed: `cargo xtask status` shows how it ended",
                        ));
                    }
                };
                let (log, result) = out.rsplit_once(RESULT_MARKER).unwrap_or((&out, "none"));
                for line in log.lines().skip(seen) {
                    each_line(line, Instant::now());
                }
                result.trim().to_string()
            }
        };
        if plan.is_dry_run() {
            return Ok(());
        }
        let back = match (result.as_str(), self.previous.as_deref()) {
            ("healthy", _) => return Ok(()),
            ("back-ok", Some(previous)) => {
                Some((previous, true, format!("switched back to {previous}, which serves again")))
            }
            ("back-unhealthy", Some(previous)) => Some((
                previous,
                false,
                format!(
                    "switched back to {previous}, but it is not healthy either: look at `cargo xtask logs --server`"
                ),
            )),
            ("no-previous", _) => None,
            ("back-refused", Some(previous)) => {
                let restore = match &self.back.snapshot {
                    Some(name) => format!(
                        "`cargo xtask restore {name} --yes` (the database as it was before this deploy's migrations)"
                    ),
                    None => "restore the database from a backup taken before this deploy".to_string(),
                };
                bail!(
                    "{sha} did not take over (a ready standby, then the leader) within {timeout} s, and {previous} \
                     was NOT started again: the database now has migrations {} that its code does not know and \
                     that are not declared backward-compatible. No bot runs. To go back: {restore}, then \
                     `cargo xtask rollback --sha {previous}`. {sha}'s last log lines:\n{}",
                    schema::list(&self.back.blocking),
                    self.bot_logs(server)
                )
            }
            (other, _) => bail!(
                "the switch script on the server ended without a result ({other:?}): it was killed or the server \
                 rebooted. Read {root}/{SWITCH_LOG} there and `cargo xtask status`; the next deploy or rollback \
                 settles the unfinished switch (`current` back to the release before it)",
                root = layout.root
            ),
        };
        let logs = self.bot_logs(server);
        let failed = |back: &str| {
            format!("{sha} did not take over (a ready standby, then the leader) within {timeout} s; {back}. Its last log lines:\n{logs}")
        };
        match back {
            Some((previous, healthy, back)) => {
                Err(SwitchedBack { previous: previous.to_string(), healthy, message: failed(&back) }.into())
            }
            None => bail!(failed("there is no previous release to switch back to")),
        }
    }

    /// The failed new container's last log lines, as the script kept them.
    fn bot_logs(&self, server: &Server) -> String {
        server
            .read(Cmd::of("tail -n 40").arg(SWITCH_BOT_LOGS).without_errors().or(Cmd::of("true")))
            .unwrap_or_default()
    }
}

/// How the switch script reports the end of a step in its log: `lattice step: NAME [DETAIL]`.
const STEP_MARKER: &str = "lattice step: ";
/// Between the switch's log and its result when they are read over a new connection.
const RESULT_MARKER: &str = "--- lattice result ---";

/// The project's running bot containers, as the switch script finds them (`bots` there): by
/// Compose's labels, one-off `run` containers left out.
pub fn running_bots(layout: &Layout) -> Cmd {
    Cmd::of("docker ps --quiet")
        .arg("--filter")
        .arg(["label=com.docker.compose.project=", &layout.settings.compose_project].concat())
        .args(["--filter", "label=com.docker.compose.service=bot"])
        .args(["--filter", "label=com.docker.compose.oneoff=False"])
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
            back: SwitchBack::default(),
        }
    }

    /// The same switch, with what the schema allows of a switch-back.
    pub fn with_back(mut self, back: SwitchBack) -> Switch {
        self.back = back;
        self
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
    use crate::{
        remote::{history, SWITCH_INTENT, SWITCH_RESULT},
        settings::Settings,
    };

    /// A `docker` for the switch script, with containers: FAKE_DOCKER_STATE holds one line per bot
    /// container, `id release running|stopped`; `up` adds one of its release, `stop`, `start` and
    /// `rm` change them. A container becomes a standby when its release is in FAKE_DOCKER_STANDBY
    /// and leads when it is in FAKE_DOCKER_LEADS, once no other bot runs. Every call is logged to
    /// FAKE_DOCKER_CALLS (a leader wait once it answers).
    const FAKE_DOCKER: &str = r#"#!/bin/sh
case "$*" in
"exec "*"--wait leader"*) ;;
*) echo "$*" >>"$FAKE_DOCKER_CALLS" ;;
esac
state=$FAKE_DOCKER_STATE
touch "$state"
release() { sed -n "s/^$1 \([^ ]*\) .*/\1/p" "$state"; }
set_state() { sed -i "s/^\($1 [^ ]*\) .*/\1 $2/" "$state"; }
case "$1" in
compose)
	rel=$(echo "$*" | sed -n 's,.*releases/\([^/]*\)/base.yml.*,\1,p')
	case "$*" in
	*" up "*) echo "c$(($(wc -l <"$state") + 1))-$rel $rel running" >>"$state" ;;
	esac
	;;
exec)
	rel=$(release "$2")
	case "$*" in *"--wait leader"*)
		# As a real standby, it can lead only once no other bot runs (waited for 2 s at most):
		# the switch stops the old one in the background.
		i=0
		while [ "$i" -lt 40 ] && grep -v "^$2 " "$state" | grep -q " running$"; do
			sleep 0.05
			i=$((i + 1))
		done
		echo "$*" >>"$FAKE_DOCKER_CALLS"
		;;
	esac
	case "$*" in *"--wait standby"*) list=$FAKE_DOCKER_STANDBY ;; *) list=$FAKE_DOCKER_LEADS ;; esac
	grep -q "^$2 .* running$" "$state" || exit 1
	for sha in $list; do [ "$sha" = "$rel" ] && exit 0; done
	exit 1
	;;
ps)
	case "$2" in --quiet) ;; *) exit 1 ;; esac
	case "$3" in --all) cut -d' ' -f1 "$state" ;; *) sed -n 's/^\([^ ]*\) [^ ]* running$/\1/p' "$state" ;; esac
	;;
stop) shift; for id; do set_state "$id" stopped; done ;;
start) shift; for id; do set_state "$id" running; done ;;
rm) shift; for id; do [ "$id" = --force ] || sed -i "/^$id /d" "$state"; done ;;
logs) echo 'panic: no gateway' ;;
image) echo reg/bot@sha256:abc ;;
esac
"#;

    /// What one run of the switch script left: the history as parsed, the result file,
    /// `current`, the docker calls and the bot containers (`id release state`).
    struct Ran {
        lines: Vec<history::Line>,
        result: String,
        current: String,
        calls: Vec<String>,
        bots: Vec<String>,
    }

    /// Runs the switch script to `bbbbbbb` in a temp dir with the fake `docker`; `previous` runs
    /// as container `c1-<previous>` before (none without a previous release).
    fn run_switch(previous: Option<&str>, standby: &[&str], leads: &[&str]) -> Ran {
        run_switch_with(previous, previous, standby, leads)
    }

    /// [`run_switch`] with the release whose bot runs before given apart (`None`: no bot runs).
    fn run_switch_with(
        previous: Option<&str>,
        running: Option<&str>,
        standby: &[&str],
        leads: &[&str],
    ) -> Ran {
        run_switch_blocked(previous, running, standby, leads, &[])
    }

    /// [`run_switch_with`] after migrations `blocking` the previous release's code does not know.
    fn run_switch_blocked(
        previous: Option<&str>,
        running: Option<&str>,
        standby: &[&str],
        leads: &[&str],
        blocking: &[i64],
    ) -> Ran {
        let sh = xshell::Shell::new().unwrap();
        let dir = sh.create_temp_dir().unwrap();
        let d = dir.path();
        let bin = d.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::write(bin.join("docker"), FAKE_DOCKER).unwrap();
        std::fs::set_permissions(bin.join("docker"), std::fs::Permissions::from_mode(0o755)).unwrap();
        let running = running.map(|p| format!("c1-{p} {p} running\n")).unwrap_or_default();
        std::fs::write(d.join("bots"), running).unwrap();
        let layout = Layout::new(&Settings::default());
        let switch = Switch {
            sha: "bbbbbbb".into(),
            previous: previous.map(str::to_string),
            action: Action::Deploy,
            timeout_secs: 5,
            who: "ann on laptop".into(),
            elapsed_secs: 7,
            pause_at: None,
            back: SwitchBack { blocking: blocking.to_vec(), snapshot: None },
        };
        std::fs::write(d.join(SWITCH_SCRIPT), SWITCH_SH).unwrap();
        let path = std::env::var_os("PATH").unwrap();
        let path = std::env::join_paths(std::iter::once(bin).chain(std::env::split_paths(&path))).unwrap();
        let status = std::process::Command::new("sh")
            .arg(SWITCH_SCRIPT)
            .args(switch.args(&layout))
            .current_dir(d)
            .env("PATH", path)
            .env("FAKE_DOCKER_STATE", d.join("bots"))
            .env("FAKE_DOCKER_STANDBY", standby.join(" "))
            .env("FAKE_DOCKER_LEADS", leads.join(" "))
            .env("FAKE_DOCKER_CALLS", d.join("calls"))
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        assert!(!d.join(SWITCH_INTENT).exists(), "a finished switch left its intent line");
        let read = |name: &str| std::fs::read_to_string(d.join(name)).unwrap();
        let lines = |text: String| text.lines().map(str::to_string).collect();
        Ran {
            lines: history::parse(&read(HISTORY)),
            result: read(SWITCH_RESULT).trim().to_string(),
            current: std::fs::read_link(d.join("current")).unwrap().display().to_string(),
            calls: lines(read("calls")),
            bots: lines(read("bots")),
        }
    }

    /// The docker calls that start, wait for, stop and remove bots, shortened: compose `up` as
    /// `up <release>`, `exec <id> … --wait <state>` as `<id> <state>?`.
    fn handover_steps(calls: &[String]) -> Vec<String> {
        calls
            .iter()
            .filter_map(|c| {
                let words: Vec<&str> = c.split_whitespace().collect();
                match words[..] {
                    ["compose", ..] if words.contains(&"up") => {
                        let release = c.split("releases/").nth(1)?.split('/').next()?;
                        Some(["up ", release].concat())
                    }
                    ["exec", id, .., "--wait", state, "--timeout", _] => Some([id, " ", state, "?"].concat()),
                    ["stop" | "start" | "rm", ..] => Some(c.clone()),
                    _ => None,
                }
            })
            .collect()
    }

    #[test]
    fn the_switch_starts_the_new_bot_beside_the_old_and_stops_the_old_once_the_new_stands_by() {
        let ran = run_switch(Some("aaaaaaa"), &["aaaaaaa", "bbbbbbb"], &["aaaaaaa", "bbbbbbb"]);
        assert_eq!((ran.result.as_str(), ran.current.as_str()), ("healthy", "releases/bbbbbbb"));
        assert_eq!(
            handover_steps(&ran.calls),
            ["up bbbbbbb", "c2-bbbbbbb standby?", "stop c1-aaaaaaa", "c2-bbbbbbb leader?", "rm c1-aaaaaaa"],
            "{:#?}",
            ran.calls
        );
        assert_eq!(ran.bots, ["c2-bbbbbbb bbbbbbb running"]);
        assert_eq!(ran.lines.len(), 1);
        let l = &ran.lines[0];
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

    /// `bbbbbbb` recorded unhealthy, switched back to `aaaaaaa`, whose bot alone runs and leads.
    fn assert_switched_back(ran: &Ran) {
        assert_eq!((ran.result.as_str(), ran.current.as_str()), ("back-ok", "releases/aaaaaaa"));
        assert_eq!(ran.bots, ["c1-aaaaaaa aaaaaaa running"]);
        let got: Vec<(&str, &str, &str)> =
            ran.lines.iter().map(|l| (l.action.as_str(), l.sha.as_str(), l.result.as_str())).collect();
        assert_eq!(got, [("deploy", "bbbbbbb", "unhealthy"), ("switch-back", "aaaaaaa", "ok")]);
    }

    #[test]
    fn a_new_bot_that_never_stands_by_is_removed_and_the_old_one_never_stopped() {
        let ran = run_switch(Some("aaaaaaa"), &["aaaaaaa"], &["aaaaaaa"]);
        assert_eq!(
            handover_steps(&ran.calls),
            [
                "up bbbbbbb",
                "c2-bbbbbbb standby?",
                "c2-bbbbbbb leader?",
                "rm --force c2-bbbbbbb",
                "c1-aaaaaaa leader?"
            ],
            "{:#?}",
            ran.calls
        );
        assert_switched_back(&ran);
        let ran = run_switch(None, &[], &[]);
        assert_eq!((ran.result.as_str(), ran.current.as_str()), ("no-previous", "releases/bbbbbbb"));
    }

    #[test]
    fn a_new_bot_that_fails_after_taking_over_is_removed_and_the_old_one_started_again() {
        let ran = run_switch(Some("aaaaaaa"), &["aaaaaaa", "bbbbbbb"], &["aaaaaaa"]);
        assert_eq!(
            handover_steps(&ran.calls),
            [
                "up bbbbbbb",
                "c2-bbbbbbb standby?",
                "stop c1-aaaaaaa",
                "c2-bbbbbbb leader?",
                "stop c2-bbbbbbb",
                "rm --force c2-bbbbbbb",
                "start c1-aaaaaaa",
                "c1-aaaaaaa leader?",
            ],
            "{:#?}",
            ran.calls
        );
        assert_switched_back(&ran);
    }

    #[test]
    fn with_no_bot_running_the_new_one_leads_at_once_and_a_switch_back_starts_the_previous_one() {
        let first = run_switch(None, &[], &["bbbbbbb"]);
        assert_eq!(first.result, "healthy");
        assert_eq!(handover_steps(&first.calls), ["up bbbbbbb", "c1-bbbbbbb leader?"], "{:#?}", first.calls);
        // The previous release's bot had crashed: nothing to keep serving, so the way back is a
        // handover to the previous release like any other.
        let ran = run_switch_with(Some("aaaaaaa"), None, &[], &["aaaaaaa"]);
        assert_eq!((ran.result.as_str(), ran.current.as_str()), ("back-ok", "releases/aaaaaaa"));
        assert_eq!(
            handover_steps(&ran.calls),
            [
                "up bbbbbbb",
                "c1-bbbbbbb leader?",
                "stop c1-bbbbbbb",
                "rm --force c1-bbbbbbb",
                "up aaaaaaa",
                "c1-aaaaaaa leader?"
            ],
            "{:#?}",
            ran.calls
        );
        assert_eq!(ran.bots, ["c1-aaaaaaa aaaaaaa running"]);
    }

    #[test]
    fn a_new_bot_that_leads_at_once_because_the_old_one_did_not_lead_is_kept() {
        // The rollback from a release whose bot runs but never leads (e.g. it lost its database).
        let ran = run_switch(Some("aaaaaaa"), &[], &["bbbbbbb"]);
        assert_eq!(ran.result, "healthy");
        assert_eq!(
            handover_steps(&ran.calls),
            [
                "up bbbbbbb",
                "c2-bbbbbbb standby?",
                "c2-bbbbbbb leader?",
                "stop c1-aaaaaaa",
                "c2-bbbbbbb leader?",
                "rm c1-aaaaaaa"
            ],
            "{:#?}",
            ran.calls
        );
        assert_eq!(ran.bots, ["c2-bbbbbbb bbbbbbb running"]);
    }

    #[test]
    fn after_migrations_the_old_code_does_not_know_the_old_bot_is_never_started_again() {
        // Failed after taking over: the old one was stopped, and stays stopped (removed).
        let ran = run_switch_blocked(Some("aaaaaaa"), Some("aaaaaaa"), &["bbbbbbb"], &[], &[5]);
        assert_eq!((ran.result.as_str(), ran.current.as_str()), ("back-refused", "releases/bbbbbbb"));
        assert!(!handover_steps(&ran.calls).iter().any(|s| s.starts_with("start")), "{:#?}", ran.calls);
        assert_eq!(ran.bots, Vec::<String>::new());
        // Never a standby: the old one, still serving on a schema its code does not know, is stopped.
        let ran = run_switch_blocked(Some("aaaaaaa"), Some("aaaaaaa"), &["aaaaaaa"], &["aaaaaaa"], &[5]);
        assert_eq!(ran.result, "back-refused");
        assert_eq!(ran.bots, Vec::<String>::new());
        let got: Vec<(&str, &str, &str)> =
            ran.lines.iter().map(|l| (l.action.as_str(), l.sha.as_str(), l.result.as_str())).collect();
        assert_eq!(got, [("deploy", "bbbbbbb", "unhealthy"), ("switch-back", "aaaaaaa", "refused")]);
    }

    #[test]
    fn the_script_runs_the_compose_commands_the_plan_shows() {
        let layout = Layout::new(&Settings::default());
        let switch = Switch {
            sha: "bbbbbbb".into(),
            previous: Some("aaaaaaa".into()),
            action: Action::Deploy,
            timeout_secs: 5,
            who: "ann".into(),
            elapsed_secs: 0,
            pause_at: None,
            back: SwitchBack::default(),
        };
        let story = switch.story(&layout);
        let ran = run_switch(Some("aaaaaaa"), &["bbbbbbb"], &["bbbbbbb"]);
        let words = |cmd: Cmd| cmd.arguments().join(" ");
        let running = words(running_bots(&layout));
        let up = words(layout.compose(
            "bbbbbbb",
            &["up", "--detach", "--no-recreate", "--remove-orphans", "--scale", "bot=2"],
        ));
        assert!(ran.calls.contains(&running) && ran.calls.contains(&up), "{:#?}", ran.calls);
        for shown in [
            "docker ps --quiet --filter label=com.docker.compose.project=lattice",
            "up --detach --no-recreate --remove-orphans --scale",
            "healthcheck --wait standby --timeout 5",
            "docker stop",
            "healthcheck --wait leader --timeout 5",
        ] {
            assert!(story.contains(shown), "{shown:?} not in:\n{story}");
        }
    }
}
