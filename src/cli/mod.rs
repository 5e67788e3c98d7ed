//! The command line's client of a running node, one file per noun: `weft document` ([`document`]), `weft job`
//! ([`job`]), `weft agent run` ([`agent`]), `weft workflow run|versions` ([`workflow`]), `weft
//! agent|workflow|schedule list|show` ([`reads`]), `weft trigger` ([`trigger`]), `weft projection` ([`projection`]),
//! `weft tenant` ([`tenant`]), `weft send` ([`send`]), `weft stream events` ([`stream`]); tables are drawn by
//! [`render`]. Each speaks to the node's HTTP API with one [`Client`] (`--url`, or `WEFT_URL`; the default is
//! `weft serve`'s default address).
//!
//! Data goes to stdout, as the API's JSON (`--output json`) or as a table (`--output table`, the default);
//! diagnostics go to stderr. An error answer of the node is printed with its kind and message, and the command
//! exits non-zero.

use std::fmt::Write as _;
use std::time::Duration;

use clap::{Args, ValueEnum};
use serde_json::Value;

pub mod agent;
pub mod cluster;
pub mod document;
pub mod identity;
pub mod job;
pub mod projection;
pub mod reads;
pub mod render;
pub mod send;
pub mod stream;
pub mod tenant;
pub mod token;
pub mod trigger;
pub mod workflow;

pub use agent::AgentVerb;
use document::TRANSFER_TIMEOUT;
pub use document::{DocumentVerb, signed_put, upload};
pub use job::{JobRun, JobVerb, run_job};
pub use projection::ProjectionVerb;
pub use reads::{ListArgs, Read, read};
pub(crate) use render::table;
pub use send::SendArgs;
pub use stream::stream_events;
pub use tenant::TenantVerb;
pub use trigger::TriggerVerb;
pub use workflow::WorkflowVerb;

/// How long one request may take (a rebuild can take long: it has its own).
const TIMEOUT: Duration = Duration::from_secs(30);
/// How long a rebuild may take.
const REBUILD_TIMEOUT: Duration = Duration::from_secs(3600);
/// How often `job logs --follow` asks for more.
const FOLLOW_EVERY: Duration = Duration::from_millis(500);

/// Where the node is and how to print.
#[derive(Debug, Clone, Args)]
pub struct Connection {
    /// The node's query API.
    #[arg(long, env = "WEFT_URL", default_value = "http://127.0.0.1:8080", global = true)]
    pub url: String,
    /// How to print the data.
    #[arg(long, value_enum, default_value_t = Output::Table, global = true)]
    pub output: Output,
    /// The bearer token to send (from `weft token issue`, an API key, an OIDC provider).
    #[arg(long, env = "WEFT_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// A file holding the token, when --token is not given. Without either, the token `weft login` kept, else
    /// the admin token a node on this machine writes (`weft-data/admin.token`), is used if it is there.
    #[arg(long, env = "WEFT_TOKEN_FILE", global = true)]
    pub token_file: Option<std::path::PathBuf>,
}

/// Where `weft serve` on its defaults writes its admin token, from the folder it runs in.
pub const DEFAULT_TOKEN_FILE: &str = "weft-data/admin.token";

impl Connection {
    /// The token to send: --token, else the --token-file's, else `weft login`'s, else the default file's if
    /// it exists.
    pub fn token(&self) -> anyhow::Result<Option<String>> {
        if let Some(token) = &self.token {
            return Ok(Some(token.trim().to_owned()));
        }
        let login = identity::login_file().filter(|file| file.exists());
        let (path, given) = match (&self.token_file, login) {
            (Some(path), _) => (path.clone(), true),
            (None, Some(login)) => (login, true),
            (None, None) => (std::path::PathBuf::from(DEFAULT_TOKEN_FILE), false),
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text.trim().to_owned()).filter(|t| !t.is_empty())),
            Err(e) if !given && e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => anyhow::bail!("the token file {}: {e}", path.display()),
        }
    }

    /// A client of the node, sending the token if there is one.
    pub fn client(&self) -> anyhow::Result<Client> {
        Client::new(&self.url, self.token()?.as_deref())
    }
}

/// How the data is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// The API's JSON, one document.
    Json,
    /// Columns for people.
    Table,
}

/// Why a client command failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The node could not be reached.
    #[error("cannot reach the node at {url} (is `weft serve` running there? set --url or WEFT_URL): {source}")]
    Unreachable {
        /// The address tried.
        url: String,
        /// Why.
        source: reqwest::Error,
    },
    /// The node answered with an error.
    #[error("{status} {kind}: {message}")]
    Answer {
        /// The HTTP status.
        status: u16,
        /// The error's kind (`invalid`, `not_found`, ...).
        kind: String,
        /// For people.
        message: String,
    },
    /// The node's answer was not the JSON expected.
    #[error("the node at {url} answered something that is not Weft's JSON: {detail}")]
    Garbled {
        /// The address asked.
        url: String,
        /// What was wrong.
        detail: String,
    },
}

/// The HTTP client of one node.
pub struct Client {
    base: String,
    /// A client without the token: signed URLs (the local store's, S3's) carry their own proof, and the
    /// node's token must not go to an object store.
    http: reqwest::Client,
    /// `Bearer <token>`, sent to the node only.
    authorization: Option<reqwest::header::HeaderValue>,
}

impl Client {
    /// A client of the node at `url`, sending `token` as a bearer token.
    pub fn new(url: &str, token: Option<&str>) -> anyhow::Result<Self> {
        let base = url.trim_end_matches('/').to_owned();
        anyhow::ensure!(
            base.starts_with("http://") || base.starts_with("https://"),
            "--url must start with http:// or https://, not {url:?}"
        );
        let authorization = match token {
            Some(token) => {
                let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                    .map_err(|_| anyhow::anyhow!("the token holds characters a header cannot"))?;
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        let http = reqwest::Client::builder().connect_timeout(Duration::from_secs(5)).build()?;
        Ok(Self { base, http, authorization })
    }

    /// A request to the node, with the token.
    fn to_node(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, url);
        match &self.authorization {
            Some(value) => request.header(reqwest::header::AUTHORIZATION, value.clone()),
            None => request,
        }
    }

    async fn send(&self, request: reqwest::RequestBuilder, url: String) -> Result<Value, Error> {
        let response = request.send().await.map_err(|source| Error::Unreachable { url: url.clone(), source })?;
        let status = response.status();
        let body = response.bytes().await.map_err(|source| Error::Unreachable { url: url.clone(), source })?;
        let value: Value = serde_json::from_slice(&body)
            .map_err(|e| Error::Garbled { url: url.clone(), detail: format!("{status}: {e}") })?;
        if status.is_success() {
            return Ok(value);
        }
        let text = |field: &str| value["error"][field].as_str().map(str::to_owned);
        match (text("kind"), text("message")) {
            (Some(kind), Some(message)) => Err(Error::Answer { status: status.as_u16(), kind, message }),
            _ => Err(Error::Garbled { url, detail: format!("{status} without an error object") }),
        }
    }

    /// `GET path?query`.
    pub async fn get(&self, path: &str, query: &[(String, String)]) -> Result<Value, Error> {
        let url = format!("{}{path}", self.base);
        self.send(self.to_node(reqwest::Method::GET, &url).query(query).timeout(TIMEOUT), url).await
    }

    /// The body of `GET url` as text: a signed download URL, which is not the node's.
    pub async fn text(&self, url: &str) -> Result<String, Error> {
        let unreachable = |source| Error::Unreachable { url: url.to_owned(), source };
        let answer = self.http.get(url).timeout(TRANSFER_TIMEOUT).send().await.map_err(unreachable)?;
        let status = answer.status();
        let text = answer.text().await.map_err(unreachable)?;
        if !status.is_success() {
            return Err(Error::Garbled { url: url.to_owned(), detail: format!("{status}: {text}") });
        }
        Ok(text)
    }

    /// `POST path` with a JSON body, or none.
    pub async fn post(
        &self,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<Value, Error> {
        self.request(reqwest::Method::POST, path, body, headers, timeout).await
    }

    /// `method path` with a JSON body, or none.
    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<Value, Error> {
        let url = format!("{}{path}", self.base);
        let mut request = self.to_node(method, &url).timeout(timeout);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request.header("content-type", "application/json").body(body.to_string());
        }
        self.send(request, url).await
    }
}

/// A path segment from user input: ids are percent-encoded so that they cannot reach another route.
pub(crate) fn segment(text: &str) -> String {
    let mut encoded = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            encoded.push(byte as char);
        } else {
            let _ = write!(encoded, "%{byte:02X}");
        }
    }
    encoded
}

pub(crate) fn print(output: Output, value: &Value, as_table: impl FnOnce(&Value) -> String) {
    match output {
        Output::Json => println!("{value}"),
        Output::Table => print!("{}", as_table(value)),
    }
}
