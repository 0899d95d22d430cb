//! Every setting the bot reads reaches it: compose/base.yml passes it into the container, so a new
//! setting cannot be forgotten there. (That .env.example names it is checked with every other
//! variable the code reads, by the xtask's `env_example_names_exactly_what_the_code_reads`.)

use lattice_bot::config::SETTINGS;

/// Settings compose does not pass through from `.env`, and why.
const SET_ELSEWHERE: &[(&str, &str)] = &[
    ("DATABASE_URL", "compose gives the POSTGRES_* parts instead"),
    ("POSTGRES_PORT", "Postgres listens on its default port inside the compose network"),
    ("HTTP_PORT", "the image's health check probes the default port"),
    ("LATTICE_GIT_SHA", "the image carries it (Dockerfile ENV)"),
];

fn project_file(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The variable names under `services.bot.environment` of compose/base.yml.
fn base_bot_environment() -> Vec<String> {
    let text = project_file("compose/base.yml");
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
            in_env = trimmed == "environment:";
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
    let passed = base_bot_environment();
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
