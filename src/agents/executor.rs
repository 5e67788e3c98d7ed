//! The node's executor: runs a job step's task through its agent's provider, with documents in object storage.
//!
//! A task reads its input documents' current content (each at most [`MAX_INPUT_BYTES`], UTF-8), and the
//! outputs of earlier steps its instruction names, fills in the step's instruction (a template over the
//! input, earlier outputs and the job's parameters: see [`super::template`]), asks the provider (once per
//! chunk when the input is over the agent's `chunk_bytes`, the answers joined), and writes the answer as a
//! new document: registered for the job's tenant and owned by the agent, its
//! content put into object storage, recorded as uploaded with storage's size and etag, and recorded on every
//! input as a derivative (the lineage). The output document's id is derived from the task's id, so a
//! repeated recording after a crash names the same document.
//!
//! A task reads only documents of its job's tenant (its first event's): an input or earlier output of another
//! tenant fails the step for good, saying only that no such document is in the tenant, so that no id
//! reaches across a tenant boundary.
//!
//! The worker bounds each task by the step's time-out and drops it when the time is up, which aborts an
//! in-flight provider call.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use weft_actors::document::{Command, Document, Status};
use weft_actors::host::{Execute, Metadata};
use weft_actors::job::{self, Job};
use weft_actors::process::Gateway;
use weft_actors::process::worker::{Executor, Task, TaskError, TaskOutput};
use weft_events::domain::agent::Param;
use weft_events::domain::document::UploadSource;
use weft_events::domain::ids::{DocumentId, Uuid};
use weft_events::domain::job::Level;
use weft_events::{Direction, Timestamp};

use super::template::{self, Values};
use super::{Error, Provider, Request};
use crate::gateway::BusGateway;
use crate::objects::{ObjectStore, document_key};

/// The most bytes read from one input document.
pub const MAX_INPUT_BYTES: u64 = 8 * 1024 * 1024;

/// See the module doc.
pub struct DocumentExecutor {
    objects: Arc<dyn ObjectStore>,
    gateway: BusGateway,
    providers: BTreeMap<String, Arc<dyn Provider>>,
    prices: super::prices::Prices,
}

fn permanent(message: impl Into<String>) -> TaskError {
    TaskError { message: message.into(), retryable: false }
}

fn transient(message: impl Into<String>) -> TaskError {
    TaskError { message: message.into(), retryable: true }
}

/// The extension of a file of this content type, for the output's name.
fn extension(content_type: &str) -> &'static str {
    match content_type {
        "text/markdown" => "md",
        "text/html" => "html",
        "application/json" => "json",
        _ => "txt",
    }
}

impl DocumentExecutor {
    /// An executor with these providers, keyed by their names.
    /// A task's cost is its provider calls' at `prices`.
    pub fn new(
        objects: Arc<dyn ObjectStore>,
        gateway: BusGateway,
        providers: Vec<Arc<dyn Provider>>,
        prices: super::prices::Prices,
    ) -> Self {
        let providers = providers.into_iter().map(|p| (p.name().to_owned(), p)).collect();
        Self { objects, gateway, providers, prices }
    }

    async fn document(&self, id: DocumentId) -> Result<Document, TaskError> {
        self.gateway.state::<Document>(&id.stream()).await.map_err(|e| transient(format!("reading {id}: {e}")))
    }

    /// A document of `tenant`: its state and its current content as text.
    async fn read(&self, id: DocumentId, tenant: &str) -> Result<(Document, String), TaskError> {
        let state = self.document(id).await?;
        self.checked(id, state, tenant, None).await.map(|(state, text, _)| (state, text))
    }

    /// The content of document `id` at `version` (its latest without one) as text, given its `state`, once it
    /// is found to be of `tenant`; and the version read.
    async fn checked(
        &self,
        id: DocumentId,
        state: Document,
        tenant: &str,
        version: Option<u32>,
    ) -> Result<(Document, String, u32), TaskError> {
        if state.status != Status::Unregistered && state.tenant != tenant {
            return Err(permanent(format!("input {id} is no document of tenant {tenant:?}")));
        }
        let version = version.unwrap_or(state.versions);
        let text = self.content(id, &state, version).await?;
        Ok((state, text, version))
    }

    /// The tenant and the correlation id of the task's job: its first event's. The correlation id (a trigger's
    /// id for the jobs it submits) goes on the records of the task's output, whichever way the task came to
    /// run (a retry's events are not correlated).
    async fn job_origin(&self, task: &Task) -> Result<(String, Option<Uuid>), TaskError> {
        let first = self.gateway.store().read_stream(&task.job.stream(), 1, Direction::Forwards, 1).await;
        let first = first.map_err(|e| transient(format!("reading job {}: {e}", task.job)))?;
        first
            .first()
            .map(|event| (event.tenant.to_string(), event.correlation_id))
            .ok_or_else(|| transient(format!("job {} has no events yet", task.job)))
    }

    async fn content(&self, id: DocumentId, state: &Document, version: u32) -> Result<String, TaskError> {
        if state.status != Status::Uploaded {
            return Err(permanent(format!("input {id} is not uploaded (it is {:?})", state.status)));
        }
        let key = crate::objects::documents::content_key(id, state, Some(version))
            .map_err(|e| permanent(format!("input {id}: {e}")))?;
        let mut body = match self.objects.get(&key).await {
            Ok(body) => body,
            Err(crate::objects::Error::NotFound { key }) => {
                return Err(permanent(format!("input {id} has no object at {key:?}")));
            }
            Err(e) => return Err(transient(format!("reading input {id}: {e}"))),
        };
        let mut bytes = Vec::new();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| transient(format!("reading input {id}: {e}")))?;
            if bytes.len() as u64 + chunk.len() as u64 > MAX_INPUT_BYTES {
                return Err(permanent(format!("input {id} is over {MAX_INPUT_BYTES} bytes")));
            }
            bytes.extend_from_slice(&chunk);
        }
        String::from_utf8(bytes).map_err(|_| permanent(format!("input {id} is not UTF-8 text")))
    }

    async fn command(
        &self,
        id: DocumentId,
        command_id: Uuid,
        command: Command,
        tenant: &str,
        actor: &str,
        correlation: Option<Uuid>,
    ) -> Result<(), TaskError> {
        let metadata = Metadata {
            tenant: Some(tenant.to_owned()),
            actor: Some(actor.to_owned()),
            correlation_id: correlation,
            owner: None,
        };
        let execute = Execute { command_id, command, expected_version: None, metadata };
        match self.gateway.execute::<Document>(&id.stream(), execute).await {
            Ok(_) => Ok(()),
            Err(weft_actors::host::Error::Rejected(rejection)) => {
                Err(permanent(format!("document {id} refused: {rejection}")))
            }
            Err(e) => Err(transient(format!("document {id}: {e}"))),
        }
    }
}

/// The document recording call `chunk` (from 0) of attempt `attempt` of `step` of `job`.
fn call_document(job: weft_events::domain::ids::JobId, step: &str, attempt: u32, chunk: usize) -> DocumentId {
    DocumentId(Uuid::new_v5(&job.0, format!("call/{step}/{attempt}/{chunk}").as_bytes()))
}

/// What a recording document holds: the request and the answer, as JSON.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Recorded {
    request: Request,
    answer: super::Completion,
}

impl DocumentExecutor {
    /// Keeps a provider call's request and answer as a document of the job's tenant (`call-<step>-<attempt>-
    /// <chunk>.json`, labelled `weft.call.job` and `weft.call.step`, owned by the agent), for `weft job rerun
    /// --recorded`. Its name and labels are sealed with the tenant's key as any document's.
    async fn record(
        &self,
        task: &Task,
        chunk: usize,
        request: &Request,
        answer: &super::Completion,
        tenant: &str,
        correlation: Option<Uuid>,
    ) -> Result<(), TaskError> {
        let id = call_document(task.job, &task.step.name, task.attempt, chunk);
        let body = serde_json::to_vec(&Recorded { request: request.clone(), answer: answer.clone() })
            .map_err(|e| permanent(format!("recording the call: {e}")))?;
        let actor = format!("agent:{}", task.agent);
        let register = Command::Register {
            name: format!("call-{}-{}-{chunk}.json", task.step.name, task.attempt),
            content_type: "application/json".into(),
            declared_size_bytes: body.len() as u64,
            tenant: tenant.to_owned(),
            owner: actor.clone(),
            labels: [
                ("weft.call.job".to_owned(), task.job.to_string()),
                ("weft.call.step".to_owned(), task.step.name.clone()),
            ]
            .into(),
            at: Timestamp::now(),
        };
        let registered = self.command(id, Uuid::new_v5(&id.0, b"register"), register, tenant, &actor, correlation);
        let key = document_key(tenant, id);
        let put =
            self.objects.put(&key, "application/json", futures::stream::iter([Ok(bytes::Bytes::from(body))]).boxed());
        let (registered, put) = futures::join!(registered, put);
        registered?;
        let info = put.map_err(|e| transient(format!("writing the call's record {id}: {e}")))?;
        let uploaded = Command::MarkUploaded {
            size_bytes: info.size_bytes,
            etag: info.etag,
            source: UploadSource::Agent,
            at: Timestamp::now(),
        };
        self.command(id, Uuid::new_v5(&id.0, b"upload"), uploaded, tenant, &actor, correlation).await
    }

    /// The job whose recorded calls answer this task's, and the attempt of the task's step that succeeded
    /// there; `None` when the task replays no job, or the step did not succeed in it.
    async fn replayed_attempt(&self, task: &Task) -> Result<Option<(weft_events::domain::ids::JobId, u32)>, TaskError> {
        let Some(original) = task.replay_of else { return Ok(None) };
        let job = self
            .gateway
            .state::<Job>(&original.stream())
            .await
            .map_err(|e| transient(format!("reading job {original}: {e}")))?;
        Ok(match job.progress.get(&task.step.name) {
            Some(weft_actors::job::StepState::Succeeded { attempt, .. }) => Some((original, *attempt)),
            _ => None,
        })
    }

    /// The answer `original` recorded for call `chunk` of its attempt `attempt` of this task's step, when it
    /// asked exactly `request`; `None` otherwise (the provider is asked).
    async fn recorded(
        &self,
        task: &Task,
        (original, attempt): (weft_events::domain::ids::JobId, u32),
        chunk: usize,
        request: &Request,
        tenant: &str,
    ) -> Result<Option<super::Completion>, TaskError> {
        let id = call_document(original, &task.step.name, attempt, chunk);
        let state = self.document(id).await?;
        if state.status != Status::Uploaded || state.tenant != tenant {
            return Ok(None);
        }
        let text = self.content(id, &state, state.versions).await?;
        let recorded: Recorded =
            serde_json::from_str(&text).map_err(|e| permanent(format!("the call's record {id} does not read: {e}")))?;
        Ok((recorded.request == *request).then_some(recorded.answer))
    }

    /// Adds a line to the task's job's log (best effort: a log line that cannot be written is not a failure).
    async fn log(&self, task: &Task, what: &str, level: Level, message: String) {
        let command = job::Command::AppendLog { level, message, at: Timestamp::now() };
        let metadata =
            Metadata { tenant: None, actor: Some(format!("agent:{}", task.agent)), correlation_id: None, owner: None };
        let execute =
            Execute { command_id: Uuid::new_v5(&task.id, what.as_bytes()), command, expected_version: None, metadata };
        if let Err(error) = self.gateway.execute::<Job>(&task.job.stream(), execute).await {
            tracing::debug!(job = %task.job, %error, "a job log line was not written");
        }
    }
}

#[async_trait::async_trait(?Send)]
impl Executor for DocumentExecutor {
    async fn run(&self, task: Task) -> Result<TaskOutput, TaskError> {
        let (provider, model) = (task.profile.provider.clone(), task.profile.model.clone());
        let started = format!("step {} attempt {}: asking {provider} ({model})", task.step.name, task.attempt);
        // The first log line is written while the work begins: neither waits for the other's append. A task
        // that succeeds writes its last line with its output's records (see `work`).
        let (_, result) = futures::join!(self.log(&task, "log-start", Level::Info, started), self.work(&task));
        if let Err(error) = &result {
            let level = if error.retryable { Level::Warn } else { Level::Error };
            let line = format!("step {} attempt {} failed: {}", task.step.name, task.attempt, error.message);
            self.log(&task, "log-end", level, line).await;
        }
        result
    }
}

impl DocumentExecutor {
    async fn work(&self, task: &Task) -> Result<TaskOutput, TaskError> {
        let provider = self.providers.get(&task.profile.provider).ok_or_else(|| {
            permanent(format!(
                "no provider {:?} on this node; it has {:?}",
                task.profile.provider,
                self.providers.keys().collect::<Vec<_>>()
            ))
        })?;
        let first = *task.inputs.first().ok_or_else(|| permanent("the step has no input document"))?;
        let chunk_bytes = match task.profile.parameters.get("chunk_bytes") {
            None => template::DEFAULT_CHUNK_BYTES,
            Some(Param::Int(n)) if *n >= template::MIN_CHUNK_BYTES as i64 => usize::try_from(*n).unwrap_or(usize::MAX),
            Some(other) => {
                return Err(permanent(format!(
                    "the agent's chunk_bytes must be a whole number of at least {}, not {other:?}",
                    template::MIN_CHUNK_BYTES
                )));
            }
        };
        // The job's tenant and the first input's state are read at once: the one is only checked against the
        // other.
        let (origin, first_state) = futures::join!(self.job_origin(task), self.document(first));
        let (tenant, correlation) = origin?;
        // The first input (`first`) is read already; the others are read in turn.
        let mut first_state = Some(first_state?);
        let mut texts = Vec::with_capacity(task.inputs.len());
        let mut states = Vec::with_capacity(task.inputs.len());
        let mut versions = Vec::with_capacity(task.inputs.len());
        for &input in &task.inputs {
            let state = match first_state.take() {
                Some(state) => state,
                None => self.document(input).await?,
            };
            let pinned = task.versions.get(&input).copied();
            let (state, text, version) = self.checked(input, state, &tenant, pinned).await?;
            texts.push(text);
            states.push(state);
            versions.push(version);
        }
        // Only the earlier outputs the instruction names are read; a name without an output is the template's
        // error below.
        let mut outputs = BTreeMap::new();
        for step in weft_actors::workflow::outputs_named(&task.step.instruction) {
            if let Some(&document) = task.outputs.get(step) {
                outputs.insert(step.to_owned(), self.read(document, &tenant).await?.1);
            }
        }
        let input = texts.join("\n\n");
        let chunks = template::chunks(&input, chunk_bytes).map_err(|e| permanent(e.to_string()))?;
        let replay = self.replayed_attempt(task).await?;
        let mut answers = Vec::with_capacity(chunks.len());
        let (mut content_type, mut input_tokens, mut output_tokens, mut cost_nanos) = (String::new(), 0, 0, 0);
        for (index, chunk) in chunks.iter().enumerate() {
            let plain = [
                ("job", task.job.to_string()),
                ("step", task.step.name.clone()),
                ("attempt", task.attempt.to_string()),
                ("chunk", (index + 1).to_string()),
                ("chunks", chunks.len().to_string()),
            ]
            .into();
            let values = Values { input: chunk, outputs: &outputs, parameters: &task.parameters, plain };
            let prompt = template::render(&task.step.instruction, &values).map_err(|e| permanent(e.to_string()))?;
            let request = Request {
                model: task.profile.model.clone(),
                instructions: task.profile.instructions.clone(),
                prompt,
                input: (*chunk).to_owned(),
                input_content_type: states[0].content_type.clone(),
                parameters: task.profile.parameters.clone(),
            };
            let replayed = match replay {
                Some(replay) => self.recorded(task, replay, index, &request, &tenant).await?,
                None => None,
            };
            let completion = match replayed {
                Some(completion) => completion,
                None => {
                    let (completion, cost) =
                        super::call(&**provider, request.clone(), &self.prices).await.map_err(|e| match e {
                            Error::Invalid(message) => permanent(message),
                            Error::Unavailable(message) => transient(message),
                        })?;
                    if provider.name() != super::builtin::NAME {
                        self.record(task, index, &request, &completion, &tenant, correlation).await?;
                    }
                    // A replayed answer cost nothing now; a call, its tokens at the prices.
                    cost_nanos += cost;
                    completion
                }
            };
            if index == 0 {
                content_type = completion.content_type;
            }
            input_tokens += completion.input_tokens;
            output_tokens += completion.output_tokens;
            answers.push(completion.text);
        }
        if chunks.len() > 1 {
            let line = format!(
                "step {} attempt {}: the input was split into {} chunks of at most {chunk_bytes} bytes",
                task.step.name,
                task.attempt,
                chunks.len()
            );
            self.log(task, "log-chunks", Level::Info, line).await;
        }
        let completion = super::Completion { text: answers.join("\n\n"), content_type, input_tokens, output_tokens };

        let actor = format!("agent:{}", task.agent);
        let output = DocumentId(Uuid::new_v5(&task.id, b"output"));
        let size = completion.text.len() as u64;
        let register = Command::Register {
            name: format!("{}-{first}.{}", task.step.name, extension(&completion.content_type)),
            content_type: completion.content_type.clone(),
            declared_size_bytes: size.max(1),
            tenant: tenant.clone(),
            owner: actor.clone(),
            // A derived document keeps its (first) input's labels.
            labels: states[0].labels.clone(),
            at: Timestamp::now(),
        };
        // The output is registered while its content is written: the registration is an append, the content
        // an object put, and neither needs the other. Only the upload's record waits for both.
        let registered =
            self.command(output, Uuid::new_v5(&task.id, b"register-output"), register, &tenant, &actor, correlation);
        let key = document_key(&tenant, output);
        let body = futures::stream::iter([Ok(bytes::Bytes::from(completion.text))]).boxed();
        let (registered, put) = futures::join!(registered, self.objects.put(&key, &completion.content_type, body));
        registered?;
        let info = put.map_err(|e| transient(format!("writing the output {output}: {e}")))?;
        let uploaded = Command::MarkUploaded {
            size_bytes: info.size_bytes,
            etag: info.etag,
            source: UploadSource::Agent,
            at: Timestamp::now(),
        };
        // The output's upload, the inputs' derivatives and the job's log line are other streams' commands: sent
        // at once, so the task waits for one round of appends rather than one per stream. The line has its own
        // id: should a record fail after it, the failure's line is written too.
        let upload =
            self.command(output, Uuid::new_v5(&task.id, b"upload-output"), uploaded, &tenant, &actor, correlation);
        let derivatives = task.inputs.iter().zip(&states).zip(&versions).map(|((&input, state), &version)| {
            let derived = Command::RecordDerivative {
                child: output,
                job: task.job,
                step: task.step.name.clone(),
                version: Some(version),
                at: Timestamp::now(),
            };
            let id = Uuid::new_v5(&task.id, format!("derivative-{input}").as_bytes());
            self.command(input, id, derived, &state.tenant, &actor, correlation)
        });
        let line = format!(
            "step {} attempt {}: wrote document {output} ({} tokens in, {} out)",
            task.step.name, task.attempt, completion.input_tokens, completion.output_tokens
        );
        let (uploaded, derived, ()) = futures::join!(
            upload,
            futures::future::join_all(derivatives),
            self.log(task, "log-wrote", Level::Info, line)
        );
        uploaded?;
        derived.into_iter().collect::<Result<Vec<()>, _>>()?;
        Ok(TaskOutput {
            document: output,
            input_tokens: completion.input_tokens,
            output_tokens: completion.output_tokens,
            cost_nanos,
        })
    }
}
