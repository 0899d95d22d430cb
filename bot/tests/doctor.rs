//! `lattice-bot doctor`: what it finds, said so a person knows what to fix — a self-signed
//! endpoint is a certificate verification error (not a DNS, file or library error), a database
//! host that does not resolve is a DNS error, and the configured endpoints are what it checks.

mod common;

use std::{net::TcpListener, process::Command};

use common::{SelfSignedTls, BIN};

fn doctor(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let out =
        Command::new(BIN).arg("doctor").args(args).env_clear().envs(env.iter().copied()).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// The report line of one check, e.g. `tls` of `https://127.0.0.1:4433`.
fn line<'a>(text: &'a str, check: &str, subject: &str) -> &'a str {
    text.lines()
        .find(|l| l.split_whitespace().nth(1) == Some(check) && l.contains(subject))
        .unwrap_or_else(|| panic!("no `{check}` line for {subject} in:\n{text}"))
}

#[test]
fn a_self_signed_endpoint_fails_certificate_verification() {
    let tls = SelfSignedTls::start();
    let postgres = TcpListener::bind("127.0.0.1:0").unwrap();
    let pg_port = postgres.local_addr().unwrap().port().to_string();
    let by_ip = format!("https://127.0.0.1:{}", tls.port);
    let by_name = format!("https://localhost:{}/api/v10", tls.port);
    let (ok, text) = doctor(
        &["--url", &by_ip, "--url", &by_name],
        &[("POSTGRES_HOST", "127.0.0.1"), ("POSTGRES_PORT", &pg_port)],
    );
    assert!(!ok, "must exit non-zero:\n{text}");
    for url in [&by_ip, &by_name] {
        let tls_line = line(&text, "tls", url);
        assert!(tls_line.starts_with("FAIL"), "{text}");
        assert!(tls_line.contains("certificate verification failed: UnknownIssuer"), "{text}");
        for wrong in ["resolve", "No such file", "not found", "library"] {
            assert!(!tls_line.contains(wrong), "{wrong:?} in {tls_line}");
        }
    }
    assert!(line(&text, "tcp", &format!("127.0.0.1:{pg_port}")).starts_with("ok"), "{text}");
    assert!(line(&text, "tmp", "").starts_with("ok"), "{text}");
    assert!(text.contains("2 of 5 checks failed"), "{text}");
    // The refusal was the client's: the server heard it reject the certificate.
    let errors = tls.failed_handshakes(2);
    assert!(errors.iter().all(|e| e.contains("UnknownCA")), "{errors:?}");
}

#[test]
fn a_database_host_that_does_not_resolve_is_a_dns_error_and_no_connection_is_tried() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let plain = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let (ok, text) = doctor(&["--url", &plain], &[("POSTGRES_HOST", "no-such-host.invalid")]);
    assert!(!ok, "{text}");
    let dns = line(&text, "dns", "no-such-host.invalid");
    assert!(dns.starts_with("FAIL") && dns.contains("does not resolve"), "{text}");
    let tcp = line(&text, "tcp", "no-such-host.invalid:5432");
    assert!(tcp.starts_with("FAIL") && tcp.contains("not tried"), "{text}");
    assert!(line(&text, "tcp", &plain).starts_with("ok"), "{text}");
}

#[test]
fn by_default_the_configured_endpoints_are_checked_and_no_secret_is_printed() {
    let tls = SelfSignedTls::start();
    let discord = TcpListener::bind("127.0.0.1:0").unwrap();
    let discord_port = discord.local_addr().unwrap().port();
    let postgres = TcpListener::bind("127.0.0.1:0").unwrap();
    let secret = "pw-doctor-secret-71c3";
    let database_url =
        format!("postgres://lattice:{secret}@localhost:{}/lattice", postgres.local_addr().unwrap().port());
    let api = format!("http://127.0.0.1:{discord_port}");
    let gateway = format!("ws://127.0.0.1:{discord_port}");
    let openrouter = format!("https://localhost:{}/api/v1", tls.port);
    let (ok, text) = doctor(
        &[],
        &[
            ("DATABASE_URL", &database_url),
            ("DISCORD_API_URL", &api),
            ("DISCORD_GATEWAY_URL", &gateway),
            ("OPENROUTER_BASE_URL", &openrouter),
            ("OPENROUTER_API_KEY", "sk-or-doctor-secret-9a"),
        ],
    );
    assert!(!ok, "the self-signed OpenRouter stand-in must fail:\n{text}");
    assert!(line(&text, "dns", "localhost").starts_with("ok"), "{text}");
    assert!(line(&text, "tcp", &api).starts_with("ok"), "{text}");
    assert!(line(&text, "tcp", &gateway).starts_with("ok"), "{text}");
    assert!(line(&text, "tls", &openrouter).contains("UnknownIssuer"), "{text}");
    assert!(text.contains("1 of 6 checks failed"), "{text}");
    assert!(!text.contains(secret) && !text.contains("sk-or-doctor-secret"), "{text}");
}

#[test]
fn a_bad_url_is_refused_by_name() {
    let (ok, text) = doctor(&["--url", "ftp://example.com"], &[("POSTGRES_HOST", "127.0.0.1")]);
    assert!(!ok);
    assert!(line(&text, "tls", "ftp://example.com").contains("unsupported scheme ftp://"), "{text}");
}
