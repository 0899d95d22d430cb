//! Private temporary directories that a killed run does not leave behind: each is named after its
//! process (`<tmp>/lattice-<what>-<pid>-<n>`, mode 0700) and removed when dropped, and a later run
//! removes those whose process no longer runs ([`sweep`]) — a `kill -9` runs no destructor.

use std::{
    os::unix::fs::{DirBuilderExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context, Result};

/// A private temporary directory, removed with everything in it when dropped.
#[derive(Debug)]
pub struct Dir {
    path: PathBuf,
}

impl Dir {
    /// Creates `<tmp>/lattice-<what>-<pid>-<n>`, mode 0700.
    pub fn new(what: &str) -> Result<Dir> {
        static COUNT: AtomicU32 = AtomicU32::new(0);
        let base = std::env::temp_dir();
        loop {
            let n = COUNT.fetch_add(1, Ordering::Relaxed);
            let path = base.join(format!("lattice-{what}-{}-{n}", std::process::id()));
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => {
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))?;
                    return Ok(Dir { path });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 1024 => continue,
                Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The process a directory of [`Dir::new`] belongs to, from its name.
fn owner(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("lattice-")?;
    let mut parts = rest.rsplitn(3, '-');
    let (n, pid, what) = (parts.next()?, parts.next()?, parts.next()?);
    let plain = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (plain(n) && plain(pid) && !what.is_empty()).then(|| pid.parse().ok()).flatten()
}

/// Removes the directories of [`Dir::new`] whose process no longer runs: what runs killed with
/// SIGKILL left (an ssh configuration, a control socket, a compose file).
pub fn sweep() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(pid) = owner(&name) else { continue };
        let ours = entry.metadata().is_ok_and(|m| m.is_dir());
        if ours && !Path::new("/proc").join(pid.to_string()).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dir_is_private_named_after_its_process_and_gone_when_dropped() {
        let dir = Dir::new("test").unwrap();
        let path = dir.path().to_path_buf();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        assert_eq!(owner(&name), Some(std::process::id()));
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o700);
        drop(dir);
        assert!(!path.exists());
    }

    #[test]
    fn the_sweep_removes_only_the_dirs_of_processes_that_are_gone() {
        assert_eq!(owner("lattice-ssh-12-0"), Some(12));
        assert_eq!(owner("lattice-overlays-check-12-3"), Some(12));
        assert_eq!(owner("lattice-ssh-x-0"), None);
        assert_eq!(owner("xshell-tmp-dir-3"), None);
        // A pid above the kernel's limit never runs.
        let dead = std::env::temp_dir().join("lattice-test-4194399-0");
        std::fs::create_dir_all(dead.join("sub")).unwrap();
        let live = Dir::new("test").unwrap();
        sweep();
        assert!(!dead.exists(), "a dead run's dir was kept");
        assert!(live.path().exists(), "a live run's dir was removed");
    }
}
