//! A plain HTTP/1.0 client on loopback (like `dev::http_get`), for the stand-in's control API and
//! the bot's `/health`: status and body of any answer, so a 503 can be read too.

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::Duration,
};

use anyhow::{Context, Result};

use super::json::Json;

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

/// GET, expecting 200 and a JSON body.
pub fn get_json(addr: &str, path: &str, timeout: Duration) -> Result<Json> {
    let (status, body) = request(addr, "GET", path, None, timeout)?;
    if status != 200 {
        anyhow::bail!("GET {path} answered {status}: {}", body.trim());
    }
    Json::parse(&body).with_context(|| format!("GET {path}: not JSON"))
}

/// POST a JSON body, expecting 200 and a JSON answer.
pub fn post_json(addr: &str, path: &str, body: &str) -> Result<Json> {
    let (status, answer) = request(addr, "POST", path, Some(body), Duration::from_secs(5))?;
    if status != 200 {
        anyhow::bail!("POST {path} answered {status}: {}", answer.trim());
    }
    Json::parse(&answer).with_context(|| format!("POST {path}: not JSON"))
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
