//! The job orchestrator: a scheduled step becomes a task of the step's agent; a task's completion or failure
//! becomes the step's (a completion the worker has reported to the job already is not sent again). The job itself decides what follows (the next ready steps, a retry, the end of the
//! job), so the orchestrator keeps no state of its own.
//!
//! It handles the events of different jobs at once (up to [`Process::OVERLAP`]), each job's in log order (a
//! task's report is its job's, not its agent's).
//!
//! An agent at its concurrency limit does not fail the step: the step waits for a free slot, so a busy agent
//! holds back the jobs waiting for it instead of spending their attempts; other jobs go on. The steps waiting
//! for one agent form a line ([`Lines`]): higher priority first, the tenants of one priority in turn, each
//! tenant's steps in log order. The step next in line is woken as the orchestrator reads that a task of
//! that agent finished ([`Process::noticed`], before the finish waits for a handler); it also asks again every
//! [`CAPACITY_RECHECK`] (a slot freed through another node). The others only wait for their turn.
//! An agent that is disabled or unknown fails the step for good.

use weft_events::Envelope;
use weft_events::domain::ids::{AgentId, JobId};
use weft_events::domain::{agent as agent_events, job as job_events};

use super::line::Lines;
use super::{Gateway, Process, Retry, decode, derived_id, inspect, jitter_of, send};
use crate::agent::{self, Agent, Rejection as AgentRejection};
use crate::job::{self, Job, StepState};

/// How often the first step waiting for a busy agent asks again when nothing woke it: a slot freed through
/// another node, or while the events that would wake it wait behind a full window of waiting steps.
pub const CAPACITY_RECHECK: std::time::Duration = std::time::Duration::from_millis(10);

/// How often every other waiting step looks whether it has become next in line without being woken (a safety
/// net only: the step before it wakes it as it leaves the line).
pub const CAPACITY_RECHECK_IN_LINE: std::time::Duration = std::time::Duration::from_secs(5);

/// See the module doc.
pub struct Orchestrator<G> {
    gateway: G,
    lines: Lines,
}

impl<G: Gateway> Orchestrator<G> {
    /// An orchestrator sending its commands through `gateway`, its waiting steps in `lines`.
    pub fn new(gateway: G, lines: Lines) -> Self {
        Self { gateway, lines }
    }

    async fn step_scheduled(&self, event: &Envelope, scheduled: job_events::StepScheduled) -> Result<(), Retry> {
        let Some(job) = JobId::from_stream(&event.stream) else { return Ok(()) };
        let state = inspect::<Job, _>(&self.gateway, &event.stream).await?;
        // Handled before (a restart went back past this event) and moved on since.
        if state.progress.get(&scheduled.step) != Some(&StepState::Scheduled { attempt: scheduled.attempt }) {
            return Ok(());
        }
        let Some(step) = state.steps.iter().find(|s| s.name == scheduled.step) else { return Ok(()) };
        let assign = agent::Command::AssignTask {
            task: derived_id(event.event_id, "task"),
            job,
            step: scheduled.step.clone(),
            attempt: scheduled.attempt,
            at: scheduled.at,
        };
        let correlation = event.correlation_id;
        let agent_id = step.agent;
        let position = event.position;
        let wake = std::sync::Arc::new(tokio::sync::Notify::new());
        let mut first = true;
        let refused = loop {
            // A first try goes behind the steps waiting already at its priority or above; a step whose turn
            // it is tries at once.
            if !(first && self.lines.waits_at_or_above(agent_id, state.priority)) {
                let outcome = send::<Agent, _>(
                    &self.gateway,
                    &agent_id.stream(),
                    derived_id(event.event_id, "assign"),
                    assign.clone(),
                    Self::NAME,
                    correlation,
                )
                .await;
                match outcome {
                    Ok(Err(AgentRejection::AtCapacity { .. })) => {
                        // A slot freed while it asked is its: ask again at once.
                        if !first && self.lines.no_slot(agent_id, position) {
                            continue;
                        }
                    }
                    other => {
                        // It has its slot or never will (a refusal; a retry starts over): it leaves the line,
                        // and the next may find a slot too.
                        if !first {
                            self.lines.leave(agent_id, position);
                        }
                        match other {
                            Ok(Ok(_) | Err(AgentRejection::DuplicateTask(_))) => return Ok(()),
                            Ok(Err(rejection)) => break rejection,
                            Err(retry) => return Err(retry),
                        }
                    }
                }
            }
            // Wait for a slot in the line, keeping its place. Only the step next in line asks again on its
            // own, so waiting steps do not flood the agent.
            if first {
                self.lines.join(agent_id, state.priority, event.tenant.clone(), position, &wake);
                first = false;
            }
            loop {
                let head = self.lines.is_head(agent_id, position);
                let recheck = if head { CAPACITY_RECHECK } else { CAPACITY_RECHECK_IN_LINE };
                match tokio::time::timeout(recheck, wake.notified()).await {
                    Ok(()) => {
                        self.lines.trying(agent_id, position);
                        break;
                    }
                    Err(_) if self.lines.try_if_head(agent_id, position) => break,
                    Err(_) => {}
                }
            }
        };
        let retryable = false;
        let fail = job::Command::FailStep {
            step: scheduled.step,
            attempt: scheduled.attempt,
            error: format!("agent {} refused the task: {refused}", step.agent),
            retryable,
            jitter: jitter_of(event.event_id),
            at: scheduled.at,
        };
        let outcome = send::<Job, _>(
            &self.gateway,
            &event.stream,
            derived_id(event.event_id, "refused"),
            fail,
            Self::NAME,
            correlation,
        )
        .await?;
        if let Err(rejection) = outcome {
            tracing::debug!(job = %job, %rejection, "the job did not take the refusal; it has moved on");
        }
        Ok(())
    }

    async fn task_finished(&self, event: &Envelope, finished: agent_events::Event) -> Result<(), Retry> {
        // The worker reports a success to the job itself, at the same time as to the agent: when the job
        // has it already, there is nothing to send.
        if let agent_events::Event::TaskCompleted(e) = &finished {
            let state = inspect::<Job, _>(&self.gateway, &e.job.stream()).await?;
            let taken = matches!(state.progress.get(&e.step),
                Some(StepState::Succeeded { attempt, output }) if *attempt == e.attempt && *output == e.output);
            if taken {
                return Ok(());
            }
        }
        let (job, command) = match finished {
            agent_events::Event::TaskCompleted(e) => {
                (e.job, job::Command::CompleteStep { step: e.step, attempt: e.attempt, output: e.output, at: e.at })
            }
            agent_events::Event::TaskFailed(e) => (
                e.job,
                job::Command::FailStep {
                    step: e.step,
                    attempt: e.attempt,
                    error: e.error,
                    retryable: e.retryable,
                    jitter: jitter_of(event.event_id),
                    at: e.at,
                },
            ),
            _ => return Ok(()),
        };
        let outcome = send::<Job, _>(
            &self.gateway,
            &job.stream(),
            derived_id(event.event_id, "report"),
            command,
            Self::NAME,
            event.correlation_id,
        )
        .await?;
        if let Err(rejection) = outcome {
            // A late report: the attempt timed out, or the job was cancelled or failed meanwhile.
            tracing::debug!(job = %job, agent = ?AgentId::from_stream(&event.stream), %rejection, "the job did not take a task's report");
        }
        Ok(())
    }
}

#[async_trait::async_trait(?Send)]
impl<G: Gateway> Process for Orchestrator<G> {
    const NAME: &'static str = "orchestrator";
    type State = ();

    /// Jobs are moved along at once, each job's events in log order.
    const OVERLAP: usize = 16;

    /// A task finished: its agent has a free slot, which the first step waiting for one takes. Noticed as
    /// the finish is read, not when its handler runs: the handlers may all be steps waiting for that slot.
    fn noticed(&self, event: &Envelope) {
        if matches!(&*event.event_type, "agent.task_completed" | "agent.task_failed")
            && let Some(agent) = AgentId::from_stream(&event.stream)
        {
            self.lines.wake(agent);
        }
    }

    fn instance(&self, event: &Envelope) -> Option<String> {
        match &*event.event_type {
            "job.step_scheduled" => Some(event.stream.as_str().to_owned()),
            "agent.task_completed" | "agent.task_failed" => match decode::<agent_events::Event>(event)? {
                agent_events::Event::TaskCompleted(e) => Some(e.job.stream().as_str().to_owned()),
                agent_events::Event::TaskFailed(e) => Some(e.job.stream().as_str().to_owned()),
                _ => None,
            },
            _ => None,
        }
    }

    fn traced(&self, event: &Envelope) -> bool {
        matches!(&*event.event_type, "job.step_scheduled" | "agent.task_completed" | "agent.task_failed")
    }

    async fn handle(&self, _state: &mut (), event: &Envelope) -> Result<(), Retry> {
        match &*event.event_type {
            "job.step_scheduled" => match decode::<job_events::Event>(event) {
                Some(job_events::Event::StepScheduled(scheduled)) => self.step_scheduled(event, scheduled).await,
                _ => Ok(()),
            },
            "agent.task_completed" | "agent.task_failed" => match decode::<agent_events::Event>(event) {
                Some(finished) => self.task_finished(event, finished).await,
                None => Ok(()),
            },
            _ => Ok(()),
        }
    }
}
