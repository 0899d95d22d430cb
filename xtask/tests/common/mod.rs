//! What the xtask's end-to-end tests share.

#![allow(dead_code)] // each test file uses a different part

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

/// The workspace the tests clone from.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// A command's exit, stdout and stderr, for assertion messages and transcripts.
pub fn show(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `cmd`, failing the test with its output unless it succeeds.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed:\n{}", show(&out));
    out
}

pub fn stdout(cmd: &mut Command) -> String {
    String::from_utf8_lossy(&run(cmd).stdout).trim().to_string()
}

/// The sandbox's environment as a user gets it: `cargo xtask sandbox up` prints it, and a shell
/// reads the file it names (`. <dir>/env`, which also reads the private key from its file).
pub fn sandbox_up(dir: &Path, clone: &Path, args: &[String]) -> Vec<(String, String)> {
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["sandbox", "up", "--dir"])
        .arg(dir)
        .args(args)
        .current_dir(clone)
        .env_remove("GITHUB_ACTIONS")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "cargo xtask sandbox up failed:\n{}", show(&out));
    let printed = String::from_utf8_lossy(&out.stdout).to_string();
    let env_file = dir.join("env");
    assert!(
        printed.contains(&format!(". {}", env_file.display())),
        "up does not name its env file:\n{printed}"
    );
    let text = std::fs::read_to_string(&env_file).unwrap();
    assert!(
        printed.contains(&text),
        "up printed another environment than {}:\n{printed}",
        env_file.display()
    );
    let names: Vec<&str> =
        text.lines().filter_map(|l| l.strip_prefix("export ")?.split('=').next()).collect();
    assert!(names.contains(&"SSH_PRIVATE_KEY"), "no SSH_PRIVATE_KEY in {}:\n{text}", env_file.display());
    let shell = run(Command::new("sh").args(["-c", ". \"$1\" && env -0", "sh"]).arg(&env_file).env_clear());
    String::from_utf8_lossy(&shell.stdout)
        .split('\0')
        .filter_map(|pair| pair.split_once('='))
        .filter(|(k, _)| names.contains(k))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// `cargo xtask sandbox down --dir <dir>`.
pub fn sandbox_down(dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["sandbox", "down", "--dir"])
        .arg(dir)
        .current_dir(workspace())
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// A port nothing listens on (the OS's pick, at once released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `git` in `dir`, as a user with a name, for commits; its trimmed stdout.
pub fn git(dir: &Path, args: &[&str]) -> String {
    stdout(
        Command::new("git")
            .args(["-c", "user.name=e2e", "-c", "user.email=e2e@example.invalid"])
            .args(args)
            .current_dir(dir),
    )
}
