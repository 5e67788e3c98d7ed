//! Events of a job: one run of a workflow over input documents, step by step.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::ids::{DocumentId, JobId, WorkflowId};
use super::workflow::Step;
use crate::envelope::Timestamp;

/// A job was submitted. It carries the workflow's steps as they were at submission, so that the job decides
/// which steps are ready from its own history alone, and a later redefinition does not change a running job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Submitted {
    /// The workflow.
    pub workflow: WorkflowId,
    /// Its version.
    pub workflow_version: u32,
    /// Its steps at that version.
    pub steps: Vec<Step>,
    /// The documents the job reads.
    pub inputs: Vec<DocumentId>,
    /// Higher runs first.
    pub priority: i32,
    /// The client's key for not submitting the same job twice.
    pub idempotency_key: Option<String>,
    /// Named values the steps' instructions can use (`{{param.NAME}}`). Added after version 1 of this event
    /// was first written: an event without it has none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub parameters: BTreeMap<String, String>,
    /// The version of an input the job reads, for the inputs it pins (the others: their latest when a step
    /// reads them). Added after version 1 of this event was first written: an event without it pins none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub input_versions: BTreeMap<DocumentId, u32>,
    /// The job whose recorded provider answers this one uses, where its requests are the same (`weft job rerun
    /// --recorded`). Added after version 1 of this event was first written: an event without it has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_of: Option<JobId>,
    /// When.
    pub at: Timestamp,
}

/// A step became ready and was handed to its agent (attempt 1, or a retry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct StepScheduled {
    /// The step.
    pub step: String,
    /// Its attempt, from 1.
    pub attempt: u32,
    /// When.
    pub at: Timestamp,
}

/// The agent began an attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct StepStarted {
    /// The step.
    pub step: String,
    /// The attempt.
    pub attempt: u32,
    /// When.
    pub at: Timestamp,
}

/// An attempt succeeded and wrote `output`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct StepSucceeded {
    /// The step.
    pub step: String,
    /// The attempt.
    pub attempt: u32,
    /// The document it wrote.
    pub output: DocumentId,
    /// When.
    pub at: Timestamp,
}

/// An attempt failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct StepFailed {
    /// The step.
    pub step: String,
    /// The attempt.
    pub attempt: u32,
    /// What went wrong.
    pub error: String,
    /// Whether another attempt may succeed.
    pub retryable: bool,
    /// When.
    pub at: Timestamp,
}

/// A failed step will be tried again at `due_at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RetryScheduled {
    /// The step.
    pub step: String,
    /// The attempt that will run.
    pub attempt: u32,
    /// When it is due.
    pub due_at: Timestamp,
}

/// How much a log line matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// Detail.
    Debug,
    /// Progress.
    Info,
    /// Something odd that did not stop the job.
    Warn,
    /// Something failed.
    Error,
}

/// A line was added to the job's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct LogAppended {
    /// How much it matters.
    pub level: Level,
    /// The line.
    pub message: String,
    /// When.
    pub at: Timestamp,
}

/// Every step succeeded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Succeeded {
    /// When.
    pub at: Timestamp,
}

/// A step failed for good.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Failed {
    /// The step that failed.
    pub step: String,
    /// Why.
    pub reason: String,
    /// When.
    pub at: Timestamp,
}

/// A step failed every attempt its retry policy allows: the job is set aside for an operator, who can retry
/// it from that step ([`Retried`]). A step that fails for good on its first attempt (a non-retryable error)
/// fails the job instead ([`Failed`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DeadLettered {
    /// The step whose retries are exhausted.
    pub step: String,
    /// Its attempts in all, earlier rounds included.
    pub attempts: u32,
    /// The last attempt's error.
    pub last_error: String,
    /// When.
    pub at: Timestamp,
}

/// A failed or dead-lettered job runs again from where it stopped: the steps that had not succeeded are
/// scheduled anew (each a [`StepScheduled`] after this event, its attempt one more than its last), each with
/// the full number of attempts of its retry policy; the outputs of the steps that succeeded are kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Retried {
    /// The steps scheduled again.
    pub steps: Vec<String>,
    /// Why, as the operator gave it.
    pub reason: String,
    /// When.
    pub at: Timestamp,
}

/// Someone cancelled the job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Cancelled {
    /// Why.
    pub reason: String,
    /// When.
    pub at: Timestamp,
}

super::domain_events! { "job";
    /// See [`Submitted`].
    Submitted(Submitted) = "job.submitted", v 1,
    /// See [`StepScheduled`].
    StepScheduled(StepScheduled) = "job.step_scheduled", v 1,
    /// See [`StepStarted`].
    StepStarted(StepStarted) = "job.step_started", v 1,
    /// See [`StepSucceeded`].
    StepSucceeded(StepSucceeded) = "job.step_succeeded", v 1,
    /// See [`StepFailed`].
    StepFailed(StepFailed) = "job.step_failed", v 1,
    /// See [`RetryScheduled`].
    RetryScheduled(RetryScheduled) = "job.retry_scheduled", v 1,
    /// See [`LogAppended`].
    LogAppended(LogAppended) = "job.log_appended", v 1,
    /// See [`Succeeded`].
    Succeeded(Succeeded) = "job.succeeded", v 1,
    /// See [`Failed`].
    Failed(Failed) = "job.failed", v 1,
    /// See [`Cancelled`].
    Cancelled(Cancelled) = "job.cancelled", v 1,
    /// See [`DeadLettered`].
    DeadLettered(DeadLettered) = "job.dead_lettered", v 1,
    /// See [`Retried`].
    Retried(Retried) = "job.retried", v 1,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::tests::round_trip;

    #[test]
    fn every_job_event_round_trips() {
        let at = Timestamp(3);
        let step = || "s".to_owned();
        let events: Vec<Event> = vec![
            Submitted {
                workflow: WorkflowId::new(),
                workflow_version: 2,
                steps: vec![],
                inputs: vec![DocumentId::new()],
                priority: -1,
                idempotency_key: Some("k".into()),
                parameters: [("audience".to_owned(), "board".to_owned())].into(),
                input_versions: Default::default(),
                replay_of: None,
                at,
            }
            .into(),
            StepScheduled { step: step(), attempt: 1, at }.into(),
            StepStarted { step: step(), attempt: 1, at }.into(),
            StepSucceeded { step: step(), attempt: 1, output: DocumentId::new(), at }.into(),
            StepFailed { step: step(), attempt: 2, error: "boom".into(), retryable: true, at }.into(),
            RetryScheduled { step: step(), attempt: 3, due_at: at }.into(),
            LogAppended { level: Level::Warn, message: "slow".into(), at }.into(),
            Succeeded { at }.into(),
            Failed { step: step(), reason: "gave up".into(), at }.into(),
            Cancelled { reason: "no longer needed".into(), at }.into(),
            DeadLettered { step: step(), attempts: 3, last_error: "503".into(), at }.into(),
            Retried { steps: vec![step()], reason: "the provider is back".into(), at }.into(),
        ];
        for event in events {
            assert_eq!(round_trip(&event), event);
        }
    }
}
