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
    fn the_password_travels_on_stdin_and_nothing_without_credentials() {
        let env = Env::from_pairs([("REGISTRY_USER", "ci-bot"), ("REGISTRY_PASSWORD", "hunter2")]);
        let login = login(&env, "owner/bot").unwrap();
        assert_eq!(login.to_string(), "docker login --username ci-bot --password-stdin docker.io");
        assert_eq!(login.input(), Some(&b"hunter2"[..]));
        assert!(super::login(&Env::from_pairs([("REGISTRY_USER", "ci-bot")]), "owner/bot").is_none());
    }
}
