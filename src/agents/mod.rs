//! Agents at work: the providers that do a task's text work, and the executor that runs a job step's task
//! through one (reads the input documents, asks the provider, writes the output document).
//!
//! - [`builtin`]: the offline, deterministic provider, the embedded default.
//! - [`executor`]: the [`weft_actors::process::worker::Executor`] of a node.

pub mod builtin;
pub mod catalog;
pub mod executor;

use std::collections::BTreeMap;

use weft_events::domain::agent::Param;

/// What a provider is asked.
#[derive(Debug, Clone, PartialEq)]
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
#[derive(Debug, Clone, PartialEq, Eq)]
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
}
