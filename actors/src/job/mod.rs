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
use weft_events::domain::ids::{DocumentId, JobId};
use weft_events::domain::job::{
    Cancelled, Event, Failed, LogAppended, RetryScheduled, StepFailed, StepScheduled, StepStarted, StepSucceeded,
    Submitted, Succeeded,
};
use weft_events::domain::workflow::Step;

use crate::aggregate::Aggregate;
use crate::workflow;

mod command;

use command::text;
pub use command::{
    Command, MAX_INPUTS, MAX_KEY_BYTES, MAX_LOG_LINES, MAX_MESSAGE_BYTES, MAX_PARAMETER_NAME_BYTES,
    MAX_PARAMETER_VALUE_BYTES, MAX_PARAMETERS, Rejection, check_parameters,
};

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
    /// The versions of the inputs it pins.
    #[serde(default)]
    pub input_versions: BTreeMap<DocumentId, u32>,
    /// The job whose recorded provider calls it answers from.
    #[serde(default)]
    pub replay_of: Option<JobId>,
    /// Its priority: its steps take a busy agent's free slots before those of lower priorities.
    #[serde(default)]
    pub priority: i32,
    /// Lines in its log.
    pub log_lines: u32,
    /// The first attempt of each step's current round, for steps run again by a retry of the job (a step not
    /// here is in its first round, from attempt 1). Its retry policy counts attempts from there.
    #[serde(default)]
    pub rounds: BTreeMap<String, u32>,
}

/// The delay before `next_attempt` of a step with this policy; see the module doc.
pub fn retry_delay_ms(step: &Step, next_attempt: u32, jitter: f64) -> u64 {
    let exponent = next_attempt.saturating_sub(2).min(63);
    let capped = step.retry.base_delay_ms.saturating_mul(1u64 << exponent).min(step.retry.max_delay_ms);
    let half = capped / 2;
    half + ((capped - half) as f64 * jitter).round() as u64
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

    fn command_name(command: &Command) -> &'static str {
        command.into()
    }

    /// A job is its submitter's: a `user` cancels and retries only its own.
    const OWNED_BY_CREATOR: bool = true;

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
                input_versions,
                replay_of,
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
                if let Some((document, version)) =
                    input_versions.iter().find(|(document, version)| !inputs.contains(document) || **version == 0)
                {
                    return Err(Rejection::InvalidInputs(format!(
                        "input_versions names version {version} of {document}: versions are of the inputs, from 1"
                    )));
                }
                let mut events: Vec<Event> = vec![
                    Submitted {
                        workflow: *workflow,
                        workflow_version: *workflow_version,
                        steps: steps.clone(),
                        inputs: inputs.clone(),
                        priority: *priority,
                        idempotency_key: idempotency_key.clone(),
                        parameters: parameters.clone(),
                        input_versions: input_versions.clone(),
                        replay_of: *replay_of,
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
                self.input_versions = e.input_versions.clone();
                self.replay_of = e.replay_of;
                self.priority = e.priority;
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
