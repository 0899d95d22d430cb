//! `lattice-bot doctor`: what the bot needs from its surroundings, checked from where it runs.
//!
//! The image has no shell and no tools (it is `scratch` plus the binary and the few files it
//! needs), so the binary checks for itself what a person would otherwise poke at with `getent`,
//! `nc` and `openssl s_client`: a writable temp directory, the database host resolving and taking
//! TCP connections, and TLS to the services the bot talks to, verified against the same bundled
//! webpki roots the bot's HTTP and gateway clients use. Each check prints one line; any failure
//! makes the command exit non-zero. It prints host names and addresses, never credentials.

use std::{
    io::{self, Write as _},
    net::{SocketAddr, TcpStream, ToSocketAddrs},
    sync::Arc,
    time::Duration,
};

use anyhow::{bail, Result};
use rustls::{pki_types::ServerName, ClientConfig, ClientConnection, RootCertStore};

use crate::config::{self, Env};

#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    /// A URL to check DNS, TCP and (for https:// and wss://) TLS against; repeat for several.
    /// Default: the Discord API, the Discord gateway and the OpenRouter base URL, as configured.
    #[arg(long = "url", value_name = "URL")]
    pub urls: Vec<String>,
    /// Seconds each connection and handshake may take.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=120))]
    pub timeout: u64,
}

/// One check's outcome: a line of the report.
#[derive(Debug)]
pub struct Finding {
    pub ok: bool,
    /// `tmp`, `env`, `dns`, `tcp` or `tls`.
    pub check: &'static str,
    /// What was checked: a path, a host, `host:port` or a URL.
    pub subject: String,
    pub detail: String,
}

impl Finding {
    fn pass(check: &'static str, subject: impl Into<String>, detail: impl Into<String>) -> Finding {
        Finding { ok: true, check, subject: subject.into(), detail: detail.into() }
    }

    fn fail(check: &'static str, subject: impl Into<String>, detail: impl Into<String>) -> Finding {
        Finding { ok: false, check, subject: subject.into(), detail: detail.into() }
    }
}

/// Runs every check, printing each line as it completes; fails when any check failed.
pub fn run(args: DoctorArgs, env: &Env) -> Result<()> {
    let timeout = Duration::from_secs(args.timeout);
    let targets = if args.urls.is_empty() {
        config::remote_urls_from_env(env)?.into_iter().map(|(_, url)| url).collect()
    } else {
        args.urls
    };
    let tls = Arc::new(tls_config()?);
    let mut findings = Vec::new();
    let mut report = |finding: Finding| {
        let status = if finding.ok { "ok" } else { "FAIL" };
        println!("{status:<4}  {:<3}  {}: {}", finding.check, finding.subject, finding.detail);
        let _ = io::stdout().flush();
        findings.push(finding);
    };

    report(check_tmp());
    match config::db_server_from_env(env) {
        Ok((host, port)) => {
            for finding in check_database(&host, port, timeout) {
                report(finding);
            }
        }
        Err(e) => report(Finding::fail("env", "database", e.to_string().trim_end().replace('\n', "; "))),
    }
    for url in &targets {
        report(check_url(url, timeout, &tls));
    }

    let failed = findings.iter().filter(|f| !f.ok).count();
    if failed > 0 {
        bail!("{failed} of {} checks failed", findings.len());
    }
    println!("all {} checks passed", findings.len());
    Ok(())
}

/// The TLS client configuration of the bot's own clients: ring, rustls' safe defaults, the
/// webpki roots compiled into the binary (no certificate files are read).
fn tls_config() -> Result<ClientConfig> {
    let roots: RootCertStore = webpki_roots::TLS_SERVER_ROOTS.iter().cloned().collect();
    Ok(ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The temp directory takes a file (sqlx and the standard library may write there).
fn check_tmp() -> Finding {
    let dir = std::env::temp_dir();
    let path = dir.join(format!(".lattice-doctor-{}", std::process::id()));
    let result = std::fs::write(&path, b"ok").and_then(|()| std::fs::remove_file(&path));
    match result {
        Ok(()) => Finding::pass("tmp", dir.display().to_string(), "writable"),
        Err(e) => Finding::fail("tmp", dir.display().to_string(), format!("not writable: {e}")),
    }
}

/// The database host resolves, and its port takes a TCP connection.
fn check_database(host: &str, port: u16, timeout: Duration) -> Vec<Finding> {
    let subject = format!("{host}:{port}");
    let addrs = match resolve(host, port) {
        Ok(addrs) => addrs,
        Err(finding) => {
            return vec![
                finding,
                Finding::fail("tcp", subject, "not tried: the database host does not resolve"),
            ]
        }
    };
    let mut findings = vec![Finding::pass("dns", host, list(&addrs))];
    findings.push(match connect(&addrs, timeout) {
        Ok((_, addr)) => Finding::pass("tcp", subject, format!("connected to {addr}")),
        Err(why) => {
            Finding::fail("tcp", subject, format!("{why} (is Postgres running and reachable from here?)"))
        }
    });
    findings
}

/// One URL: resolve, connect and, for https:// and wss://, a verified TLS handshake.
pub fn check_url(url: &str, timeout: Duration, tls: &Arc<ClientConfig>) -> Finding {
    let parsed = match reqwest::Url::parse(url) {
        Ok(parsed) => parsed,
        Err(e) => return Finding::fail("tls", url, format!("not a URL ({e})")),
    };
    let secure = match parsed.scheme() {
        "https" | "wss" => true,
        "http" | "ws" => false,
        other => {
            return Finding::fail(
                "tls",
                url,
                format!("unsupported scheme {other}:// (expected https, wss, http or ws)"),
            )
        }
    };
    let check = if secure { "tls" } else { "tcp" };
    let (Some(host), Some(port)) = (parsed.host_str(), parsed.port_or_known_default()) else {
        return Finding::fail(check, url, "the URL has no host");
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let addrs = match resolve(host, port) {
        Ok(addrs) => addrs,
        Err(finding) => {
            return Finding::fail(check, url, format!("{host} {}", finding.detail));
        }
    };
    let (mut stream, addr) = match connect(&addrs, timeout) {
        Ok(connected) => connected,
        Err(why) => return Finding::fail(check, url, why),
    };
    if !secure {
        return Finding::pass(check, url, format!("connected to {addr} (plain, no TLS to check)"));
    }
    match handshake(&mut stream, host, timeout, tls) {
        Ok(detail) => Finding::pass(check, url, format!("{addr}, {detail}")),
        Err(why) => Finding::fail(check, url, format!("{addr}: {why}")),
    }
}

/// The addresses a host name resolves to (the system resolver: /etc/hosts, then DNS).
fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, Finding> {
    match (host, port).to_socket_addrs() {
        Ok(addrs) => {
            let addrs: Vec<SocketAddr> = addrs.collect();
            if addrs.is_empty() {
                Err(Finding::fail("dns", host, "resolves to no address"))
            } else {
                Ok(addrs)
            }
        }
        Err(e) => Err(Finding::fail("dns", host, format!("does not resolve: {e}"))),
    }
}

/// Connects to the first address that answers.
fn connect(addrs: &[SocketAddr], timeout: Duration) -> Result<(TcpStream, SocketAddr), String> {
    let mut errors = Vec::new();
    for addr in addrs {
        match TcpStream::connect_timeout(addr, timeout) {
            Ok(stream) => return Ok((stream, *addr)),
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                errors.push(format!("{addr}: no answer within {} s", timeout.as_secs()))
            }
            Err(e) => errors.push(format!("{addr}: {e}")),
        }
    }
    Err(format!("cannot connect: {}", errors.join("; ")))
}

/// A TLS handshake verified against the bundled roots: the protocol version on success, and on
/// failure what failed, certificate verification errors named as such.
fn handshake(
    stream: &mut TcpStream,
    host: &str,
    timeout: Duration,
    tls: &Arc<ClientConfig>,
) -> Result<String, String> {
    let name = ServerName::try_from(host.to_owned())
        .map_err(|e| format!("{host} is not a valid TLS server name ({e})"))?;
    let mut conn = ClientConnection::new(tls.clone(), name).map_err(|e| format!("TLS setup failed: {e}"))?;
    stream.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    stream.set_write_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    while conn.is_handshaking() {
        if let Err(e) = conn.complete_io(stream) {
            return Err(describe_tls_error(&e, timeout));
        }
    }
    conn.send_close_notify();
    let _ = conn.complete_io(stream);
    let version = conn.protocol_version().map_or_else(|| "TLS".to_owned(), |v| format!("{v:?}"));
    Ok(format!("{version}, certificate verified (bundled webpki roots)"))
}

fn describe_tls_error(e: &io::Error, timeout: Duration) -> String {
    match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::InvalidCertificate(why)) => format!(
            "certificate verification failed: {why:?} (the server's certificate does not verify against \
             the bundled webpki roots: a self-signed or private-CA certificate, or a TLS-inspecting proxy?)"
        ),
        Some(other) => format!("TLS handshake failed: {other}"),
        None if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
            format!("TLS handshake: no answer within {} s", timeout.as_secs())
        }
        None if e.kind() == io::ErrorKind::UnexpectedEof => {
            "TLS handshake failed: the server closed the connection (not a TLS port?)".to_owned()
        }
        None => format!("TLS handshake failed: {e}"),
    }
}

/// `a, b, c` (at most three addresses, then how many more).
fn list(addrs: &[SocketAddr]) -> String {
    let mut shown: Vec<String> = addrs.iter().take(3).map(|a| a.ip().to_string()).collect();
    if addrs.len() > 3 {
        shown.push(format!("and {} more", addrs.len() - 3));
    }
    shown.join(", ")
}
