//! NAME
//!     cargo xtask secrets — write the app's `.env` on the server.
//!
//! SYNOPSIS
//!     cargo xtask secrets [--overwrite] [--dry-run]
//!
//! DESCRIPTION
//!     Takes the app variables (DISCORD_*, OPENROUTER_*, POSTGRES_*, and the optional ones that are
//!     set) from the local environment or CI secrets and sends them over ssh stdin — never argv —
//!     into `<deploy_path>/.env`, mode 0600, replaced atomically. Names already set on the server
//!     keep their values unless `--overwrite`. A fresh server needs only Docker and an ssh user.

use anyhow::{bail, Result};

use crate::{
    env::{Env, APP_VARS, OPTIONAL_APP_VARS},
    flags,
    plan::Plan,
    project::Project,
    remote::Server,
};

impl flags::Secrets {
    pub fn run(self, plan: &Plan, project: &Project) -> Result<()> {
        let mut problems = Vec::new();
        let missing = project.env.missing(APP_VARS);
        if !missing.is_empty() {
            problems.push(format!(
                "missing environment variables: {} (set them in the environment, as CI secrets, or in .env)",
                missing.join(", ")
            ));
        }
        let content = match dotenv(&project.env) {
            Ok(content) => content,
            Err(e) => {
                problems.push(format!("{e:#}"));
                String::new()
            }
        };
        let server = Server::open(plan, project, problems)?;
        server.write_env(&content, self.overwrite)?;
        let names: Vec<&str> = APP_VARS
            .iter()
            .chain(OPTIONAL_APP_VARS)
            .copied()
            .filter(|n| project.env.get(n).is_some())
            .collect();
        if !plan.is_dry_run() {
            let kept = if self.overwrite {
                "replaced"
            } else {
                "added where unset (existing values kept; --overwrite replaces)"
            };
            println!("server .env: {} {kept}", names.join(", "));
        }
        Ok(())
    }
}

/// The `.env` text for the server: `NAME=value` lines in a form both Compose and a shell read
/// the same way.
fn dotenv(env: &Env) -> Result<String> {
    let mut out = String::new();
    for name in APP_VARS.iter().chain(OPTIONAL_APP_VARS) {
        let Some(value) = env.get(name) else { continue };
        if value.contains(['\n', '\r']) {
            bail!("{name} contains a line break, which a .env file cannot hold (the value is not shown)");
        }
        let plain = value.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:@,+%=".contains(c));
        if plain {
            out.push_str(&format!("{name}={value}\n"));
        } else if !value.contains('\'') {
            out.push_str(&format!("{name}='{value}'\n"));
        } else {
            bail!("{name} contains a single quote and other special characters; .env cannot hold it unambiguously");
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::parse_dotenv;

    #[test]
    fn values_round_trip_through_the_dotenv_reader() {
        let env = Env::from_pairs([
            ("DISCORD_TOKEN", "MTA.abc-def_ghi"),
            ("POSTGRES_PASSWORD", "p@ss word#1$x"),
            ("LLM_PROVIDER", "placeholder"),
            ("UNRELATED", "x"),
        ]);
        let text = dotenv(&env).unwrap();
        let vars = parse_dotenv(&text).unwrap();
        assert_eq!(vars["DISCORD_TOKEN"], "MTA.abc-def_ghi");
        assert_eq!(vars["POSTGRES_PASSWORD"], "p@ss word#1$x");
        assert_eq!(vars["LLM_PROVIDER"], "placeholder");
        assert!(!vars.contains_key("UNRELATED"));
    }

    #[test]
    fn secrets_travel_on_stdin_never_in_the_plan() {
        let sh = xshell::Shell::new().unwrap();
        let plan = Plan::new(&sh, true);
        let mut project = crate::project::tests::fake_project(&[]);
        for name in APP_VARS {
            project.env = project.env.clone().with(name, &format!("value-of-{name}"));
        }
        flags::Secrets { overwrite: false }.run(&plan, &project).unwrap();
        let text = plan.steps().join("\n");
        assert!(text.contains("umask 077") && text.contains("mv .env.new .env"), "{text}");
        assert!(!text.contains("value-of-"), "{text}");
    }
}
