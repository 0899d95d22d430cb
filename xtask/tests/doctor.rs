//! `cargo xtask doctor` as a user meets it: every tool with its version, and a clear verdict when
//! Compose v2 is missing.

use std::process::Command;

#[test]
fn doctor_without_compose_v2_names_it_and_fails() {
    // An empty docker config directory hides the Compose v2 CLI plugin, as on a machine without it.
    let empty = std::env::temp_dir().join(format!("lattice-doctor-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .arg("doctor")
        .env("DOCKER_CONFIG", &empty)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    std::fs::remove_dir_all(&empty).ok();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "doctor must fail without Compose v2:\n{stdout}");
    let compose = stdout.lines().find(|l| l.contains("compose v2")).expect("a compose v2 line");
    assert!(compose.starts_with("MISSING"), "{compose}");
    assert!(compose.contains("install"), "says how to get it: {compose}");
    assert!(stderr.contains("required tools missing: compose v2"), "{stderr}");
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
