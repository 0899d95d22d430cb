//! `bench image`: the image a release ships, and what a one-line change costs to rebuild.
//!
//! Works in a temporary `git clone` of HEAD, so the committed tree is built (as `cargo xtask image
//! build` requires) whatever the work tree holds, and the one-line change is a real commit there.
//! The build is this very xtask (`<current exe> image build`), tagged `lattice-bench/lattice-bot`
//! so no one else's `latest` moves; the tags are removed at the end (the layer cache stays).

use std::{
    io::{BufRead, BufReader},
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context, Result};
use xshell::Shell;

use super::{clone_head, mib, Report};
use crate::{
    plan::{Cmd, Plan},
    project::Project,
};

/// The repository the bench tags its builds with.
const BENCH_IMAGE: &str = "lattice-bench/lattice-bot";
/// A cold build (no layer cache) of the release profile on two cores takes minutes.
const BUILD_DEADLINE: Duration = Duration::from_secs(40 * 60);

pub fn run(plan: &Plan, project: &Project, report: &mut Report) -> Result<()> {
    let (_temp, repo) = clone_head(plan, project)?;
    let clone_sh = Shell::new()?;
    clone_sh.change_dir(&repo);
    let clone_plan = Plan::new(&clone_sh, plan.is_dry_run());
    let exe = std::env::current_exe().context("finding the running xtask")?;
    // A dry run removes nothing either.
    // Printed, not run, in a dry run: a dry run removes nothing either.
    let mut tags = Tags { plan, names: vec![format!("{BENCH_IMAGE}:latest")] };

    // 1. The committed tree, as `cargo xtask image build` builds it.
    plan.note(&format!(
        "in {}: LATTICE_IMAGE={BENCH_IMAGE} cargo xtask image build (cold cache: many minutes)",
        repo.display()
    ));
    let sha = clone_plan.read(Cmd::of("git rev-parse HEAD"))?;
    tags.names.push(format!("{BENCH_IMAGE}:{sha}"));
    let Some(first) = build(&clone_plan, &exe)? else {
        plan.note("then: docker image inspect and docker history of <image>:<sha>, a one-line commit to bot/src/main.rs in the clone, the same build again");
        return Ok(());
    };
    let (cached, ran, steps) = cached_steps(&first.output);
    report.seconds(
        "image",
        "build",
        first.elapsed,
        &format!(
            "cargo xtask image build of HEAD {} (legacy builder) on this machine's layer cache: {ran} of {steps} steps ran, {cached} cached",
            &sha[..sha.len().min(12)]
        ),
    );
    let reference = format!("{BENCH_IMAGE}:{sha}");
    let (total, binary) = sizes(plan, &reference)?;
    report.number("image", "size_total", mib(total), "MiB", "docker image inspect .Size of <image>:<sha>");
    report.number(
        "image",
        "layer_per_release",
        mib(binary),
        "MiB",
        "docker history: the COPY of /usr/local/bin/lattice-bot, the one layer a release changes",
    );

    // 2. A one-line change to bot/src, committed, built again.
    let main_rs = repo.join("bot/src/main.rs");
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    // Unique per run, so an earlier bench run's layers can never satisfy this build.
    let mut text =
        std::fs::read_to_string(&main_rs).with_context(|| format!("reading {}", main_rs.display()))?;
    text.push_str(&format!("// bench: one-line change {nanos}\n"));
    std::fs::write(&main_rs, text)?;
    let message = "bench: one-line change";
    clone_plan.run(
        Cmd::of(
            "git -c user.name=lattice-bench -c user.email=bench@localhost commit --quiet --all --message",
        )
        .arg(message),
    )?;
    let changed_sha = clone_plan.read(Cmd::of("git rev-parse HEAD"))?;
    tags.names.push(format!("{BENCH_IMAGE}:{changed_sha}"));
    let Some(second) = build(&clone_plan, &exe)? else { return Ok(()) };
    report.seconds(
        "image",
        "rebuild_one_line",
        second.elapsed,
        "one-line commit to bot/src/main.rs in the clone, cargo xtask image build again, wall clock",
    );
    let reused = match dependency_layer_cached(&second.output) {
        Some(true) => "yes",
        Some(false) => "NO",
        None => "unknown (step not found in the build output)",
    };
    report.text(
        "image",
        "rebuild_dependency_layer_reused",
        reused,
        "the Dockerfile step that builds the dependencies answered `Using cache` in the rebuild",
    );
    let (_, changed_binary) = sizes(plan, &format!("{BENCH_IMAGE}:{changed_sha}"))?;
    report.number(
        "image",
        "rebuild_layer_to_push",
        mib(changed_binary),
        "MiB",
        "docker history of the rebuilt image: the new bot layer, all a server pulls for that release",
    );
    drop(tags);
    Ok(())
}

/// Removes the bench's tags when dropped (also on failure); the layers stay as build cache.
struct Tags<'p, 'a> {
    plan: &'p Plan<'a>,
    names: Vec<String>,
}

impl Drop for Tags<'_, '_> {
    fn drop(&mut self) {
        self.plan.cleanup(Cmd::of("docker rmi").args(&self.names));
    }
}

struct Build {
    elapsed: Duration,
    output: String,
}

/// Runs `<exe> image build` in the clone, echoing the build's steps as progress and keeping its
/// output. `None` in a dry run.
fn build(plan: &Plan, exe: &Path) -> Result<Option<Build>> {
    let start = Instant::now();
    let Some(mut child) =
        plan.spawn(Cmd::new(exe).args(["image", "build"]).env("LATTICE_IMAGE", BENCH_IMAGE))?
    else {
        return Ok(None);
    };
    drop(child.stdin.take());
    let stdout = child.stdout.take().context("build output")?;
    let output = Arc::new(Mutex::new(String::new()));
    let reader = {
        let output = output.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.starts_with("Step ")
                    || line.contains(" ---> Using cache")
                    || line.starts_with("Successfully")
                {
                    let shown: String = line.chars().take(110).collect();
                    eprintln!("  image build: {shown}");
                }
                let mut out = output.lock().expect("build output");
                out.push_str(&line);
                out.push('\n');
            }
        })
    };
    let deadline = start + BUILD_DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the image build took longer than {} s; stopped it", BUILD_DEADLINE.as_secs());
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let elapsed = start.elapsed();
    let _ = reader.join();
    let output = std::mem::take(&mut *output.lock().expect("build output"));
    if !status.success() {
        let tail: Vec<&str> = output.lines().rev().take(20).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!("the image build failed ({status}):\n{}", tail.join("\n"));
    }
    Ok(Some(Build { elapsed, output }))
}

/// `(total, bot binary layer)` in bytes.
fn sizes(plan: &Plan, reference: &str) -> Result<(u64, u64)> {
    let size = "{{.Size}}";
    let total = plan.read(Cmd::of("docker image inspect --format").arg(size).arg(reference))?;
    let columns = "{{.Size}}\t{{.CreatedBy}}";
    let history =
        plan.read(Cmd::of("docker history --no-trunc --human=false --format").arg(columns).arg(reference))?;
    if plan.is_dry_run() {
        return Ok((0, 0));
    }
    let total = total.trim().parse().with_context(|| format!("image size {total:?} is not a number"))?;
    let binary =
        binary_layer(&history).context("no layer copying /usr/local/bin/lattice-bot in docker history")?;
    Ok((total, binary))
}

/// The size of the layer that copies the bot binary, from `docker history --human=false --format
/// '{{.Size}}\t{{.CreatedBy}}'`.
fn binary_layer(history: &str) -> Option<u64> {
    history.lines().find_map(|line| {
        let (size, created_by) = line.split_once('\t')?;
        (created_by.contains("COPY") && created_by.contains("/usr/local/bin/lattice-bot"))
            .then(|| size.trim().parse().ok())
            .flatten()
    })
}

/// `(steps answered from cache, steps that ran a container, steps)` of a legacy-builder build output.
fn cached_steps(output: &str) -> (usize, usize, usize) {
    let mut steps = 0;
    let mut cached = 0;
    let mut ran = 0;
    for line in output.lines() {
        if line.starts_with("Step ") {
            steps += 1;
        } else if line.trim() == "---> Using cache" {
            cached += 1;
        } else if line.trim().starts_with("---> Running in ") {
            ran += 1;
        }
    }
    (cached, ran, steps)
}

/// Whether the Dockerfile step that builds the dependencies (`cargo build` then `cargo clean -p`)
/// came from the cache: `None` when that step is not in the output.
fn dependency_layer_cached(output: &str) -> Option<bool> {
    let mut lines = output.lines();
    while let Some(line) = lines.next() {
        if line.starts_with("Step ") && line.contains("cargo build") && line.contains("cargo clean") {
            for next in lines.by_ref() {
                let next = next.trim();
                if next.starts_with("--->") {
                    return Some(next == "---> Using cache");
                }
            }
            return None;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const REBUILD: &str = "Step 1/24 : ARG RUST_IMAGE=rust:1.95-bookworm
Step 6/24 : COPY Cargo.toml Cargo.lock ./
 ---> Using cache
 ---> 1a2b3c
Step 9/24 : RUN mkdir -p bot/src xtask/src     && echo 'fn main() {}' > bot/src/main.rs     && cargo build --profile \"$CARGO_PROFILE\" --locked -p lattice-bot     && cargo clean --profile \"$CARGO_PROFILE\" -p lattice-bot
 ---> Using cache
 ---> 4d5e6f
Step 10/24 : COPY bot/src bot/src
 ---> 7a8b9c
Step 12/24 : RUN cargo build --profile \"$CARGO_PROFILE\" --locked -p lattice-bot
 ---> Running in 0f0f0f
   Compiling lattice-bot v0.1.0 (/src/bot)
";

    #[test]
    fn the_dependency_step_is_found_and_its_cache_use_read() {
        assert_eq!(dependency_layer_cached(REBUILD), Some(true));
        let cold = REBUILD.replacen(" ---> Using cache\n ---> 4d5e6f", " ---> Running in 99\n", 1);
        assert_eq!(dependency_layer_cached(&cold), Some(false));
        assert_eq!(dependency_layer_cached("Step 1/1 : FROM x\n"), None);
        assert_eq!(cached_steps(REBUILD), (2, 1, 5));
    }

    #[test]
    fn the_binary_layer_comes_from_docker_history() {
        let history = "0\t/bin/sh -c #(nop)  ENV LATTICE_GIT_SHA=abc\n\
                       0\t/bin/sh -c #(nop)  USER 10001:10001\n\
                       14937744\t/bin/sh -c #(nop) COPY file:4f3b9e in /usr/local/bin/lattice-bot \n\
                       116800000\t/bin/sh -c #(nop) ADD file:aa in / \n";
        assert_eq!(binary_layer(history), Some(14_937_744));
        assert_eq!(binary_layer("0\tCMD [\"run\"]\n"), None);
    }
}
