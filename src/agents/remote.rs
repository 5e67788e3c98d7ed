//! LLM providers over HTTP: `openai` (the Chat Completions API; with `base_url` any OpenAI-compatible server:
//! vLLM, Ollama, llama.cpp's server, LM Studio) and `anthropic` (the Messages API).
//!
//! One request is one HTTP call with a time-out. 429, 5xx (and Anthropic's 529) and transport errors are retried
//! up to [`MAX_ATTEMPTS`] times, waiting what `Retry-After` says (at most [`MAX_RETRY_AFTER`]) or else a doubling
//! back-off from [`BASE_DELAY`]. Other 4xx answers (a bad key, an unknown model) are not retried: the task fails
//! for good. An answer that is not the API's JSON fails the attempt as retryable. After
//! [`BREAKER_FAILURES`] failed requests in a row the provider's circuit opens: requests fail at once for
//! [`BREAKER_COOLDOWN`], then one is let through, and a success closes it.
//!
//! The key is sent only in its header; it is never logged, never part of an error (a server echoing it back
//! has it replaced by `***`), and never stored in an event.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use weft_events::domain::agent::Param;

use super::{Completion, Error, Provider, Request};

/// Attempts of one request, the first included.
pub const MAX_ATTEMPTS: u32 = 4;
/// The first back-off.
pub const BASE_DELAY: Duration = Duration::from_millis(500);
/// The longest back-off, and the most of a `Retry-After` that is honoured.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// Failed requests in a row that open the circuit.
pub const BREAKER_FAILURES: u32 = 5;
/// How long an open circuit refuses requests.
pub const BREAKER_COOLDOWN: Duration = Duration::from_secs(30);
/// The largest answer read, in bytes.
pub const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;

/// Which API a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// OpenAI's Chat Completions.
    OpenAi,
    /// Anthropic's Messages.
    Anthropic,
}

/// Where a provider is and how to reach it.
#[derive(Clone)]
pub struct RemoteOptions {
    /// The API.
    pub api: Api,
    /// The base URL, such as `https://api.openai.com/v1`.
    pub base_url: String,
    /// The key; none for local servers that need none.
    pub api_key: Option<String>,
    /// The time-out of one HTTP call.
    pub timeout: Duration,
    /// The first back-off between attempts ([`BASE_DELAY`]; tests make it short).
    pub base_delay: Duration,
}

impl std::fmt::Debug for RemoteOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteOptions")
            .field("api", &self.api)
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "***"))
            .field("timeout", &self.timeout)
            .field("base_delay", &self.base_delay)
            .finish()
    }
}

/// A circuit's state, for operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Circuit {
    /// Requests go through.
    Closed,
    /// Requests fail at once until the cool-down has passed.
    Open,
}

#[derive(Debug, Default)]
struct Breaker {
    failures: u32,
    opened_at: Option<Instant>,
}

/// See the module doc.
#[derive(Debug)]
pub struct Remote {
    name: &'static str,
    options: RemoteOptions,
    http: reqwest::Client,
    breaker: Mutex<Breaker>,
}

/// How one HTTP call went.
enum Attempt {
    Done(Completion),
    /// Try again, after this long if the server said.
    Retry {
        error: Error,
        after: Option<Duration>,
    },
    Fail(Error),
}

impl Remote {
    /// A provider named after its API (`openai`, `anthropic`).
    pub fn new(options: RemoteOptions) -> Result<Self, Error> {
        let name = match options.api {
            Api::OpenAi => "openai",
            Api::Anthropic => "anthropic",
        };
        let http = reqwest::Client::builder()
            .timeout(options.timeout)
            .connect_timeout(options.timeout.min(Duration::from_secs(10)))
            .build()
            .map_err(|e| Error::Invalid(format!("{name}: {e}")))?;
        Ok(Self { name, options, http, breaker: Mutex::new(Breaker::default()) })
    }

    /// Its circuit's state.
    pub fn circuit(&self) -> Circuit {
        let breaker = self.breaker.lock().expect("the breaker's lock is never poisoned");
        match breaker.opened_at {
            Some(at) if at.elapsed() < BREAKER_COOLDOWN => Circuit::Open,
            _ => Circuit::Closed,
        }
    }

    /// An error message with the key, should a server echo it, replaced.
    fn redact(&self, message: String) -> String {
        match &self.options.api_key {
            Some(key) if key.len() >= 4 => message.replace(key.as_str(), "***"),
            _ => message,
        }
    }

    fn body(&self, request: &Request) -> Value {
        let user = if request.prompt.is_empty() {
            request.input.clone()
        } else if request.prompt.contains(&request.input) {
            request.prompt.clone()
        } else {
            format!("{}\n\n{}", request.prompt, request.input)
        };
        let number = |name: &str| match request.parameters.get(name) {
            Some(Param::Int(n)) => Some(json!(n)),
            Some(Param::Float(x)) => Some(json!(x)),
            _ => None,
        };
        match self.options.api {
            Api::OpenAi => {
                let mut messages = Vec::new();
                if !request.instructions.is_empty() {
                    messages.push(json!({"role": "system", "content": request.instructions}));
                }
                messages.push(json!({"role": "user", "content": user}));
                let mut body = json!({"model": request.model, "messages": messages});
                for name in ["temperature", "top_p", "max_tokens", "seed"] {
                    if let Some(value) = number(name) {
                        body[name] = value;
                    }
                }
                body
            }
            Api::Anthropic => {
                let mut body = json!({
                    "model": request.model,
                    "max_tokens": number("max_tokens").unwrap_or(json!(1024)),
                    "messages": [{"role": "user", "content": user}],
                });
                if !request.instructions.is_empty() {
                    body["system"] = json!(request.instructions);
                }
                for name in ["temperature", "top_p"] {
                    if let Some(value) = number(name) {
                        body[name] = value;
                    }
                }
                body
            }
        }
    }

    async fn attempt(&self, body: &Value) -> Attempt {
        let base = self.options.base_url.trim_end_matches('/');
        let mut call = match self.options.api {
            Api::OpenAi => {
                let call = self.http.post(format!("{base}/chat/completions"));
                match &self.options.api_key {
                    Some(key) => call.bearer_auth(key),
                    None => call,
                }
            }
            Api::Anthropic => {
                let call = self.http.post(format!("{base}/messages")).header("anthropic-version", "2023-06-01");
                match &self.options.api_key {
                    Some(key) => call.header("x-api-key", key),
                    None => call,
                }
            }
        };
        call = call.header("content-type", "application/json").body(body.to_string());
        let answer = match call.send().await {
            Ok(answer) => answer,
            Err(e) => {
                let error = Error::Unavailable(self.redact(format!("{}: {}", self.name, without_url(&e))));
                return Attempt::Retry { error, after: None };
            }
        };
        let status = answer.status().as_u16();
        let retry_after = answer
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(|s| Duration::from_secs_f64(s).min(MAX_RETRY_AFTER));
        let bytes = match answer.bytes().await {
            Ok(bytes) if bytes.len() <= MAX_ANSWER_BYTES => bytes,
            Ok(bytes) => {
                let error = Error::Unavailable(format!(
                    "{}: an answer of {} bytes is over {MAX_ANSWER_BYTES}",
                    self.name,
                    bytes.len()
                ));
                return Attempt::Fail(error);
            }
            Err(e) => {
                let error = Error::Unavailable(self.redact(format!("{}: {}", self.name, without_url(&e))));
                return Attempt::Retry { error, after: None };
            }
        };
        let parsed: Option<Value> = serde_json::from_slice(&bytes).ok();
        let message = || {
            let detail = parsed
                .as_ref()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned());
            self.redact(format!("{} answered {status}: {detail}", self.name))
        };
        match status {
            200..=299 => {}
            429 | 500..=599 => return Attempt::Retry { error: Error::Unavailable(message()), after: retry_after },
            _ => return Attempt::Fail(Error::Invalid(message())),
        }
        let Some(parsed) = parsed else {
            return Attempt::Fail(Error::Unavailable(format!("{}: the answer is not JSON", self.name)));
        };
        let completion = match self.options.api {
            Api::OpenAi => parsed["choices"][0]["message"]["content"].as_str().map(|text| Completion {
                text: text.to_owned(),
                content_type: "text/plain".into(),
                input_tokens: parsed["usage"]["prompt_tokens"].as_u64().unwrap_or(0),
                output_tokens: parsed["usage"]["completion_tokens"].as_u64().unwrap_or(0),
            }),
            Api::Anthropic => {
                let text: Option<String> = parsed["content"].as_array().map(|blocks| {
                    blocks.iter().filter(|b| b["type"] == "text").filter_map(|b| b["text"].as_str()).collect()
                });
                text.map(|text| Completion {
                    text,
                    content_type: "text/plain".into(),
                    input_tokens: parsed["usage"]["input_tokens"].as_u64().unwrap_or(0),
                    output_tokens: parsed["usage"]["output_tokens"].as_u64().unwrap_or(0),
                })
            }
        };
        match completion {
            Some(completion) => Attempt::Done(completion),
            None => Attempt::Fail(Error::Unavailable(format!("{}: the answer holds no text", self.name))),
        }
    }

    fn record(&self, ok: bool) {
        let mut breaker = self.breaker.lock().expect("the breaker's lock is never poisoned");
        if ok {
            *breaker = Breaker::default();
        } else {
            breaker.failures += 1;
            if breaker.failures >= BREAKER_FAILURES {
                breaker.opened_at = Some(Instant::now());
                tracing::warn!(provider = self.name, failures = breaker.failures, "the provider's circuit opened");
            }
        }
    }
}

/// A transport error's text without its URL (which may carry a key in its query, for some servers).
fn without_url(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "cannot connect"
    } else {
        "the request failed"
    };
    format!("{kind}: {}", std::error::Error::source(error).map(|s| s.to_string()).unwrap_or_default())
}

#[async_trait::async_trait]
impl Provider for Remote {
    fn name(&self) -> &str {
        self.name
    }

    fn health(&self) -> super::Health {
        let failures = self.breaker.lock().expect("the breaker's lock is never poisoned").failures;
        super::Health { name: self.name.to_owned(), circuit: self.circuit(), consecutive_failures: failures }
    }

    async fn complete(&self, request: Request) -> Result<Completion, Error> {
        if self.circuit() == Circuit::Open {
            return Err(Error::Unavailable(format!(
                "{}: the circuit is open after {BREAKER_FAILURES} failed requests in a row; retry later",
                self.name
            )));
        }
        let body = self.body(&request);
        let mut delay = self.options.base_delay;
        let mut attempt = 1;
        let result = loop {
            match self.attempt(&body).await {
                Attempt::Done(completion) => break Ok(completion),
                Attempt::Fail(error) => break Err(error),
                Attempt::Retry { error, .. } if attempt >= MAX_ATTEMPTS => break Err(error),
                Attempt::Retry { error, after } => {
                    let wait = after.unwrap_or(delay);
                    tracing::info!(provider = self.name, attempt, %error, wait_ms = wait.as_millis() as u64, "retrying");
                    tokio::time::sleep(wait).await;
                    delay = (delay * 2).min(MAX_RETRY_AFTER);
                    attempt += 1;
                }
            }
        };
        // A refused request (a bad key, an unknown model) says nothing about the provider's health.
        self.record(!matches!(result, Err(Error::Unavailable(_))));
        result
    }
}
