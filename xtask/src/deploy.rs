//! NAME
//!     cargo xtask deploy — put a release that is already in the registry on the server.
//!
//! SYNOPSIS
//!     cargo xtask deploy --sha <git sha> [--lock-wait SECS] [--dry-run]

use anyhow::{bail, Result};

use crate::{flags, plan::Plan, project::Project};

/// A git commit id as used for image tags: 7 to 40 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sha(String);

impl Sha {
    pub fn parse(text: &str) -> Result<Sha> {
        let text = text.trim();
        let hex = text.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f'));
        if !(7..=40).contains(&text.len()) || !hex {
            bail!(
                "{text:?} is not a git sha: expected 7 to 40 lowercase hex digits, e.g. `--sha $(git rev-parse HEAD)`"
            );
        }
        Ok(Sha(text.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl flags::Deploy {
    pub fn run(self, _plan: &Plan, _project: &Project) -> Result<()> {
        let _sha = Sha::parse(&self.sha)?;
        bail!("`cargo xtask deploy` is not implemented yet")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sha_is_seven_to_forty_lowercase_hex_digits() {
        assert!(Sha::parse("abc").unwrap_err().to_string().contains("not a git sha"));
        assert!(Sha::parse("ABCDEF1").is_err());
        assert!(Sha::parse("abcdefg").is_err());
        assert!(Sha::parse(&"a".repeat(41)).is_err());
        assert_eq!(Sha::parse("0123abc").unwrap().as_str(), "0123abc");
        assert!(Sha::parse(&"f".repeat(40)).is_ok());
    }
}
