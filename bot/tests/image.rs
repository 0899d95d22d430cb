//! The release image as a user gets it: `FROM scratch` with the binary and the few files it needs.
//! Built from this work tree with the real Docker Engine, then run: its doctor resolves names
//! (through /etc/hosts and through Docker's DNS), connects, and verifies TLS with the bundled roots
//! — a self-signed endpoint is refused as a certificate verification error, which shows the TLS
//! stack, the loader and the libraries are all there — and its health check binary runs.

mod common;

use std::{
    path::Path,
    process::{Command, Output},
    sync::atomic::{AtomicUsize, Ordering},
};

use common::{docker, health_ok_server, SelfSignedTls};

/// The issue's bound for the whole image, in bytes (`docker image inspect .Size`).
const MAX_IMAGE_BYTES: u64 = 20_000_000;

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(out.status.success(), "docker {} failed:\n{}", args.join(" "), text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Whatever the test made (image, containers, network), removed on drop, also on failure.
#[derive(Default)]
struct Cleanup {
    image: Option<String>,
    containers: Vec<String>,
    network: Option<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for container in &self.containers {
            let _ = docker(&["rm", "-f", container]);
        }
        if let Some(network) = &self.network {
            let _ = docker(&["network", "rm", network]);
        }
        if let Some(image) = &self.image {
            let _ = docker(&["rmi", image]);
        }
    }
}

static SEQ: AtomicUsize = AtomicUsize::new(0);

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::SeqCst))
}

/// `docker build` of bot/Dockerfile (release profile) from the workspace; RUST_IMAGE from the
/// environment when set, as `cargo xtask image build` passes it.
fn build(tag: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut cmd = Command::new("docker");
    cmd.arg("build").args(["--file", "bot/Dockerfile", "--tag", tag]).current_dir(root);
    if let Ok(rust_image) = std::env::var("RUST_IMAGE") {
        cmd.args(["--build-arg", &format!("RUST_IMAGE={rust_image}")]);
    }
    let has_buildx =
        Command::new("docker").args(["buildx", "version"]).output().is_ok_and(|o| o.status.success());
    if !has_buildx {
        // Explicitly legacy: DOCKER_BUILDKIT=1 in the environment would fail without buildx.
        cmd.env("DOCKER_BUILDKIT", "0");
    }
    let out = cmd.arg(".").output().unwrap();
    assert!(out.status.success(), "building bot/Dockerfile failed:\n{}", text(&out));
}

#[test]
fn e2e_release_image_is_scratch_with_the_binary_its_libraries_and_a_working_tls_stack() {
    let mut cleanup = Cleanup::default();
    let image = format!("lattice-test/bot-image:{}", std::process::id());
    build(&image);
    cleanup.image = Some(image.clone());

    // Nothing but the runtime files and the binary: two layers, the non-root user, the binary's
    // own health check.
    let inspect = |format: &str| docker_ok(&["image", "inspect", "--format", format, &image]);
    let size: u64 = inspect("{{.Size}}").parse().unwrap();
    assert!(size <= MAX_IMAGE_BYTES, "the image is {size} bytes, more than {MAX_IMAGE_BYTES}");
    assert_eq!(inspect("{{len .RootFS.Layers}}"), "2", "layers: the runtime files, then the binary");
    assert_eq!(inspect("{{.Config.User}}"), "10001:10001");
    assert_eq!(inspect("{{json .Config.Healthcheck.Test}}"), r#"["CMD","lattice-bot","healthcheck"]"#);
    for label in ["org.opencontainers.image.revision", "lattice.schema.head"] {
        assert!(inspect("{{json .Config.Labels}}").contains(label), "label {label} missing");
    }

    // TLS against a self-signed endpoint on the host's loopback, names from /etc/hosts.
    let tls = SelfSignedTls::start();
    let postgres = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let pg_port = postgres.local_addr().unwrap().port().to_string();
    let url = format!("https://localhost:{}", tls.port);
    let pg_port_env = format!("POSTGRES_PORT={pg_port}");
    let out = docker(&[
        "run",
        "--rm",
        "--network",
        "host",
        "--entrypoint",
        "lattice-bot",
        "--env",
        "POSTGRES_HOST=localhost",
        "--env",
        &pg_port_env,
        &image,
        "doctor",
        "--url",
        &url,
    ]);
    let report = text(&out);
    assert!(!out.status.success(), "the self-signed endpoint must fail the doctor:\n{report}");
    let tls_line =
        report.lines().find(|l| l.contains(&url)).unwrap_or_else(|| panic!("no line for {url}:\n{report}"));
    assert!(
        tls_line.starts_with("FAIL") && tls_line.contains("certificate verification failed: UnknownIssuer"),
        "{report}"
    );
    for ok in ["tmp", "dns", "tcp"] {
        let found = report.lines().find(|l| l.split_whitespace().nth(1) == Some(ok));
        assert!(
            found.is_some_and(|l| l.starts_with("ok")),
            "`{ok}` did not pass in the container:\n{report}"
        );
    }
    assert!(report.contains("1 of 4 checks failed"), "{report}");
    assert!(tls.failed_handshakes(1)[0].contains("UnknownCA"));

    // Names through Docker's DNS on a user-defined network: a container answering as `postgres`
    // (the image's own stand-in server, listening on 5432) and the doctor with the defaults.
    let network = unique("lattice-image-test");
    docker_ok(&["network", "create", &network]);
    cleanup.network = Some(network.clone());
    let server = unique("lattice-image-test-postgres");
    cleanup.containers.push(server.clone());
    docker_ok(&[
        "run",
        "--detach",
        "--name",
        &server,
        "--network",
        &network,
        "--network-alias",
        "postgres",
        &image,
        "discord-standin",
        "--listen",
        "0.0.0.0:5432",
    ]);
    let deadline = std::time::Instant::now() + common::DEADLINE;
    while !text(&docker(&["logs", &server])).contains("discord stand-in serving") {
        assert!(std::time::Instant::now() < deadline, "the `postgres` container never listened");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let out = docker(&[
        "run",
        "--rm",
        "--network",
        &network,
        "--entrypoint",
        "lattice-bot",
        &image,
        "doctor",
        "--url",
        "http://postgres:5432",
    ]);
    let report = text(&out);
    assert!(report.contains("all 4 checks passed"), "the doctor on the compose-like network:\n{report}");
    let dns = report.lines().find(|l| l.contains("dns") && l.contains("postgres")).unwrap_or_default();
    assert!(dns.starts_with("ok"), "{report}");

    // The health check is the binary itself and runs in the image.
    let health_port = format!("HTTP_PORT={}", health_ok_server());
    let out = docker(&["run", "--rm", "--network", "host", "--env", &health_port, &image, "healthcheck"]);
    assert!(out.status.success(), "lattice-bot healthcheck in the image:\n{}", text(&out));
    assert!(text(&out).contains(r#"{"status":"ok"}"#), "{}", text(&out));
}
