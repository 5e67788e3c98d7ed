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
mod tests {
    use super::*;
    use crate::testkit::given;
    use crate::workflow::tests::step;

    const AT: Timestamp = Timestamp(1_000_000);

    fn wf() -> WorkflowId {
        WorkflowId(weft_events::domain::ids::Uuid::from_u128(7))
    }

    fn input() -> DocumentId {
        DocumentId(weft_events::domain::ids::Uuid::from_u128(8))
    }

    fn out(n: u128) -> DocumentId {
        DocumentId(weft_events::domain::ids::Uuid::from_u128(100 + n))
    }

    /// extract -> (summarise, keywords) -> report
    fn steps() -> Vec<Step> {
        vec![
            step("extract", &[]),
            step("summarise", &["extract"]),
            step("keywords", &["extract"]),
            step("report", &["summarise", "keywords"]),
        ]
    }

    fn submit() -> Command {
        Command::Submit {
            workflow: wf(),
            workflow_version: 1,
            steps: steps(),
            inputs: vec![input()],
            priority: 0,
            idempotency_key: Some("k1".into()),
            parameters: BTreeMap::new(),
            at: AT,
        }
    }

    fn submitted() -> Event {
        Submitted {
            workflow: wf(),
            workflow_version: 1,
            steps: steps(),
            inputs: vec![input()],
            priority: 0,
            idempotency_key: Some("k1".into()),
            parameters: BTreeMap::new(),
            at: AT,
        }
        .into()
    }

    fn scheduled(step: &str, attempt: u32) -> Event {
        StepScheduled { step: step.into(), attempt, at: AT }.into()
    }

    fn started(step: &str, attempt: u32) -> Event {
        StepStarted { step: step.into(), attempt, at: AT }.into()
    }

    fn succeeded(step: &str, attempt: u32, n: u128) -> Event {
        StepSucceeded { step: step.into(), attempt, output: out(n), at: AT }.into()
    }

    fn complete(step: &str, attempt: u32, n: u128) -> Command {
        Command::CompleteStep { step: step.into(), attempt, output: out(n), at: AT }
    }

    fn fail(step: &str, attempt: u32, retryable: bool, jitter: f64) -> Command {
        Command::FailStep { step: step.into(), attempt, error: "boom".into(), retryable, jitter, at: AT }
    }

    /// A job whose `extract` step is running.
    fn running() -> Vec<Event> {
        vec![submitted(), scheduled("extract", 1), started("extract", 1)]
    }

    #[test]
    fn submitting_a_job_schedules_the_steps_that_read_only_its_inputs() {
        given::<Job>([]).when(submit()).then([submitted(), scheduled("extract", 1)]);
    }

    #[test]
    fn submitting_twice_is_rejected() {
        given::<Job>([submitted()]).when(submit()).then_rejected(Rejection::AlreadySubmitted);
    }

    #[test]
    fn submitting_an_invalid_workflow_or_bad_inputs_is_rejected() {
        let mut cyclic = submit();
        if let Command::Submit { steps, .. } = &mut cyclic {
            *steps = vec![step("a", &["b"]), step("b", &["a"])];
        }
        given::<Job>([])
            .when(cyclic)
            .then_rejected(Rejection::InvalidWorkflow(workflow::Rejection::Cycle(vec!["a".into(), "b".into()])));
        let mut no_inputs = submit();
        if let Command::Submit { inputs, .. } = &mut no_inputs {
            inputs.clear();
        }
        assert!(matches!(Job::default().decide(&no_inputs), Err(Rejection::InvalidInputs(_))));
        let mut twice = submit();
        if let Command::Submit { inputs, .. } = &mut twice {
            *inputs = vec![input(), input()];
        }
        assert!(matches!(Job::default().decide(&twice), Err(Rejection::InvalidInputs(_))));
    }

    #[test]
    fn starting_a_scheduled_step_records_it() {
        given::<Job>([submitted(), scheduled("extract", 1)])
            .when(Command::StartStep { step: "extract".into(), attempt: 1, at: AT })
            .then([started("extract", 1)]);
    }

    #[test]
    fn starting_a_step_that_is_not_scheduled_is_rejected() {
        given::<Job>([submitted(), scheduled("extract", 1)])
            .when(Command::StartStep { step: "report".into(), attempt: 1, at: AT })
            .then_rejected(Rejection::WrongStepState { step: "report".into(), state: StepState::Waiting });
        given::<Job>([submitted(), scheduled("extract", 1)])
            .when(Command::StartStep { step: "extract".into(), attempt: 2, at: AT })
            .then_rejected(Rejection::WrongStepState {
                step: "extract".into(),
                state: StepState::Scheduled { attempt: 1 },
            });
        given::<Job>([submitted()])
            .when(Command::StartStep { step: "nope".into(), attempt: 1, at: AT })
            .then_rejected(Rejection::UnknownStep("nope".into()));
        given::<Job>([])
            .when(Command::StartStep { step: "extract".into(), attempt: 1, at: AT })
            .then_rejected(Rejection::NotSubmitted);
    }

    #[test]
    fn a_start_reported_twice_changes_nothing() {
        given::<Job>(running()).when(Command::StartStep { step: "extract".into(), attempt: 1, at: AT }).then([]);
    }

    #[test]
    fn completing_a_step_schedules_the_steps_it_unblocks() {
        given::<Job>(running()).when(complete("extract", 1, 1)).then([
            succeeded("extract", 1, 1),
            scheduled("summarise", 1),
            scheduled("keywords", 1),
        ]);
    }

    #[test]
    fn a_step_waits_until_every_step_it_reads_from_has_succeeded() {
        let mut history = running();
        history.extend([succeeded("extract", 1, 1), scheduled("summarise", 1), scheduled("keywords", 1)]);
        given::<Job>(history.clone()).when(complete("summarise", 1, 2)).then([succeeded("summarise", 1, 2)]);
        history.push(succeeded("summarise", 1, 2));
        given::<Job>(history)
            .when(complete("keywords", 1, 3))
            .then([succeeded("keywords", 1, 3), scheduled("report", 1)]);
    }

    #[test]
    fn completing_the_last_step_succeeds_the_job() {
        let mut history = running();
        history.extend([
            succeeded("extract", 1, 1),
            scheduled("summarise", 1),
            scheduled("keywords", 1),
            succeeded("summarise", 1, 2),
            succeeded("keywords", 1, 3),
            scheduled("report", 1),
        ]);
        given::<Job>(history)
            .when(complete("report", 1, 4))
            .then([succeeded("report", 1, 4), Succeeded { at: AT }.into()]);
    }

    #[test]
    fn completing_a_step_twice_changes_nothing_but_a_different_output_is_rejected() {
        let mut history = running();
        history.push(succeeded("extract", 1, 1));
        given::<Job>(history.clone()).when(complete("extract", 1, 1)).then([]);
        given::<Job>(history).when(complete("extract", 1, 9)).then_rejected(Rejection::WrongStepState {
            step: "extract".into(),
            state: StepState::Succeeded { attempt: 1, output: out(1) },
        });
    }

    #[test]
    fn a_retryable_failure_schedules_a_retry_with_backoff() {
        // base 1 s: the retry of attempt 1 waits between 0.5 and 1 s; jitter 0.5 gives 0.75 s.
        given::<Job>(running()).when(fail("extract", 1, true, 0.5)).then([
            StepFailed { step: "extract".into(), attempt: 1, error: "boom".into(), retryable: true, at: AT }.into(),
            RetryScheduled { step: "extract".into(), attempt: 2, due_at: AT.plus_millis(750) }.into(),
        ]);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let s = step("x", &[]); // base 1 s, max 10 s
        let delays: Vec<u64> = (2..=7).map(|next| retry_delay_ms(&s, next, 1.0)).collect();
        assert_eq!(delays, [1_000, 2_000, 4_000, 8_000, 10_000, 10_000]);
        assert_eq!(retry_delay_ms(&s, 3, 0.0), 1_000);
        assert_eq!(retry_delay_ms(&s, 200, 1.0), 10_000);
    }

    #[test]
    fn a_failure_without_attempts_left_or_not_retryable_fails_the_job() {
        given::<Job>(running()).when(fail("extract", 1, false, 0.0)).then([
            StepFailed { step: "extract".into(), attempt: 1, error: "boom".into(), retryable: false, at: AT }.into(),
            Failed { step: "extract".into(), reason: "boom".into(), at: AT }.into(),
        ]);
    }

    fn dead_lettered() -> Vec<Event> {
        let mut history = vec![submitted(), scheduled("extract", 3), started("extract", 3)];
        history.push(
            StepFailed { step: "extract".into(), attempt: 3, error: "boom".into(), retryable: true, at: AT }.into(),
        );
        history.push(DeadLettered { step: "extract".into(), attempts: 3, last_error: "boom".into(), at: AT }.into());
        history
    }

    #[test]
    fn a_retryable_failure_on_the_last_attempt_dead_letters_the_job_with_its_error() {
        let last = vec![submitted(), scheduled("extract", 3), started("extract", 3)];
        let history = dead_lettered();
        given::<Job>(last).when(fail("extract", 3, true, 0.0)).then(history[3..].to_vec());
        assert_eq!(Job::replay(&history).status, Status::DeadLettered);
    }

    #[test]
    fn retrying_a_dead_lettered_job_runs_its_failed_step_again_with_a_fresh_set_of_attempts() {
        let retry = Command::Retry { reason: "the provider is back".into(), at: AT };
        let mut history = dead_lettered();
        given::<Job>(history.clone()).when(retry.clone()).then([
            Retried { steps: vec!["extract".into()], reason: "the provider is back".into(), at: AT }.into(),
            scheduled("extract", 4),
        ]);
        history.extend(Job::replay(&history).decide(&retry).unwrap());
        history.push(started("extract", 4));
        let job = Job::replay(&history);
        assert_eq!(job.status, Status::Running);
        // Attempt 4 is the first of the new round: its failure is retried (max 3 attempts per round) ...
        let events = given::<Job>(history.clone()).when(fail("extract", 4, true, 1.0)).events();
        assert_eq!(
            events[1],
            RetryScheduled { step: "extract".into(), attempt: 5, due_at: AT.plus_millis(1_000) }.into(),
            "{events:?}"
        );
        // ... and its success carries on with the job.
        given::<Job>(history).when(complete("extract", 4, 1)).then([
            succeeded("extract", 4, 1),
            scheduled("summarise", 1),
            scheduled("keywords", 1),
        ]);
    }

    #[test]
    fn retrying_a_failed_job_keeps_the_outputs_of_its_steps_that_succeeded() {
        // extract succeeded; summarise failed for good while keywords was running.
        let mut history = running();
        history.extend([
            succeeded("extract", 1, 1),
            scheduled("summarise", 1),
            scheduled("keywords", 1),
            started("keywords", 1),
            StepFailed { step: "summarise".into(), attempt: 1, error: "bad".into(), retryable: false, at: AT }.into(),
            Failed { step: "summarise".into(), reason: "bad".into(), at: AT }.into(),
        ]);
        given::<Job>(history.clone()).when(Command::Retry { reason: "fixed the agent".into(), at: AT }).then([
            Retried { steps: vec!["summarise".into(), "keywords".into()], reason: "fixed the agent".into(), at: AT }
                .into(),
            scheduled("summarise", 2),
            scheduled("keywords", 2),
        ]);
        // The old attempt's late report is refused.
        history.extend(Job::replay(&history).decide(&Command::Retry { reason: "r".into(), at: AT }).unwrap());
        let job = Job::replay(&history);
        assert_eq!(job.progress["extract"], StepState::Succeeded { attempt: 1, output: out(1) });
        assert!(matches!(job.decide(&complete("keywords", 1, 3)), Err(Rejection::WrongStepState { .. })));
    }

    #[test]
    fn retrying_a_job_that_has_not_failed_is_rejected() {
        let retry = Command::Retry { reason: "again".into(), at: AT };
        given::<Job>(running()).when(retry.clone()).then_rejected(Rejection::NotRetryable(Status::Running));
        given::<Job>([]).when(retry.clone()).then_rejected(Rejection::NotRetryable(Status::Unsubmitted));
        let mut cancelled = running();
        cancelled.push(Cancelled { reason: "x".into(), at: AT }.into());
        given::<Job>(cancelled).when(retry).then_rejected(Rejection::NotRetryable(Status::Cancelled));
        given::<Job>(dead_lettered())
            .when(Command::Retry { reason: " ".into(), at: AT })
            .then_rejected(Rejection::InvalidText { field: "reason".into(), limit: MAX_MESSAGE_BYTES });
    }

    #[test]
    fn submitting_with_bad_parameters_is_rejected() {
        for parameters in [
            BTreeMap::from([("has space".to_owned(), "v".to_owned())]),
            BTreeMap::from([(String::new(), "v".to_owned())]),
            BTreeMap::from([("long".to_owned(), "v".repeat(MAX_PARAMETER_VALUE_BYTES + 1))]),
            (0..=MAX_PARAMETERS).map(|n| (format!("p{n}"), String::new())).collect(),
        ] {
            let mut command = submit();
            if let Command::Submit { parameters: p, .. } = &mut command {
                *p = parameters;
            }
            assert!(matches!(Job::default().decide(&command), Err(Rejection::InvalidParameters(_))), "{command:?}");
        }
    }

    #[test]
    fn a_failure_with_a_bad_jitter_or_of_another_attempt_is_rejected() {
        given::<Job>(running()).when(fail("extract", 1, true, 1.5)).then_rejected(Rejection::InvalidJitter(1.5));
        assert!(matches!(
            Job::replay(&running()).decide(&fail("extract", 1, true, f64::NAN)),
            Err(Rejection::InvalidJitter(_))
        ));
        given::<Job>(running()).when(fail("extract", 2, true, 0.0)).then_rejected(Rejection::WrongStepState {
            step: "extract".into(),
            state: StepState::Running { attempt: 1 },
        });
    }

    #[test]
    fn a_due_retry_schedules_the_next_attempt() {
        let mut history = running();
        let due_at = AT.plus_millis(750);
        history.push(RetryScheduled { step: "extract".into(), attempt: 2, due_at }.into());
        given::<Job>(history.clone())
            .when(Command::RetryDue { step: "extract".into(), attempt: 2, at: due_at })
            .then([StepScheduled { step: "extract".into(), attempt: 2, at: due_at }.into()]);
        given::<Job>(history)
            .when(Command::RetryDue { step: "extract".into(), attempt: 2, at: AT })
            .then_rejected(Rejection::RetryNotDue { due_at });
    }

    #[test]
    fn appending_to_the_log_records_the_line() {
        given::<Job>([submitted()])
            .when(Command::AppendLog { level: Level::Info, message: "started".into(), at: AT })
            .then([LogAppended { level: Level::Info, message: "started".into(), at: AT }.into()]);
    }

    #[test]
    fn an_empty_or_oversized_log_line_or_a_full_log_is_rejected() {
        let line = |message: String| Command::AppendLog { level: Level::Info, message, at: AT };
        given::<Job>([submitted()])
            .when(line(String::new()))
            .then_rejected(Rejection::InvalidText { field: "message".into(), limit: MAX_MESSAGE_BYTES });
        given::<Job>([submitted()])
            .when(line("x".repeat(MAX_MESSAGE_BYTES + 1)))
            .then_rejected(Rejection::InvalidText { field: "message".into(), limit: MAX_MESSAGE_BYTES });
        let mut full = Job::replay(&[submitted()]);
        full.log_lines = MAX_LOG_LINES;
        assert_eq!(full.decide(&line("one more".into())), Err(Rejection::LogFull { limit: MAX_LOG_LINES }));
        given::<Job>([]).when(line("early".into())).then_rejected(Rejection::NotSubmitted);
    }

    #[test]
    fn cancelling_a_running_job_records_why() {
        given::<Job>(running()).when(Command::Cancel { reason: "not needed".into(), at: AT }).then([Cancelled {
            reason: "not needed".into(),
            at: AT,
        }
        .into()]);
    }

    #[test]
    fn commands_to_a_finished_job_are_rejected() {
        let mut history = running();
        history.push(Cancelled { reason: "x".into(), at: AT }.into());
        given::<Job>(history.clone())
            .when(Command::Cancel { reason: "again".into(), at: AT })
            .then_rejected(Rejection::Finished(Status::Cancelled));
        given::<Job>(history).when(complete("extract", 1, 1)).then_rejected(Rejection::Finished(Status::Cancelled));
    }
}
