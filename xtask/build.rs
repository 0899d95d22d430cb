//! Says on the terminal that `cargo xtask` is being compiled. The `.cargo/config.toml` alias runs
//! `cargo run --quiet`, which keeps a ready xtask silent but also hides cargo's progress, and a
//! first build takes a while. Cargo reruns this script whenever the package is rebuilt (it names
//! no `rerun-if-changed` file), so the line shows exactly when something is compiled.

use std::io::Write as _;

fn main() {
    // Cargo keeps a build script's own output to itself: the terminal is where a person looks.
    // Without one (CI, a pipe) there is nobody to tell.
    if let Ok(mut tty) = std::fs::OpenOptions::new().write(true).open("/dev/tty") {
        let _ = writeln!(tty, "compiling cargo xtask (its first run, or a change under xtask/) ...");
    }
}
