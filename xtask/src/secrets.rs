//! NAME
//!     cargo xtask secrets — write the app's `.env` on the server.
//!
//! SYNOPSIS
//!     cargo xtask secrets [--overwrite] [--allow-dev-settings] [--dry-run]
//!
//! DESCRIPTION
//!     Takes the app variables (DISCORD_*, OPENROUTER_*, POSTGRES_*, and the optional ones that are
//!     set) from the local environment or CI secrets and sends them over ssh stdin — never argv —
//!     into `<deploy_path>/.env`, mode 0600, replaced atomically. Names already set on the server
//!     keep their values unless `--overwrite`. A fresh server needs only Docker and an ssh user.
//!     DISCORD_API_URL, DISCORD_GATEWAY_URL and POSTGRES_IMAGE (a stand-in Discord, a local
//!     Postgres image: development and tests) are left out, and named, unless `--allow-dev-settings`.

use anyhow::{bail, Result};

use crate::{
    env::{required_app_vars, Env, APP_VARS, DEV_APP_VARS, OPTIONAL_APP_VARS},
    flags,
    plan::Plan,
    project::Project,
    remote::Server,
};

impl flags::Secrets {
    pub fn run(self, plan: &Plan, project: &Project) -> Result<()> {
        let mut problems = Vec::new();
        let missing = project.env.missing(&required_app_vars(project.env.get("LLM_PROVIDER")));
        if !missing.is_empty() {
            problems.push(format!(
                "missing environment variables: {} (set them in the environment, as CI secrets, or in .env)",
                missing.join(", ")
            ));
        }
        let names = sent(&project.env, self.allow_dev_settings);
        let held_back = project.env.present(DEV_APP_VARS);
        if !self.allow_dev_settings && !held_back.is_empty() {
            plan.note(&format!(
                "not sent to the server: {} (development settings: a stand-in Discord or a local Postgres \
                 image; production uses the defaults. `--allow-dev-settings` sends them)",
                held_back.join(", ")
            ));
        }
        let content = match dotenv(&project.env, &names) {
            Ok(content) => content,
            Err(e) => {
                problems.push(format!("{e:#}"));
                String::new()
            }
        };
        let server = Server::open(plan, project, problems)?;
        server.write_env(&content, self.overwrite)?;
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

/// The names sent to the server: the app's production variables that are set, and the development
/// ones only when allowed.
fn sent(env: &Env, allow_dev_settings: bool) -> Vec<&'static str> {
    let dev: &[&str] = if allow_dev_settings { DEV_APP_VARS } else { &[] };
    env.present(&[APP_VARS, OPTIONAL_APP_VARS, dev].concat())
}

/// The `.env` text for the server: `NAME=value` lines in a form both Compose and a shell read
/// the same way.
fn dotenv(env: &Env, names: &[&str]) -> Result<String> {
    let mut out = String::new();
    for name in names {
        let Some(value) = env.get(name) else { continue };
        if value.contains(['\n', '\r']) {
            bail!("{name} contains a line break, which a .env file cannot hold (the value is not shown)");
        }
        let plain = value.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:@,+%=".contains(c));
        if plain {
            out.push_str(&format!("{name}={value}\n"));
        } else {
            // Double quotes with `\`, `"` and `$` escaped: Compose and a shell both read the value back.
            let quoted: String = value
                .chars()
                .flat_map(|c| if matches!(c, '\\' | '"' | '$') { vec!['\\', c] } else { vec![c] })
                .collect();
            out.push_str(&format!("{name}=\"{quoted}\"\n"));
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
            ("POSTGRES_PASSWORD", "p@ss word#1$x 'q' \"d\" \\n end\\"),
            ("LLM_PROVIDER", "placeholder"),
            ("UNRELATED", "x"),
        ]);
        let text = dotenv(&env, &sent(&env, false)).unwrap();
        let vars = parse_dotenv(&text).unwrap();
        assert_eq!(vars["DISCORD_TOKEN"], "MTA.abc-def_ghi");
        assert_eq!(vars["POSTGRES_PASSWORD"], "p@ss word#1$x 'q' \"d\" \\n end\\");
        assert_eq!(vars["LLM_PROVIDER"], "placeholder");
        assert!(!vars.contains_key("UNRELATED"));
    }

    #[test]
    fn development_settings_reach_the_server_only_when_allowed() {
        let env = Env::from_pairs([
            ("DISCORD_TOKEN", "t"),
            ("RUST_LOG", "info"),
            ("DISCORD_API_URL", "http://172.17.0.1:8080/api/v10"),
            ("DISCORD_GATEWAY_URL", "ws://172.17.0.1:8080/gateway"),
            ("POSTGRES_IMAGE", "lattice-local/postgres:15"),
        ]);
        let production = dotenv(&env, &sent(&env, false)).unwrap();
        assert_eq!(production, "DISCORD_TOKEN=t\nRUST_LOG=info\n");
        let with_dev = parse_dotenv(&dotenv(&env, &sent(&env, true)).unwrap()).unwrap();
        assert_eq!(with_dev["DISCORD_API_URL"], "http://172.17.0.1:8080/api/v10");
        assert_eq!(with_dev["POSTGRES_IMAGE"], "lattice-local/postgres:15");

        let sh = xshell::Shell::new().unwrap();
        let plan = Plan::new(&sh, true);
        let mut project = crate::project::tests::fake_project(&[]);
        project.env = project.env.clone().with("DISCORD_API_URL", "http://172.17.0.1:8080/api/v10");
        flags::Secrets { overwrite: false, allow_dev_settings: false }.run(&plan, &project).unwrap();
        let text = plan.steps().join("\n");
        assert!(text.contains("not sent to the server: DISCORD_API_URL (development settings"), "{text}");
    }

    #[test]
    fn the_placeholder_provider_needs_no_openrouter_key() {
        let sh = xshell::Shell::new().unwrap();
        let mut project = crate::project::tests::fake_project(&[]);
        for name in APP_VARS.iter().filter(|n| **n != "OPENROUTER_API_KEY") {
            project.env = project.env.clone().with(name, "v");
        }
        let missing_key = "missing environment variables: OPENROUTER_API_KEY";
        let plan = Plan::new(&sh, true);
        flags::Secrets { overwrite: false, allow_dev_settings: false }.run(&plan, &project).unwrap();
        assert!(plan.steps().join("\n").contains(missing_key), "{:?}", plan.steps());

        project.env = project.env.clone().with("LLM_PROVIDER", "placeholder");
        let plan = Plan::new(&sh, true);
        flags::Secrets { overwrite: false, allow_dev_settings: false }.run(&plan, &project).unwrap();
        let text = plan.steps().join("\n");
        assert!(!text.contains("preflight would fail"), "{text}");
    }

    #[test]
    fn secrets_travel_on_stdin_never_in_the_plan() {
        let sh = xshell::Shell::new().unwrap();
        let plan = Plan::new(&sh, true);
        let mut project = crate::project::tests::fake_project(&[]);
        for name in APP_VARS {
            project.env = project.env.clone().with(name, &format!("value-of-{name}"));
        }
        flags::Secrets { overwrite: false, allow_dev_settings: false }.run(&plan, &project).unwrap();
        let text = plan.steps().join("\n");
        assert!(text.contains("umask 077") && text.contains("mv .env.new .env"), "{text}");
        assert!(!text.contains("value-of-"), "{text}");
    }
}
