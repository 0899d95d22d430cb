//! The project a task works on: the workspace root (found from the current directory, so that
//! `cargo xtask` works from any subdirectory and in any clone), its settings and its environment.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use crate::{env::Env, settings::Settings};

pub struct Project {
    pub root: PathBuf,
    pub env: Env,
    pub settings: Settings,
}

impl Project {
    pub fn load() -> Result<Project> {
        let root = root()?;
        let env = Env::load(&root)?;
        let settings = Settings::load(&root, &env)?;
        Ok(Project { root, env, settings })
    }
}

impl Project {
    /// A DISCORD_TOKEN that is set and is not the placeholder of .env.example.
    pub fn has_real_discord_token(&self) -> bool {
        self.env.get("DISCORD_TOKEN").is_some_and(|token| !token.starts_with("replace-me"))
    }
}

pub fn root() -> Result<PathBuf> {
    let cwd = std::env::current_dir()?;
    for dir in cwd.ancestors() {
        if is_workspace_root(dir) {
            return Ok(dir.to_path_buf());
        }
    }
    // Run as a binary from elsewhere: fall back to where it was built from.
    let built_from = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap_or(Path::new("."));
    if is_workspace_root(built_from) {
        return Ok(built_from.to_path_buf());
    }
    bail!(
        "not inside the Lattice workspace (no Cargo.toml with [workspace.metadata.lattice] above {})",
        cwd.display()
    )
}

fn is_workspace_root(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("Cargo.toml"))
        .map(|text| text.contains("[workspace.metadata.lattice]"))
        .unwrap_or(false)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A project with every SSH and registry setting, distinctive fake secrets and `extra`.
    pub(crate) fn fake_project(extra: &[(&str, &str)]) -> Project {
        let mut pairs = vec![
            ("SSH_HOST", "203.0.113.7"),
            ("SSH_PORT", "2222"),
            ("SSH_USER", "deploy"),
            ("SSH_PRIVATE_KEY", "-----BEGIN OPENSSH PRIVATE KEY-----\nsecret-key-material\n-----END"),
            ("SSH_KNOWN_HOSTS", "[203.0.113.7]:2222 ssh-ed25519 AAAA"),
            ("REGISTRY_USER", "bot"),
            ("REGISTRY_PASSWORD", "registry-secret-pw"),
            ("DISCORD_TOKEN", "discord-secret-token"),
        ];
        pairs.extend_from_slice(extra);
        let mut env = Env::from_pairs([]);
        for (k, v) in pairs {
            env = env.with(k, v);
        }
        Project { root: root().unwrap(), env, settings: Settings::default() }
    }
}
