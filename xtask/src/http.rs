//! A plain HTTP/1.0 client for loopback: the bot's `/health`, the stand-in's control API. Enough
//! without an HTTP client crate (the xtask keeps its dependencies few): status and body of any
//! answer, so a 503 can be read too.

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::Duration,
};

use anyhow::{Context, Result};

/// `(status, body)` of one request. `timeout` bounds connecting and each read.
pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> Result<(u16, String)> {
    let socket = addr.parse().with_context(|| format!("{addr} is not host:port"))?;
    let mut stream = TcpStream::connect_timeout(&socket, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let body = body.unwrap_or("");
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = parse_status(head).with_context(|| format!("no HTTP status line from {addr}{path}"))?;
    Ok((status, body.to_string()))
}

fn parse_status(head: &str) -> Option<u16> {
    head.lines().next()?.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_status_comes_from_the_first_line() {
        assert_eq!(super::parse_status("HTTP/1.0 503 Service Unavailable\r\nx: y"), Some(503));
        assert_eq!(super::parse_status("HTTP/1.1 200 OK"), Some(200));
        assert_eq!(super::parse_status("garbage"), None);
    }
}
