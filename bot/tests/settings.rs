//! Every setting the bot reads reaches it: compose/base.yml passes it into the container, so a new
//! setting cannot be forgotten there. (That .env.example names it is checked with every other
//! variable the code reads, by the xtask's `env_example_names_exactly_what_the_code_reads`.)

use lattice_bot::config::{FILE_SUFFIX, SECRET_VARS, SETTINGS};

/// Settings compose does not pass through from `.env`, and why.
const SET_ELSEWHERE: &[(&str, &str)] = &[
    ("DATABASE_URL", "compose gives the POSTGRES_* parts instead"),
    ("POSTGRES_PORT", "Postgres listens on its default port inside the compose network"),
    ("HTTP_PORT", "the image's health check probes the default port"),
    ("LATTICE_GIT_SHA", "the image carries it (Dockerfile ENV)"),
    ("SHARD_SLOT", "compose/swarm.yml sets it from Swarm's task slot"),
];

fn project_file(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The variable names under `services.bot.environment` of a compose file.
fn bot_environment(file: &str) -> Vec<String> {
    let text = project_file(file);
    let mut names = Vec::new();
    let mut in_bot = false;
    let mut in_env = false;
    for line in text.lines() {
        let indent = line.len() - line.trim_start().len();
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if indent == 2 {
            in_bot = trimmed == "bot:";
            in_env = false;
        } else if in_bot && indent == 4 {
            in_env = trimmed == "environment:" || trimmed == "environment: !override";
        } else if in_bot && in_env {
            if let Some(item) = trimmed.strip_prefix("- ") {
                names.push(item.split('=').next().unwrap().trim().to_owned());
            }
        }
    }
    names
}

#[test]
fn compose_passes_every_bot_setting() {
    let passed = bot_environment("compose/base.yml");
    assert!(passed.contains(&"DISCORD_TOKEN".to_owned()), "parsed nothing sensible: {passed:?}");
    let missing: Vec<&str> = SETTINGS
        .iter()
        .copied()
        .filter(|s| !SET_ELSEWHERE.iter().any(|(n, _)| n == s))
        .filter(|s| !passed.iter().any(|p| p == s))
        .collect();
    assert!(
        missing.is_empty(),
        "compose/base.yml does not pass {missing:?} to the bot: add them to its environment"
    );
}

#[test]
fn the_swarm_overlay_passes_every_setting_and_each_secret_as_a_file() {
    let passed = bot_environment("compose/swarm.yml");
    let missing: Vec<String> = SETTINGS
        .iter()
        .copied()
        .filter(|s| !SET_ELSEWHERE.iter().any(|(n, _)| n == s) || *s == "SHARD_SLOT")
        .filter(|s| *s != "SHARD_ID" && *s != "DATABASE_URL")
        .map(|s| if SECRET_VARS.contains(&s) { format!("{s}{FILE_SUFFIX}") } else { s.to_owned() })
        .filter(|s| !passed.contains(s))
        .collect();
    assert!(missing.is_empty(), "compose/swarm.yml does not pass {missing:?} to the bot: add them");
    let leaked: Vec<&String> = passed.iter().filter(|p| SECRET_VARS.contains(&p.as_str())).collect();
    assert!(leaked.is_empty(), "compose/swarm.yml passes secrets {leaked:?} as values: give them as files");
}
