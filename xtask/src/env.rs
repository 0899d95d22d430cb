//! Hosts and secrets: the process environment, over `.env` at the project root (as in the original
//! setup). Values are never printed; only names are.

use std::{collections::BTreeMap, path::Path};

use anyhow::{bail, Context, Result};

/// What the bot needs on the server; `cargo xtask secrets` writes these to the server's `.env`.
/// `OPENROUTER_API_KEY` only with the OpenRouter provider: see [`required_app_vars`].
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
    "LATTICE_NOTIFY_WEBHOOK",
    "ALERT_AFTER_SECS",
    "RUST_LOG",
    "SHARD_COUNT",
];

/// The app variables a server's `.env` must hold when it sets `LLM_PROVIDER` to `provider` (unset:
/// the bot's default, OpenRouter): the placeholder provider answers locally and needs no key, as
/// the bot's own configuration says.
pub fn required_app_vars(provider: Option<&str>) -> Vec<&'static str> {
    let placeholder = provider.map(str::trim) == Some("placeholder");
    APP_VARS.iter().copied().filter(|name| !(placeholder && *name == "OPENROUTER_API_KEY")).collect()
}

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

/// `.env` read as Docker Compose reads it, for the cases people write (Compose v2.40 checked by
/// `dotenv_reads_what_compose_reads`):
///
/// - blank lines and lines starting with `#` are skipped; `export ` before a name is allowed;
///   white space around the name and before the value is dropped;
/// - unquoted: the value ends at ` #` (a comment) and trailing white space is dropped; `$$` is a
///   `$`; backslashes are kept as they are;
/// - `'single quoted'`: taken literally, but `\'` is a quote; a comment may follow the closing quote;
/// - `"double quoted"`: `\n`, `\r`, `\t` are control characters, any other `\x` is `x`, `$$` is a `$`;
///   a comment may follow the closing quote.
///
/// Refused, with the line number and never the value: a lone `$` outside single quotes (Compose
/// would substitute a variable there), a quote not closed on its line (multi-line values), and text
/// after a closing quote (Compose would read it as another variable).
pub fn parse_dotenv(text: &str) -> Result<BTreeMap<String, String>> {
    let mut vars = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let n = n + 1;
        let line = line.trim_start();
        if line.trim_end().is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").map(str::trim_start).unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            bail!("line {n}: expected KEY=VALUE (the value is not shown)");
        };
        let key = key.trim();
        let name_ok = key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && key.chars().next().is_some_and(|c| !c.is_ascii_digit());
        if !name_ok {
            bail!("line {n}: {key:?} is not a valid variable name");
        }
        let value = dotenv_value(value.trim_start())
            .map_err(|why| anyhow::anyhow!("line {n} ({key}): {why} (the value is not shown)"))?;
        vars.insert(key.to_string(), value);
    }
    Ok(vars)
}

/// One value as Compose reads it (see [`parse_dotenv`]), or why it is refused.
fn dotenv_value(raw: &str) -> std::result::Result<String, &'static str> {
    const DOLLAR: &str = "a `$` that Compose would take for a variable: write `$$` for a literal `$`, \
                          or put the value in single quotes";
    let mut out = String::new();
    let mut chars = raw.chars().peekable();
    let rest: String = match chars.peek() {
        Some(&quote @ ('\'' | '"')) => {
            chars.next();
            let mut closed = false;
            while let Some(c) = chars.next() {
                match (quote, c) {
                    (_, c) if c == quote => {
                        closed = true;
                        break;
                    }
                    ('\'', '\\') if chars.peek() == Some(&'\'') => out.push(chars.next().unwrap_or('\'')),
                    ('"', '\\') => match chars.next() {
                        Some('n') => out.push('\n'),
                        Some('r') => out.push('\r'),
                        Some('t') => out.push('\t'),
                        Some(other) => out.push(other),
                        None => out.push('\\'),
                    },
                    ('"', '$') if chars.peek() == Some(&'$') => {
                        chars.next();
                        out.push('$');
                    }
                    ('"', '$') => return Err(DOLLAR),
                    (_, c) => out.push(c),
                }
            }
            if !closed {
                return Err(
                    "the quote is not closed on this line (values over several lines are not supported)",
                );
            }
            chars.collect()
        }
        _ => {
            let value = raw.split(" #").next().unwrap_or("").trim_end();
            let mut chars = value.chars().peekable();
            while let Some(c) = chars.next() {
                if c == '$' {
                    if chars.peek() != Some(&'$') {
                        return Err(DOLLAR);
                    }
                    chars.next();
                }
                out.push(c);
            }
            String::new()
        }
    };
    let rest = rest.trim();
    if !rest.is_empty() && !rest.starts_with('#') {
        return Err("text after the closing quote, which Compose would read as another variable");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn dotenv_lines_parse() {
        let vars = parse_dotenv("# c\n\nexport A=1\nB = \"two words\"\nC='x=y'\nD=\n").unwrap();
        assert_eq!(vars["A"], "1");
        assert_eq!(vars["B"], "two words");
        assert_eq!(vars["C"], "x=y");
        assert_eq!(vars["D"], "");
    }

    /// What Compose v2 reads from each line (checked against `docker compose --env-file … config`
    /// by `dotenv_reads_what_compose_reads`).
    const COMPOSE_SAMPLE: &[(&str, &str, &str)] = &[
        ("INLINE", "INLINE=abc # a comment", "abc"),
        ("HASH", "HASH=abc#not-a-comment", "abc#not-a-comment"),
        ("TAB", "TAB=a\t#tab", "a\t#tab"),
        ("BARE", "BARE=#x", "#x"),
        ("SINGLE", "SINGLE='quoted # kept' # a comment", "quoted # kept"),
        ("SQ_LITERAL", r"SQ_LITERAL='p$s\n'", r"p$s\n"),
        ("SQ_QUOTE", r"SQ_QUOTE='x\'y'", "x'y"),
        ("DOUBLE", r#"DOUBLE="dq \"esc\" \n nl \t t \\ \$x $$y" # c"#, "dq \"esc\" \n nl \t t \\ $x $y"),
        ("EXPORTED", "export EXPORTED=exp", "exp"),
        ("SPACED", "  SPACED = spaced  ", "spaced"),
        ("LEADING", "LEADING=  'lead'", "lead"),
        ("DOLLARS", "DOLLARS=p$$s", "p$s"),
        ("BACKSLASH", r"BACKSLASH=a\nb\\c", r"a\nb\\c"),
    ];

    #[test]
    fn dotenv_follows_composes_rules() {
        let text: String = COMPOSE_SAMPLE.iter().map(|(_, line, _)| [*line, "\n"].concat()).collect();
        let vars = parse_dotenv(&text).unwrap();
        for (name, line, want) in COMPOSE_SAMPLE {
            assert_eq!(vars[*name], *want, "{line}");
        }
    }

    /// The sample above, read by Compose itself: what `secrets` sends is what Compose reads.
    #[test]
    fn dotenv_reads_what_compose_reads() {
        let sh = xshell::Shell::new().unwrap();
        let dir = sh.create_temp_dir().unwrap();
        let text: String = COMPOSE_SAMPLE.iter().map(|(_, line, _)| [*line, "\n"].concat()).collect();
        std::fs::write(dir.path().join("sample.env"), &text).unwrap();
        let environment: String =
            COMPOSE_SAMPLE.iter().map(|(name, _, _)| format!("      {name}: ${{{name}}}\n")).collect();
        std::fs::write(
            dir.path().join("compose.yml"),
            ["services:\n  probe:\n    image: probe\n    environment:\n", &environment].concat(),
        )
        .unwrap();
        let _cd = sh.push_dir(dir.path());
        let config =
            crate::plan::Cmd::of("docker compose -p dotenv-probe --env-file sample.env -f compose.yml")
                .args(["config", "--format", "json"]);
        let json =
            crate::plan::Plan::new(&sh, false).read(config).expect("`docker compose` (v2) reads the sample");
        let config: serde_json::Value = serde_json::from_str(&json).unwrap();
        let ours = parse_dotenv(&text).unwrap();
        for (name, line, _) in COMPOSE_SAMPLE {
            // `config` writes a literal `$` as `$$`.
            let theirs =
                config["services"]["probe"]["environment"][name].as_str().unwrap().replace("$$", "$");
            assert_eq!(ours[*name], theirs, "{line}");
        }
    }

    #[test]
    fn what_compose_would_read_differently_is_refused_without_the_value() {
        for (text, why) in [
            ("A=se$cret\n", "a `$` that Compose would take for a variable"),
            ("A=\"se${cret}\"\n", "a `$` that Compose would take for a variable"),
            ("A='secret\n", "the quote is not closed on this line"),
            ("A='secret''s'\n", "text after the closing quote"),
        ] {
            let err = parse_dotenv(&["B=1\n", text].concat()).unwrap_err().to_string();
            assert!(err.starts_with("line 2 (A): ") && err.contains(why), "{err}");
            assert!(!err.contains("secret") && !err.contains("cret"), "{err}");
        }
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

    /// Names no person sets, which `.env.example` therefore leaves out, each with the reason.
    const NOT_FOR_PEOPLE: &[(&str, &str)] = &[
        ("PATH", "the system's"),
        ("USER", "the system's (who deployed)"),
        ("LOGNAME", "the system's (who deployed)"),
        ("GITHUB_ACTIONS", "set by GitHub Actions"),
        ("GITHUB_ACTOR", "set by GitHub Actions"),
        ("GITHUB_REPOSITORY", "set by GitHub Actions"),
        ("GITHUB_SERVER_URL", "set by GitHub Actions"),
        ("ACTIONS_RUNTIME_TOKEN", "set by GitHub Actions"),
        ("CARGO_TARGET_DIR", "cargo's own"),
        ("CARGO_TERM_COLOR", "cargo's own"),
        ("LATTICE_TEST_PAUSE_AT", "a hook of the deploy end-to-end test"),
        ("LATTICE_GIT_SHA", "the image carries it"),
        ("LATTICE_DEV_BUILD", "set by `cargo xtask dev` for Compose"),
        ("BOT_IMAGE", "each release's release.env on the server"),
        ("LATTICE_BOT_REPLICAS", "set by cargo xtask when it renders a swarm stack"),
        ("LATTICE_SECRET_DISCORD_TOKEN", "each swarm release's secrets.env: a Docker secret's name"),
        ("LATTICE_SECRET_OPENROUTER_API_KEY", "each swarm release's secrets.env: a Docker secret's name"),
        ("LATTICE_SECRET_POSTGRES_PASSWORD", "each swarm release's secrets.env: a Docker secret's name"),
        ("LATTICE_SECRET_NOTIFY_WEBHOOK", "each swarm release's secrets.env: a Docker secret's name"),
        ("STANDIN_GUILD_ID", "the local stand-in's ids, its built-in world by default"),
        ("STANDIN_MAIN_CHANNEL_ID", "the local stand-in's ids, its built-in world by default"),
        ("STANDIN_DREAM_CHANNEL_ID", "the local stand-in's ids, its built-in world by default"),
    ];

    fn is_env_name(name: &str) -> bool {
        name.len() > 2
            && name.starts_with(|c: char| c.is_ascii_uppercase())
            && name.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
    }

    /// The environment variables a Rust source reads, outside its unit tests: the literal first
    /// argument of an environment lookup (`env.get("X")`, `std::env::var("X")`, the bot's
    /// `r.number("X", …)` and kin), the names in `const …_VARS` / `SETTINGS` lists, and
    /// `const …_VAR: &str = "X"`.
    fn names_read_by(source: &str) -> BTreeSet<String> {
        let code = source.split("#[cfg(test)]\nmod tests").next().unwrap_or(source);
        let mut names = BTreeSet::new();
        let quoted = |text: &str| -> Vec<String> {
            text.split('"').skip(1).step_by(2).filter(|n| is_env_name(n)).map(str::to_string).collect()
        };
        for call in [
            "get(\"",
            "var(\"",
            "var_os(\"",
            "required(\"",
            "number(\"",
            "url(\"",
            "snowflake(\"",
            "checked(\"",
        ] {
            for (at, _) in code.match_indices(call) {
                let rest = &code[at + call.len()..];
                let name = &rest[..rest.find('"').unwrap_or(0)];
                if is_env_name(name) {
                    names.insert(name.to_string());
                }
            }
        }
        for decl in code.split("const ").skip(1) {
            let Some((ident, rest)) = decl.split_once(':') else { continue };
            if ident.ends_with("VARS") || ident == "SETTINGS" {
                names.extend(quoted(&rest[..rest.find("];").unwrap_or(0)]));
            } else if ident.ends_with("_VAR") {
                names.extend(quoted(rest.lines().next().unwrap_or("")));
            }
        }
        names
    }

    /// `${NAME` in a compose file: what Compose reads from the environment and `.env`.
    fn names_read_by_compose(text: &str) -> BTreeSet<String> {
        text.split("${")
            .skip(1)
            .map(|rest| rest.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).next().unwrap_or(""))
            .filter(|n| is_env_name(n))
            .map(str::to_string)
            .collect()
    }

    fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                rust_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    /// `.env.example` lists every name the code reads, no more: the names are found in the sources
    /// of the bot and the xtask and in the compose files, never kept by hand.
    #[test]
    fn env_example_names_exactly_what_the_code_reads() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let mut files = Vec::new();
        rust_files(&root.join("bot/src"), &mut files);
        rust_files(&root.join("xtask/src"), &mut files);
        let mut read = BTreeSet::new();
        for file in &files {
            read.extend(names_read_by(&std::fs::read_to_string(file).unwrap()));
        }
        for entry in std::fs::read_dir(root.join("compose")).unwrap() {
            read.extend(names_read_by_compose(&std::fs::read_to_string(entry.unwrap().path()).unwrap()));
        }
        for name in ["LATTICE_IMAGE", "DISCORD_TOKEN", "SSH_HOST", "POSTGRES_IMAGE", "REGISTRY_USER"] {
            assert!(read.contains(name), "the scan missed {name}: it no longer finds what the code reads");
        }
        let example: BTreeSet<String> = include_str!("../../.env.example")
            .lines()
            .map(|line| line.trim_start_matches(['#', ' ']))
            .filter_map(|line| line.split_once('=').map(|(name, _)| name))
            .filter(|name| is_env_name(name))
            .map(str::to_string)
            .collect();
        let undocumented: Vec<&String> = read
            .iter()
            .filter(|n| !example.contains(*n) && !NOT_FOR_PEOPLE.iter().any(|(m, _)| m == n))
            .collect();
        assert!(undocumented.is_empty(), "read by the code, missing from .env.example: {undocumented:?}");
        let stale: Vec<&String> = example.iter().filter(|n| !read.contains(*n)).collect();
        assert!(stale.is_empty(), "in .env.example, but nothing reads them: {stale:?}");
        let exempt_but_listed: Vec<&str> =
            NOT_FOR_PEOPLE.iter().map(|(n, _)| *n).filter(|n| example.contains(*n)).collect();
        assert!(
            exempt_but_listed.is_empty(),
            "listed in .env.example and in NOT_FOR_PEOPLE: {exempt_but_listed:?}"
        );
    }
}
