//! The HTTP providers against a local server that speaks the OpenAI and Anthropic wire formats (answers taken
//! from their API references): success with usage, 429 with Retry-After, 5xx until attempts run out, a bad key
//! (not retried, the key never in the error), malformed JSON, a call over its time-out, and the circuit breaker.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use weft::agents::remote::{Api, Circuit, Remote, RemoteOptions};
use weft::agents::{Error, Provider, Request};

const KEY: &str = "sk-test-0123456789abcdef";

/// One scripted answer: status, extra headers, body, and a delay before it.
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(&'static str, &'static str)>,
    pub body: String,
    pub delay: Duration,
}

pub fn answer(status: u16, body: &str) -> Answer {
    Answer { status, headers: vec![], body: body.to_owned(), delay: Duration::ZERO }
}

/// A request as the server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    path: String,
    headers: Vec<(String, String)>,
    pub body: Value,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// A local HTTP/1.1 server answering from a script, one connection per request.
pub struct Fake {
    pub url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Fake {
    pub fn start(script: Vec<Answer>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(VecDeque::from(script)));
        let record = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                // A connection each: a slow answer does not hold up the next request.
                let (record, script) = (record.clone(), script.clone());
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut line = String::new();
                    if reader.read_line(&mut line).is_err() {
                        return;
                    }
                    let path = line.split(' ').nth(1).unwrap_or("").to_owned();
                    let mut headers = Vec::new();
                    loop {
                        let mut header = String::new();
                        reader.read_line(&mut header).unwrap();
                        let header = header.trim_end();
                        if header.is_empty() {
                            break;
                        }
                        let (name, value) = header.split_once(':').unwrap();
                        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
                    }
                    let length: usize =
                        headers.iter().find(|(n, _)| n == "content-length").map_or(0, |(_, v)| v.parse().unwrap());
                    let mut body = vec![0; length];
                    reader.read_exact(&mut body).unwrap();
                    record.lock().unwrap().push(Seen {
                        path,
                        headers,
                        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                    });
                    let next = script.lock().unwrap().pop_front().unwrap_or_else(|| answer(500, "{}"));
                    std::thread::sleep(next.delay);
                    let mut head = format!(
                        "HTTP/1.1 {} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
                        next.status,
                        next.body.len()
                    );
                    for (name, value) in next.headers {
                        head.push_str(&format!("{name}: {value}\r\n"));
                    }
                    let _ = stream.write_all(format!("{head}\r\n{}", next.body).as_bytes());
                });
            }
        });
        Self { url, seen }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn provider(api: Api, fake: &Fake, timeout: Duration) -> Remote {
    Remote::new(RemoteOptions {
        api,
        base_url: fake.url.clone(),
        api_key: Some(KEY.into()),
        timeout,
        base_delay: Duration::from_millis(5),
    })
    .unwrap()
}

fn request() -> Request {
    Request {
        model: "the-model".into(),
        instructions: "Be brief.".into(),
        prompt: "Summarise this.".into(),
        input: "A long text.".into(),
        input_content_type: "text/plain".into(),
        parameters: [("temperature".to_owned(), weft_events::domain::agent::Param::Float(0.2))].into(),
    }
}

/// OpenAI's example answer of the Chat Completions reference.
pub const OPENAI_OK: &str = r#"{"id":"chatcmpl-123","object":"chat.completion","created":1677652288,"model":"gpt-4o-mini",
  "system_fingerprint":"fp_44709d6fcb","choices":[{"index":0,"message":{"role":"assistant",
  "content":"Hello there, how may I assist you today?"},"logprobs":null,"finish_reason":"stop"}],
  "usage":{"prompt_tokens":9,"completion_tokens":12,"total_tokens":21}}"#;
/// OpenAI's answer to a wrong key, which names the key.
const OPENAI_BAD_KEY: &str = r#"{"error":{"message":"Incorrect API key provided: sk-test-0123456789abcdef. You can find your API key at https://platform.openai.com/account/api-keys.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#;
const OPENAI_RATE: &str = r#"{"error":{"message":"Rate limit reached for gpt-4o-mini in organization org-x on requests per min (RPM): Limit 3, Used 3, Requested 1.","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#;
/// Anthropic's example answer of the Messages reference.
const ANTHROPIC_OK: &str = r#"{"id":"msg_013Zva2CMHLNnXjNJJKqJ2EF","type":"message","role":"assistant",
  "model":"claude-3-5-sonnet-20241022","content":[{"type":"text","text":"Hi! My name is Claude."}],
  "stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":2095,"output_tokens":503}}"#;
const ANTHROPIC_OVERLOADED: &str = r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
const ANTHROPIC_BAD_REQUEST: &str =
    r#"{"type":"error","error":{"type":"invalid_request_error","message":"model: the-model is not a model"}}"#;

#[tokio::test]
async fn openai_sends_a_chat_completion_and_reads_the_text_and_usage() {
    let fake = Fake::start(vec![answer(200, OPENAI_OK)]);
    let out = provider(Api::OpenAi, &fake, Duration::from_secs(5)).complete(request()).await.unwrap();
    assert_eq!(out.text, "Hello there, how may I assist you today?");
    assert_eq!((out.input_tokens, out.output_tokens), (9, 12));
    let seen = fake.seen();
    assert_eq!(seen[0].path, "/chat/completions");
    assert_eq!(seen[0].header("authorization"), Some(format!("Bearer {KEY}").as_str()));
    assert_eq!(seen[0].body["model"], "the-model");
    assert_eq!(seen[0].body["messages"][0], serde_json::json!({"role": "system", "content": "Be brief."}));
    assert_eq!(seen[0].body["messages"][1]["content"], "Summarise this.\n\nA long text.");
    assert_eq!(seen[0].body["temperature"], 0.2);
}

#[tokio::test]
async fn a_429_is_retried_after_the_time_retry_after_names() {
    let limited = Answer { headers: vec![("Retry-After", "1")], ..answer(429, OPENAI_RATE) };
    let fake = Fake::start(vec![limited, answer(200, OPENAI_OK)]);
    let started = Instant::now();
    let out = provider(Api::OpenAi, &fake, Duration::from_secs(5)).complete(request()).await.unwrap();
    assert_eq!(out.output_tokens, 12);
    assert_eq!(fake.seen().len(), 2);
    // A lower bound only: the retry waited the second the server asked for, not the 5 ms back-off.
    assert!(started.elapsed() >= Duration::from_secs(1), "{:?}", started.elapsed());
}

#[tokio::test]
async fn server_errors_are_retried_until_the_attempts_run_out() {
    let fake = Fake::start((0..4).map(|_| answer(503, r#"{"error":{"message":"busy"}}"#)).collect());
    let error = provider(Api::OpenAi, &fake, Duration::from_secs(5)).complete(request()).await.unwrap_err();
    assert_eq!(error, Error::Unavailable("openai answered 503: busy".into()));
    assert_eq!(fake.seen().len(), weft::agents::remote::MAX_ATTEMPTS as usize);
}

#[tokio::test]
async fn a_bad_key_is_not_retried_and_the_key_never_shows_in_the_error() {
    let fake = Fake::start(vec![answer(401, OPENAI_BAD_KEY)]);
    let remote = provider(Api::OpenAi, &fake, Duration::from_secs(5));
    let Error::Invalid(message) = remote.complete(request()).await.unwrap_err() else { panic!("not Invalid") };
    assert!(message.contains("Incorrect API key provided: ***."), "{message}");
    assert!(!message.contains(KEY), "{message}");
    assert!(!format!("{remote:?}").contains(KEY), "Debug shows the key");
    assert_eq!(fake.seen().len(), 1);
}

#[tokio::test]
async fn malformed_json_fails_the_attempt_as_retryable() {
    let fake = Fake::start(vec![answer(200, "{\"choices\": [")]);
    let error = provider(Api::OpenAi, &fake, Duration::from_secs(5)).complete(request()).await.unwrap_err();
    assert_eq!(error, Error::Unavailable("openai: the answer is not JSON".into()));
    let fake = Fake::start(vec![answer(200, r#"{"choices": []}"#)]);
    let error = provider(Api::OpenAi, &fake, Duration::from_secs(5)).complete(request()).await.unwrap_err();
    assert_eq!(error, Error::Unavailable("openai: the answer holds no text".into()));
}

#[tokio::test]
async fn a_call_over_its_time_out_is_abandoned_and_tried_again() {
    let slow = Answer { delay: Duration::from_secs(3), ..answer(200, OPENAI_OK) };
    let fake = Fake::start(vec![slow, answer(200, OPENAI_OK)]);
    let out = provider(Api::OpenAi, &fake, Duration::from_millis(500)).complete(request()).await.unwrap();
    assert_eq!(out.input_tokens, 9);
    assert_eq!(fake.seen().len(), 2);
}

#[tokio::test]
async fn the_circuit_opens_after_repeated_failures_and_refuses_at_once() {
    let fake = Fake::start(vec![]);
    let remote = provider(Api::OpenAi, &fake, Duration::from_secs(5));
    for _ in 0..weft::agents::remote::BREAKER_FAILURES {
        assert!(matches!(remote.complete(request()).await, Err(Error::Unavailable(_))));
    }
    assert_eq!(remote.circuit(), Circuit::Open);
    let before = fake.seen().len();
    let error = remote.complete(request()).await.unwrap_err();
    assert!(matches!(&error, Error::Unavailable(m) if m.contains("circuit is open")), "{error}");
    assert_eq!(fake.seen().len(), before, "an open circuit sends nothing");
}

#[tokio::test]
async fn anthropic_sends_a_message_retries_overload_and_reports_a_bad_request() {
    let overloaded = answer(529, ANTHROPIC_OVERLOADED);
    let fake = Fake::start(vec![overloaded, answer(200, ANTHROPIC_OK), answer(400, ANTHROPIC_BAD_REQUEST)]);
    let remote = provider(Api::Anthropic, &fake, Duration::from_secs(5));
    let out = remote.complete(request()).await.unwrap();
    assert_eq!(out.text, "Hi! My name is Claude.");
    assert_eq!((out.input_tokens, out.output_tokens), (2095, 503));
    let seen = fake.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].path, "/messages");
    assert_eq!(seen[1].header("x-api-key"), Some(KEY));
    assert_eq!(seen[1].header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(seen[1].body["system"], "Be brief.");
    assert_eq!(seen[1].body["max_tokens"], 1024);
    let error = remote.complete(request()).await.unwrap_err();
    assert_eq!(error, Error::Invalid("anthropic answered 400: model: the-model is not a model".into()));
}
