//! The job aggregate: one run of a workflow. It decides which steps are ready, how failed steps are retried,
//! and when the job is done.
//!
//! A step is scheduled when every step it reads from has succeeded (steps that read only the job's inputs
//! are scheduled at submission). A failed attempt that may be retried, and has attempts left, is retried
//! after an exponential back-off with jitter: the delay before attempt `n + 1` is
//! `d = min(max_delay, base_delay * 2^(n - 1))`, then `d/2 + jitter * d/2` with the command's `jitter` in
//! `[0, 1]` (so the randomness comes in with the command and `decide` stays pure). A step that has failed
//! every attempt its policy allows dead-letters the job (`dead_lettered`, its last error kept); a failure that
//! is not retryable fails it (`failed`). The job succeeds when every step has.
//!
//! An operator can retry a failed or dead-lettered job: the steps that had not succeeded are scheduled again,
//! each as its next attempt (the count goes on, so the history shows every run) and each with its policy's
//! full number of attempts again; the outputs of the steps that had succeeded are kept.

use std::collections::{BTreeMap, HashSet};

use weft_events::domain::job::{DeadLettered, Retried};

use weft_events::Timestamp;
use weft_events::domain::ids::{DocumentId, WorkflowId};
use weft_events::domain::job::{
    Cancelled, Event, Failed, Level, LogAppended, RetryScheduled, StepFailed, StepScheduled, StepStarted,
    StepSucceeded, Submitted, Succeeded,
};
use weft_events::domain::workflow::Step;

use crate::aggregate::Aggregate;
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
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", content = "payload", rename_all = "snake_case", deny_unknown_fields)]
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

/// Where a job is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub enum Status {
    /// Not submitted.
    #[default]
    Unsubmitted,
    /// Submitted and not finished.
    Running,
    /// Every step succeeded.
    Succeeded,
    /// A step failed for good (a failure that is not retryable).
    Failed,
    /// A step failed every attempt its retry policy allows; an operator may retry the job.
    DeadLettered,
    /// Cancelled.
    Cancelled,
}

/// Where one step of a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub enum StepState {
    /// Waiting for the steps it reads from.
    Waiting,
    /// Handed to its agent, not started.
    Scheduled {
        /// The attempt.
        attempt: u32,
    },
    /// Its agent is at it.
    Running {
        /// The attempt.
        attempt: u32,
    },
    /// Failed; the next attempt is due at `due_at`.
    RetryWaiting {
        /// The next attempt.
        attempt: u32,
        /// When it is due.
        due_at: Timestamp,
    },
    /// Done.
    Succeeded {
        /// The attempt that succeeded.
        attempt: u32,
        /// The document it wrote.
        output: DocumentId,
    },
    /// Failed for good.
    Failed {
        /// The last attempt.
        attempt: u32,
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

/// The state of a job.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct Job {
    /// Where it is.
    pub status: Status,
    /// The steps it runs, in definition order.
    pub steps: Vec<Step>,
    /// Where each step is, by name.
    pub progress: BTreeMap<String, StepState>,
    /// Its input documents.
    pub inputs: Vec<DocumentId>,
    /// Its parameters, for the steps' instructions.
    #[serde(default)]
    pub parameters: BTreeMap<String, String>,
    /// Lines in its log.
    pub log_lines: u32,
    /// The first attempt of each step's current round, for steps run again by a retry of the job (a step not
    /// here is in its first round, from attempt 1). Its retry policy counts attempts from there.
    #[serde(default)]
    pub rounds: BTreeMap<String, u32>,
}

fn text(field: &'static str, value: &str, limit: usize) -> Result<(), Rejection> {
    if value.trim().is_empty() || value.len() > limit {
        return Err(Rejection::InvalidText { field: field.into(), limit });
    }
    Ok(())
}

/// The delay before `next_attempt` of a step with this policy; see the module doc.
pub fn retry_delay_ms(step: &Step, next_attempt: u32, jitter: f64) -> u64 {
    let exponent = next_attempt.saturating_sub(2).min(63);
    let capped = step.retry.base_delay_ms.saturating_mul(1u64 << exponent).min(step.retry.max_delay_ms);
    let half = capped / 2;
    half + ((capped - half) as f64 * jitter).round() as u64
}

fn check_parameters(parameters: &BTreeMap<String, String>) -> Result<(), Rejection> {
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

impl Job {
    /// Refuses commands to a job that is not running.
    fn running(&self) -> Result<(), Rejection> {
        match self.status {
            Status::Running => Ok(()),
            Status::Unsubmitted => Err(Rejection::NotSubmitted),
            finished => Err(Rejection::Finished(finished)),
        }
    }

    fn step(&self, name: &str) -> Result<(&Step, StepState), Rejection> {
        let step = self.steps.iter().find(|s| s.name == name).ok_or_else(|| Rejection::UnknownStep(name.into()))?;
        Ok((step, self.progress.get(name).copied().unwrap_or(StepState::Waiting)))
    }

    /// The steps a retry of the job runs again, each with its next attempt: every step that had been handed
    /// out and not succeeded (the failed one, and those whose outcome the end of the job left unrecorded).
    fn next_round(&self) -> Vec<(&Step, u32)> {
        self.steps
            .iter()
            .filter_map(|s| match self.progress.get(&s.name).copied().unwrap_or(StepState::Waiting) {
                StepState::Waiting | StepState::Succeeded { .. } => None,
                StepState::Scheduled { attempt } | StepState::Running { attempt } | StepState::Failed { attempt } => {
                    Some((s, attempt + 1))
                }
                // The retry was scheduled and never became due: that attempt never ran.
                StepState::RetryWaiting { attempt, .. } => Some((s, attempt)),
            })
            .collect()
    }

    /// The steps that become ready once `done` has succeeded too.
    fn ready_after(&self, done: &str) -> Vec<&Step> {
        let succeeded =
            |name: &str| name == done || matches!(self.progress.get(name), Some(StepState::Succeeded { .. }));
        self.steps
            .iter()
            .filter(|s| s.name != done && matches!(self.progress.get(&s.name), Some(StepState::Waiting)))
            .filter(|s| workflow::dependencies(s).all(succeeded))
            .collect()
    }
}

impl Aggregate for Job {
    const KIND: &'static str = "job";
    type Command = Command;
    type Event = Event;
    type Rejection = Rejection;

    fn decide(&self, command: &Command) -> Result<Vec<Event>, Rejection> {
        match command {
            Command::Submit {
                workflow,
                workflow_version,
                steps,
                inputs,
                priority,
                idempotency_key,
                parameters,
                at,
            } => {
                if self.status != Status::Unsubmitted {
                    return Err(Rejection::AlreadySubmitted);
                }
                workflow::check_steps(steps).map_err(Rejection::InvalidWorkflow)?;
                if inputs.is_empty() || inputs.len() > MAX_INPUTS {
                    return Err(Rejection::InvalidInputs(format!("1 to {MAX_INPUTS} documents, not {}", inputs.len())));
                }
                if inputs.iter().collect::<HashSet<_>>().len() != inputs.len() {
                    return Err(Rejection::InvalidInputs("a document is named twice".into()));
                }
                if let Some(key) = idempotency_key {
                    text("idempotency key", key, MAX_KEY_BYTES)?;
                }
                check_parameters(parameters)?;
                let mut events: Vec<Event> = vec![
                    Submitted {
                        workflow: *workflow,
                        workflow_version: *workflow_version,
                        steps: steps.clone(),
                        inputs: inputs.clone(),
                        priority: *priority,
                        idempotency_key: idempotency_key.clone(),
                        parameters: parameters.clone(),
                        at: *at,
                    }
                    .into(),
                ];
                events.extend(
                    steps
                        .iter()
                        .filter(|s| workflow::dependencies(s).next().is_none())
                        .map(|s| Event::from(StepScheduled { step: s.name.clone(), attempt: 1, at: *at })),
                );
                Ok(events)
            }
            Command::StartStep { step, attempt, at } => {
                self.running()?;
                match self.step(step)?.1 {
                    StepState::Scheduled { attempt: a } if a == *attempt => {
                        Ok(vec![StepStarted { step: step.clone(), attempt: *attempt, at: *at }.into()])
                    }
                    // Started already: the agent's report arrived twice.
                    StepState::Running { attempt: a } if a == *attempt => Ok(vec![]),
                    state => Err(Rejection::WrongStepState { step: step.clone(), state }),
                }
            }
            Command::CompleteStep { step, attempt, output, at } => {
                self.running()?;
                match self.step(step)?.1 {
                    StepState::Scheduled { attempt: a } | StepState::Running { attempt: a } if a == *attempt => {}
                    StepState::Succeeded { attempt: a, output: o } if a == *attempt && o == *output => {
                        return Ok(vec![]);
                    }
                    state => return Err(Rejection::WrongStepState { step: step.clone(), state }),
                }
                let mut events: Vec<Event> =
                    vec![StepSucceeded { step: step.clone(), attempt: *attempt, output: *output, at: *at }.into()];
                events.extend(
                    self.ready_after(step)
                        .into_iter()
                        .map(|s| Event::from(StepScheduled { step: s.name.clone(), attempt: 1, at: *at })),
                );
                let others_done = self
                    .steps
                    .iter()
                    .filter(|s| s.name != *step)
                    .all(|s| matches!(self.progress.get(&s.name), Some(StepState::Succeeded { .. })));
                if others_done {
                    events.push(Succeeded { at: *at }.into());
                }
                Ok(events)
            }
            Command::FailStep { step, attempt, error, retryable, jitter, at } => {
                self.running()?;
                let (definition, state) = self.step(step)?;
                match state {
                    StepState::Scheduled { attempt: a } | StepState::Running { attempt: a } if a == *attempt => {}
                    state => return Err(Rejection::WrongStepState { step: step.clone(), state }),
                }
                if !(0.0..=1.0).contains(jitter) {
                    return Err(Rejection::InvalidJitter(*jitter));
                }
                text("error", error, MAX_MESSAGE_BYTES)?;
                let mut events: Vec<Event> = vec![
                    StepFailed {
                        step: step.clone(),
                        attempt: *attempt,
                        error: error.clone(),
                        retryable: *retryable,
                        at: *at,
                    }
                    .into(),
                ];
                // Attempts of this round: a retry of the job starts a new one.
                let first = self.rounds.get(step).copied().unwrap_or(1);
                let in_round = attempt.saturating_sub(first) + 1;
                if *retryable && in_round < definition.retry.max_attempts {
                    let next = attempt + 1;
                    let due_at = at.plus_millis(retry_delay_ms(definition, in_round + 1, *jitter));
                    events.push(RetryScheduled { step: step.clone(), attempt: next, due_at }.into());
                } else if *retryable {
                    events.push(
                        DeadLettered { step: step.clone(), attempts: *attempt, last_error: error.clone(), at: *at }
                            .into(),
                    );
                } else {
                    events.push(Failed { step: step.clone(), reason: error.clone(), at: *at }.into());
                }
                Ok(events)
            }
            Command::RetryDue { step, attempt, at } => {
                self.running()?;
                match self.step(step)?.1 {
                    StepState::RetryWaiting { attempt: a, due_at } if a == *attempt => {
                        if *at < due_at {
                            return Err(Rejection::RetryNotDue { due_at });
                        }
                        Ok(vec![StepScheduled { step: step.clone(), attempt: *attempt, at: *at }.into()])
                    }
                    // Scheduled already: the timer fired twice.
                    StepState::Scheduled { attempt: a } | StepState::Running { attempt: a } if a == *attempt => {
                        Ok(vec![])
                    }
                    state => Err(Rejection::WrongStepState { step: step.clone(), state }),
                }
            }
            Command::AppendLog { level, message, at } => {
                if self.status == Status::Unsubmitted {
                    return Err(Rejection::NotSubmitted);
                }
                text("message", message, MAX_MESSAGE_BYTES)?;
                if self.log_lines >= MAX_LOG_LINES {
                    return Err(Rejection::LogFull { limit: MAX_LOG_LINES });
                }
                Ok(vec![LogAppended { level: *level, message: message.clone(), at: *at }.into()])
            }
            Command::Retry { reason, at } => {
                if !matches!(self.status, Status::Failed | Status::DeadLettered) {
                    return Err(Rejection::NotRetryable(self.status));
                }
                text("reason", reason, MAX_MESSAGE_BYTES)?;
                let again = self.next_round();
                let mut events: Vec<Event> = vec![
                    Retried {
                        steps: again.iter().map(|(s, _)| s.name.clone()).collect(),
                        reason: reason.clone(),
                        at: *at,
                    }
                    .into(),
                ];
                events.extend(
                    again
                        .into_iter()
                        .map(|(s, attempt)| Event::from(StepScheduled { step: s.name.clone(), attempt, at: *at })),
                );
                Ok(events)
            }
            Command::Cancel { reason, at } => {
                self.running()?;
                text("reason", reason, MAX_MESSAGE_BYTES)?;
                Ok(vec![Cancelled { reason: reason.clone(), at: *at }.into()])
            }
        }
    }

    fn evolve(mut self, event: &Event) -> Self {
        if let Event::Retried(e) = event {
            let rounds: Vec<(String, u32)> = self
                .next_round()
                .into_iter()
                .filter(|(s, _)| e.steps.contains(&s.name))
                .map(|(s, attempt)| (s.name.clone(), attempt))
                .collect();
            self.rounds.extend(rounds);
            self.status = Status::Running;
            return self;
        }
        let mut set = |step: &str, state: StepState| {
            self.progress.insert(step.to_owned(), state);
        };
        match event {
            Event::Submitted(e) => {
                self.status = Status::Running;
                self.steps = e.steps.clone();
                self.inputs = e.inputs.clone();
                self.parameters = e.parameters.clone();
                self.progress = e.steps.iter().map(|s| (s.name.clone(), StepState::Waiting)).collect();
            }
            Event::StepScheduled(e) => set(&e.step, StepState::Scheduled { attempt: e.attempt }),
            Event::StepStarted(e) => set(&e.step, StepState::Running { attempt: e.attempt }),
            Event::StepSucceeded(e) => set(&e.step, StepState::Succeeded { attempt: e.attempt, output: e.output }),
            Event::StepFailed(e) => set(&e.step, StepState::Failed { attempt: e.attempt }),
            Event::RetryScheduled(e) => set(&e.step, StepState::RetryWaiting { attempt: e.attempt, due_at: e.due_at }),
            Event::LogAppended(_) => self.log_lines += 1,
            Event::Succeeded(_) => self.status = Status::Succeeded,
            Event::Failed(_) => self.status = Status::Failed,
            Event::DeadLettered(_) => self.status = Status::DeadLettered,
            Event::Cancelled(_) => self.status = Status::Cancelled,
            // Handled before the others: it reads the state the closure above borrows.
            Event::Retried(_) => {}
        }
        self
    }
}

#[cfg(test)]
mod tests;
