//! The gateway handed over under a message stream: a deployment of its own, with a Discord
//! stand-in of its own (so it alone counts the gateway sessions), and 20 messages a second into
//! the main channel through a deploy, a rollback, a release that never stands by, a SIGKILL of the
//! serving bot and a session Discord refuses to resume.

use std::{
    io::Write,
    net::TcpListener,
    process::Command,
    time::{Duration, Instant},
};

use serde_json::json;

use super::{
    run, show,
    standin::{assert_answered_once, control, Stream},
    Harness,
};

/// One message every 50 ms.
const PACE: Duration = Duration::from_millis(50);

/// The Discord stand-in in a container of its own, on the docker0 address the sandbox's listens on.
struct OwnStandin {
    name: String,
    addr: String,
}

impl OwnStandin {
    /// Runs the sandbox's stand-in `image`.
    fn start(beside: &str, image: &str) -> OwnStandin {
        // `http://<docker0 address>:<port>`, as `sandbox up` printed it.
        let ip = beside.trim_start_matches("http://").rsplit_once(':').unwrap().0.to_string();
        let port = TcpListener::bind((ip.as_str(), 0)).unwrap().local_addr().unwrap().port();
        let standin = OwnStandin {
            name: format!("lattice-e2e-stream-standin-{}", std::process::id()),
            addr: format!("{ip}:{port}"),
        };
        run(Command::new("docker")
            .args(["run", "--detach", "--network", "host", "--name", &standin.name, image])
            .args(["discord-standin", "--listen", &standin.addr]));
        let start = Instant::now();
        while control(&standin.addr, "GET", "/control/state", None).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the stand-in did not come up on {}",
                standin.addr
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        standin
    }

    fn state(&self) -> Sessions {
        let state = control(&self.addr, "GET", "/control/state", None).unwrap();
        let count = |key: &str| state[key].as_u64().unwrap();
        Sessions {
            identifies: count("identifies"),
            resumes: count("resumes"),
            live: count("live"),
            max_live: count("max_live"),
        }
    }

    /// Waits until a gateway session newer than `before`'s is live; returns the state then.
    fn serving_after(&self, before: &Sessions, what: &str) -> Sessions {
        let start = Instant::now();
        loop {
            let now = self.state();
            if now.identifies + now.resumes > before.identifies + before.resumes && now.live == 1 {
                return now;
            }
            assert!(start.elapsed() < Duration::from_secs(90), "no bot serves again after {what}: {now:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for OwnStandin {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rm", "--force", &self.name]).output();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sessions {
    identifies: u64,
    resumes: u64,
    live: u64,
    max_live: u64,
}

/// How a step hands the gateway over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Handover {
    /// A new bot leads and RESUMEs the stored session.
    Resume,
    /// The serving bot keeps its session: nothing hands over.
    None,
    /// The session cannot be resumed: a new one is IDENTIFYed (and the gap backfilled).
    Identify,
}

/// Zero downtime for real (issue #9): with 20 messages a second going into the main channel all
/// along, through a deploy A→B, a rollback to A, a deploy of a release that never stands by, a
/// SIGKILL of the serving bot (as an OOM kill does: Docker restarts it) and a session Discord
/// refuses to resume: every message is answered exactly once, there are never two live gateway
/// sessions, and every handover RESUMEs the stored session but the forced one, which IDENTIFYs
/// and backfills. A deployment of its own beside the other scenarios' (its own deploy directory,
/// compose project and stand-in); its releases are A's image retagged.
pub fn e2e_a_message_stream_is_answered_exactly_once_through_deploys_rollbacks_and_crashes(h: &mut Harness) {
    let standin = OwnStandin::start(&h.env_var("DISCORD_API_URL"), &h.standin);
    let mut env: Vec<(String, String)> = h
        .env
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "DISCORD_API_URL" | "DISCORD_GATEWAY_URL"))
        .cloned()
        .collect();
    env.extend([
        ("DISCORD_API_URL".to_string(), format!("http://{}", standin.addr)),
        ("DISCORD_GATEWAY_URL".to_string(), format!("ws://{}", standin.addr)),
        // One author sends them all: the per-user limit is not what is tried here.
        ("USER_RATE_LIMIT".to_string(), "100000".to_string()),
    ]);
    let id = std::process::id();
    let name = format!("lattice-e2e-stream-{id}");
    let mut s = Harness::new(h.dir.join("stream"), env, &name, &name);
    let sha_a = h.fact("a");
    s.xtask_ok(&["secrets", "--allow-dev-settings"]);
    s.xtask_ok(&["deploy", "--sha", &sha_a]);
    let first =
        standin.serving_after(&Sessions { identifies: 0, resumes: 0, live: 0, max_live: 0 }, "deploy A");

    let image_a = format!("{}:{sha_a}", s.image);
    let sha_b = s.retagged_release(&image_a, "S: streamed through");
    let sha_bad = never_standing_by(&s, &image_a);
    let timeout = [("LATTICE_HEALTH_TIMEOUT_SECS", "30")];

    let stream = Stream::start(
        &standin.addr,
        PACE,
        |i| json!({ "content": format!("stream message {i}"), "author": "streamer" }),
    );
    std::thread::sleep(Duration::from_secs(2));
    let mut before = first;
    let mut step = |what: &str, expect: Handover, act: &mut dyn FnMut(&mut Harness)| {
        act(&mut s);
        let after = match expect {
            Handover::None => standin.state(),
            _ => standin.serving_after(&before, what),
        };
        let (identified, resumed) = (after.identifies - before.identifies, after.resumes - before.resumes);
        let seen = match (identified, resumed) {
            (0, 0) => Handover::None,
            (0, _) => Handover::Resume,
            _ => Handover::Identify,
        };
        assert_eq!(seen, expect, "{what}: {identified} IDENTIFY and {resumed} RESUME");
        assert_eq!(after.live, 1, "{what}: {} live gateway sessions", after.live);
        before = after;
        // The stream goes on between the steps too.
        std::thread::sleep(Duration::from_secs(1));
    };
    step("deploy A→B", Handover::Resume, &mut |s| {
        s.xtask_ok(&["deploy", "--sha", &sha_b]);
    });
    step("rollback to A", Handover::Resume, &mut |s| {
        s.xtask_ok(&["rollback", "--sha", &sha_a]);
    });
    step("a release that never stands by", Handover::None, &mut |s| {
        let out = s.xtask_with(&["deploy", "--sha", &sha_bad], &timeout);
        assert!(!out.status.success(), "a release that never stands by was deployed:\n{}", show(&out));
        s.assert_serving(&sha_a);
    });
    step("SIGKILL of the serving bot", Handover::Resume, &mut |s| {
        let bot = s.container("bot");
        let pid = s.inspect(&bot, "{{.State.Pid}}");
        run(Command::new("kill").args(["-KILL", &pid]));
    });
    step("a session Discord will not resume", Handover::Identify, &mut |_| {
        control(&standin.addr, "POST", "/control/invalidate", Some(&json!({}))).unwrap();
    });
    std::thread::sleep(Duration::from_secs(2));
    let sent = stream.stop();

    assert_answered_once(&standin.addr, &sent);
    let end = standin.state();
    assert_eq!(end.max_live, 1, "two gateway sessions were live at once: {end:?}");
    println!("    {} messages, each answered once; sessions: {end:?}", sent.len());
}

/// A commit whose image is `image` with a setting the bot refuses (HTTP_PORT=0): it never
/// becomes a standby. Built locally from `image` (nothing pulled), pushed.
fn never_standing_by(s: &Harness, image: &str) -> String {
    std::fs::write(s.clone.join("e2e-release.txt"), "T: never stands by\n").unwrap();
    s.git(&["add", "e2e-release.txt"]);
    s.git(&["commit", "--quiet", "-m", "T: a release that never stands by"]);
    let sha = s.git(&["rev-parse", "HEAD"]);
    let tag = format!("{}:{sha}", s.image);
    let mut build = Command::new("docker")
        .args(["build", "--quiet", "--tag", &tag, "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    build.stdin.take().unwrap().write_all(format!("FROM {image}\nENV HTTP_PORT=0\n").as_bytes()).unwrap();
    assert!(build.wait().unwrap().success(), "docker build of the release that never stands by failed");
    run(Command::new("docker").args(["push", "--quiet", &tag]));
    run(Command::new("docker").args(["rmi", "--no-prune", &tag]));
    sha
}
