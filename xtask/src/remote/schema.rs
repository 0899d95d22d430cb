//! The database schema as releases see it: the migration head an image carries and the migrations
//! it declares backward-compatible (its labels, see `image.rs`), and the migrations the server's
//! database has applied. Rollback and the deploy's switch-back ask the same question of them: can
//! an older release's code run on this schema?

use anyhow::Result;

use super::Server;
use crate::plan::Cmd;

/// The highest migration version an image's code knows.
pub const LABEL_HEAD: &str = "lattice.schema.head";
/// The migrations of an image that leave the schema usable by the release before them.
pub const LABEL_COMPATIBLE: &str = "lattice.schema.backward-compatible";

/// Lists the applied migrations from inside the Postgres container (see the script's header).
const APPLIED_SH: &str = include_str!("applied.sh");

/// Numbers in a label value such as `3,4` or `[3, 4]` (none in `<no value>`).
pub fn versions(text: &str) -> Vec<i64> {
    text.split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// The applied migrations newer than `head` that the newer image does not declare
/// backward-compatible: each one makes running the code of `head` unsafe.
pub fn blocking_migrations(head: i64, compatible: &[i64], applied: &[i64]) -> Vec<i64> {
    applied.iter().copied().filter(|v| *v > head && !compatible.contains(v)).collect()
}

/// Versions as a list for messages: `3, 4`.
pub fn list(versions: &[i64]) -> String {
    versions.iter().map(i64::to_string).collect::<Vec<_>>().join(", ")
}

impl Server<'_, '_> {
    /// A label of a release's image on the server, as text (`<no value>` when it has none; a
    /// placeholder in a dry run).
    pub fn image_label(&self, sha: &str, name: &str) -> Result<String> {
        self.read(
            Cmd::of("docker image inspect --format")
                .arg(format!("{{{{index .Config.Labels \"{name}\"}}}}"))
                .arg(self.layout.image(sha)),
        )
    }

    /// The migration head a release's image carries, if it carries one (none in a dry run).
    pub fn schema_head(&self, sha: &str) -> Result<Option<i64>> {
        let label = self.image_label(sha, LABEL_HEAD)?;
        Ok(versions(&label).first().copied().filter(|_| !self.plan().is_dry_run()))
    }

    /// The migrations the database has applied, oldest first (none yet: empty; none in a dry
    /// run), asked through Postgres with `release`'s compose files. Fails when Postgres cannot be
    /// asked (psql's message is on stderr).
    pub fn applied_migrations(&self, release: &str) -> Result<Vec<i64>> {
        let ask = self
            .layout
            .compose(release, &["exec", "--no-TTY", "postgres"])
            .args(Cmd::script("applied.sh", APPLIED_SH).words());
        let out = self.read(ask)?;
        if self.plan().is_dry_run() {
            return Ok(Vec::new());
        }
        Ok(versions(&out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_newer_migrations_not_declared_compatible_block_older_code() {
        assert!(blocking_migrations(3, &[], &[1, 2, 3]).is_empty(), "same schema");
        assert!(blocking_migrations(2, &[3], &[1, 2, 3]).is_empty(), "3 is declared backward-compatible");
        assert_eq!(blocking_migrations(2, &[3], &[1, 2, 3, 4]), vec![4]);
        assert_eq!(blocking_migrations(1, &[], &[1, 2, 3]), vec![2, 3]);
        assert_eq!(list(&[2, 3]), "2, 3");
    }

    #[test]
    fn label_values_list_their_versions() {
        assert_eq!(versions("[3, 4]"), vec![3, 4]);
        assert_eq!(versions("20240101000000,20240202000000"), vec![20240101000000, 20240202000000]);
        assert!(versions("").is_empty());
        assert!(versions("<no value>").is_empty());
    }
}
