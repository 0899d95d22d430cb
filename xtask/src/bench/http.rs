//! JSON over the loopback HTTP client, for the stand-in's control API and the bot's `/health`.

use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;

use crate::http::request;

/// GET, expecting 200 and a JSON body.
pub fn get_json(addr: &str, path: &str, timeout: Duration) -> Result<Value> {
    let (status, body) = request(addr, "GET", path, None, timeout)?;
    if status != 200 {
        anyhow::bail!("GET {path} answered {status}: {}", body.trim());
    }
    serde_json::from_str(&body).with_context(|| format!("GET {path}: not JSON"))
}

/// POST a JSON body, expecting 200 and a JSON answer.
pub fn post_json(addr: &str, path: &str, body: &Value) -> Result<Value> {
    let (status, answer) = request(addr, "POST", path, Some(&body.to_string()), Duration::from_secs(5))?;
    if status != 200 {
        anyhow::bail!("POST {path} answered {status}: {}", answer.trim());
    }
    serde_json::from_str(&answer).with_context(|| format!("POST {path}: not JSON"))
}
