//! What can be asked of a job, the limits its commands are held to, and why it refuses one.

use std::collections::BTreeMap;

use weft_events::Timestamp;
use weft_events::domain::ids::{DocumentId, JobId, WorkflowId};
use weft_events::domain::job::Level;
use weft_events::domain::workflow::Step;

use super::{Status, StepState};
use crate::workflow;

/// Most input documents of one job.
pub const MAX_INPUTS: usize = 1000;

/// Longest log line or error message, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 8 * 1024;

/// Most log lines of one job: a runaway agent cannot grow a job's stream without bound.
pub const MAX_LOG_LINES: u32 = 10_000;

/// Longest idempotency key, in bytes.
pub const MAX_KEY_BYTES: usize = 200;

/// Most parameters of one job.
pub const MAX_PARAMETERS: usize = 64;

/// Longest parameter name, in bytes; names are ASCII letters, digits, `_`, `-` and `.`.
pub const MAX_PARAMETER_NAME_BYTES: usize = 64;

/// Longest parameter value, in bytes.
pub const MAX_PARAMETER_VALUE_BYTES: usize = 8 * 1024;

/// What can be asked of a job.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema, strum::IntoStaticStr)]
#[serde(tag = "type", content = "payload", rename_all = "snake_case", deny_unknown_fields)]
#[strum(serialize_all = "snake_case")]
pub enum Command {
    /// Submit the job: run `steps` (the workflow at `workflow_version`) over `inputs`.
    Submit {
        /// The workflow.
        workflow: WorkflowId,
        /// Its version.
        workflow_version: u32,
        /// Its steps at that version. From a client, none (the command intake fills in the version's steps)
        /// or exactly those: the intake refuses other steps, and a workflow version never defined.
        #[serde(default)]
        steps: Vec<Step>,
        /// The documents to read.
        inputs: Vec<DocumentId>,
        /// Higher runs first.
        priority: i32,
        /// The client's key against submitting twice.
        idempotency_key: Option<String>,
        /// Named values for the steps' instructions (`{{param.NAME}}`).
        #[serde(default)]
        parameters: BTreeMap<String, String>,
        /// The version to read of some inputs (`{"<document id>": 2}`); the others are read at their latest
        /// version when a step reads them. A version the document does not have fails the step that reads it.
        #[serde(default)]
        input_versions: BTreeMap<DocumentId, u32>,
        /// A job whose recorded provider calls this one answers from, for each request that is the same as one
        /// it made (the others go to the provider).
        #[serde(default)]
        replay_of: Option<JobId>,
        /// When.
        #[serde(default = "Timestamp::now")]
        at: Timestamp,
    },
    /// An agent began an attempt.
    StartStep {
        /// The step.
        step: String,
        /// The attempt.
        attempt: u32,
        /// When.
        #[serde(default = "Timestamp::now")]
        at: Timestamp,
    },
    /// An attempt succeeded.
    CompleteStep {
        /// The step.
        step: String,
        /// The attempt.
        attempt: u32,
        /// The document it wrote.
        output: DocumentId,
        /// When.
        #[serde(default = "Timestamp::now")]
        at: Timestamp,
    },
    /// An attempt failed (or timed out).
    FailStep {
        /// The step.
        step: String,
        /// The attempt.
        attempt: u32,
        /// What went wrong.
        error: String,
        /// Whether another attempt may succeed.
        retryable: bool,
        /// A random number in `[0, 1]` that spreads retries out.
        jitter: f64,
        /// When.
        #[serde(default = "Timestamp::now")]
        at: Timestamp,
    },
    /// A retry's time has come.
    RetryDue {
        /// The step.
        step: String,
        /// The attempt that is due.
        attempt: u32,
        /// Now.
        #[serde(default = "Timestamp::now")]
        at: Timestamp,
    },
    /// Add a line to the job's log.
    AppendLog {
        /// How much it matters.
        level: Level,
        /// The line.
        message: String,
        /// When.
        #[serde(default = "Timestamp::now")]
        at: Timestamp,
    },
    /// Run a failed or dead-lettered job again from the steps that had not succeeded.
    Retry {
        /// Why, for the record.
        reason: String,
        /// When.
        #[serde(default = "Timestamp::now")]
        at: Timestamp,
    },
    /// Stop the job.
    Cancel {
        /// Why.
        reason: String,
        /// When.
        #[serde(default = "Timestamp::now")]
        at: Timestamp,
    },
}

/// Why a job refuses a command.
#[derive(Debug, Clone, PartialEq, thiserror::Error, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(tag = "code", content = "detail", rename_all = "snake_case")]
pub enum Rejection {
    /// The job has not been submitted.
    #[error("the job is not submitted")]
    NotSubmitted,
    /// The job was submitted already.
    #[error("the job is submitted already")]
    AlreadySubmitted,
    /// The job is finished.
    #[error("the job is finished ({0:?})")]
    Finished(Status),
    /// The workflow is archived: no new job may run it.
    #[error("workflow {0} is archived")]
    WorkflowArchived(WorkflowId),
    /// The steps given with the submission are not a valid workflow.
    #[error("the workflow is invalid: {0}")]
    InvalidWorkflow(workflow::Rejection),
    /// No steps of that name.
    #[error("the job has no step {0:?}")]
    UnknownStep(String),
    /// The step is not where the command needs it to be (another attempt, not scheduled, done already).
    #[error("step {step:?} cannot do that now: it is {state:?}")]
    WrongStepState {
        /// The step.
        step: String,
        /// Where it is.
        state: StepState,
    },
    /// A retry was reported due before its time.
    #[error("the retry is due at {due_at:?}, not yet")]
    RetryNotDue {
        /// When it is due.
        due_at: Timestamp,
    },
    /// Input documents missing, duplicated or too many.
    #[error("inputs: {0}")]
    InvalidInputs(String),
    /// The jitter is not a number in `[0, 1]`.
    #[error("jitter {0} is not in [0, 1]")]
    InvalidJitter(f64),
    /// A message, reason or key is empty or too long.
    #[error("{field} must be 1 to {limit} bytes")]
    InvalidText {
        /// Which field.
        field: String,
        /// Its limit.
        limit: usize,
    },
    /// Only a failed or dead-lettered job can be retried.
    #[error("only a failed or dead-lettered job can be retried; it is {0:?}")]
    NotRetryable(Status),
    /// The parameters are too many, or one has a bad name or value.
    #[error("parameters: {0}")]
    InvalidParameters(String),
    /// The log is full.
    #[error("the job's log holds {limit} lines already")]
    LogFull {
        /// The limit.
        limit: u32,
    },
    /// The submission names a workflow version that was never defined (checked by the command intake).
    #[error("workflow {workflow} has no version {version}")]
    UnknownWorkflow {
        /// The workflow named.
        workflow: WorkflowId,
        /// The version named.
        version: u32,
    },
    /// The submission's steps are not the named workflow version's (checked by the command intake).
    #[error("the steps differ from those of workflow {workflow} version {version}: send none to run its steps")]
    StepsDiffer {
        /// The workflow named.
        workflow: WorkflowId,
        /// The version named.
        version: u32,
    },
}

pub(super) fn text(field: &'static str, value: &str, limit: usize) -> Result<(), Rejection> {
    if value.trim().is_empty() || value.len() > limit {
        return Err(Rejection::InvalidText { field: field.into(), limit });
    }
    Ok(())
}

/// Checks a job's parameters against the limits above.
pub fn check_parameters(parameters: &BTreeMap<String, String>) -> Result<(), Rejection> {
    if parameters.len() > MAX_PARAMETERS {
        return Err(Rejection::InvalidParameters(format!("at most {MAX_PARAMETERS}, not {}", parameters.len())));
    }
    for (name, value) in parameters {
        let name_ok = !name.is_empty()
            && name.len() <= MAX_PARAMETER_NAME_BYTES
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if !name_ok {
            return Err(Rejection::InvalidParameters(format!(
                "name {name:?} must be 1 to {MAX_PARAMETER_NAME_BYTES} ASCII letters, digits, '_', '-' or '.'"
            )));
        }
        if value.len() > MAX_PARAMETER_VALUE_BYTES {
            return Err(Rejection::InvalidParameters(format!(
                "{name:?} is {} bytes, over {MAX_PARAMETER_VALUE_BYTES}",
                value.len()
            )));
        }
    }
    Ok(())
}
