//! `cargo xtask doctor` as a user meets it: every tool with its version, and a clear verdict when
//! Compose v2 is missing.

use std::{os::unix::fs::PermissionsExt, process::Command};

#[test]
fn doctor_without_compose_v2_names_it_and_fails() {
    // A docker client without the Compose v2 plugin: the real client, but `docker compose` is an
    // unknown command, exactly as the client answers when no plugin is installed.
    let dir = std::env::temp_dir().join(format!("lattice-doctor-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let real_docker = which_docker();
    let shim = dir.join("docker");
    std::fs::write(
        &shim,
        format!(
            "#!/bin/sh\nif [ \"$1\" = compose ]; then echo \"docker: unknown command: docker compose\" >&2; exit 1; fi\n\
             exec {real_docker} \"$@\"\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", dir.display(), std::env::var("PATH").unwrap());
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .arg("doctor")
        .env("PATH", path)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).ok();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "doctor must fail without Compose v2:\n{stdout}");
    let compose = stdout.lines().find(|l| l.contains("compose v2")).expect("a compose v2 line");
    assert!(compose.starts_with("MISSING"), "{compose}");
    assert!(compose.contains("install"), "says how to get it: {compose}");
    assert!(stderr.contains("required tools missing: compose v2"), "{stderr}");
}

fn which_docker() -> String {
    let out = Command::new("sh").args(["-c", "command -v docker"]).output().unwrap();
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(!path.is_empty(), "docker is not installed");
    path
}

#[test]
fn doctor_lists_each_tool_with_its_version() {
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .arg("doctor")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "this machine has every required tool:\n{stdout}");
    for tool in ["docker ", "docker engine", "compose v2", "ssh", "git"] {
        let line =
            stdout.lines().find(|l| l.contains(tool)).unwrap_or_else(|| panic!("no {tool} line:\n{stdout}"));
        assert!(line.starts_with("ok"), "{line}");
        assert!(line.chars().any(|c| c.is_ascii_digit()), "no version in {line}");
    }
}
