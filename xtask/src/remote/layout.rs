//! The deploy directory on the server, and what lives in it.
//!
//! **Architecture Invariant:** the server layout under `settings.deploy_path` (relative to the
//! ssh user's home unless absolute) is
//!
//! ```text
//! .env                  app secrets (0600), written by `cargo xtask secrets`, never read back
//! releases/<sha>/       base.yml, prod.yml and release.env (BOT_IMAGE) of that commit
//! current -> releases/<sha>
//! deploys.log           append-only history, see history.rs
//! .lock, .lock.holder   the deploy lock (flock) and who holds it since when
//! .switch.sh            the switch script (switch.sh) with its .log, .result, .bot-logs and .intent
//! snapshots/            database snapshots (pg_dump -Fc, 0700), the newest `snapshots_kept`
//! ```
//!
//! A release always runs with its own compose files and image, so a rollback needs nothing but
//! its directory and its image.

use anyhow::{bail, Result};

use crate::{
    compose::Stack,
    plan::{Cmd, Line},
    settings::Settings,
};

pub const HISTORY: &str = "deploys.log";
pub const LOCK: &str = ".lock";
pub const LOCK_HOLDER: &str = ".lock.holder";
/// The switch script a deploy or rollback uploads and starts detached, its output, its result
/// (`healthy`, `back-ok`, `back-unhealthy`, `back-refused`, `no-previous`) and the failing container's last logs.
pub const SWITCH_SCRIPT: &str = ".switch.sh";
pub const SWITCH_LOG: &str = ".switch.log";
pub const SWITCH_RESULT: &str = ".switch.result";
pub const SWITCH_BOT_LOGS: &str = ".switch.bot-logs";
/// What a switch under way is doing (`time action sha previous who`), removed with its result:
/// still there when no switch runs, it tells of one that was killed or cut off by a reboot.
pub const SWITCH_INTENT: &str = ".switch.intent";

/// A git commit id as used for image tags and release directories: 7 to 40 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sha(String);

impl Sha {
    pub fn parse(text: &str) -> Result<Sha> {
        let text = text.trim();
        let hex = text.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f'));
        if !(7..=40).contains(&text.len()) || !hex {
            bail!(
                "{text:?} is not a git sha: expected 7 to 40 lowercase hex digits, e.g. `--sha $(git rev-parse HEAD)`"
            );
        }
        Ok(Sha(text.to_string()))
    }

    /// A sha read back from the server (`what` names where: "`current` link", "deploys.log",
    /// "releases directory"). Anything else is refused before it can reach a command, with what
    /// to do about it.
    pub fn from_server(text: &str, what: &str) -> Result<Sha> {
        let hex = text.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f'));
        if !(7..=40).contains(&text.len()) || !hex {
            return Err(not_a_sha(what, text));
        }
        Ok(Sha(text.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The error for a value from the server that is not a release sha where one belongs.
pub fn not_a_sha(what: &str, text: &str) -> anyhow::Error {
    anyhow::anyhow!("the server's {what} holds {}, not a release sha: {}", escaped(text), what_to_do(what))
}

/// What to do when the server holds something that is not a sha where one belongs.
fn what_to_do(what: &str) -> &'static str {
    match what {
        CURRENT_LINK => {
            "nothing deployed by `cargo xtask` points there; look at the link on the server \
             (`ls -l <deploy_path>/current`) and redeploy a known commit with `cargo xtask deploy --sha <sha>`"
        }
        HISTORY_LINE => {
            "the history was written by something else or damaged; look at the line on the server and \
             remove or correct it (each line is `<time> <action> <sha> <digest> <result> <seconds>s <who>`)"
        }
        _ => {
            "only `cargo xtask deploy` should create directories in releases/; look at it on the server and \
             remove it by hand"
        }
    }
}

/// Where a value read back from the server came from, for [`Sha::from_server`].
pub const CURRENT_LINK: &str = "`current` link";
pub const HISTORY_LINE: &str = "deploys.log";
pub const RELEASES_DIR: &str = "releases/ directory";

/// Text from the server as it may be printed: control characters (terminal escapes, line breaks)
/// escaped, the rest as it is.
pub fn printable(text: &str) -> String {
    text.chars()
        .flat_map(|c| if c.is_control() { c.escape_default().collect::<Vec<_>>() } else { vec![c] })
        .collect()
}

/// A value from outside (the server, a variable) as it may be shown: quoted, with control
/// characters, quotes and non-ASCII escaped, and cut at 80 characters.
pub fn escaped(text: &str) -> String {
    let mut out: String = text.chars().take(80).flat_map(char::escape_default).collect();
    if text.chars().count() > 80 {
        out.push_str("...");
    }
    ["\"", &out, "\""].concat()
}

/// The deploy directory on the server, and every path and command in it.
#[derive(Debug, Clone)]
pub struct Layout {
    pub root: String,
    pub settings: Settings,
}

impl Layout {
    pub fn new(settings: &Settings) -> Layout {
        Layout { root: settings.deploy_path.clone(), settings: settings.clone() }
    }

    /// A path inside the deploy directory, as seen from the ssh user's home.
    pub fn path(&self, name: &str) -> String {
        [self.root.trim_end_matches('/'), "/", name].concat()
    }

    /// A release's directory, relative to the deploy directory.
    pub fn release_dir(&self, sha: &str) -> String {
        ["releases/", sha].concat()
    }

    pub fn image(&self, sha: &str) -> String {
        [self.settings.image.as_str(), ":", sha].concat()
    }

    /// The compose stack of one release, with its own files and image (paths relative to the root).
    pub fn stack(&self, sha: &str) -> Stack {
        let dir = self.release_dir(sha);
        let mut stack = Stack::prod(&self.settings, &dir);
        stack.env_files = vec![".env".into(), [dir.as_str(), "/release.env"].concat()];
        stack
    }

    /// `docker compose … <args>` for one release.
    pub fn compose(&self, sha: &str, args: &[&str]) -> Cmd {
        self.stack(sha).cmd().args(args)
    }

    /// Points `current` at a release atomically: a new symlink, renamed over the old one (what
    /// switch.sh does).
    pub fn switch(&self, sha: &str) -> Line {
        Cmd::of("ln -sfn")
            .arg(self.release_dir(sha))
            .arg("current.new")
            .and(Cmd::of("mv -T current.new current"))
    }

    /// The image digest (`repo@sha256:…`) of a release's image on the server, or `-`.
    pub fn digest(&self, sha: &str) -> Line {
        Cmd::of("docker image inspect --format")
            .arg("{{index .RepoDigests 0}}")
            .arg(self.image(sha))
            .without_errors()
            .or(Cmd::of("echo -"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sha_is_seven_to_forty_lowercase_hex_digits() {
        assert!(Sha::parse("abc").unwrap_err().to_string().contains("not a git sha"));
        assert!(Sha::parse("ABCDEF1").is_err());
        assert!(Sha::parse("abcdefg").is_err());
        assert!(Sha::parse(&"a".repeat(41)).is_err());
        assert_eq!(Sha::parse("0123abc").unwrap().as_str(), "0123abc");
        assert!(Sha::parse(&"f".repeat(40)).is_ok());
    }

    #[test]
    fn a_release_name_from_the_server_that_is_not_a_sha_is_refused_and_shown_escaped() {
        let err = Sha::from_server("x';cmd;'", RELEASES_DIR).unwrap_err().to_string();
        assert!(
            err.starts_with("the server's releases/ directory holds \"x\\';cmd;\\'\", not a release sha"),
            "{err}"
        );
        let err = Sha::from_server("abc1234\n\u{1b}[2J", CURRENT_LINK).unwrap_err().to_string();
        assert!(err.contains("\"abc1234\\n\\u{1b}[2J\""), "{err}");
        assert!(!err.contains('\u{1b}'), "{err}");
        assert!(Sha::from_server("ABCDEF1", HISTORY_LINE).is_err());
        assert!(Sha::from_server(" abc1234", HISTORY_LINE).is_err());
        assert_eq!(Sha::from_server("abc1234", HISTORY_LINE).unwrap().as_str(), "abc1234");
    }

    #[test]
    fn text_from_the_server_is_printed_without_its_control_characters() {
        assert_eq!(printable("ci@gh deploy abc1234 since 10:00"), "ci@gh deploy abc1234 since 10:00");
        assert_eq!(printable("x\u{1b}]0;pwned\u{7}\ny"), "x\\u{1b}]0;pwned\\u{7}\\ny");
    }

    #[test]
    fn a_release_runs_with_its_own_files_and_image() {
        let layout = Layout::new(&Settings::default());
        assert_eq!(
            layout.compose("abc1234", &["pull", "--quiet"]).to_string(),
            "docker compose -p lattice --env-file .env --env-file releases/abc1234/release.env \
             -f releases/abc1234/base.yml -f releases/abc1234/prod.yml pull --quiet"
        );
        assert_eq!(
            layout.switch("abc1234").to_string(),
            "ln -sfn releases/abc1234 current.new && mv -T current.new current"
        );
        assert_eq!(layout.path("current"), "lattice/current");
    }
}
