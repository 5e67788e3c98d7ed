//! Agents at work: the providers that do a task's text work, and the executor that runs a job step's task
//! through one (reads the input documents, asks the provider, writes the output document).
//!
//! - [`builtin`]: the offline, deterministic provider, the embedded default.
//! - [`remote`]: LLM providers over HTTP, `openai` (and OpenAI-compatible servers) and `anthropic`.
//! - [`template`]: a step's instruction as a template, and large inputs split into chunks.
//! - [`executor`]: the [`weft_actors::process::worker::Executor`] of a node.
//! - [`catalog`]: the agents and workflows a node registers on start.

pub mod builtin;
pub mod catalog;
pub mod executor;
pub mod prices;
pub mod remote;
pub mod template;

use std::collections::BTreeMap;

use weft_events::domain::agent::Param;

/// What a provider is asked.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Request {
    /// The agent's model.
    pub model: String,
    /// The agent's standing instructions (a system prompt).
    pub instructions: String,
    /// The step's instruction, its template filled in.
    pub prompt: String,
    /// The input documents' text, joined.
    pub input: String,
    /// The first input's content type.
    pub input_content_type: String,
    /// The agent's provider settings.
    pub parameters: BTreeMap<String, Param>,
}

/// What a provider answered.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Completion {
    /// The output document's text.
    pub text: String,
    /// Its content type.
    pub content_type: String,
    /// Tokens read.
    pub input_tokens: u64,
    /// Tokens written.
    pub output_tokens: u64,
}

/// Why a provider failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The request cannot succeed as it is (an unknown model, a bad parameter): not retried.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The provider failed in a way another attempt may not (retried by the step's policy).
    #[error("provider unavailable: {0}")]
    Unavailable(String),
}

/// Does a task's text work.
#[async_trait::async_trait]
pub trait Provider: Send + Sync + 'static {
    /// Its name in an agent's profile (`builtin`, `openai`, ...).
    fn name(&self) -> &str;

    /// Answers one request.
    async fn complete(&self, request: Request) -> Result<Completion, Error>;

    /// Its health, for operators (`GET /providers`); a provider without a circuit is always closed.
    fn health(&self) -> Health {
        Health { name: self.name().to_owned(), circuit: remote::Circuit::Closed, consecutive_failures: 0 }
    }
}

/// A provider's health.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Health {
    /// Its name.
    pub name: String,
    /// Whether requests go through.
    pub circuit: remote::Circuit,
    /// Failed requests since the last success.
    pub consecutive_failures: u32,
}

/// The default base URL of the `openai` provider.
pub const OPENAI_URL: &str = "https://api.openai.com/v1";

/// The default base URL of the `anthropic` provider.
pub const ANTHROPIC_URL: &str = "https://api.anthropic.com/v1";

/// Which LLM providers a node offers besides `builtin`.
#[derive(Debug, Clone, clap::Args)]
pub struct ProviderOptions {
    /// The `openai` provider's base URL; another one (`http://127.0.0.1:11434/v1` for Ollama) serves an
    /// OpenAI-compatible server, which needs no key.
    #[arg(long, default_value = OPENAI_URL, env = "WEFT_OPENAI_BASE_URL")]
    pub openai_base_url: String,
    /// A file holding the OpenAI key; `OPENAI_API_KEY` without it. With neither (and the default URL) there is
    /// no `openai` provider.
    #[arg(long, env = "WEFT_OPENAI_API_KEY_FILE")]
    pub openai_api_key_file: Option<std::path::PathBuf>,
    /// The `anthropic` provider's base URL.
    #[arg(long, default_value = ANTHROPIC_URL, env = "WEFT_ANTHROPIC_BASE_URL")]
    pub anthropic_base_url: String,
    /// A file holding the Anthropic key; `ANTHROPIC_API_KEY` without it. With neither there is no `anthropic`
    /// provider.
    #[arg(long, env = "WEFT_ANTHROPIC_API_KEY_FILE")]
    pub anthropic_api_key_file: Option<std::path::PathBuf>,
    /// The time-out of one call to a provider, in seconds.
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=3600), env = "WEFT_PROVIDER_TIMEOUT_SECS")]
    pub provider_timeout_secs: u64,
    /// What a model costs: PROVIDER/MODEL=INPUT:OUTPUT in US dollars per million tokens read and written
    /// (`openai/gpt-4o-mini=0.15:0.6`; MODEL `*` for every model of the provider). Repeat it or separate
    /// entries by commas. Calls to a model without a price cost 0.
    #[arg(long = "price", value_parser = prices::parse, value_delimiter = ',', env = "WEFT_PRICES")]
    pub prices: Vec<prices::Price>,
}

/// Why the providers a node's options name could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A key file could not be read.
    #[error("the key file {file}: {source}")]
    KeyFile {
        /// The file.
        file: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A key file holds nothing.
    #[error("the key file {file} is empty")]
    EmptyKeyFile {
        /// The file.
        file: std::path::PathBuf,
    },
    /// A provider's client could not be made.
    #[error(transparent)]
    Provider(#[from] Error),
}

/// A key from a file (trimmed) or else from an environment variable; `None` when neither has one.
fn key(file: Option<&std::path::Path>, variable: &str) -> Result<Option<String>, ConfigError> {
    if let Some(file) = file {
        let key =
            std::fs::read_to_string(file).map_err(|source| ConfigError::KeyFile { file: file.to_owned(), source })?;
        let key = key.trim().to_owned();
        if key.is_empty() {
            return Err(ConfigError::EmptyKeyFile { file: file.to_owned() });
        }
        return Ok(Some(key));
    }
    Ok(std::env::var(variable).ok().map(|k| k.trim().to_owned()).filter(|k| !k.is_empty()))
}

/// The providers `options` configure, `builtin` first.
pub fn providers(options: &ProviderOptions) -> Result<Vec<std::sync::Arc<dyn Provider>>, ConfigError> {
    use remote::{Api, Remote, RemoteOptions};
    let timeout = std::time::Duration::from_secs(options.provider_timeout_secs);
    let mut providers: Vec<std::sync::Arc<dyn Provider>> = vec![std::sync::Arc::new(builtin::Builtin)];
    let openai_key = key(options.openai_api_key_file.as_deref(), "OPENAI_API_KEY")?;
    if openai_key.is_some() || options.openai_base_url != OPENAI_URL {
        let base_url = options.openai_base_url.clone();
        let remote = Remote::new(RemoteOptions {
            api: Api::OpenAi,
            base_url,
            api_key: openai_key,
            timeout,
            base_delay: remote::BASE_DELAY,
        })?;
        providers.push(std::sync::Arc::new(remote));
    }
    if let Some(api_key) = key(options.anthropic_api_key_file.as_deref(), "ANTHROPIC_API_KEY")? {
        let base_url = options.anthropic_base_url.clone();
        let remote = Remote::new(RemoteOptions {
            api: Api::Anthropic,
            base_url,
            api_key: Some(api_key),
            timeout,
            base_delay: remote::BASE_DELAY,
        })?;
        providers.push(std::sync::Arc::new(remote));
    }
    Ok(providers)
}

/// Calls `provider` in a `provider_call` span, recording the call's metrics: calls by provider, model and
/// outcome, their latency, errors by kind, tokens and their cost at `prices`, and the circuit's state after it.
/// The completion comes with that cost, in billionths of a US dollar.
pub async fn call(
    provider: &dyn Provider,
    request: Request,
    prices: &prices::Prices,
) -> Result<(Completion, u64), Error> {
    use tracing::Instrument as _;
    let name = provider.name().to_owned();
    let model = request.model.clone();
    let span = tracing::debug_span!(
        "provider_call",
        provider = %name,
        model = %model,
        input_tokens = tracing::field::Empty,
        output_tokens = tracing::field::Empty,
        error = tracing::field::Empty,
    );
    for kind in ["invalid", "unavailable"] {
        metrics::counter!("weft_provider_errors_total", "provider" => name.clone(), "kind" => kind).increment(0);
    }
    let started = std::time::Instant::now();
    let result = provider.complete(request).instrument(span.clone()).await;
    let mut cost = 0;
    let outcome = match &result {
        Ok(completion) => {
            span.record("input_tokens", completion.input_tokens);
            span.record("output_tokens", completion.output_tokens);
            metrics::counter!("weft_provider_input_tokens_total", "provider" => name.clone(), "model" => model.clone())
                .increment(completion.input_tokens);
            metrics::counter!("weft_provider_output_tokens_total", "provider" => name.clone(), "model" => model.clone())
                .increment(completion.output_tokens);
            cost = prices.cost(&name, &model, completion.input_tokens, completion.output_tokens);
            metrics::counter!("weft_provider_cost_nanodollars_total", "provider" => name.clone(), "model" => model.clone())
                .increment(cost);
            "ok"
        }
        Err(error) => {
            let kind = match error {
                Error::Invalid(_) => "invalid",
                Error::Unavailable(_) => "unavailable",
            };
            span.record("error", kind);
            metrics::counter!("weft_provider_errors_total", "provider" => name.clone(), "kind" => kind).increment(1);
            kind
        }
    };
    metrics::counter!("weft_provider_calls_total", "provider" => name.clone(), "model" => model, "outcome" => outcome)
        .increment(1);
    metrics::histogram!("weft_provider_call_duration_seconds", "provider" => name.clone()).record(started.elapsed());
    let open = provider.health().circuit == remote::Circuit::Open;
    metrics::gauge!("weft_provider_circuit_open", "provider" => name).set(if open { 1.0 } else { 0.0 });
    result.map(|completion| (completion, cost))
}
