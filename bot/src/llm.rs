//! The language model: OpenRouter's OpenAI-compatible `/chat/completions`, or a deterministic
//! placeholder so the stack runs without an API key.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::{Config, LlmProvider};

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ChatMessage {
    pub role: &'static str,
    pub content: String,
}

/// What one call produced: a reply or an error, and what it cost either way.
#[derive(Debug, Clone, Default)]
pub struct Completion {
    pub model: String,
    pub content: Option<String>,
    pub prompt_tokens: Option<i32>,
    pub completion_tokens: Option<i32>,
    pub cost_usd: Option<f64>,
    pub latency: Duration,
    pub finish_reason: Option<String>,
    pub error: Option<String>,
}

pub struct Llm {
    provider: LlmProvider,
    http: reqwest::Client,
    url: String,
    model: String,
    max_tokens: u32,
    /// Kept out of `Debug` and logs.
    api_key: String,
}

#[derive(Serialize)]
struct Request<'a> {
    model: &'a str,
    messages: &'a [ChatMessage],
    /// A bound on what one answer can cost.
    max_tokens: u32,
    usage: UsageRequest,
}

#[derive(Serialize)]
struct UsageRequest {
    include: bool,
}

#[derive(Deserialize, Default)]
struct Response {
    model: Option<String>,
    #[serde(default)]
    choices: Vec<Choice>,
    usage: Option<Usage>,
    error: Option<ApiError>,
}

#[derive(Deserialize)]
struct Choice {
    message: Option<ChoiceMessage>,
    finish_reason: Option<String>,
    error: Option<ApiError>,
}

#[derive(Deserialize)]
struct ChoiceMessage {
    content: Option<String>,
}

#[derive(Deserialize)]
struct Usage {
    prompt_tokens: Option<i32>,
    completion_tokens: Option<i32>,
    cost: Option<f64>,
}

#[derive(Deserialize)]
struct ApiError {
    message: Option<String>,
    code: Option<serde_json::Value>,
}

impl ApiError {
    fn describe(&self) -> String {
        let msg = self.message.as_deref().unwrap_or("unspecified error");
        match &self.code {
            Some(code) => format!("{code}: {msg}"),
            None => msg.to_owned(),
        }
    }
}

impl Llm {
    pub fn new(cfg: &Config) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(cfg.llm_timeout)
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("lattice-bot/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            provider: cfg.llm_provider,
            http,
            url: format!("{}/chat/completions", cfg.openrouter_base_url),
            model: cfg.openrouter_model.clone(),
            max_tokens: cfg.llm_max_tokens,
            api_key: cfg.openrouter_api_key.clone().unwrap_or_default(),
        })
    }

    pub fn provider(&self) -> LlmProvider {
        self.provider
    }

    pub fn model(&self) -> &str {
        match self.provider {
            LlmProvider::OpenRouter => &self.model,
            LlmProvider::Placeholder => "placeholder",
        }
    }

    /// Never fails: every failure comes back as a `Completion` with `error` set, to be audited.
    pub async fn complete(&self, messages: &[ChatMessage]) -> Completion {
        let started = Instant::now();
        let mut c = match self.provider {
            LlmProvider::Placeholder => placeholder(messages),
            LlmProvider::OpenRouter => self.openrouter(messages).await,
        };
        c.latency = started.elapsed();
        if c.model.is_empty() {
            c.model = self.model().to_owned();
        }
        c
    }

    async fn openrouter(&self, messages: &[ChatMessage]) -> Completion {
        let body = Request {
            model: &self.model,
            messages,
            max_tokens: self.max_tokens,
            usage: UsageRequest { include: true },
        };
        let sent = self.http.post(&self.url).bearer_auth(&self.api_key).json(&body).send().await;
        let resp = match sent {
            Ok(r) => r,
            Err(e) if e.is_timeout() => return failed("timeout waiting for the LLM"),
            Err(e) => return failed(format!("request failed: {}", e.without_url())),
        };
        let status = resp.status();
        let text = match resp.text().await {
            Ok(t) => t,
            Err(e) if e.is_timeout() => return failed("timeout reading the LLM response"),
            Err(e) => return failed(format!("reading response: {}", e.without_url())),
        };
        let parsed: Option<Response> = serde_json::from_str(&text).ok();
        if !status.is_success() {
            let detail = parsed
                .as_ref()
                .and_then(|p| p.error.as_ref())
                .map(ApiError::describe)
                .unwrap_or_else(|| truncate(&text, 200));
            return failed(format!("HTTP {}: {detail}", status.as_u16()));
        }
        let Some(parsed) = parsed else {
            return failed(format!("unparseable response: {}", truncate(&text, 200)));
        };
        interpret(parsed)
    }
}

fn interpret(r: Response) -> Completion {
    let mut c = Completion {
        model: r.model.unwrap_or_default(),
        prompt_tokens: r.usage.as_ref().and_then(|u| u.prompt_tokens),
        completion_tokens: r.usage.as_ref().and_then(|u| u.completion_tokens),
        cost_usd: r.usage.as_ref().and_then(|u| u.cost),
        ..Completion::default()
    };
    // OpenRouter reports some failures as HTTP 200 with an `error` body (or a choice-level error).
    if let Some(e) = r.error {
        c.error = Some(e.describe());
        return c;
    }
    let Some(choice) = r.choices.into_iter().next() else {
        c.error = Some("response has no choices".into());
        return c;
    };
    c.finish_reason = choice.finish_reason;
    if let Some(e) = choice.error {
        c.error = Some(e.describe());
        return c;
    }
    match choice.message.and_then(|m| m.content).filter(|t| !t.trim().is_empty()) {
        // Postgres cannot store NUL, and Discord shows nothing for it.
        Some(text) => c.content = Some(text.replace('\0', "")),
        None => c.error = Some("empty reply".into()),
    }
    c
}

fn failed(error: impl Into<String>) -> Completion {
    Completion { error: Some(error.into()), ..Completion::default() }
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

/// A deterministic local reply: the same conversation always gets the same answer.
fn placeholder(messages: &[ChatMessage]) -> Completion {
    let last = messages.iter().rev().find(|m| m.role == "user").map(|m| m.content.as_str()).unwrap_or("");
    let context = messages.iter().filter(|m| m.role != "system").count();
    let content = format!("(placeholder reply; {context} messages of context) You said: {last}");
    Completion {
        model: "placeholder".into(),
        prompt_tokens: Some(messages.iter().map(|m| m.content.split_whitespace().count() as i32).sum()),
        completion_tokens: Some(content.split_whitespace().count() as i32),
        cost_usd: Some(0.0),
        finish_reason: Some("stop".into()),
        content: Some(content),
        ..Completion::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_200_with_error_body_is_an_error() {
        let r: Response =
            serde_json::from_str(r#"{"error":{"code":502,"message":"upstream overloaded"}}"#).unwrap();
        let c = interpret(r);
        assert_eq!(c.error.as_deref(), Some("502: upstream overloaded"));
        assert!(c.content.is_none());
    }

    #[test]
    fn success_carries_usage_and_finish_reason() {
        let r: Response = serde_json::from_str(
            r#"{"model":"m/x","choices":[{"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],
                "usage":{"prompt_tokens":7,"completion_tokens":2,"total_tokens":9,"cost":0.00012}}"#,
        )
        .unwrap();
        let c = interpret(r);
        assert_eq!(c.content.as_deref(), Some("hi"));
        assert_eq!((c.prompt_tokens, c.completion_tokens, c.cost_usd), (Some(7), Some(2), Some(0.00012)));
        assert_eq!(c.finish_reason.as_deref(), Some("stop"));
        assert_eq!(c.model, "m/x");
    }

    #[test]
    fn placeholder_is_deterministic() {
        let msgs = vec![ChatMessage { role: "user", content: "ada: hello".into() }];
        assert_eq!(placeholder(&msgs).content, placeholder(&msgs).content);
        assert!(placeholder(&msgs).content.unwrap().contains("ada: hello"));
    }
}
