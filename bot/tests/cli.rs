//! The binary's surface: help, configuration errors, schema, health probe, and secrets kept out of output.

mod common;

use std::process::Command;

use common::BIN;

fn run(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let out = Command::new(BIN).args(args).env_clear().envs(env.iter().copied()).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn help_lists_every_subcommand() {
    let (ok, text) = run(&["--help"], &[]);
    assert!(ok, "{text}");
    for sub in ["run", "migrate", "healthcheck", "doctor", "schema", "discord-standin", "chat"] {
        assert!(text.lines().any(|l| l.trim_start().starts_with(sub)), "`{sub}` missing from:\n{text}");
    }
}

#[test]
fn run_with_an_empty_environment_lists_every_missing_variable() {
    let (ok, text) = run(&["run"], &[]);
    assert!(!ok, "must exit non-zero:\n{text}");
    for var in [
        "DISCORD_TOKEN",
        "DISCORD_GUILD_ID",
        "DISCORD_MAIN_CHANNEL_ID",
        "DISCORD_DREAM_CHANNEL_ID",
        "OPENROUTER_API_KEY",
        "DATABASE_URL",
        "POSTGRES_USER",
        "POSTGRES_PASSWORD",
        "POSTGRES_DB",
    ] {
        assert!(text.contains(var), "{var} not listed:\n{text}");
    }
}

#[test]
fn secret_values_never_appear_in_configuration_errors() {
    let secrets = [
        ("OPENROUTER_API_KEY", "sk-or-cli-secret-1"),
        ("DISCORD_TOKEN", "tok-cli-secret-2"),
        ("POSTGRES_PASSWORD", "pw-cli-secret-3"),
    ];
    let mut env = secrets.to_vec();
    env.push(("DISCORD_GUILD_ID", "not-a-number"));
    let (ok, text) = run(&["run"], &env);
    assert!(!ok);
    assert!(text.contains("invalid: DISCORD_GUILD_ID"), "{text}");
    for (_, value) in secrets {
        assert!(!text.contains(value), "secret printed:\n{text}");
    }
}

#[test]
fn migrate_needs_only_database_variables_and_says_which() {
    let (ok, text) = run(&["migrate"], &[]);
    assert!(!ok);
    assert!(text.contains("DATABASE_URL (or POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB)"), "{text}");
    assert!(!text.contains("DISCORD_TOKEN") && !text.contains("OPENROUTER_API_KEY"), "{text}");
}

#[test]
fn migrate_reports_the_database_error_without_the_password() {
    let port = common::free_port(); // nothing listens there
    let url = format!("postgres://lattice:pw-unreachable-secret@127.0.0.1:{port}/lattice");
    let (ok, text) = run(&["migrate"], &[("DATABASE_URL", &url)]);
    assert!(!ok);
    assert!(text.contains("migrate failed") && text.contains(&format!("127.0.0.1:{port}")), "{text}");
    assert!(!text.contains("pw-unreachable-secret"), "{text}");
}

#[test]
fn schema_prints_head_and_backward_compatible_versions_as_json() {
    let (ok, text) = run(&["schema"], &[]);
    assert!(ok, "{text}");
    let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
    let files: Vec<_> = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let head = files.iter().map(|f| f[..4].parse::<i64>().unwrap()).max().unwrap();
    assert_eq!(v["head"], head);
    assert_eq!(v["backward_compatible"], serde_json::json!([2, 3, 4, 5]));
}

#[test]
fn healthcheck_fails_when_nothing_answers() {
    let port = common::free_port().to_string();
    let (ok, text) = run(&["healthcheck"], &[("HTTP_PORT", &port)]);
    assert!(!ok);
    assert!(text.contains("is not answering"), "{text}");
}

#[test]
fn healthcheck_wait_gives_up_at_its_timeout_with_the_reason() {
    let port = common::free_port().to_string();
    let (ok, text) = run(&["healthcheck", "--wait", "standby", "--timeout", "1"], &[("HTTP_PORT", &port)]);
    assert!(!ok);
    assert!(text.contains("not Standby after 1 s") && text.contains("is not answering"), "{text}");
    let (ok, text) = run(&["healthcheck", "--wait", "leader"], &[("HTTP_PORT", &port)]);
    assert!(!ok && text.contains("--timeout"), "a wait needs a bound: {text}");
}
