//! Database snapshots on the server: `pg_dump -Fc` inside the Postgres container, kept under
//! `<deploy_path>/snapshots` (0700; never in an image or the repository), the newest
//! `snapshots_kept` of them. A deploy takes one before applying migrations the database lacks;
//! `cargo xtask backup` takes one by hand; `cargo xtask restore` loads one back.

use anyhow::{bail, Result};

use super::{layout::escaped, Server};
use crate::plan::Cmd;

/// The directory, relative to the deploy directory.
pub const SNAPSHOTS: &str = "snapshots";
/// Takes a snapshot and prunes the old ones (see the script's header).
const SNAPSHOT_SH: &str = include_str!("snapshot.sh");
/// Loads a snapshot inside the Postgres container (see the script's header).
const RESTORE_SH: &str = include_str!("restore.sh");

/// Whether `name` is a snapshot's name as snapshot.sh writes it: `<YYYYMMDDTHHMMSSZ>-<sha>.dump`.
fn is_snapshot_name(name: &str) -> bool {
    let Some((time, rest)) = name.split_once('-') else { return false };
    let Some(sha) = rest.strip_suffix(".dump") else { return false };
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let time_ok = time.len() == 16
        && digits(&time[..8])
        && &time[8..9] == "T"
        && digits(&time[9..15])
        && &time[15..] == "Z";
    time_ok && (7..=40).contains(&sha.len()) && sha.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A snapshot named by the user (`<name>` or `snapshots/<name>`), checked before it reaches a command.
pub fn parse_name(text: &str) -> Result<String> {
    let name = text.trim().strip_prefix("snapshots/").unwrap_or(text.trim());
    if !is_snapshot_name(name) {
        bail!(
            "{} is not a snapshot name: they look like 20261127T214144Z-<sha>.dump (`cargo xtask status` lists \
             the server's snapshots)",
            escaped(text)
        );
    }
    Ok(name.to_string())
}

impl Server<'_, '_> {
    /// Takes a snapshot of the database as `release` uses it (its compose files reach Postgres),
    /// keeps the newest `snapshots_kept`, and returns the new one's name.
    pub fn snapshot(&self, release: &str) -> Result<String> {
        let keep = self.layout.settings.snapshots_kept;
        self.plan().note(&format!(
            "snapshot the database into {root}/{SNAPSHOTS}/ (pg_dump -Fc in the Postgres container), keep the newest {keep}",
            root = self.layout.root
        ));
        let dump = self.layout.compose(release, &["exec", "--no-TTY", "postgres"]).args([
            "sh",
            "-c",
            "pg_dump -Fc -U \"$POSTGRES_USER\" -d \"$POSTGRES_DB\"",
        ]);
        let out = self.read(
            Cmd::script("snapshot.sh", SNAPSHOT_SH).arg(keep.to_string()).arg(release).args(dump.words()),
        )?;
        if self.plan().is_dry_run() {
            return Ok(format!("<time>-{release}.dump"));
        }
        let name = out.lines().last().unwrap_or("").trim();
        if !is_snapshot_name(name) {
            bail!("the server named the snapshot {}, not a snapshot name", escaped(name));
        }
        Ok(name.to_string())
    }

    /// The snapshots on the server, oldest first (only names snapshot.sh writes).
    pub fn snapshots(&self) -> Result<Vec<String>> {
        let listed = self.read(Cmd::of("ls -1").arg(SNAPSHOTS).without_errors().or(Cmd::of("true")))?;
        let mut names: Vec<String> =
            listed.lines().map(str::trim).filter(|n| is_snapshot_name(n)).map(str::to_string).collect();
        names.sort();
        Ok(names)
    }

    /// Loads snapshot `name` into the database, in one transaction, through `release`'s compose
    /// files.
    pub fn restore(&self, release: &str, name: &str) -> Result<()> {
        let load = self
            .layout
            .compose(release, &["exec", "--no-TTY", "postgres"])
            .args(Cmd::script("restore.sh", RESTORE_SH).words())
            .read_from(&[SNAPSHOTS, "/", name].concat());
        self.run(load)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_name_is_a_time_and_a_sha_and_nothing_else() {
        assert!(is_snapshot_name("20261127T214144Z-abc1234.dump"));
        assert!(is_snapshot_name(&format!("20261127T214144Z-{}.dump", "f".repeat(40))));
        for bad in [
            "20261127T214144Z-abc1234.dump.partial",
            "20261127T214144-abc1234.dump",
            "2026112XT214144Z-abc1234.dump",
            "20261127T214144Z-ABC1234.dump",
            "20261127T214144Z-x';cmd;'.dump",
            "../20261127T214144Z-abc1234.dump",
        ] {
            assert!(!is_snapshot_name(bad), "{bad}");
        }
        assert_eq!(
            parse_name("snapshots/20261127T214144Z-abc1234.dump").unwrap(),
            "20261127T214144Z-abc1234.dump"
        );
        let err = parse_name("x;rm -rf ~").unwrap_err().to_string();
        assert!(err.starts_with("\"x;rm -rf ~\" is not a snapshot name"), "{err}");
    }

    #[test]
    fn the_snapshot_script_keeps_the_newest_and_never_leaves_a_partial_dump() {
        let sh = xshell::Shell::new().unwrap();
        let dir = sh.create_temp_dir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join(SNAPSHOTS)).unwrap();
        for old in ["20200101T000000Z-aaaaaaa.dump", "20200102T000000Z-aaaaaaa.dump", "notes.txt"] {
            std::fs::write(d.join(SNAPSHOTS).join(old), "old").unwrap();
        }
        let run = |dump: &str| {
            std::process::Command::new("sh")
                .args(["-c", SNAPSHOT_SH, "snapshot.sh", "2", "bbbbbbb", "sh", "-c", dump])
                .current_dir(d)
                .output()
                .unwrap()
        };
        let out = run("echo dumped");
        assert!(out.status.success(), "{out:?}");
        let name = String::from_utf8(out.stdout).unwrap().trim().to_string();
        assert!(is_snapshot_name(&name) && name.ends_with("-bbbbbbb.dump"), "{name}");
        assert_eq!(std::fs::read_to_string(d.join(SNAPSHOTS).join(&name)).unwrap(), "dumped\n");
        let mut left: Vec<String> = std::fs::read_dir(d.join(SNAPSHOTS))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        left.sort();
        assert_eq!(left, vec!["20200102T000000Z-aaaaaaa.dump".to_string(), name, "notes.txt".into()]);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(d.join(SNAPSHOTS)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let out = run("echo half; exit 3");
        assert!(!out.status.success());
        assert!(
            std::fs::read_dir(d.join(SNAPSHOTS)).unwrap().all(|e| !e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".partial")),
            "a failed dump left its partial file"
        );
    }
}
