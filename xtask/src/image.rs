//! NAME
//!     cargo xtask image — build or push the bot image
//!
//! SYNOPSIS
//!     cargo xtask image build [--allow-dirty]
//!     cargo xtask image push  [--allow-dirty]
//!
//! DESCRIPTION
//!     Builds `bot/Dockerfile` and tags it `<image>:<sha>` (the full sha of HEAD) and `<image>:latest`,
//!     where `<image>` is `[workspace.metadata.lattice] image` or LATTICE_IMAGE.
//!
//!     A sha tag must mean that commit: the image is built from the committed tree (`git archive`),
//!     so untracked or modified files can never leak in, and a work tree with uncommitted changes is
//!     refused. `--allow-dirty` builds the work tree instead, says loudly that the tag does not match
//!     the commit, and records `<sha>-dirty` as the image's revision.
//!
//!     Build args: RUST_IMAGE from the environment when set (a local stand-in for the public build
//!     image; the runtime is `scratch`, which is never pulled); always GIT_SHA, CREATED (RFC 3339, UTC), SOURCE (the GitHub
//!     repository in Actions, else the `origin` remote without credentials), SCHEMA_HEAD and
//!     SCHEMA_BACKWARD_COMPATIBLE (from `bot/migrations/*.sql`, see [`Schema`]).
//!
//!     `push` builds unless `<image>:<sha>` of that very commit is already present, then pushes both
//!     tags. With REGISTRY_USER and REGISTRY_PASSWORD set it logs in first, the password on stdin.
//!
//!     In GitHub Actions with buildx: `docker buildx build` with the `gha` BuildKit cache (and
//!     `--push`). That needs a builder that can export caches (docker/setup-buildx-action's default
//!     docker-container driver) and the Actions runtime token in the step's environment
//!     (ACTIONS_RUNTIME_TOKEN; without it the build goes on without the cache, and says so).
//!     Elsewhere `docker build`; without buildx that is the legacy builder, whose layer cache still
//!     keeps the dependency layers (see the Dockerfile), and a note says so.

use std::{
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context, Result};

use crate::{
    env::Env,
    flags::{self, ImageAction},
    plan::{Cmd, Plan},
    project::Project,
    registry,
};

/// The bot's Dockerfile, relative to the workspace root (the build context).
pub const DOCKERFILE: &str = "bot/Dockerfile";
/// Where the bot's sqlx migrations live, relative to the workspace root.
pub const MIGRATIONS_DIR: &str = "bot/migrations";
/// A migration carrying this comment line leaves the schema usable by the previous release.
pub const BACKWARD_COMPATIBLE_MARKER: &str = "-- lattice: backward-compatible";
/// Image label holding the git sha the image was built from (`<sha>-dirty` for a dirty build).
pub const REVISION_LABEL: &str = "org.opencontainers.image.revision";

impl flags::Image {
    pub fn run(self, plan: &Plan, project: &Project) -> Result<()> {
        match self.action {
            ImageAction::Build(opts) => {
                let image = build(plan, project, opts.allow_dirty)?;
                if !plan.is_dry_run() {
                    println!("built {} and {}", image.sha_ref(), image.latest_ref());
                }
            }
            ImageAction::Push(opts) => {
                let image = push(plan, project, opts.allow_dirty)?;
                if !plan.is_dry_run() {
                    println!("pushed {} and {}", image.sha_ref(), image.latest_ref());
                }
            }
        }
        Ok(())
    }
}

/// An image of one commit: `<repository>:<sha>`, also tagged `<repository>:latest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// Without tag, e.g. `ghcr.io/owner/lattice-bot`.
    pub repository: String,
    /// The full 40-hex git sha of the commit.
    pub sha: String,
}

impl ImageRef {
    pub fn new(repository: &str, sha: &str) -> ImageRef {
        ImageRef { repository: repository.to_string(), sha: sha.to_string() }
    }

    /// `<repository>:<sha>`: what a deploy names.
    pub fn sha_ref(&self) -> String {
        format!("{}:{}", self.repository, self.sha)
    }

    /// `<repository>:latest`.
    pub fn latest_ref(&self) -> String {
        format!("{}:latest", self.repository)
    }

    /// Both references, sha first: what `build` tags and `push` pushes.
    pub fn refs(&self) -> [String; 2] {
        [self.sha_ref(), self.latest_ref()]
    }
}

/// Builds `<image>:<sha>` and `<image>:latest` (see the module docs).
pub fn build(plan: &Plan, project: &Project, allow_dirty: bool) -> Result<ImageRef> {
    let mut revision = Revision::read(plan)?;
    revision.admit(plan, allow_dirty)?;
    let image = ImageRef::new(&project.settings.image, &revision.sha);
    let builder = Builder::detect(plan, &project.env)?;
    build_image(plan, project, &image, &revision, builder, Output::Local)?;
    Ok(image)
}

/// Builds (unless that commit's image is already here) and pushes `<image>:<sha>` and
/// `<image>:latest`; returns what was pushed. `release` calls this.
pub fn push(plan: &Plan, project: &Project, allow_dirty: bool) -> Result<ImageRef> {
    let mut revision = Revision::read(plan)?;
    revision.admit(plan, allow_dirty)?;
    let image = ImageRef::new(&project.settings.image, &revision.sha);
    let builder = Builder::detect(plan, &project.env)?;
    login(plan, &project.env, &image)?;

    if builder == Builder::BuildxGha {
        // One step: BuildKit pushes what it built, layers it already has in the registry included.
        return build_image(plan, project, &image, &revision, builder, Output::Push).map(|()| image);
    }

    let sha_ref = image.sha_ref();
    let label = format!("label={REVISION_LABEL}={}", revision.image_revision());
    let present = plan.read(
        Cmd::of("docker image ls --quiet --filter")
            .arg(format!("reference={sha_ref}"))
            .arg("--filter")
            .arg(label),
    )?;
    if plan.is_dry_run() {
        plan.note(&format!("dry run: assuming {sha_ref} is not built yet"));
    }
    if !plan.is_dry_run() && !present.is_empty() && !revision.from_work_tree {
        plan.note(&format!("{sha_ref} is already built from that commit: pushing it as it is"));
        let latest = image.latest_ref();
        plan.run(Cmd::of("docker tag").arg(&sha_ref).arg(latest))?;
    } else {
        build_image(plan, project, &image, &revision, builder, Output::Local)?;
    }
    for reference in image.refs() {
        plan.run(Cmd::of("docker push").arg(&reference)).with_context(|| {
            format!("pushing {reference} (is the registry reachable, and are you logged in? set REGISTRY_USER and REGISTRY_PASSWORD)")
        })?;
    }
    Ok(image)
}

/// What is being built: the commit, and the uncommitted changes on top of it.
struct Revision {
    sha: String,
    /// Paths with uncommitted changes (untracked files included); empty when clean.
    dirty: Vec<String>,
    /// Build the work tree rather than the commit (`--allow-dirty` on a dirty tree).
    from_work_tree: bool,
}

impl Revision {
    fn read(plan: &Plan) -> Result<Revision> {
        // Reading HEAD changes nothing and makes a dry run's printed tags real.
        let sha = plan.read_fact(Cmd::of("git rev-parse HEAD")).context("finding the commit to build")?;
        let status = plan.read(Cmd::of("git status --porcelain --untracked-files=all"))?;
        if plan.is_dry_run() {
            // The status stays unread, so a dry run also shows a dirty tree's plan.
            return Ok(Revision { sha, dirty: Vec::new(), from_work_tree: false });
        }
        if !is_full_sha(&sha) {
            bail!("`git rev-parse HEAD` gave {sha:?}, not a commit sha: is there a commit yet?");
        }
        Ok(Revision { sha, dirty: dirty_paths(&status), from_work_tree: false })
    }

    /// Refuses uncommitted changes, or with `allow_dirty` switches to the work tree, loudly.
    fn admit(&mut self, plan: &Plan, allow_dirty: bool) -> Result<()> {
        if self.dirty.is_empty() {
            return Ok(());
        }
        let listed = summarize_paths(&self.dirty);
        if !allow_dirty {
            bail!(
                "the work tree has uncommitted changes ({listed}); an image tagged {} must contain exactly \
                 that commit. Commit (or stash) them, or pass --allow-dirty to build the work tree anyway",
                self.sha
            );
        }
        plan.note(&format!(
            "WARNING: --allow-dirty: building the WORK TREE with uncommitted changes ({listed}); \
             the tag {} does NOT match that commit (image revision: {}-dirty)",
            self.sha, self.sha
        ));
        self.from_work_tree = true;
        Ok(())
    }

    /// The revision the image records (label and LATTICE_GIT_SHA).
    fn image_revision(&self) -> String {
        if self.from_work_tree {
            format!("{}-dirty", self.sha)
        } else {
            self.sha.clone()
        }
    }
}

/// How the image is built here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Builder {
    /// `docker buildx build` with the GitHub Actions cache (in Actions, with buildx).
    BuildxGha,
    /// `docker build`: BuildKit when buildx is installed.
    Docker,
    /// `docker build` without buildx: the legacy builder and its layer cache.
    Legacy,
}

impl Builder {
    fn detect(plan: &Plan, env: &Env) -> Result<Builder> {
        let has_buildx = plan.check(Cmd::of("docker buildx version"))?;
        let (builder, note) = choose_builder(
            env.get("GITHUB_ACTIONS") == Some("true"),
            has_buildx,
            env.get("ACTIONS_RUNTIME_TOKEN").is_some(),
        );
        if let Some(note) = note {
            plan.note(note);
        }
        Ok(builder)
    }
}

/// Picks the builder, with a note when the best one is not available.
fn choose_builder(
    in_github_actions: bool,
    has_buildx: bool,
    has_cache_token: bool,
) -> (Builder, Option<&'static str>) {
    match (in_github_actions, has_buildx, has_cache_token) {
        (_, false, _) => (
            Builder::Legacy,
            Some("docker buildx not found: building with the legacy builder, which caches layers only (install the docker-buildx-plugin package for BuildKit)"),
        ),
        (true, true, true) => (Builder::BuildxGha, None),
        (true, true, false) => (
            Builder::Docker,
            Some("ACTIONS_RUNTIME_TOKEN is not set, so the gha build cache cannot be used: building without it (expose the Actions runtime to this step, e.g. with crazy-max/ghaction-github-runtime)"),
        ),
        (false, true, _) => (Builder::Docker, None),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Output {
    /// The image ends up in the local engine.
    Local,
    /// BuildKit pushes it straight to the registry.
    Push,
}

fn build_image(
    plan: &Plan,
    project: &Project,
    image: &ImageRef,
    revision: &Revision,
    builder: Builder,
    output: Output,
) -> Result<()> {
    let sh = plan.sh();
    let schema = Schema::read(&project.root.join(MIGRATIONS_DIR))?;
    let source = source_url(plan, &project.env)?;
    let args =
        build_args(&project.env, &revision.image_revision(), &rfc3339_utc(now_secs()), &source, &schema);

    // The committed tree, unpacked in a temporary directory (removed when this returns), is the
    // context; with --allow-dirty, the work tree is.
    let temp = sh.create_temp_dir()?;
    let context: PathBuf = if revision.from_work_tree {
        project.root.clone()
    } else {
        let tar = temp.path().join("context.tar");
        let tree = temp.path().join("tree");
        sh.create_dir(&tree)?;
        let sha = &revision.sha;
        plan.run(Cmd::of("git archive --format=tar --output").arg(&tar).arg(sha))?;
        // With the modes a checkout has (git archive writes 0664 files; the umask makes them what
        // a clone's are), so a build from the work tree and one from a commit share cached layers.
        plan.run(Cmd::of("tar -xf").arg(&tar).arg("-C").arg(&tree).arg("--no-same-permissions"))?;
        tree
    };

    let mut build = match builder {
        Builder::BuildxGha => {
            Cmd::of("docker buildx build --cache-from type=gha --cache-to type=gha,mode=max")
        }
        Builder::Docker => Cmd::of("docker build"),
        // Explicitly legacy: DOCKER_BUILDKIT=1 in the environment would fail without buildx.
        Builder::Legacy => Cmd::of("docker build").env("DOCKER_BUILDKIT", "0"),
    };
    build = build.arg("--file").arg(context.join(DOCKERFILE));
    for (name, value) in &args {
        build = build.arg("--build-arg").arg(format!("{name}={value}"));
    }
    for reference in image.refs() {
        build = build.arg("--tag").arg(reference);
    }
    if builder == Builder::BuildxGha {
        build = build.arg(match output {
            Output::Local => "--load",
            Output::Push => "--push",
        });
    }
    plan.run(build.arg(&context)).with_context(|| format!("building {}", image.sha_ref()))
}

/// The build args, in a stable order. The build image only when set, so the Dockerfile's public
/// default applies otherwise.
fn build_args(
    env: &Env,
    revision: &str,
    created: &str,
    source: &str,
    schema: &Schema,
) -> Vec<(&'static str, String)> {
    let mut args = Vec::new();
    if let Some(value) = env.get("RUST_IMAGE") {
        args.push(("RUST_IMAGE", value.to_string()));
    }
    args.push(("GIT_SHA", revision.to_string()));
    args.push(("CREATED", created.to_string()));
    args.push(("SOURCE", source.to_string()));
    args.push(("SCHEMA_HEAD", schema.head.to_string()));
    args.push(("SCHEMA_BACKWARD_COMPATIBLE", schema.backward_compatible_list()));
    args
}

/// Where the source lives: the GitHub repository in Actions, else the `origin` remote (if any).
fn source_url(plan: &Plan, env: &Env) -> Result<String> {
    if let (Some(server), Some(repository)) = (env.get("GITHUB_SERVER_URL"), env.get("GITHUB_REPOSITORY")) {
        return Ok(format!("{}/{repository}", server.trim_end_matches('/')));
    }
    let remotes = plan.read(Cmd::of("git remote"))?;
    if !remotes.lines().any(|remote| remote.trim() == "origin") {
        return Ok(String::new());
    }
    let url = plan.read(Cmd::of("git remote get-url origin"))?;
    Ok(without_credentials(&url))
}

/// A URL without `user:token@`: a label and the build's argv must never carry a credential.
fn without_credentials(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

/// With REGISTRY_USER and REGISTRY_PASSWORD set, logs in to the image's registry (password on stdin).
fn login(plan: &Plan, env: &Env, image: &ImageRef) -> Result<()> {
    let Some(login) = registry::login(env, &image.repository) else { return Ok(()) };
    let host = registry::host(&image.repository);
    plan.run(login).with_context(|| format!("logging in to {host}"))
}

/// The schema an image's migrations lead to, for its labels: rollback compares these with the
/// database's version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schema {
    /// The highest migration version (0 without migrations).
    pub head: i64,
    /// Versions whose migration carries [`BACKWARD_COMPATIBLE_MARKER`], ascending.
    pub backward_compatible: Vec<i64>,
}

impl Schema {
    /// Reads `*.sql` in `dir` (sqlx's `<version>_<description>.sql`, or `.up.sql`/`.down.sql`).
    pub fn read(dir: &Path) -> Result<Schema> {
        let mut files = Vec::new();
        let entries = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
        for entry in entries {
            let path = entry?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
            if !name.ends_with(".sql") {
                continue;
            }
            let text =
                std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            files.push((name.to_string(), text));
        }
        Schema::from_migrations(&files).with_context(|| format!("in {}", dir.display()))
    }

    /// The schema of these migrations, given as `(file name, contents)`.
    pub fn from_migrations(files: &[(String, String)]) -> Result<Schema> {
        let mut versions: Vec<(i64, bool)> = Vec::new();
        for (name, text) in files {
            if name.ends_with(".down.sql") {
                continue; // reverts a migration; does not move the head
            }
            let Some(version) = migration_version(name) else {
                bail!(
                    "{name}: a migration's name must be <version>_<description>.sql, e.g. 0003_add_index.sql"
                );
            };
            if versions.iter().any(|(v, _)| *v == version) {
                bail!("{name}: version {version} is used by two migrations; give it a new number");
            }
            let compatible = text.lines().any(|line| line.trim() == BACKWARD_COMPATIBLE_MARKER);
            versions.push((version, compatible));
        }
        versions.sort_unstable();
        Ok(Schema {
            head: versions.last().map_or(0, |(v, _)| *v),
            backward_compatible: versions.iter().filter(|(_, c)| *c).map(|(v, _)| *v).collect(),
        })
    }

    /// `2,5` — the label's value.
    pub fn backward_compatible_list(&self) -> String {
        self.backward_compatible.iter().map(i64::to_string).collect::<Vec<_>>().join(",")
    }
}

fn migration_version(name: &str) -> Option<i64> {
    let stem = name.strip_suffix(".up.sql").or_else(|| name.strip_suffix(".sql"))?;
    let (version, description) = stem.split_once('_')?;
    if version.is_empty() || !version.bytes().all(|b| b.is_ascii_digit()) || description.is_empty() {
        return None;
    }
    version.parse().ok()
}

fn is_full_sha(text: &str) -> bool {
    text.len() == 40 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The paths `git status --porcelain` (v1) reports: `XY path` or `XY old -> new`.
fn dirty_paths(porcelain: &str) -> Vec<String> {
    porcelain
        .lines()
        .filter(|line| line.len() > 3)
        .map(|line| {
            let path = &line[3..];
            path.split_once(" -> ").map_or(path, |(_, new)| new).to_string()
        })
        .collect()
}

fn summarize_paths(paths: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut text = paths.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", ");
    if paths.len() > SHOWN {
        text.push_str(&format!(" and {} more", paths.len() - SHOWN));
    }
    text
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `2026-11-27T04:33:51Z` for seconds since the Unix epoch.
fn rfc3339_utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3_600, rem % 3_600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use xshell::Shell;

    use super::*;
    use crate::settings::Settings;

    fn files(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(n, t)| (n.to_string(), t.to_string())).collect()
    }

    #[test]
    fn tags_are_the_full_sha_and_latest() {
        let image = ImageRef::new("ghcr.io/o/lattice-bot", "0123456789abcdef0123456789abcdef01234567");
        assert_eq!(
            image.refs(),
            [
                "ghcr.io/o/lattice-bot:0123456789abcdef0123456789abcdef01234567".to_string(),
                "ghcr.io/o/lattice-bot:latest".to_string()
            ]
        );
    }

    #[test]
    fn schema_head_is_the_highest_version_and_markers_are_collected() {
        let schema = Schema::from_migrations(&files(&[
            ("0002_sessions.sql", "-- lattice: backward-compatible\nCREATE TABLE s ();"),
            ("0001_init.sql", "CREATE TABLE m ();"),
            ("0003_index.up.sql", "CREATE INDEX i ON m (x);\n  -- lattice: backward-compatible  \n"),
            ("0003_index.down.sql", "DROP INDEX i;"),
            ("0004_drop.sql", "-- not lattice: backward-compatible\nDROP TABLE s;"),
        ]))
        .unwrap();
        assert_eq!(schema, Schema { head: 4, backward_compatible: vec![2, 3] });
        assert_eq!(schema.backward_compatible_list(), "2,3");
    }

    #[test]
    fn no_migrations_means_head_zero() {
        let schema = Schema::from_migrations(&[]).unwrap();
        assert_eq!(schema, Schema { head: 0, backward_compatible: vec![] });
        assert_eq!(schema.backward_compatible_list(), "");
    }

    #[test]
    fn a_badly_named_or_duplicate_migration_is_refused_by_name() {
        let err = Schema::from_migrations(&files(&[("init.sql", "")])).unwrap_err().to_string();
        assert!(err.contains("init.sql") && err.contains("<version>_<description>.sql"), "{err}");
        let err =
            Schema::from_migrations(&files(&[("0001_a.sql", ""), ("1_b.sql", "")])).unwrap_err().to_string();
        assert!(err.contains("1_b.sql") && err.contains("version 1"), "{err}");
    }

    #[test]
    fn the_projects_own_migrations_have_a_schema() {
        let root = crate::project::root().unwrap();
        let schema = Schema::read(&root.join(MIGRATIONS_DIR)).unwrap();
        assert!(schema.head >= 1, "{schema:?}");
        assert!(schema.backward_compatible.iter().all(|v| *v <= schema.head));
    }

    #[test]
    fn dirty_paths_come_from_porcelain_status() {
        let status = " M bot/src/main.rs\n?? notes.txt\nR  old.rs -> new.rs\nA  xtask/src/image.rs\n";
        assert_eq!(dirty_paths(status), ["bot/src/main.rs", "notes.txt", "new.rs", "xtask/src/image.rs"]);
        assert!(dirty_paths("").is_empty());
    }

    #[test]
    fn a_long_list_of_changes_is_summarized() {
        let paths: Vec<String> = (1..=7).map(|n| format!("f{n}")).collect();
        assert_eq!(summarize_paths(&paths), "f1, f2, f3, f4, f5 and 2 more");
    }

    #[test]
    fn only_full_shas_are_accepted() {
        assert!(is_full_sha("0123456789abcdef0123456789abcdef01234567"));
        assert!(!is_full_sha("0123456"));
        assert!(!is_full_sha("HEAD"));
    }

    #[test]
    fn created_is_rfc3339_utc() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339_utc(1_795_754_031), "2026-11-27T04:33:51Z");
    }

    #[test]
    fn credentials_never_reach_the_source_label() {
        assert_eq!(
            without_credentials("https://x-access-token:ghs_secret@github.com/o/r.git"),
            "https://github.com/o/r.git"
        );
        assert_eq!(without_credentials("https://github.com/o/r"), "https://github.com/o/r");
        assert_eq!(without_credentials("git@github.com:o/r.git"), "git@github.com:o/r.git");
    }

    #[test]
    fn the_builder_says_why_when_it_falls_back() {
        let (builder, note) = choose_builder(false, false, false);
        assert_eq!(builder, Builder::Legacy);
        assert!(note.unwrap().contains("buildx not found"));
        assert_eq!(choose_builder(true, true, true), (Builder::BuildxGha, None));
        assert_eq!(choose_builder(false, true, true), (Builder::Docker, None));
        let (builder, note) = choose_builder(true, true, false);
        assert_eq!(builder, Builder::Docker);
        assert!(note.unwrap().contains("ACTIONS_RUNTIME_TOKEN"));
    }

    #[test]
    fn the_build_image_is_passed_only_when_set() {
        let schema = Schema { head: 2, backward_compatible: vec![2] };
        let args = build_args(&Env::from_pairs([]), "abc", "2026-01-01T00:00:00Z", "", &schema);
        let names: Vec<_> = args.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["GIT_SHA", "CREATED", "SOURCE", "SCHEMA_HEAD", "SCHEMA_BACKWARD_COMPATIBLE"]);
        let env = Env::from_pairs([("RUST_IMAGE", "local/rust:1"), ("RUNTIME_IMAGE", "local/debian")]);
        let args = build_args(&env, "abc", "t", "s", &schema);
        assert_eq!(args[0], ("RUST_IMAGE", "local/rust:1".to_string()));
        assert_eq!(args[1].0, "GIT_SHA", "no runtime base image to pass: it is scratch");
        assert!(args.contains(&("SCHEMA_BACKWARD_COMPATIBLE", "2".to_string())));
    }

    fn project<const N: usize>(vars: [(&str, &str); N]) -> Project {
        Project {
            root: crate::project::root().unwrap(),
            env: Env::from_pairs(vars),
            settings: Settings { image: "registry.example/lattice-bot".into(), ..Settings::default() },
        }
    }

    #[test]
    fn dry_run_build_archives_the_commit_and_builds_it_with_labels() {
        let sh = Shell::new().unwrap();
        let plan = Plan::new(&sh, true);
        let project = project([("RUST_IMAGE", "lattice-local/rust:1.95-bookworm")]);
        let image = build(&plan, &project, false).unwrap();
        let steps = plan.steps();
        assert_eq!(steps[0], "git rev-parse HEAD");
        assert_eq!(steps[1], "git status --porcelain --untracked-files=all");
        assert_eq!(steps[2], "docker buildx version");
        let archive = steps.iter().position(|s| s.starts_with("git archive --format=tar")).unwrap();
        assert!(steps[archive].contains(&image.sha), "{}", steps[archive]);
        let docker = steps.iter().position(|s| s.starts_with("docker build ")).unwrap();
        assert!(archive < docker, "{steps:#?}");
        let line = &steps[docker];
        assert!(line.contains("/tree/bot/Dockerfile"), "built from the archive: {line}");
        for expected in [
            "--build-arg RUST_IMAGE=lattice-local/rust:1.95-bookworm",
            "GIT_SHA=",
            "--build-arg CREATED=",
            "--build-arg SCHEMA_HEAD=",
            "--build-arg SCHEMA_BACKWARD_COMPATIBLE=",
            &image.sha_ref(),
            "--tag registry.example/lattice-bot:latest",
        ] {
            assert!(line.contains(expected), "{expected} in {line}");
        }
        assert!(!line.contains("RUNTIME_IMAGE"), "{line}");
        assert!(!steps.iter().any(|s| s.starts_with("docker push")), "{steps:#?}");
    }

    #[test]
    fn dry_run_push_logs_in_on_stdin_and_pushes_both_tags() {
        let sh = Shell::new().unwrap();
        let plan = Plan::new(&sh, true);
        let project = project([("REGISTRY_USER", "ci-bot"), ("REGISTRY_PASSWORD", "hunter2-secret")]);
        let image = push(&plan, &project, false).unwrap();
        let steps = plan.steps();
        assert!(steps.contains(&"docker login --username ci-bot --password-stdin registry.example".into()));
        let pushes: Vec<_> = steps.iter().filter(|s| s.starts_with("docker push ")).collect();
        assert_eq!(pushes.len(), 2, "{steps:#?}");
        assert!(pushes[0].contains(&image.sha_ref()), "{steps:#?}");
        assert_eq!(pushes[1], "docker push registry.example/lattice-bot:latest");
        let build = steps.iter().position(|s| s.starts_with("docker build ")).unwrap();
        assert!(steps.iter().position(|s| s.starts_with("docker push ")).unwrap() > build);
        assert!(steps.iter().all(|s| !s.contains("hunter2")), "{steps:#?}");
    }

    #[test]
    fn dry_run_push_in_github_actions_uses_the_gha_cache_and_pushes_from_buildkit() {
        let sh = Shell::new().unwrap();
        let plan = Plan::new(&sh, true);
        let project = project([
            ("GITHUB_ACTIONS", "true"),
            ("ACTIONS_RUNTIME_TOKEN", "token"),
            ("GITHUB_SERVER_URL", "https://github.com"),
            ("GITHUB_REPOSITORY", "owner/lattice"),
        ]);
        push(&plan, &project, false).unwrap();
        let steps = plan.steps();
        let build = steps.iter().find(|s| s.starts_with("docker buildx build")).expect("a buildx build");
        assert!(build.contains("--cache-from type=gha --cache-to type=gha,mode=max"), "{build}");
        assert!(build.contains("--push"), "{build}");
        assert!(build.contains("--build-arg SOURCE=https://github.com/owner/lattice"), "{build}");
        assert!(!steps.iter().any(|s| s.starts_with("docker push")), "{steps:#?}");
        assert!(!steps.iter().any(|s| s.contains("token")), "{steps:#?}");
    }
}
