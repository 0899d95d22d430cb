//! Commands as data: a program and its words, quoted once, where the words become a line.
//!
//! [`Cmd`] is one command (`docker compose … pull`); [`Line`] joins commands for a shell with
//! `&&`, `||` and `;` and redirects their output — what ssh hands the server, which parses it
//! again. Both print as a POSIX shell would read them back into the same words, so the plan a dry
//! run prints is the very thing that runs, and tests can compare it as a string. Environment
//! values and standard input travel beside the words and are never printed: that is where secrets go.

use std::{ffi::OsStr, fmt};

/// One command: a program, its arguments, and what it gets besides (environment, stdin).
#[derive(Clone, PartialEq, Eq)]
pub struct Cmd {
    words: Vec<String>,
    env: Vec<(String, String)>,
    env_remove: Vec<String>,
    env_clear: bool,
    stdin: Option<Vec<u8>>,
}

impl Cmd {
    pub fn new(program: impl AsRef<OsStr>) -> Cmd {
        Cmd {
            words: vec![word(program)],
            env: Vec::new(),
            env_remove: Vec::new(),
            env_clear: false,
            stdin: None,
        }
    }

    /// A fixed command written as one line, e.g. `Cmd::of("git rev-parse HEAD")`: split at spaces,
    /// so it takes only literals; every word that varies goes through [`Cmd::arg`].
    pub fn of(line: &'static str) -> Cmd {
        let mut words = line.split_whitespace();
        let program = words.next().expect("Cmd::of needs a program");
        Cmd::new(program).args(words)
    }

    /// A script run by `sh -c`, its arguments positional (`$1`, `$2`, …; `$0` is `name`): the
    /// script's text stays fixed, and no value is ever pasted into it. Its comment lines stay in
    /// its file: the code alone travels (and is printed).
    pub fn script(name: &str, text: &str) -> Cmd {
        let code: Vec<&str> =
            text.lines().filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#')).collect();
        Cmd::new("sh").args(["-c", &code.join("\n"), name])
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Cmd {
        self.words.push(word(arg));
        self
    }

    pub fn args<I>(mut self, args: I) -> Cmd
    where
        I: IntoIterator,
        I::Item: AsRef<OsStr>,
    {
        self.words.extend(args.into_iter().map(word));
        self
    }

    /// Sets a variable in the command's environment; its value is never printed.
    pub fn env(mut self, key: &str, value: impl AsRef<OsStr>) -> Cmd {
        self.env.push((key.to_string(), word(value)));
        self
    }

    /// Leaves a variable of this process's environment out of the command's.
    pub fn env_remove(mut self, key: &str) -> Cmd {
        self.env_remove.push(key.to_string());
        self
    }

    /// Starts the command with an empty environment, but for what [`Cmd::env`] sets.
    pub fn env_clear(mut self) -> Cmd {
        self.env_clear = true;
        self
    }

    /// Feeds `input` to the command's standard input; it is never printed.
    pub fn stdin(mut self, input: impl AsRef<[u8]>) -> Cmd {
        self.stdin = Some(input.as_ref().to_vec());
        self
    }

    pub fn program(&self) -> &str {
        &self.words[0]
    }

    /// The arguments after the program.
    pub fn arguments(&self) -> &[String] {
        &self.words[1..]
    }

    pub fn words(&self) -> &[String] {
        &self.words
    }

    pub fn envs(&self) -> &[(String, String)] {
        &self.env
    }

    /// The variables left out of the command's environment.
    pub fn removed_envs(&self) -> &[String] {
        &self.env_remove
    }

    pub fn clears_env(&self) -> bool {
        self.env_clear
    }

    pub fn input(&self) -> Option<&[u8]> {
        self.stdin.as_deref()
    }
}

/// The first command of a [`Line`].
impl Cmd {
    pub fn and(self, next: impl Into<Line>) -> Line {
        Line::from(self).and(next)
    }

    pub fn or(self, next: impl Into<Line>) -> Line {
        Line::from(self).or(next)
    }

    pub fn then(self, next: impl Into<Line>) -> Line {
        Line::from(self).then(next)
    }

    pub fn write_to(self, path: &str) -> Line {
        Line::from(self).write_to(path)
    }

    pub fn append_to(self, path: &str) -> Line {
        Line::from(self).append_to(path)
    }

    pub fn without_errors(self) -> Line {
        Line::from(self).without_errors()
    }

    pub fn silent(self) -> Line {
        Line::from(self).silent()
    }

    pub fn read_from(self, path: &str) -> Line {
        Line::from(self).read_from(path)
    }
}

/// The words as a shell line, each quoted as needed.
impl fmt::Display for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&shell_words(&self.words))
    }
}

/// Like `Display`, plus the names (never the values) of the variables set.
impl fmt::Debug for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.env.iter().map(|(k, _)| k.as_str()).collect();
        write!(f, "`{self}` (env: {}; stdin: {})", names.join(" "), self.stdin.is_some())
    }
}

/// Commands joined for a shell, as ssh hands them to the server. Built left to right; `&&` and
/// `||` bind left to right as the shell binds them, `;` loosest. A redirection applies to the
/// command just before it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    text: String,
}

impl Line {
    /// `self && next`
    pub fn and(self, next: impl Into<Line>) -> Line {
        self.join(" && ", next.into())
    }

    /// `self || next`
    pub fn or(self, next: impl Into<Line>) -> Line {
        self.join(" || ", next.into())
    }

    /// `self; next`
    pub fn then(self, next: impl Into<Line>) -> Line {
        self.join("; ", next.into())
    }

    /// `… > path`: standard output to a file.
    pub fn write_to(self, path: &str) -> Line {
        self.redirect(" > ", path)
    }

    /// `… >> path`: standard output appended to a file.
    pub fn append_to(self, path: &str) -> Line {
        self.redirect(" >> ", path)
    }

    /// `… 2>/dev/null`: no error output (the exit status still counts).
    pub fn without_errors(self) -> Line {
        self.redirect(" 2>", "/dev/null")
    }

    /// `… < path`: standard input from a file.
    pub fn read_from(self, path: &str) -> Line {
        self.redirect(" < ", path)
    }

    /// `… >/dev/null 2>&1`: no output at all.
    pub fn silent(self) -> Line {
        let mut line = self.redirect(" >", "/dev/null");
        line.text.push_str(" 2>&1");
        line
    }

    fn join(mut self, operator: &str, next: Line) -> Line {
        self.text.push_str(operator);
        self.text.push_str(&next.text);
        self
    }

    fn redirect(mut self, operator: &str, path: &str) -> Line {
        self.text.push_str(operator);
        self.text.push_str(&shell_quote(path));
        self
    }
}

impl From<Cmd> for Line {
    /// Only the words: a remote shell gets no local environment or input through here.
    fn from(cmd: Cmd) -> Line {
        debug_assert!(
            cmd.env.is_empty() && cmd.env_remove.is_empty() && cmd.stdin.is_none(),
            "{cmd:?} would lose its env or stdin"
        );
        Line { text: cmd.to_string() }
    }
}

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn word(w: impl AsRef<OsStr>) -> String {
    // Paths here are UTF-8; a stray byte would show as U+FFFD rather than fail.
    w.as_ref().to_string_lossy().into_owned()
}

/// Quotes one word for a POSIX shell: plain words stay as they are, others are single-quoted.
pub fn shell_quote(word: &str) -> String {
    let plain =
        !word.is_empty() && word.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:=@,+%^".contains(c));
    if plain {
        word.to_string()
    } else {
        let mut quoted = String::from("'");
        quoted.push_str(&word.replace('\'', r#"'\''"#));
        quoted.push('\'');
        quoted
    }
}

/// Quotes and joins words into one shell command line.
pub fn shell_words<S: AsRef<str>>(words: &[S]) -> String {
    words.iter().map(|w| shell_quote(w.as_ref())).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_words_stay_readable_and_others_are_single_quoted() {
        assert_eq!(shell_quote("releases/abc123"), "releases/abc123");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("$HOME"), "'$HOME'");
        assert_eq!(shell_quote("it's"), r#"'it'\''s'"#);
        assert_eq!(shell_words(&["echo", "a;b", "c"]), "echo 'a;b' c");
    }

    #[test]
    fn quoted_words_survive_a_real_shell() {
        for word in ["it's", "$(rm -rf /)", "a\nb", "`x`", "\\", "\"q\"", "*", ""] {
            let line = Cmd::new("printf").arg("%s").arg(word).to_string();
            let out = std::process::Command::new("sh").arg("-c").arg(&line).output().unwrap();
            assert_eq!(String::from_utf8_lossy(&out.stdout), word, "{line}");
        }
    }

    #[test]
    fn a_command_prints_its_words_never_its_env_or_input() {
        let cmd = Cmd::of("docker login --username")
            .arg("ci bot")
            .arg("--password-stdin")
            .env("TOKEN", "s3cr3t")
            .stdin("hunter2");
        assert_eq!(cmd.to_string(), "docker login --username 'ci bot' --password-stdin");
        let debug = format!("{cmd:?}");
        assert!(
            debug.contains("TOKEN") && !debug.contains("s3cr3t") && !debug.contains("hunter2"),
            "{debug}"
        );
        assert_eq!(cmd.program(), "docker");
    }

    #[test]
    fn a_line_joins_commands_and_redirects_the_last() {
        let line = Cmd::of("cat")
            .arg(".lock holder")
            .without_errors()
            .or(Cmd::of("echo unknown"))
            .then(Cmd::of("mkdir -p").arg("a b"))
            .and(Cmd::of("cat").write_to("x y"));
        assert_eq!(
            line.to_string(),
            "cat '.lock holder' 2>/dev/null || echo unknown; mkdir -p 'a b' && cat > 'x y'"
        );
        let silent = Cmd::of("docker image inspect x").silent().or(Cmd::of("echo -"));
        assert_eq!(silent.to_string(), "docker image inspect x >/dev/null 2>&1 || echo -");
    }

    #[test]
    fn a_script_keeps_its_text_and_takes_values_as_arguments() {
        let cmd = Cmd::script(
            "lock.sh",
            "#!/bin/sh\n# what it does\nset -eu\n\n  # why\necho \"$1\" # the value\n",
        )
        .arg("it's $(x)");
        assert_eq!(cmd.arguments()[1], "set -eu\necho \"$1\" # the value");
        let out = std::process::Command::new("sh").arg("-c").arg(cmd.to_string()).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "it's $(x)\n");
    }
}
