//! A switch that never got to its result: the switch script writes an intent line
//! (`.switch.intent`: time, action, sha, previous, who) before it changes anything and removes it
//! with its result, so a line still there while no switch runs (the lock is free) tells of one that
//! was killed or cut off by a reboot. `status` reports it; the next deploy or rollback settles it
//! under the lock: `current` back at the release that ran before, the switch recorded as
//! `interrupted`, and its own switch then hands the bot over from whatever runs.

use anyhow::Result;

use super::{layout, HistoryLine, Server, Sha, HISTORY, SWITCH_INTENT};
use crate::plan::Cmd;

/// The switch that did not finish, as its intent line says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unfinished {
    pub time: String,
    pub action: String,
    pub sha: String,
    pub previous: Option<String>,
    pub who: String,
}

impl Unfinished {
    /// The intent line as read back from the server (empty: none); shas checked like every value
    /// from the server.
    fn parse(text: &str) -> Result<Option<Unfinished>> {
        let words: Vec<&str> = text.split_whitespace().collect();
        let [time, action, sha, previous, who] = words[..] else {
            return match words.is_empty() {
                true => Ok(None),
                false => Err(anyhow::anyhow!(
                    "the server's {SWITCH_INTENT} holds {}, not an intent line: remove it there once no switch runs",
                    layout::escaped(text.trim())
                )),
            };
        };
        let sha = Sha::from_server(sha, SWITCH_INTENT)?.as_str().to_string();
        let previous = match previous {
            "-" => None,
            p => Some(Sha::from_server(p, SWITCH_INTENT)?.as_str().to_string()),
        };
        let printable = layout::printable;
        Ok(Some(Unfinished {
            time: printable(time),
            action: printable(action),
            sha,
            previous,
            who: printable(who),
        }))
    }

    /// Whether the history already holds this switch's outcome (the script was stopped between
    /// recording it and removing the intent): then nothing is left to settle.
    fn recorded(&self, history: &[HistoryLine]) -> bool {
        history.iter().any(|l| l.time >= self.time && (l.sha == self.sha || l.action == "switch-back"))
    }

    /// What it was, for a message.
    pub fn describe(&self) -> String {
        let from = self.previous.as_deref().map(|p| format!(" from {p}")).unwrap_or_default();
        format!("the {} to {}{from}, started {} by {}", self.action, self.sha, self.time, self.who)
    }
}

impl Server<'_, '_> {
    /// The switch that began and never finished, if any. Meaningful only while the lock is free:
    /// a running switch has its intent line too.
    pub fn unfinished_switch(&self, history: &[HistoryLine]) -> Result<Option<Unfinished>> {
        let text = self.read(Cmd::of("cat").arg(SWITCH_INTENT).without_errors().or(Cmd::of("true")))?;
        if self.plan().is_dry_run() {
            return Ok(None);
        }
        Ok(Unfinished::parse(&text)?.filter(|u| !u.recorded(history)))
    }

    /// Under the deploy lock: settles a switch that never finished — `current` back at the
    /// release that ran before it, the switch recorded as `interrupted`, its intent removed — and
    /// says so. Nothing when there is none.
    pub fn settle_unfinished(&self) -> Result<()> {
        let history = self.history()?;
        let text = self.read(Cmd::of("cat").arg(SWITCH_INTENT).without_errors().or(Cmd::of("true")))?;
        if self.plan().is_dry_run() {
            self.plan().note(&format!(
                "a switch that never finished ({SWITCH_INTENT} left behind) would be undone here: `current` back \
                 at the release before it, recorded as interrupted"
            ));
            return Ok(());
        }
        let Some(unfinished) = Unfinished::parse(&text)? else { return Ok(()) };
        let clear = Cmd::of("rm -f").arg(SWITCH_INTENT);
        if unfinished.recorded(&history) {
            return self.run(clear);
        }
        eprintln!(
            "warning: {} did not finish (its script was killed or the server rebooted); {}",
            unfinished.describe(),
            match &unfinished.previous {
                Some(p) => format!("`current` goes back to {p}, and it is recorded as interrupted"),
                None => "it is recorded as interrupted".to_string(),
            }
        );
        let line = [
            unfinished.time.as_str(),
            &unfinished.action,
            &unfinished.sha,
            "-",
            "interrupted",
            "0s",
            &unfinished.who,
        ]
        .join(" ");
        let record = Cmd::new("echo").arg(line).append_to(HISTORY).and(clear);
        match &unfinished.previous {
            Some(previous) => self.run(self.layout.switch(previous).and(record)),
            None => self.run(record),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::history;

    #[test]
    fn an_intent_line_is_unfinished_until_the_history_holds_its_outcome() {
        let u =
            Unfinished::parse("2026-11-27T10:00:00Z deploy bbbbbbb aaaaaaa ann@laptop\n").unwrap().unwrap();
        assert_eq!((u.sha.as_str(), u.previous.as_deref()), ("bbbbbbb", Some("aaaaaaa")));
        assert_eq!(
            u.describe(),
            "the deploy to bbbbbbb from aaaaaaa, started 2026-11-27T10:00:00Z by ann@laptop"
        );
        let before = history::parse("2026-11-27T09:00:00Z deploy aaaaaaa - ok 3s ann\n");
        assert!(!u.recorded(&before));
        let after = history::parse(
            "2026-11-27T09:00:00Z deploy aaaaaaa - ok 3s ann\n2026-11-27T10:00:30Z deploy bbbbbbb - ok 3s ann\n",
        );
        assert!(u.recorded(&after));
        assert_eq!(Unfinished::parse("").unwrap(), None);
        assert!(Unfinished::parse("t deploy x';cmd;' - ann").is_err());
        assert!(Unfinished::parse("garbage").unwrap_err().to_string().contains("not an intent line"));
        let first = Unfinished::parse("t deploy bbbbbbb - ann").unwrap().unwrap();
        assert_eq!(first.previous, None);
    }
}
