//! A small blocking client for OpenAI-compatible chat-completions endpoints (llama.cpp's
//! server, vLLM, Ollama, hosted APIs): `POST {endpoint}/v1/chat/completions` with
//! `{model, messages, temperature, n?}`, answers in `choices[].message.content`.
//!
//! Transient failures (connection errors, timeouts, 429, 5xx, a truncated or malformed
//! answer) are retried with exponential back-off; other 4xx answers (a bad key, an unknown
//! model) fail at once with the server's message.

use std::time::Duration;

use serde::Serialize;

/// One chat message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn system(content: impl Into<String>) -> Self {
        Self {
            role: "system".into(),
            content: content.into(),
        }
    }
    pub fn user(content: impl Into<String>) -> Self {
        Self {
            role: "user".into(),
            content: content.into(),
        }
    }
}

/// Where and how to ask.
#[derive(Clone, Debug)]
pub struct ChatConfig {
    /// Base URL (`http://localhost:8080`, `https://api.openai.com`), or the full
    /// `.../chat/completions` URL.
    pub endpoint: String,
    pub model: String,
    /// Sent as `Authorization: Bearer <key>` when set.
    pub api_key: Option<String>,
    /// Limit for one request, connection to last byte.
    pub timeout: Duration,
    /// Extra attempts after the first for transient failures.
    pub retries: u32,
    /// Wait before the first retry; doubled after each (capped at 60 s). A 429's
    /// `Retry-After` is honoured when it asks for longer.
    pub backoff: Duration,
    pub temperature: f64,
}

impl ChatConfig {
    pub fn new(endpoint: impl Into<String>, model: impl Into<String>) -> Self {
        Self {
            endpoint: endpoint.into(),
            model: model.into(),
            api_key: None,
            timeout: Duration::from_secs(120),
            retries: 4,
            backoff: Duration::from_secs(1),
            temperature: 0.9,
        }
    }
}

/// Why a request failed (after retries, for the transient kinds).
#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    #[error("{url}: HTTP {status}: {message}")]
    Status {
        url: String,
        status: u16,
        message: String,
    },
    #[error("{url}: {message}")]
    Transport { url: String, message: String },
    #[error("{url}: unexpected answer: {message}")]
    InvalidAnswer { url: String, message: String },
    #[error("{url}: endpoint URL is not usable: {message}")]
    BadEndpoint { url: String, message: String },
}

impl LlmError {
    /// Worth another attempt: connection problems, timeouts, 429, 5xx, garbled answers.
    pub fn is_transient(&self) -> bool {
        match self {
            LlmError::Status { status, .. } => *status == 429 || *status >= 500,
            LlmError::Transport { .. } | LlmError::InvalidAnswer { .. } => true,
            LlmError::BadEndpoint { .. } => false,
        }
    }
}

/// The chat-completions URL of an endpoint: used as given when it already ends in
/// `/chat/completions`; otherwise `/v1/chat/completions` is appended (once: a base that
/// ends in `/v1` gets only `/chat/completions`).
pub fn chat_url(endpoint: &str) -> String {
    let e = endpoint.trim().trim_end_matches('/');
    if e.ends_with("/chat/completions") {
        e.to_string()
    } else if e.ends_with("/v1") {
        format!("{e}/chat/completions")
    } else {
        format!("{e}/v1/chat/completions")
    }
}

/// Called before each retry with (attempt number from 1, the error, the wait).
pub type RetryHook = dyn Fn(u32, &LlmError, Duration) + Send + Sync;

/// A client; cheap to clone, reuses connections.
#[derive(Clone)]
pub struct ChatClient {
    config: ChatConfig,
    url: String,
    agent: ureq::Agent,
    on_retry: Option<std::sync::Arc<RetryHook>>,
}

impl ChatClient {
    pub fn new(config: ChatConfig) -> Self {
        let url = chat_url(&config.endpoint);
        let agent = ureq::AgentBuilder::new()
            .timeout(config.timeout)
            .user_agent(concat!("coft/", env!("CARGO_PKG_VERSION")))
            .build();
        Self {
            config,
            url,
            agent,
            on_retry: None,
        }
    }

    /// Report retries (the CLI prints them).
    pub fn on_retry(
        mut self,
        f: impl Fn(u32, &LlmError, Duration) + Send + Sync + 'static,
    ) -> Self {
        self.on_retry = Some(std::sync::Arc::new(f));
        self
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn config(&self) -> &ChatConfig {
        &self.config
    }

    /// The answers (`choices[].message.content`) to one conversation; `n > 1` asks for
    /// several completions in one request (servers that ignore `n` give one).
    pub fn complete(&self, messages: &[Message], n: usize) -> Result<Vec<String>, LlmError> {
        let mut body = serde_json::json!({
            "model": self.config.model,
            "messages": messages,
            "temperature": self.config.temperature,
        });
        if n > 1 {
            body["n"] = n.into();
        }
        let body = body.to_string();
        let mut wait = self.config.backoff;
        let mut attempt = 0;
        loop {
            match self.attempt(&body) {
                Ok(answers) => return Ok(answers),
                Err((e, retry_after)) => {
                    if !e.is_transient() || attempt >= self.config.retries {
                        return Err(e);
                    }
                    attempt += 1;
                    let pause = retry_after.map_or(wait, |r| r.max(wait));
                    if let Some(f) = &self.on_retry {
                        f(attempt, &e, pause);
                    }
                    std::thread::sleep(pause);
                    wait = (wait * 2).min(Duration::from_secs(60));
                }
            }
        }
    }

    /// One request; on failure, the error and a server-requested wait (429 `Retry-After`).
    fn attempt(&self, body: &str) -> Result<Vec<String>, (LlmError, Option<Duration>)> {
        let mut req = self
            .agent
            .post(&self.url)
            .set("Content-Type", "application/json")
            .set("Accept", "application/json");
        if let Some(key) = &self.config.api_key {
            req = req.set("Authorization", &format!("Bearer {key}"));
        }
        let url = self.url.clone();
        let resp = match req.send_string(body) {
            Ok(r) => r,
            Err(ureq::Error::Status(status, r)) => {
                let retry_after = r
                    .header("Retry-After")
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(|s| Duration::from_secs(s.min(60)));
                let text = r.into_string().unwrap_or_default();
                return Err((
                    LlmError::Status {
                        url,
                        status,
                        message: error_message(&text),
                    },
                    retry_after,
                ));
            }
            Err(ureq::Error::Transport(t)) => {
                use ureq::ErrorKind as K;
                let message = t.to_string();
                let e = match t.kind() {
                    K::InvalidUrl | K::UnknownScheme | K::InsecureRequestHttpsOnly => {
                        LlmError::BadEndpoint { url, message }
                    }
                    _ => LlmError::Transport { url, message },
                };
                return Err((e, None));
            }
        };
        let text = resp.into_string().map_err(|e| {
            (
                LlmError::Transport {
                    url: url.clone(),
                    message: format!("reading the answer: {e}"),
                },
                None,
            )
        })?;
        parse_answer(&url, &text).map_err(|e| (e, None))
    }
}

/// The contents of `choices[].message.content` (a choice with `text` instead, as older
/// completion servers send, is accepted too); anything else is an
/// [`LlmError::InvalidAnswer`] from `url`.
fn parse_answer(url: &str, text: &str) -> Result<Vec<String>, LlmError> {
    let invalid = |message: String| LlmError::InvalidAnswer {
        url: url.to_string(),
        message,
    };
    let v: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| invalid(format!("not JSON ({e}): {}", snippet(text))))?;
    let choices = v
        .get("choices")
        .and_then(|c| c.as_array())
        .ok_or_else(|| invalid(format!("no \"choices\" array: {}", snippet(text))))?;
    let out: Vec<String> = choices
        .iter()
        .filter_map(|c| {
            c.pointer("/message/content")
                .or_else(|| c.get("text"))
                .and_then(|t| t.as_str())
                .map(str::to_string)
        })
        .collect();
    if out.is_empty() {
        return Err(invalid(format!(
            "no choice carries message.content: {}",
            snippet(text)
        )));
    }
    Ok(out)
}

/// The server's own error text (`{"error": {"message": ...}}` or `{"error": "..."}`), else
/// the start of the body.
fn error_message(body: &str) -> String {
    let parsed: Option<serde_json::Value> = serde_json::from_str(body).ok();
    let msg = parsed.as_ref().and_then(|v| {
        v.pointer("/error/message")
            .or_else(|| v.get("error"))
            .or_else(|| v.get("message"))
            .and_then(|m| m.as_str())
            .map(str::to_string)
    });
    msg.unwrap_or_else(|| {
        if body.trim().is_empty() {
            "(empty body)".to_string()
        } else {
            snippet(body)
        }
    })
}

fn snippet(text: &str) -> String {
    let t: String = text.trim().chars().take(200).collect();
    if text.trim().chars().count() > 200 {
        format!("{t}...")
    } else {
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            chat_url("http://h:8080"),
            "http://h:8080/v1/chat/completions"
        );
        assert_eq!(
            chat_url("http://h:8080/v1/"),
            "http://h:8080/v1/chat/completions"
        );
        assert_eq!(
            chat_url("https://x/openai/deployments/m/chat/completions"),
            "https://x/openai/deployments/m/chat/completions"
        );
    }

    #[test]
    fn answers_and_errors() {
        let ok = r#"{"choices":[{"message":{"role":"assistant","content":"A."}},{"message":{"content":"B."}}]}"#;
        let parse = |text: &str| parse_answer("http://h", text);
        assert_eq!(parse(ok).unwrap(), vec!["A.", "B."]);
        let e = parse("{\"choices\": [").unwrap_err().to_string();
        assert!(
            e.starts_with("http://h: unexpected answer: not JSON"),
            "{e}"
        );
        assert!(parse("{}").unwrap_err().to_string().contains("choices"));
        assert_eq!(
            error_message(r#"{"error":{"message":"Invalid API key"}}"#),
            "Invalid API key"
        );
        assert_eq!(error_message(""), "(empty body)");
    }
}
