//! Hosts and secrets: the process environment, over `.env` at the project root (as in the original
//! setup). Values are never printed; only names are.

use std::{collections::BTreeMap, path::Path};

use anyhow::{bail, Context, Result};

/// What the bot needs on the server; `cargo xtask secrets` writes these to the server's `.env`.
pub const APP_VARS: &[&str] = &[
    "DISCORD_TOKEN",
    "DISCORD_GUILD_ID",
    "DISCORD_MAIN_CHANNEL_ID",
    "DISCORD_DREAM_CHANNEL_ID",
    "OPENROUTER_API_KEY",
    "POSTGRES_USER",
    "POSTGRES_PASSWORD",
    "POSTGRES_DB",
];

/// Optional app settings passed through to the server's `.env` when set.
pub const OPTIONAL_APP_VARS: &[&str] = &[
    "LLM_PROVIDER",
    "OPENROUTER_MODEL",
    "OPENROUTER_BASE_URL",
    "CONTEXT_MESSAGES",
    "LLM_CONCURRENCY",
    "LLM_MAX_TOKENS",
    "USER_RATE_LIMIT",
    "USER_RATE_WINDOW_SECS",
    "REPLY_QUEUE",
    "LLM_TIMEOUT_SECS",
    "SHUTDOWN_TIMEOUT_SECS",
    "GATEWAY_GRACE_SECS",
    "REPLY_LEASE_SECS",
    "RUST_LOG",
];

/// Settings for development and tests that production must not get by accident (a leftover
/// stand-in URL would send the real Discord token over plain HTTP): where the server's compose
/// finds Postgres, and Discord. `cargo xtask secrets` sends them only with `--allow-dev-settings`.
pub const DEV_APP_VARS: &[&str] = &["POSTGRES_IMAGE", "DISCORD_API_URL", "DISCORD_GATEWAY_URL"];

/// What `cargo xtask` needs to reach the server.
pub const SSH_VARS: &[&str] = &["SSH_HOST", "SSH_USER", "SSH_PRIVATE_KEY", "SSH_KNOWN_HOSTS"];

#[derive(Debug, Clone, Default)]
pub struct Env {
    vars: BTreeMap<String, String>,
}

impl Env {
    /// `.env` at `root` (if any), overridden by the process environment.
    pub fn load(root: &Path) -> Result<Env> {
        let mut vars = BTreeMap::new();
        let path = root.join(".env");
        if path.exists() {
            let text =
                std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            vars = parse_dotenv(&text).with_context(|| format!("in {}", path.display()))?;
        }
        for (key, value) in std::env::vars() {
            vars.insert(key, value);
        }
        Ok(Env { vars })
    }

    #[cfg_attr(not(test), allow(dead_code))]
    pub fn from_pairs<const N: usize>(pairs: [(&str, &str); N]) -> Env {
        Env { vars: pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect() }
    }

    /// This environment with one more variable (tests and tasks that add a value they computed).
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn with(mut self, key: &str, value: &str) -> Env {
        self.vars.insert(key.to_string(), value.to_string());
        self
    }

    /// A set, non-empty value.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.vars.get(key).map(String::as_str).filter(|v| !v.trim().is_empty())
    }

    /// Fails listing every name that is missing, all at once.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn require(&self, names: &[&str]) -> Result<()> {
        let missing = self.missing(names);
        if !missing.is_empty() {
            bail!(
                "missing environment variables: {} (set them in the environment or in .env; see .env.example)",
                missing.join(", ")
            );
        }
        Ok(())
    }

    /// The names among `names` that are set (non-empty), in that order.
    pub fn present<'n>(&self, names: &[&'n str]) -> Vec<&'n str> {
        names.iter().copied().filter(|name| self.get(name).is_some()).collect()
    }

    pub fn missing<'n>(&self, names: &[&'n str]) -> Vec<&'n str> {
        names.iter().copied().filter(|name| self.get(name).is_none()).collect()
    }
}

/// `KEY=VALUE` lines; `#` comments, blank lines, `export `, and single or double quotes allowed.
pub fn parse_dotenv(text: &str) -> Result<BTreeMap<String, String>> {
    let mut vars = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            bail!("line {}: expected KEY=VALUE (the value is not shown)", n + 1);
        };
        let key = key.trim();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            bail!("line {}: {key:?} is not a valid variable name", n + 1);
        }
        let value = value.trim();
        let value = match (value.chars().next(), value.chars().last()) {
            (Some(q @ ('"' | '\'')), Some(end)) if value.len() >= 2 && end == q => &value[1..value.len() - 1],
            _ => value,
        };
        vars.insert(key.to_string(), value.to_string());
    }
    Ok(vars)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotenv_lines_parse() {
        let vars = parse_dotenv("# c\n\nexport A=1\nB = \"two words\"\nC='x=y'\nD=\n").unwrap();
        assert_eq!(vars["A"], "1");
        assert_eq!(vars["B"], "two words");
        assert_eq!(vars["C"], "x=y");
        assert_eq!(vars["D"], "");
    }

    #[test]
    fn a_bad_line_is_reported_without_its_value() {
        let err = parse_dotenv("A=1\nsecretvalue\n").unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
        assert!(!err.contains("secretvalue"), "{err}");
    }

    #[test]
    fn all_missing_names_are_listed_at_once() {
        let env = Env::from_pairs([("SSH_HOST", "h"), ("SSH_USER", " ")]);
        let err = env.require(SSH_VARS).unwrap_err().to_string();
        assert!(err.contains("SSH_USER, SSH_PRIVATE_KEY, SSH_KNOWN_HOSTS"), "{err}");
        assert!(!err.contains("SSH_HOST"), "{err}");
    }

    /// `cargo xtask secrets` copies exactly these names to the server: a bot setting that
    /// `.env.example` documents but that is missing here would silently never reach production.
    #[test]
    fn every_bot_setting_in_the_example_reaches_the_server() {
        let example = include_str!("../../.env.example");
        let bot_section = example
            .split("# --- ")
            .find(|section| section.starts_with("the bot"))
            .expect(".env.example has a `# --- the bot` section");
        let names: Vec<&str> = bot_section
            .lines()
            .skip(1)
            .map(|line| line.trim_start_matches('#').trim())
            .filter_map(|line| line.split_once('=').map(|(name, _)| name))
            .filter(|name| !name.is_empty() && name.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
            .collect();
        assert!(names.len() > 10, "too few names found in .env.example: {names:?}");
        let missing: Vec<&&str> = names
            .iter()
            .filter(|name| {
                !APP_VARS.contains(name) && !OPTIONAL_APP_VARS.contains(name) && !DEV_APP_VARS.contains(name)
            })
            .collect();
        assert!(missing.is_empty(), "in .env.example but never written to the server: {missing:?}");
    }
}
