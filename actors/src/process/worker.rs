//! The worker: does the tasks assigned to agents, by handing each to an [`Executor`] (the agents' LLM
//! providers implement it), and reports the outcome to the agent.
//!
//! A task's success is reported to its agent and, at the same time, to its job (the orchestrator reports it
//! to the job too when the job has not taken it, so the job's report is best effort here); a failure only to
//! its agent, for the orchestrator to turn into the step's.
//!
//! A task runs at most once. Before it runs, the worker records that it started (the agent's
//! `task_started` and the job's `step_started`, sent at once), and the task is in the worker's checkpointed state until its
//! outcome is recorded. A task found started but not finished after a restart was interrupted: the worker
//! fails it as retryable instead of running it again, so the job's retry policy decides, as a new attempt,
//! whether it runs again. Every run of a step is therefore one of its recorded attempts.
//!
//! When a job ends before its tasks do (it is cancelled, or another step failed or was dead-lettered), its
//! tasks in flight on this worker are aborted (dropping the executor's future drops its provider call) and
//! failed, not retryably, so their agents' slots are free again.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::{Duration, Instant};
use tracing::Instrument as _;

use weft_events::domain::agent::{Event as AgentEvent, Profile, TaskAssigned};
use weft_events::domain::ids::{AgentId, DocumentId, JobId, Uuid};
use weft_events::domain::workflow::{Input, Step};
use weft_events::{Envelope, Timestamp};

use super::{Gateway, Process, Retry, decode, derived_id, inspect, send};
use crate::agent::{self, Agent, Rejection as AgentRejection};
use crate::job::{self, Job};

/// One attempt of a job step, as handed to an executor.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    /// The task's id.
    pub id: Uuid,
    /// The agent doing it.
    pub agent: AgentId,
    /// The agent's set-up.
    pub profile: Profile,
    /// The job.
    pub job: JobId,
    /// The step, as the job's workflow defines it.
    pub step: Step,
    /// The attempt, from 1.
    pub attempt: u32,
    /// The documents the step reads: the job's inputs and earlier steps' outputs, as the step names them.
    pub inputs: Vec<DocumentId>,
    /// The output document of each step of the job that has succeeded so far, by step name.
    pub outputs: BTreeMap<String, DocumentId>,
    /// The job's parameters.
    pub parameters: BTreeMap<String, String>,
    /// The versions of the job's inputs it pins: a step reads the others at their latest.
    pub versions: BTreeMap<DocumentId, u32>,
    /// The job whose recorded provider calls answer this task's requests where they are the same.
    pub replay_of: Option<JobId>,
}

/// What a task produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskOutput {
    /// The document it wrote.
    pub document: DocumentId,
    /// Tokens read.
    pub input_tokens: u64,
    /// Tokens written.
    pub output_tokens: u64,
    /// What the provider calls cost, in billionths of a US dollar (0 when unpriced).
    pub cost_nanos: u64,
}

/// Why a task failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TaskError {
    /// What went wrong.
    pub message: String,
    /// Whether another attempt may succeed.
    pub retryable: bool,
}

/// Does tasks: calls an LLM, reads and writes documents.
#[async_trait::async_trait(?Send)]
pub trait Executor: 'static {
    /// Does one task. The worker stops waiting after the step's time-out and fails the attempt.
    async fn run(&self, task: Task) -> Result<TaskOutput, TaskError>;
}

/// The worker's name, as a process.
const NAME: &str = "worker";

/// What the worker remembers: the tasks it started and has not seen finish, with their agents.
pub type InFlight = BTreeMap<Uuid, AgentId>;

/// See the module doc.
pub struct Worker<G> {
    gateway: G,
    executor: Rc<dyn Executor>,
    /// The tasks running in this process, by job, to abort when their job is cancelled. Not checkpointed: after
    /// a restart no task runs here.
    running: Rc<RefCell<Running>>,
    /// The tasks started and not seen to finish: its checkpointed state, kept here because the worker handles
    /// the events of different jobs at once.
    in_flight: Rc<RefCell<InFlight>>,
}

/// The tasks running in a worker's process: by job, each task with its agent and the handle that aborts it.
type Running = HashMap<JobId, Vec<(Uuid, AgentId, tokio::task::AbortHandle)>>;

impl<G: Gateway> Worker<G> {
    /// A worker sending its commands through `gateway` and running tasks with `executor`.
    pub fn new(gateway: G, executor: Rc<dyn Executor>) -> Self {
        Self { gateway, executor, running: Rc::default(), in_flight: Rc::default() }
    }

    async fn assigned(&self, event: &Envelope, assigned: TaskAssigned) -> Result<(), Retry> {
        let Some(agent) = AgentId::from_stream(&event.stream) else { return Ok(()) };
        let task = assigned.task;
        let correlation = event.correlation_id;
        let start = agent::Command::StartTask { task, at: Timestamp::now() };
        let start_step =
            job::Command::StartStep { step: assigned.step.clone(), attempt: assigned.attempt, at: Timestamp::now() };
        let job_stream = assigned.job.stream();
        // The agent's and the job's records of the start share one group commit, and the states the task needs
        // are read meanwhile. The job's record is the same command each time (a derived id), so one sent for a
        // task that turns out interrupted or finished repeats an earlier record or is refused by the job.
        let (started, step_started, job, agent_state) = futures::join!(
            send::<Agent, _>(&self.gateway, &event.stream, derived_id(task, "start"), start, Self::NAME, correlation),
            send::<Job, _>(
                &self.gateway,
                &job_stream,
                derived_id(task, "start-step"),
                start_step,
                Self::NAME,
                correlation
            ),
            inspect::<Job, _>(&self.gateway, &job_stream),
            inspect::<Agent, _>(&self.gateway, &event.stream),
        );
        match started? {
            Ok(outcome) if !outcome.repeated || self.in_flight.borrow().contains_key(&task) => {}
            // Started before, by a worker that stopped before it recorded the outcome.
            Ok(_) | Err(AgentRejection::AlreadyStarted(_)) => {
                return fail(&self.gateway, agent, task, interrupted(), correlation).await;
            }
            // Finished already.
            Err(AgentRejection::UnknownTask(_)) => return Ok(()),
            Err(rejection) => {
                tracing::warn!(%agent, %task, %rejection, "the agent did not let its task start");
                return Ok(());
            }
        }
        self.in_flight.borrow_mut().insert(task, agent);
        if let Err(rejection) = step_started? {
            let error =
                TaskError { message: format!("the job no longer wants this attempt: {rejection}"), retryable: false };
            return fail(&self.gateway, agent, task, error, correlation).await;
        }
        // Read while the start was recorded: the step and the profile cannot change under a started attempt.
        let (job, profile) = (job?, agent_state?.profile);
        let (Some(step), Some(profile)) = (job.steps.iter().find(|s| s.name == assigned.step), profile) else {
            let error = TaskError { message: "the step or the agent's profile is gone".into(), retryable: false };
            return fail(&self.gateway, agent, task, error, correlation).await;
        };
        let inputs = step
            .inputs
            .iter()
            .flat_map(|input| match input {
                Input::JobInputs => job.inputs.clone(),
                Input::Step(name) => match job.progress.get(name) {
                    Some(job::StepState::Succeeded { output, .. }) => vec![*output],
                    _ => vec![],
                },
            })
            .collect();
        let outputs = job
            .progress
            .iter()
            .filter_map(|(name, state)| match state {
                job::StepState::Succeeded { output, .. } => Some((name.clone(), *output)),
                _ => None,
            })
            .collect();
        let task = Task {
            id: task,
            agent,
            profile,
            job: assigned.job,
            step: step.clone(),
            attempt: assigned.attempt,
            inputs,
            outputs,
            parameters: job.parameters.clone(),
            versions: job.input_versions.clone(),
            replay_of: job.replay_of,
        };
        let (gateway, executor) = (self.gateway.clone(), self.executor.clone());
        let (job, id) = (task.job, task.id);
        let running = self.running.clone();
        // The task cannot start before this handler returns (one thread), so it is registered before it ends.
        let span = tracing::debug_span!("task", %agent, %job, step = %task.step.name, attempt = task.attempt);
        // The agent's queue (`Lines`) reports its depth when it changes; here it is known to exist.
        metrics::gauge!("weft_agent_queue_depth", "agent" => agent.to_string()).increment(0.0);
        let busy = metrics::gauge!("weft_agent_busy_slots", "agent" => agent.to_string());
        busy.increment(1.0);
        let handle = actix::spawn(async move {
            // Freed however the task ends, aborted included.
            let _busy = scopeguard(move || busy.decrement(1.0));
            execute(gateway, executor, task, correlation).instrument(span).await;
            if let Some(tasks) = running.borrow_mut().get_mut(&job) {
                tasks.retain(|(task, ..)| *task != id);
            }
        });
        self.running.borrow_mut().entry(job).or_default().push((id, agent, handle.abort_handle()));
        Ok(())
    }

    /// Aborts the tasks running here of a job that has ended (cancelled, failed or dead-lettered: no outcome
    /// of theirs would be taken) and fails them, for good.
    async fn ended(&self, event: &Envelope) -> Result<(), Retry> {
        let Some(job) = JobId::from_stream(&event.stream) else { return Ok(()) };
        let tasks = self.running.borrow_mut().remove(&job).unwrap_or_default();
        let how = event.event_type.strip_prefix("job.").unwrap_or(&event.event_type).replace('_', "-");
        for (task, agent, abort) in tasks {
            abort.abort();
            tracing::info!(%job, %task, "the job has ended ({how}); its running task is aborted");
            let error = TaskError { message: format!("cancelled: the job has ended ({how})"), retryable: false };
            fail(&self.gateway, agent, task, error, event.correlation_id).await?;
        }
        Ok(())
    }
}

fn interrupted() -> TaskError {
    TaskError { message: "interrupted: the worker running it stopped before it finished".into(), retryable: true }
}

/// Runs a task and records its outcome, trying the recording until it goes through. If this process dies
/// first, the next worker fails the task as interrupted.
async fn execute<G: Gateway>(gateway: G, executor: Rc<dyn Executor>, task: Task, correlation: Option<Uuid>) {
    let started = Instant::now();
    let timeout = Duration::from_millis(task.step.timeout_ms);
    let (id, agent) = (task.id, task.agent);
    let (job, step, attempt) = (task.job, task.step.name.clone(), task.attempt);
    let (result, outcome) = match tokio::time::timeout(timeout, executor.run(task)).await {
        Ok(Ok(output)) => (Ok(output), "ok"),
        Ok(Err(error)) => (Err(error), "failed"),
        Err(_) => (
            Err(TaskError { message: format!("timed out after {} ms", timeout.as_millis()), retryable: true }),
            "timed_out",
        ),
    };
    metrics::counter!("weft_tasks_total", "outcome" => outcome).increment(1);
    metrics::histogram!("weft_task_duration_seconds", "outcome" => outcome).record(started.elapsed());
    let latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let at = Timestamp::now();
    // A success is reported to the job at once, beside the agent's record: the job need not wait for the
    // orchestrator to read the agent's. The orchestrator still reports it when the job has not taken it (this
    // report failed, or the worker stopped between the two), so it is best effort here.
    let report = async {
        let Ok(output) = &result else { return };
        let step_done = job::Command::CompleteStep { step, attempt, output: output.document, at };
        let sent =
            send::<Job, _>(&gateway, &job.stream(), derived_id(id, "complete-step"), step_done, NAME, correlation)
                .await;
        let why = match sent {
            Ok(Ok(_)) => return,
            Ok(Err(rejection)) => rejection.to_string(),
            Err(Retry(why)) => why,
        };
        tracing::debug!(%job, task = %id, %why, "the job did not take a task's success; the orchestrator reports it");
    };
    let record = async {
        let mut delay = Duration::from_millis(50);
        loop {
            let recorded = match &result {
                Ok(output) => {
                    let complete = agent::Command::CompleteTask {
                        task: id,
                        output: output.document,
                        input_tokens: output.input_tokens,
                        output_tokens: output.output_tokens,
                        latency_ms,
                        cost_nanos: output.cost_nanos,
                        at,
                    };
                    send::<Agent, _>(&gateway, &agent.stream(), derived_id(id, "complete"), complete, NAME, correlation)
                        .await
                        .map(|outcome| {
                            if let Err(rejection) = outcome {
                                tracing::warn!(%agent, task = %id, %rejection, "the agent did not take a task's output");
                            }
                        })
                }
                Err(error) => fail(&gateway, agent, id, error.clone(), correlation).await,
            };
            match recorded {
                Ok(()) => return,
                Err(Retry(why)) => {
                    tracing::warn!(%agent, task = %id, %why, "recording a task's outcome failed; trying again");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    };
    futures::join!(record, report);
}

async fn fail<G: Gateway>(
    gateway: &G,
    agent: AgentId,
    task: Uuid,
    error: TaskError,
    correlation: Option<Uuid>,
) -> Result<(), Retry> {
    let command =
        agent::Command::FailTask { task, error: error.message, retryable: error.retryable, at: Timestamp::now() };
    match send::<Agent, _>(gateway, &agent.stream(), derived_id(task, "fail"), command, NAME, correlation).await? {
        Ok(_) | Err(AgentRejection::UnknownTask(_)) => Ok(()),
        Err(rejection) => {
            tracing::warn!(%agent, %task, %rejection, "the agent did not take a task's failure");
            Ok(())
        }
    }
}

#[async_trait::async_trait(?Send)]
impl<G: Gateway> Process for Worker<G> {
    const NAME: &'static str = NAME;
    type State = InFlight;

    /// Tasks of different jobs are taken up at once, each job's events in log order.
    const OVERLAP: usize = 16;

    fn instance(&self, event: &Envelope) -> Option<String> {
        let job = match &*event.event_type {
            "job.cancelled" | "job.failed" | "job.dead_lettered" => return Some(event.stream.as_str().to_owned()),
            "agent.task_assigned" | "agent.task_completed" | "agent.task_failed" => {
                match decode::<AgentEvent>(event)? {
                    AgentEvent::TaskAssigned(e) => e.job,
                    AgentEvent::TaskCompleted(e) => e.job,
                    AgentEvent::TaskFailed(e) => e.job,
                    _ => return None,
                }
            }
            _ => return None,
        };
        Some(job.stream().as_str().to_owned())
    }

    fn kept(&self) -> Option<InFlight> {
        Some(self.in_flight.borrow().clone())
    }

    async fn resume(&self, in_flight: &mut InFlight) -> Result<(), Retry> {
        while let Some((&task, &agent)) = in_flight.first_key_value() {
            tracing::info!(%agent, %task, "a task was running when the worker stopped; failing it as interrupted");
            fail(&self.gateway, agent, task, interrupted(), None).await?;
            in_flight.remove(&task);
        }
        self.in_flight.borrow_mut().clear();
        Ok(())
    }

    fn traced(&self, event: &Envelope) -> bool {
        matches!(&*event.event_type, "agent.task_assigned" | "job.cancelled" | "job.failed" | "job.dead_lettered")
    }

    async fn handle(&self, _fresh: &mut InFlight, event: &Envelope) -> Result<(), Retry> {
        match &*event.event_type {
            "agent.task_assigned" => match decode::<AgentEvent>(event) {
                Some(AgentEvent::TaskAssigned(assigned)) => self.assigned(event, assigned).await,
                _ => Ok(()),
            },
            "job.cancelled" | "job.failed" | "job.dead_lettered" => self.ended(event).await,
            "agent.task_completed" | "agent.task_failed" => {
                match decode::<AgentEvent>(event) {
                    Some(AgentEvent::TaskCompleted(e)) => {
                        self.in_flight.borrow_mut().remove(&e.task);
                    }
                    Some(AgentEvent::TaskFailed(e)) => {
                        self.in_flight.borrow_mut().remove(&e.task);
                    }
                    _ => {}
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// Runs `f` when dropped.
fn scopeguard(f: impl FnOnce()) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}
