//! Watching the working tree for `cargo xtask dev --watch`.
//!
//! Polls modification times every [`POLL`]: a tree the size of `bot/` costs a few dozen `stat`s,
//! nothing to compile and nothing platform-specific (a file-events crate would cost more compile
//! time than the whole xtask). A change is reported once the tree has been quiet for [`QUIET`], so
//! a burst of saves (format on save, a `git checkout`) makes one rebuild. `target/`, `.git/` and
//! editors' swap, backup and lock files are not part of the tree.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant, SystemTime},
};

/// How often the tree is looked at.
pub const POLL: Duration = Duration::from_millis(100);
/// How long the tree must stay unchanged before a change is reported.
pub const QUIET: Duration = Duration::from_millis(300);

/// Every watched file, by path relative to the root: modification time and length.
pub type Snapshot = BTreeMap<PathBuf, (SystemTime, u64)>;

/// Files and directories under a root, some of them watched.
pub struct Tree {
    root: PathBuf,
    /// Relative to the root: directories (walked) and single files.
    watched: Vec<PathBuf>,
}

impl Tree {
    pub fn new(root: &Path, watched: &[&str]) -> Tree {
        Tree { root: root.to_path_buf(), watched: watched.iter().map(PathBuf::from).collect() }
    }

    /// The watched paths as shown to a user: `bot/, Cargo.toml`.
    pub fn describe(&self) -> String {
        self.watched
            .iter()
            .map(|path| {
                let shown = path.display().to_string();
                if self.root.join(path).is_dir() {
                    format!("{shown}/")
                } else {
                    shown
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The tree as it is now. Files that vanish while it is read are left out.
    pub fn snapshot(&self) -> Snapshot {
        let mut files = Snapshot::new();
        for path in &self.watched {
            self.visit(path, &mut files);
        }
        files
    }

    fn visit(&self, relative: &Path, files: &mut Snapshot) {
        let name = relative.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
        if ignored(&name) {
            return;
        }
        let Ok(meta) = std::fs::symlink_metadata(self.root.join(relative)) else { return };
        if meta.is_dir() {
            if name == "target" || name == ".git" {
                return;
            }
            let Ok(entries) = std::fs::read_dir(self.root.join(relative)) else { return };
            for entry in entries.flatten() {
                self.visit(&relative.join(entry.file_name()), files);
            }
        } else if let Ok(modified) = meta.modified() {
            files.insert(relative.to_path_buf(), (modified, meta.len()));
        }
    }

    /// Blocks until the tree differs from `since` and has then stayed unchanged for [`QUIET`].
    /// Returns the tree as it is then and the paths that differ from `since`.
    pub fn wait_for_change(&self, since: &Snapshot) -> (Snapshot, Vec<PathBuf>) {
        let mut current = self.snapshot();
        while changes(since, &current).is_empty() {
            thread::sleep(POLL);
            current = self.snapshot();
        }
        let mut quiet_since = Instant::now();
        while quiet_since.elapsed() < QUIET {
            thread::sleep(POLL);
            let now = self.snapshot();
            if now != current {
                current = now;
                quiet_since = Instant::now();
            }
        }
        let changed = changes(since, &current);
        if changed.is_empty() {
            // Saved and put back within the quiet time: nothing to do after all.
            return self.wait_for_change(since);
        }
        (current, changed)
    }
}

/// The paths added, removed or modified between two snapshots, sorted.
pub fn changes(old: &Snapshot, new: &Snapshot) -> Vec<PathBuf> {
    let mut changed: Vec<PathBuf> = new
        .iter()
        .filter(|(path, stat)| old.get(*path) != Some(stat))
        .map(|(path, _)| path.clone())
        .chain(old.keys().filter(|path| !new.contains_key(*path)).cloned())
        .collect();
    changed.sort();
    changed
}

/// Files editors write next to the one being edited, which are no change to the source: vim's
/// swap files and its `4913` write test, `~` backups, Emacs' `.#` locks and `#…#` auto-saves,
/// JetBrains' safe-write temporaries, Kate's swap files, macOS' `.DS_Store`.
pub fn ignored(name: &str) -> bool {
    let vim_swap = [".swp", ".swo", ".swn", ".swx"].iter().any(|ext| name.ends_with(ext));
    vim_swap
        || name == "4913"
        || name.ends_with('~')
        || name.starts_with(".#")
        || (name.len() > 1 && name.starts_with('#') && name.ends_with('#'))
        || name.ends_with("___jb_tmp___")
        || name.ends_with("___jb_old___")
        || name.ends_with(".kate-swp")
        || name == ".DS_Store"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn editor_droppings_are_ignored_and_sources_are_not() {
        for name in [".reply.rs.swp", ".reply.rs.swo", "4913", "reply.rs~", ".#reply.rs", "#reply.rs#"] {
            assert!(ignored(name), "{name} should be ignored");
        }
        for name in ["reply.rs", "0003_more.sql", "Cargo.toml", "#", "build.rs", "swp.rs"] {
            assert!(!ignored(name), "{name} is a source");
        }
    }

    #[test]
    fn changes_name_added_modified_and_removed_files() {
        let t0 = SystemTime::UNIX_EPOCH;
        let t1 = t0 + Duration::from_secs(1);
        let old =
            Snapshot::from([("a.rs".into(), (t0, 1)), ("b.rs".into(), (t0, 1)), ("c.rs".into(), (t0, 1))]);
        let new =
            Snapshot::from([("a.rs".into(), (t0, 1)), ("b.rs".into(), (t1, 1)), ("d.rs".into(), (t0, 1))]);
        assert_eq!(changes(&old, &new), vec![PathBuf::from("b.rs"), "c.rs".into(), "d.rs".into()]);
        assert!(changes(&new, &new).is_empty());
    }

    #[test]
    fn a_burst_of_saves_is_one_change_and_target_and_swap_files_are_none() {
        let dir = std::env::temp_dir().join(format!("xtask-watch-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("bot/src")).unwrap();
        std::fs::create_dir_all(dir.join("bot/target/debug")).unwrap();
        std::fs::write(dir.join("bot/src/reply.rs"), "one").unwrap();
        let tree = Tree::new(&dir, &["bot", "Cargo.toml"]);
        let before = tree.snapshot();
        assert_eq!(before.keys().collect::<Vec<_>>(), [&PathBuf::from("bot/src/reply.rs")]);

        std::fs::write(dir.join("bot/target/debug/lattice-bot"), "binary").unwrap();
        std::fs::write(dir.join("bot/src/.reply.rs.swp"), "swap").unwrap();
        assert!(changes(&before, &tree.snapshot()).is_empty(), "target/ and swap files are no change");

        let writer = {
            let dir = dir.clone();
            thread::spawn(move || {
                for text in ["two", "three", "four"] {
                    std::fs::write(dir.join("bot/src/reply.rs"), text).unwrap();
                    std::fs::write(dir.join("bot/src/new.rs"), text).unwrap();
                    thread::sleep(Duration::from_millis(20));
                }
            })
        };
        let (after, changed) = tree.wait_for_change(&before);
        writer.join().unwrap();
        assert_eq!(changed, vec![PathBuf::from("bot/src/new.rs"), "bot/src/reply.rs".into()]);
        assert_eq!(after, tree.snapshot(), "reported after the burst, not in the middle of it");
        assert_eq!(tree.describe(), "bot/, Cargo.toml");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
