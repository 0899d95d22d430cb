//! Runtime alerts: the bot posts to the Discord webhook in `LATTICE_NOTIFY_WEBHOOK` (the one deploy
//! notifications use) when it has been unhealthy longer than `ALERT_AFTER_SECS`, and again when it
//! recovers — one message per change of state, with the reason `/health` gives. A database outage
//! at 3 a.m. reaches someone without a monitoring stack.
//!
//! The health is the same check `/health` answers with, run in-process every few seconds. A message
//! that cannot be posted (the network may be what failed) is tried again at the next check, so the
//! state only changes once someone was told; the webhook's URL is a secret and is never logged.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use crate::http::Health;

/// What an alerting bot remembers between checks.
#[derive(Debug, Default, PartialEq)]
pub struct Watch {
    /// When the current unhealthy spell began (`None` while healthy).
    unhealthy_since: Option<Instant>,
    /// Whether the webhook was told about the current spell.
    alerted: bool,
}

/// A message to post, decided by [`Watch::observe`].
#[derive(Debug, PartialEq)]
pub enum Change {
    Unhealthy { for_secs: u64, reason: String },
    Recovered { after_secs: u64 },
}

impl Watch {
    /// Takes one health result at `now`; returns the message this change of state calls for.
    /// The caller reports back with [`Watch::told`] once it was posted.
    pub fn observe(&mut self, healthy: bool, reason: &str, now: Instant, after: Duration) -> Option<Change> {
        match (healthy, self.unhealthy_since) {
            (true, Some(since)) => {
                if self.alerted {
                    return Some(Change::Recovered { after_secs: now.duration_since(since).as_secs() });
                }
                *self = Watch::default();
                None
            }
            (true, None) => None,
            (false, None) => {
                self.unhealthy_since = Some(now);
                None
            }
            (false, Some(since)) => {
                let spell = now.duration_since(since);
                (!self.alerted && spell >= after)
                    .then(|| Change::Unhealthy { for_secs: spell.as_secs(), reason: reason.to_owned() })
            }
        }
    }

    /// The message for `change` was posted.
    pub fn told(&mut self, change: &Change) {
        match change {
            Change::Unhealthy { .. } => self.alerted = true,
            Change::Recovered { .. } => *self = Watch::default(),
        }
    }
}

impl Change {
    /// One line for the channel, naming the instance.
    pub fn text(&self, sha: &str, role: &str) -> String {
        let sha: String = sha.chars().take(12).collect();
        match self {
            Change::Unhealthy { for_secs, reason } => {
                format!("lattice-bot {sha} ({role}): UNHEALTHY for {for_secs} s: {reason}")
            }
            Change::Recovered { after_secs } => {
                format!("lattice-bot {sha} ({role}): healthy again after {after_secs} s")
            }
        }
    }
}

/// The reason `/health` gives: its problems, joined.
pub fn reason(body: &serde_json::Value) -> String {
    let problems: Vec<&str> = body["problems"]
        .as_array()
        .map(|p| p.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    if problems.is_empty() {
        "no reason given".to_owned()
    } else {
        problems.join("; ")
    }
}

/// Watches the health until the process ends, posting each change of state to `webhook`.
pub async fn run(health: Arc<Health>, webhook: String, after: Duration) {
    let every = (after / 4).clamp(Duration::from_secs(1), Duration::from_secs(5));
    let http = match reqwest::Client::builder().timeout(Duration::from_secs(10)).build() {
        Ok(http) => http,
        Err(e) => {
            tracing::error!(error = %e, "runtime alerts are off: no HTTP client");
            return;
        }
    };
    let mut watch = Watch::default();
    loop {
        let (healthy, body) = health.check().await;
        if let Some(change) = watch.observe(healthy, &reason(&body), Instant::now(), after) {
            let text = change.text(&health.sha, health.role());
            // `allowed_mentions` empty: a reason that happens to hold `@everyone` pings nobody.
            let message = serde_json::json!({ "content": text, "allowed_mentions": { "parse": [] } });
            match http.post(&webhook).json(&message).send().await.and_then(|r| r.error_for_status()) {
                Ok(_) => {
                    tracing::info!(alert = %text, "runtime alert posted");
                    watch.told(&change);
                }
                // reqwest's error names the URL: only its kind and status are logged.
                Err(e) => tracing::warn!(
                    status = e.status().map(|s| s.as_u16()),
                    timeout = e.is_timeout(),
                    connect = e.is_connect(),
                    "runtime alert not posted; tried again at the next check"
                ),
            }
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_message_per_change_of_state_after_the_threshold() {
        let after = Duration::from_secs(60);
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        let mut w = Watch::default();
        assert_eq!(w.observe(true, "", at(0), after), None);
        assert_eq!(w.observe(false, "db down", at(1), after), None);
        assert_eq!(w.observe(false, "db down", at(30), after), None, "not yet past the threshold");
        let alert = w.observe(false, "db down", at(61), after).unwrap();
        assert_eq!(alert, Change::Unhealthy { for_secs: 60, reason: "db down".into() });
        // Not posted (the webhook was unreachable): asked again at the next check.
        assert!(w.observe(false, "db down", at(65), after).is_some());
        w.told(&alert);
        assert_eq!(w.observe(false, "db down", at(70), after), None, "told once");
        let back = w.observe(true, "", at(80), after).unwrap();
        assert_eq!(back, Change::Recovered { after_secs: 79 });
        w.told(&back);
        assert_eq!(w.observe(true, "", at(85), after), None);
        // A short spell, under the threshold: no message either way.
        assert_eq!(w.observe(false, "blip", at(90), after), None);
        assert_eq!(w.observe(true, "", at(95), after), None);
        assert_eq!(w, Watch::default());
    }

    #[test]
    fn the_reason_is_what_health_says() {
        let body = serde_json::json!({ "problems": ["unreachable: connection refused", "gateway down"] });
        assert_eq!(reason(&body), "unreachable: connection refused; gateway down");
        let text = Change::Unhealthy { for_secs: 61, reason: reason(&body) }.text(&"a".repeat(40), "leader");
        assert_eq!(text, "lattice-bot aaaaaaaaaaaa (leader): UNHEALTHY for 61 s: unreachable: connection refused; gateway down");
    }
}
