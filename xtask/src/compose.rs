//! The compose overlays: `compose/base.yml` plus `dev.yml` (build from source) or `prod.yml`
//! (pre-built image). Every `docker compose` command of the xtask is built here.

use crate::{plan::Cmd, project::Project, settings::Settings};

pub const BASE: &str = "compose/base.yml";
pub const DEV: &str = "compose/dev.yml";
pub const PROD: &str = "compose/prod.yml";
/// Dev only: the local Discord stand-in and the placeholder LLM, for running without secrets.
pub const STANDIN: &str = "compose/standin.yml";

/// One combination of overlays, under one compose project name.
#[derive(Debug, Clone)]
pub struct Stack {
    pub project: String,
    pub files: Vec<String>,
    pub env_files: Vec<String>,
}

impl Stack {
    /// The local stack built from the working tree; without a real DISCORD_TOKEN, against the local
    /// Discord stand-in. `.env` at the root is used when present (compose itself would look for it
    /// next to the first file, in compose/).
    pub fn dev(project: &Project) -> Stack {
        let mut files = vec![BASE.to_string(), DEV.to_string()];
        if !project.has_real_discord_token() {
            files.push(STANDIN.to_string());
        }
        let env_files = if project.root.join(".env").exists() { vec![".env".to_string()] } else { vec![] };
        Stack { project: format!("{}-dev", project.settings.compose_project), files, env_files }
    }

    /// The production combination, with files found under `dir` (a release directory on the server,
    /// or the project root for local validation).
    pub fn prod(settings: &Settings, dir: &str) -> Stack {
        let at = |file: &str| {
            if dir.is_empty() {
                file.to_string()
            } else {
                format!("{dir}/{}", file.trim_start_matches("compose/"))
            }
        };
        Stack {
            project: settings.compose_project.clone(),
            files: vec![at(BASE), at(PROD)],
            env_files: vec![],
        }
    }

    /// The arguments after `docker compose` that select this stack.
    pub fn args(&self) -> Vec<String> {
        let mut args = vec!["-p".to_string(), self.project.clone()];
        for env_file in &self.env_files {
            args.extend(["--env-file".to_string(), env_file.clone()]);
        }
        for file in &self.files {
            args.extend(["-f".to_string(), file.clone()]);
        }
        args
    }

    /// `docker compose -p … -f … -f …`, ready for a subcommand.
    pub fn cmd(&self) -> Cmd {
        Cmd::of("docker compose").args(self.args())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::Env;

    fn project(env: Env) -> Project {
        let root = std::env::temp_dir().join("lattice-no-such-dir");
        Project { root, env, settings: Settings::default() }
    }

    #[test]
    fn dev_stack_without_a_token_runs_the_standin() {
        let stack = Stack::dev(&project(Env::from_pairs([("DISCORD_TOKEN", "")])));
        assert_eq!(
            stack.cmd().arg("up").to_string(),
            "docker compose -p lattice-dev -f compose/base.yml -f compose/dev.yml -f compose/standin.yml up"
        );
    }

    #[test]
    fn dev_stack_with_a_real_token_talks_to_discord() {
        let stack = Stack::dev(&project(Env::from_pairs([("DISCORD_TOKEN", "MTA.real.token")])));
        assert_eq!(stack.files, vec![BASE.to_string(), DEV.to_string()]);
    }

    #[test]
    fn prod_stack_uses_the_release_directorys_own_files() {
        let mut stack = Stack::prod(&Settings::default(), "releases/abc");
        stack.env_files = vec![".env".into()];
        assert_eq!(
            stack.args().join(" "),
            "-p lattice --env-file .env -f releases/abc/base.yml -f releases/abc/prod.yml"
        );
    }
}
