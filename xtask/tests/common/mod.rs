//! What the xtask's end-to-end tests share.

use std::{
    path::{Path, PathBuf},
    process::Output,
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
