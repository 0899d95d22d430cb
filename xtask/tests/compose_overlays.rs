//! The compose overlays, merged by the real `docker compose config`: what a user would check before
//! trusting them with a production box.

use std::process::{Command, Output};

use serde_json::Value;

fn root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn compose_config(files: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new("docker");
    cmd.current_dir(root()).args(["compose", "-p", "overlay-test"]);
    for file in files {
        cmd.args(["-f", file]);
    }
    cmd.args(["config", "--format", "json"]);
    // Only what the test gives: no stray BOT_IMAGE or ports from the caller's environment.
    for name in ["BOT_IMAGE", "POSTGRES_PORT", "BOT_HTTP_PORT", "DISCORD_TOKEN", "COMPOSE_PROFILES"] {
        cmd.env_remove(name);
    }
    cmd.envs(env.iter().copied());
    cmd.output().expect("docker compose must be installed (Compose v2: see `cargo xtask doctor`)")
}

fn merged(files: &[&str], env: &[(&str, &str)]) -> Value {
    let out = compose_config(files, env);
    assert!(out.status.success(), "compose config failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

const PROD: &[&str] = &["compose/base.yml", "compose/prod.yml"];
const DEV: &[&str] = &["compose/base.yml", "compose/dev.yml"];

#[test]
fn prod_publishes_nothing_builds_nothing_and_mounts_no_source() {
    // With every profile a dev machine uses turned on: still only the pre-built image.
    let config =
        merged(PROD, &[("BOT_IMAGE", "registry.example/lattice-bot:abc1234"), ("COMPOSE_PROFILES", "build")]);
    let services = config["services"].as_object().unwrap();
    assert_eq!(
        services.keys().collect::<Vec<_>>(),
        ["bot", "postgres"],
        "prod runs exactly bot and postgres"
    );
    for (name, service) in services {
        assert!(service.get("ports").is_none(), "{name} publishes a port in prod: {}", service["ports"]);
        assert!(service.get("build").is_none(), "{name} would be built on the server");
        for volume in service["volumes"].as_array().into_iter().flatten() {
            assert_ne!(volume["type"], "bind", "{name} bind-mounts {} in prod", volume["source"]);
        }
    }
    let bot = &services["bot"];
    assert_eq!(bot["image"], "registry.example/lattice-bot:abc1234");
    assert!(bot.get("container_name").is_none(), "a handover runs two bots: no container_name");
    let user = bot["user"].as_str().expect("the bot runs as a named non-root user");
    assert!(!user.starts_with('0') && !user.starts_with("root"), "bot user {user}");
    assert!(bot["stop_grace_period"].is_string(), "the bot gets a grace period to finish replies");
}

#[test]
fn prod_without_bot_image_fails_naming_it() {
    let out = compose_config(PROD, &[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("BOT_IMAGE"), "{stderr}");
}

/// The mounts of a service: `(type, source, target, read_only)`.
fn mounts(service: &Value) -> Vec<(String, String, String, bool)> {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    service["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| (text(&v["type"]), text(&v["source"]), text(&v["target"]), v["read_only"] == true))
        .collect()
}

#[test]
fn dev_runs_the_bot_built_from_the_mounted_source_and_publishes_on_loopback_only() {
    let config = merged(DEV, &[("COMPOSE_PROFILES", "build")]);
    let services = &config["services"];
    for (name, service) in services.as_object().unwrap() {
        assert!(
            service.get("build").is_none(),
            "{name}: dev builds no image, it compiles in the build service"
        );
    }
    // The build service compiles the working tree, mounted read-only, into named volumes.
    let build = mounts(&services["build"]);
    let bot_source = root().join("bot").to_string_lossy().to_string();
    assert!(
        build.iter().any(|(kind, source, target, ro)| kind == "bind"
            && *source == bot_source
            && target == "/src/bot"
            && *ro),
        "the bot's source is mounted read-only: {build:?}"
    );
    for target in ["/cargo-target", "/bot-bin"] {
        assert!(
            build.iter().any(|(kind, _, t, ro)| kind == "volume" && t == target && !ro),
            "{target} is a named volume, kept across builds: {build:?}"
        );
    }
    assert!(build.iter().all(|(_, source, _, _)| !source.ends_with(".env")), "no secrets reach the build");
    // The bot runs what it built, from the volume, read-only.
    let bot = mounts(&services["bot"]);
    assert_eq!(bot, [("volume".into(), "bot-bin".into(), "/usr/local/bin".into(), true)], "{bot:?}");
    assert_eq!(services["bot"]["healthcheck"]["test"][1], "lattice-bot");
    // Without the profile, `up` leaves the build service out.
    assert!(merged(DEV, &[])["services"].get("build").is_none(), "`up` must not start the build service");
    for name in ["bot", "postgres"] {
        let ports = services[name]["ports"].as_array().unwrap_or_else(|| panic!("{name} has no port in dev"));
        for port in ports {
            assert_eq!(port["host_ip"], "127.0.0.1", "{name} published beyond loopback: {port}");
        }
    }
}

#[test]
fn the_discord_standin_exists_only_in_its_dev_overlay() {
    let with = merged(&["compose/base.yml", "compose/dev.yml", "compose/standin.yml"], &[]);
    assert!(with["services"]["discord"].is_object());
    assert_eq!(with["services"]["bot"]["environment"]["LLM_PROVIDER"], "placeholder");
    let prod = merged(PROD, &[("BOT_IMAGE", "x:y")]);
    assert!(prod["services"].get("discord").is_none());
    assert!(prod["services"]["bot"]["environment"].get("DISCORD_API_URL").is_none_or(|v| v.is_null()));
}

/// Secrets in the manager's `.env`: none may reach the rendered stack file.
const SWARM_SECRETS: &[(&str, &str)] = &[
    ("DISCORD_TOKEN", "swarm-discord-token-Qa19"),
    ("OPENROUTER_API_KEY", "swarm-openrouter-key-Wb28"),
    ("POSTGRES_PASSWORD", "swarm-postgres-pass-Ec37"),
];

/// Renders the swarm stack as `cargo xtask` does on the manager (xtask/src/swarm/render.sh), in a
/// deploy directory of its own; returns the file's text and the file.
fn render_swarm(replicas: Option<&str>) -> (String, std::path::PathBuf, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!(
        "lattice-swarm-render-{}-{}",
        std::process::id(),
        replicas.unwrap_or("n")
    ));
    let release = dir.join("releases/abc1234");
    std::fs::create_dir_all(&release).unwrap();
    for (from, to) in [("base.yml", "base.yml"), ("prod.yml", "prod.yml"), ("swarm.yml", "swarm.yml")] {
        std::fs::copy(root().join("compose").join(from), release.join(to)).unwrap();
    }
    let mut env: String = SWARM_SECRETS.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    env.push_str(
        "SHARD_COUNT=2\nDISCORD_GUILD_ID=1,2\nDISCORD_MAIN_CHANNEL_ID=10,20\nLLM_PROVIDER=placeholder\n",
    );
    std::fs::write(dir.join(".env"), env).unwrap();
    std::fs::write(release.join("release.env"), "BOT_IMAGE=registry.example/lattice-bot:abc1234\n").unwrap();
    std::fs::write(
        release.join("secrets.env"),
        "LATTICE_SECRET_DISCORD_TOKEN=lattice_discord_token_0a1b\nLATTICE_SECRET_POSTGRES_PASSWORD=lattice_postgres_password_2c3d\n\
         LATTICE_SECRET_OPENROUTER_API_KEY=lattice_openrouter_api_key_4e5f\nLATTICE_SECRET_NOTIFY_WEBHOOK=lattice_notify_webhook_6a7b\n",
    )
    .unwrap();
    let script = root().join("xtask/src/swarm/render.sh");
    let mut cmd = Command::new("sh");
    cmd.current_dir(&dir).arg(&script).args(["lattice", "releases/abc1234", "stack.yml"]);
    cmd.args(replicas);
    for name in ["BOT_IMAGE", "DISCORD_TOKEN", "COMPOSE_PROFILES", "SHARD_COUNT", "LATTICE_BOT_REPLICAS"] {
        cmd.env_remove(name);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "render.sh failed: {}", String::from_utf8_lossy(&out.stderr));
    let file = dir.join("stack.yml");
    (std::fs::read_to_string(&file).unwrap(), file, dir)
}

#[test]
fn the_swarm_stack_file_is_what_docker_stack_deploy_takes_one_bot_per_shard_and_holds_no_secret() {
    let (text, file, dir) = render_swarm(None);
    for (name, value) in SWARM_SECRETS {
        assert!(!text.contains(value), "{name}'s value is in the rendered stack file:\n{text}");
    }
    // The stack format's own loader accepts it (no swarm needed to check).
    let stack = Command::new("docker").args(["stack", "config", "-c"]).arg(&file).output().unwrap();
    assert!(
        stack.status.success(),
        "docker stack config refused it: {}",
        String::from_utf8_lossy(&stack.stderr)
    );
    let config = merged(&[file.to_str().unwrap()], &[]);
    let bot = &config["services"]["bot"];
    for key in ["build", "container_name", "restart", "depends_on", "pull_policy"] {
        assert!(
            bot.get(key).is_none(),
            "the bot still has `{key}`, which docker stack deploy rejects or ignores"
        );
    }
    let deploy = &bot["deploy"];
    assert_eq!(deploy["replicas"], 2, "one replica per shard");
    assert_eq!(deploy["update_config"]["order"], "start-first", "the new task stands by first");
    assert_eq!(deploy["update_config"]["failure_action"], "rollback");
    let env = &bot["environment"];
    assert_eq!(env["SHARD_SLOT"], "{{.Task.Slot}}");
    assert_eq!(env["SHARD_COUNT"], "2");
    assert_eq!(env["DISCORD_GUILD_ID"], "1,2");
    assert_eq!(env["DISCORD_TOKEN_FILE"], "/run/secrets/discord_token");
    assert!(env.get("DISCORD_TOKEN").is_none() && env.get("POSTGRES_PASSWORD").is_none(), "{env}");
    assert_eq!(config["secrets"]["discord_token"]["name"], "lattice_discord_token_0a1b");
    assert_eq!(config["secrets"]["postgres_password"]["external"], true);
    assert!(bot.get("healthcheck").is_none() || bot["healthcheck"]["disable"] != true, "health-gated");
    let postgres = &config["services"]["postgres"];
    assert_eq!(postgres["deploy"]["replicas"], 1);
    assert_eq!(
        postgres["deploy"]["placement"]["constraints"],
        serde_json::json!(["node.labels.lattice.postgres == true"]),
        "Postgres stays on the node with its volume"
    );
    assert_eq!(postgres["environment"]["POSTGRES_PASSWORD_FILE"], "/run/secrets/postgres_password");
    assert!(postgres["environment"].get("POSTGRES_PASSWORD").is_none());
    // A first deploy's stack: Postgres alone, no bot task yet.
    let (_, first, first_dir) = render_swarm(Some("0"));
    assert_eq!(merged(&[first.to_str().unwrap()], &[])["services"]["bot"]["deploy"]["replicas"], 0);
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_dir_all(first_dir);
}
