//! The image registry: which host an image repository lives on, and the one way this project logs
//! in to it — for a push from here, the deploy's preflight, and the server's pull alike.

use crate::{env::Env, plan::Cmd};

/// The host to log in to for an image repository: its first path component when that looks like a
/// host (`ghcr.io`, `127.0.0.1:5000`, `localhost`), else Docker Hub (`docker.io`, which `docker
/// login` takes as Docker Hub's own login server).
pub fn host(repository: &str) -> &str {
    match repository.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => first,
        _ => "docker.io",
    }
}

/// A registry on 127.0.0.0/8 or localhost speaks plain HTTP: Docker trusts it, `docker manifest`
/// must be told (`--insecure`).
pub fn is_loopback(repository: &str) -> bool {
    let host = host(repository);
    host.starts_with("127.") || host == "localhost" || host.starts_with("localhost:")
}

/// `docker login` to the repository's host when REGISTRY_USER and REGISTRY_PASSWORD are set, the
/// password on stdin (never argv); `None` otherwise. The same command runs here or, carried by ssh,
/// on the server.
pub fn login(env: &Env, repository: &str) -> Option<Cmd> {
    let (user, password) = (env.get("REGISTRY_USER")?, env.get("REGISTRY_PASSWORD")?);
    Some(
        Cmd::of("docker login --username")
            .arg(user)
            .arg("--password-stdin")
            .arg(host(repository))
            .stdin(password),
    )
}

/// What a failed `docker manifest inspect <image>` means for the user, from its standard error:
/// the image missing is one thing, the registry down, refusing the login or the name invalid
/// are others, and each says what to do.
pub fn manifest_problem(image: &str, stderr: &str) -> String {
    let said = stderr.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("no output");
    let lower = stderr.to_lowercase();
    let host = host(image);
    if lower.contains("invalid reference format") {
        format!(
            "{image} is not a valid image name ({said}): image names are lowercase letters, digits and . _ - / \
             (set LATTICE_IMAGE or [workspace.metadata.lattice] image)"
        )
    } else if ["unauthorized", "denied", "authentication required", "forbidden"]
        .iter()
        .any(|w| lower.contains(w))
    {
        format!(
            "the registry {host} refused to show {image} ({said}): check REGISTRY_USER and REGISTRY_PASSWORD \
             (or `docker login {host}`) and that this login may read the repository"
        )
    } else if lower.contains("no such manifest")
        || lower.contains("manifest unknown")
        || lower.contains("not found")
    {
        format!(
            "the image {image} is not in the registry: build and push it first (`cargo xtask image push` on \
             that commit, or `cargo xtask release`)"
        )
    } else {
        format!(
            "could not ask the registry {host} whether {image} exists ({said}): check that the registry is up \
             and reachable from here, then run the deploy again"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_hosts_are_recognised_docker_hub_included() {
        assert_eq!(host("ghcr.io/o/bot"), "ghcr.io");
        assert_eq!(host("127.0.0.1:5000/lattice-bot"), "127.0.0.1:5000");
        assert_eq!(host("localhost/bot"), "localhost");
        assert_eq!(host("owner/bot"), "docker.io");
        assert_eq!(host("library/bot"), "docker.io");
        assert_eq!(host("bot"), "docker.io");
        assert!(is_loopback("127.0.0.1:5000/bot"));
        assert!(is_loopback("localhost:5000/bot"));
        assert!(!is_loopback("ghcr.io/o/bot"));
        assert!(!is_loopback("localhost.example.com/bot"));
    }

    #[test]
    fn a_failed_manifest_lookup_says_what_went_wrong() {
        let image = "127.0.0.1:5999/bot:abc1234";
        let down = manifest_problem(
            image,
            "failed to configure transport: error pinging v2 registry: Get \"https://127.0.0.1:5999/v2/\": dial tcp \
             127.0.0.1:5999: connect: connection refused\n",
        );
        assert!(down.starts_with("could not ask the registry 127.0.0.1:5999 whether"), "{down}");
        assert!(down.contains("connection refused"), "{down}");
        let upper = manifest_problem(
            "Foo/Bar:abc1234",
            "invalid reference format: repository name (Bar) must be lowercase",
        );
        assert!(
            upper.starts_with("Foo/Bar:abc1234 is not a valid image name (invalid reference format"),
            "{upper}"
        );
        let denied = manifest_problem("ghcr.io/o/bot:abc1234", "unauthorized: authentication required");
        assert!(denied.starts_with("the registry ghcr.io refused to show ghcr.io/o/bot:abc1234"), "{denied}");
        let missing = manifest_problem("ghcr.io/o/bot:abc1234", "no such manifest: ghcr.io/o/bot:abc1234");
        assert!(
            missing.starts_with("the image ghcr.io/o/bot:abc1234 is not in the registry: build and push it"),
            "{missing}"
        );
    }

    #[test]
    fn the_password_travels_on_stdin_and_nothing_without_credentials() {
        let env = Env::from_pairs([("REGISTRY_USER", "ci-bot"), ("REGISTRY_PASSWORD", "hunter2")]);
        let login = login(&env, "owner/bot").unwrap();
        assert_eq!(login.to_string(), "docker login --username ci-bot --password-stdin docker.io");
        assert_eq!(login.input(), Some(&b"hunter2"[..]));
        assert!(super::login(&Env::from_pairs([("REGISTRY_USER", "ci-bot")]), "owner/bot").is_none());
    }
}
