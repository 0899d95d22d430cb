//! The server's deploy history, `deploys.log`: one line per switch, appended, never rewritten.
//!
//! `<time> <action> <sha> <image digest> <result> <seconds>s <who>` — space-separated, so that
//! `tail deploys.log` on the server reads well; no field contains a space.

use std::fmt;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Deploy,
    Rollback,
    /// The automatic return to the previous release after an unhealthy switch.
    SwitchBack,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Deploy => "deploy",
            Action::Rollback => "rollback",
            Action::SwitchBack => "switch-back",
        }
    }
}

/// How it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Unhealthy,
    /// A switch-back not done: the previous release's code cannot run on the migrated schema.
    Refused,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Unhealthy => "unhealthy",
            Outcome::Refused => "refused",
        }
    }
}

/// A line read back from `deploys.log`. Unknown actions and results are kept as text, so an older
/// or newer xtask can read the same file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub time: String,
    pub action: String,
    pub sha: String,
    pub digest: String,
    pub result: String,
    pub seconds: String,
    pub who: String,
}

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sha: String = self.sha.chars().take(12).collect();
        // Read from the server: shown with control characters escaped.
        let shown = super::layout::printable;
        write!(
            f,
            "{}  {:<11} {:<12} {:<9} {:>5}  {}",
            shown(&self.time),
            shown(&self.action),
            sha,
            shown(&self.result),
            shown(&self.seconds),
            shown(&self.who)
        )
    }
}

pub fn parse(text: &str) -> Vec<Line> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            Some(Line {
                time: f.next()?.to_string(),
                action: f.next()?.to_string(),
                sha: f.next()?.to_string(),
                digest: f.next()?.to_string(),
                result: f.next()?.to_string(),
                seconds: f.next().unwrap_or("-").to_string(),
                who: f.next().unwrap_or("-").to_string(),
            })
        })
        .collect()
}

/// `deploys.log` as read back from the server: every line's sha must be one, or nothing built
/// from the history (rollback's target, pruning) may run.
pub fn parse_checked(text: &str) -> anyhow::Result<Vec<Line>> {
    let lines = parse(text);
    for line in &lines {
        super::Sha::from_server(&line.sha, super::layout::HISTORY_LINE)?;
    }
    Ok(lines)
}

/// The default rollback target: the newest release that ran healthily and is not `current`.
pub fn previous_good<'l>(lines: &'l [Line], current: &str) -> Option<&'l str> {
    lines.iter().rev().find(|l| l.result == "ok" && l.sha != current).map(|l| l.sha.as_str())
}

/// Since when `current` runs: the time of the newest successful switch to it.
pub fn since<'l>(lines: &'l [Line], current: &str) -> Option<&'l str> {
    lines.iter().rev().find(|l| l.result == "ok" && l.sha == current).map(|l| l.time.as_str())
}

/// The releases worth keeping, newest first: `current`, then the others in order of their last
/// successful switch, at most `keep` in all.
pub fn kept(lines: &[Line], current: &str, keep: usize) -> Vec<String> {
    let mut kept = vec![current.to_string()];
    for line in lines.iter().rev().filter(|l| l.result == "ok") {
        if kept.len() >= keep {
            break;
        }
        if !kept.contains(&line.sha) {
            kept.push(line.sha.clone());
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(action: &str, sha: &str, result: &str) -> String {
        format!("2026-01-01T00:00:00Z {action} {sha} r@sha256:x {result} 3s ci@gh\n")
    }

    #[test]
    fn rollback_goes_to_the_newest_good_release_other_than_current() {
        let log =
            [line("deploy", "aaa", "ok"), line("deploy", "bbb", "ok"), line("deploy", "ccc", "unhealthy")]
                .concat()
                + &line("switch-back", "bbb", "ok");
        let lines = parse(&log);
        assert_eq!(previous_good(&lines, "bbb"), Some("aaa"));
        assert_eq!(previous_good(&lines, "aaa"), Some("bbb"));
        assert_eq!(previous_good(&parse(&line("deploy", "aaa", "ok")), "aaa"), None);
    }

    #[test]
    fn a_history_line_whose_sha_is_not_one_is_refused() {
        let good = line("deploy", "abc1234", "ok");
        assert_eq!(parse_checked(&good).unwrap().len(), 1);
        let bad = good.clone() + &line("deploy", "x';rm${IFS}-rf${IFS}~;'", "ok");
        let err = parse_checked(&bad).unwrap_err().to_string();
        assert!(
            err.starts_with(
                "the server's deploys.log holds \"x\\';rm${IFS}-rf${IFS}~;\\'\", not a release sha"
            ),
            "{err}"
        );
    }

    #[test]
    fn kept_releases_are_current_and_the_newest_good_ones() {
        let log: String =
            ["a", "b", "c", "d", "b"].iter().map(|s| line("deploy", s, "ok")).collect::<String>()
                + &line("deploy", "e", "unhealthy");
        let lines = parse(&log);
        assert_eq!(kept(&lines, "b", 3), vec!["b", "d", "c"]);
        assert_eq!(since(&lines, "d"), Some("2026-01-01T00:00:00Z"));
    }
}
