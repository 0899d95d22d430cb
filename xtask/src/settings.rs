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
    /// Directory on the server, relative to the ssh user's home unless absolute. Env: LATTICE_DEPLOY_PATH.
    pub deploy_path: String,
    /// Compose project name, on the server and (with `-dev`) for the dev stack. Env: LATTICE_COMPOSE_PROJECT.
    pub compose_project: String,
    /// Seconds a new release has to become healthy. Env: LATTICE_HEALTH_TIMEOUT_SECS.
    pub health_timeout_secs: u64,
    /// Releases kept on the server.
    pub releases_kept: usize,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            image: "ghcr.io/lattice-bot/lattice-bot".into(),
            deploy_path: "lattice".into(),
            compose_project: "lattice".into(),
            health_timeout_secs: 90,
            releases_kept: 5,
        }
    }
}

impl Settings {
    pub fn load(root: &Path, env: &Env) -> Result<Settings> {
        let path = root.join("Cargo.toml");
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let mut settings = Settings::parse(&text).with_context(|| format!("in {}", path.display()))?;
        if let Some(image) = env.get("LATTICE_IMAGE") {
            settings.image = image.to_string();
        }
        if let Some(deploy_path) = env.get("LATTICE_DEPLOY_PATH") {
            settings.deploy_path = deploy_path.to_string();
        }
        if let Some(secs) = env.get("LATTICE_HEALTH_TIMEOUT_SECS") {
            settings.health_timeout_secs = secs.parse().map_err(|_| {
                anyhow::anyhow!("LATTICE_HEALTH_TIMEOUT_SECS={secs:?} is not a number of seconds")
            })?;
        }
        if let Some(compose_project) = env.get("LATTICE_COMPOSE_PROJECT") {
            settings.compose_project = compose_project.to_string();
        }
        if let Some(project) = env.get("LATTICE_COMPOSE_PROJECT") {
            settings.compose_project = project.to_string();
        }
        settings.validate()?;
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

    fn validate(&self) -> Result<()> {
        let bad = |key: &str, why: &str| anyhow::anyhow!("[workspace.metadata.lattice] {key}: {why}");
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
        if self.health_timeout_secs == 0 {
            return Err(bad("health_timeout_secs", "must be at least 1"));
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
        let s = Settings { image: "ghcr.io/o/bot:latest".into(), ..Settings::default() };
        assert!(s.validate().unwrap_err().to_string().contains("tag"));
        let s = Settings { releases_kept: 1, ..Settings::default() };
        assert!(s.validate().unwrap_err().to_string().contains("releases_kept"));
    }
}
