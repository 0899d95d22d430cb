//! Project settings: `[workspace.metadata.lattice]` in the root Cargo.toml, with defaults.
//! A few can be overridden from the environment (CI names its own registry, tests their own paths).

use std::path::Path;

use anyhow::{Context, Result};
use serde::Deserialize;

use crate::env::Env;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Image repository without tag, e.g. `ghcr.io/owner/lattice-bot`. Env: LATTICE_IMAGE.
    pub image: String,
    /// Directory on the server, relative to the ssh user's home unless absolute (`~/x` is `x`). Env: LATTICE_DEPLOY_PATH.
    pub deploy_path: String,
    /// Compose project name, on the server and (with `-dev`) for the dev stack. Env: LATTICE_COMPOSE_PROJECT.
    pub compose_project: String,
    /// Seconds a new release has to become healthy. Env: LATTICE_HEALTH_TIMEOUT_SECS.
    pub health_timeout_secs: u64,
    /// Releases kept on the server.
    pub releases_kept: usize,
    /// Database snapshots kept on the server (`<deploy_path>/snapshots`), newest first: one is
    /// taken before a deploy applies migrations, and by `cargo xtask backup`.
    pub snapshots_kept: usize,
    /// What deploy, rollback, status, logs and migrate drive: `server` (one server, Compose) or
    /// `swarm` (a Docker Swarm stack, one bot replica per shard). Env: LATTICE_TARGET.
    pub target: String,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            image: "ghcr.io/lattice-bot/lattice-bot".into(),
            deploy_path: "lattice".into(),
            compose_project: "lattice".into(),
            health_timeout_secs: 90,
            releases_kept: 5,
            snapshots_kept: 3,
            target: "server".into(),
        }
    }
}

impl Settings {
    /// Deploys go to a Docker Swarm stack (`target = "swarm"`).
    pub fn swarm(&self) -> bool {
        self.target == "swarm"
    }

    pub fn load(root: &Path, env: &Env) -> Result<Settings> {
        let path = root.join("Cargo.toml");
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let mut settings = Settings::parse(&text).with_context(|| format!("in {}", path.display()))?;
        let mut from_env = Vec::new();
        if let Some(image) = env.get("LATTICE_IMAGE") {
            settings.image = image.to_string();
            from_env.push("image");
        }
        if let Some(deploy_path) = env.get("LATTICE_DEPLOY_PATH") {
            settings.deploy_path = deploy_path.to_string();
            from_env.push("deploy_path");
        }
        if let Some(secs) = env.get("LATTICE_HEALTH_TIMEOUT_SECS") {
            settings.health_timeout_secs = secs.parse().map_err(|_| {
                anyhow::anyhow!("LATTICE_HEALTH_TIMEOUT_SECS={secs:?} is not a number of seconds")
            })?;
            from_env.push("health_timeout_secs");
        }
        if let Some(target) = env.get("LATTICE_TARGET") {
            settings.target = target.to_string();
            from_env.push("target");
        }
        if let Some(compose_project) = env.get("LATTICE_COMPOSE_PROJECT") {
            settings.compose_project = compose_project.to_string();
            from_env.push("compose_project");
        }
        settings.validate(&from_env)?;
        Ok(settings)
    }

    fn parse(cargo_toml: &str) -> Result<Settings> {
        // Deserialized from the text itself so that an error points at the offending line and key.
        #[derive(Deserialize)]
        struct Manifest {
            workspace: Option<Workspace>,
        }
        #[derive(Deserialize)]
        struct Workspace {
            metadata: Option<Metadata>,
        }
        #[derive(Deserialize)]
        struct Metadata {
            lattice: Option<Settings>,
        }
        let manifest: Manifest = toml::from_str(cargo_toml)
            .map_err(|err| anyhow::anyhow!("[workspace.metadata.lattice]: {err}"))?;
        Ok(manifest.workspace.and_then(|w| w.metadata).and_then(|m| m.lattice).unwrap_or_default())
    }

    /// Checks every setting; `from_env` names the keys a `LATTICE_*` variable set, so that an error
    /// blames the variable rather than Cargo.toml. `deploy_path = "~/x"` becomes `x` (relative
    /// paths are already relative to the ssh user's home; the remote commands quote `~`).
    fn validate(&mut self, from_env: &[&str]) -> Result<()> {
        let bad = |key: &str, why: &str| {
            if from_env.contains(&key) {
                let var = ["LATTICE_", &key.to_uppercase()].concat();
                anyhow::anyhow!(
                    "{var} (set in the environment, it overrides [workspace.metadata.lattice] {key}): {why}"
                )
            } else {
                anyhow::anyhow!("[workspace.metadata.lattice] {key}: {why}")
            }
        };
        if let Some(rest) = self.deploy_path.strip_prefix("~/") {
            self.deploy_path = rest.trim_start_matches('/').to_string();
            if self.deploy_path.is_empty() {
                return Err(bad(
                    "deploy_path",
                    "must name a directory, not the home directory itself (e.g. ~/lattice)",
                ));
            }
        } else if self.deploy_path.starts_with('~') {
            return Err(bad(
                "deploy_path",
                "`~` is only understood as `~/…` (the ssh user's home): give a path relative to that home \
                 (e.g. lattice) or an absolute one",
            ));
        }
        if self.image.is_empty() || self.image.contains(char::is_whitespace) || self.image.contains('@') {
            return Err(bad(
                "image",
                "must be a repository like ghcr.io/owner/lattice-bot, without tag or digest",
            ));
        }
        if let Some(last) = self.image.rsplit('/').next() {
            if last.contains(':') {
                return Err(bad("image", "must not carry a tag: the tag is always the git sha (and latest)"));
            }
        }
        if self.deploy_path.is_empty() || self.deploy_path.contains(['\'', '"', '$', '`', ' ', '\\']) {
            return Err(bad("deploy_path", "must be a plain path without quotes, spaces or $"));
        }
        let project_ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_';
        if self.compose_project.is_empty() || !self.compose_project.chars().all(project_ok) {
            return Err(bad(
                "compose_project",
                "must be lowercase letters, digits, - and _ (a compose project name)",
            ));
        }
        if !matches!(self.target.as_str(), "server" | "swarm") {
            return Err(bad(
                "target",
                "must be `server` (one server, Compose) or `swarm` (a Docker Swarm stack)",
            ));
        }
        if self.health_timeout_secs == 0 {
            return Err(bad("health_timeout_secs", "must be at least 1"));
        }
        if self.snapshots_kept < 1 {
            return Err(bad(
                "snapshots_kept",
                "must be at least 1: the snapshot taken before a migration is the way back from it",
            ));
        }
        if self.releases_kept < 2 {
            return Err(bad("releases_kept", "must be at least 2, or there is nothing to roll back to"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_section_gives_defaults() {
        assert_eq!(Settings::parse("[workspace]\nmembers = []\n").unwrap(), Settings::default());
    }

    #[test]
    fn keys_override_defaults() {
        let s = Settings::parse("[workspace.metadata.lattice]\nreleases_kept = 3\nimage = \"r.example/x\"\n")
            .unwrap();
        assert_eq!(s.releases_kept, 3);
        assert_eq!(s.image, "r.example/x");
        assert_eq!(s.health_timeout_secs, 90);
    }

    #[test]
    fn an_unknown_key_is_named() {
        let err = Settings::parse("[workspace.metadata.lattice]\nreleases_kep = 3\n").unwrap_err();
        assert!(err.to_string().contains("releases_kep"), "{err}");
    }

    #[test]
    fn a_wrong_type_is_named() {
        let err =
            Settings::parse("[workspace.metadata.lattice]\nhealth_timeout_secs = \"soon\"\n").unwrap_err();
        assert!(
            err.to_string().contains("health_timeout_secs") || err.to_string().contains("integer"),
            "{err}"
        );
    }

    #[test]
    fn the_projects_own_settings_are_valid() {
        let root = crate::project::root().unwrap();
        Settings::load(&root, &Env::from_pairs([])).unwrap();
    }

    #[test]
    fn validation_explains_what_to_fix() {
        let mut s = Settings { image: "ghcr.io/o/bot:latest".into(), ..Settings::default() };
        assert!(s.validate(&[]).unwrap_err().to_string().contains("tag"));
        let mut s = Settings { releases_kept: 1, ..Settings::default() };
        assert!(s.validate(&[]).unwrap_err().to_string().contains("releases_kept"));
    }

    #[test]
    fn a_deploy_path_under_the_home_directory_is_not_a_directory_named_tilde() {
        let mut s = Settings { deploy_path: "~/apps/lattice".into(), ..Settings::default() };
        s.validate(&[]).unwrap();
        assert_eq!(s.deploy_path, "apps/lattice");
        for path in ["~", "~/", "~deploy/lattice"] {
            let mut s = Settings { deploy_path: path.into(), ..Settings::default() };
            let err = s.validate(&[]).unwrap_err().to_string();
            assert!(err.starts_with("[workspace.metadata.lattice] deploy_path: "), "{path}: {err}");
        }
    }

    #[test]
    fn a_bad_setting_from_a_variable_is_blamed_on_the_variable() {
        let root = crate::project::root().unwrap();
        let env = Env::from_pairs([("LATTICE_IMAGE", "ghcr.io/o/bot:v1")]);
        let err = Settings::load(&root, &env).unwrap_err().to_string();
        assert!(
            err.starts_with(
                "LATTICE_IMAGE (set in the environment, it overrides [workspace.metadata.lattice] image): must not \
                 carry a tag"
            ),
            "{err}"
        );
        let env = Env::from_pairs([("LATTICE_DEPLOY_PATH", "~/x")]);
        assert_eq!(Settings::load(&root, &env).unwrap().deploy_path, "x");
        let env = Env::from_pairs([("LATTICE_TARGET", "k8s")]);
        let err = Settings::load(&root, &env).unwrap_err().to_string();
        assert!(err.starts_with("LATTICE_TARGET (set in the environment"), "{err}");
        assert!(Settings::load(&root, &Env::from_pairs([("LATTICE_TARGET", "swarm")])).unwrap().swarm());
        let env = Env::from_pairs([("LATTICE_COMPOSE_PROJECT", "Lattice")]);
        let err = Settings::load(&root, &env).unwrap_err().to_string();
        assert!(err.starts_with("LATTICE_COMPOSE_PROJECT (set in the environment"), "{err}");
    }
}
