//! JSON over the loopback HTTP client, for the stand-in's control API.

use std::time::Duration;

use anyhow::{Context, Result};

use super::json::Json;
use crate::http::request;

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
