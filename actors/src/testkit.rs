//! Given/when/then for aggregates (feature `test-util`).
//!
//! ```
//! # use weft_actors::document::{Command, Document, Rejection};
//! # use weft_actors::testkit::given;
//! # use weft_events::Timestamp;
//! given::<Document>([])
//!     .when(Command::Delete { reason: "gone".into(), at: Timestamp(1) })
//!     .then_rejected(Rejection::NotRegistered);
//! ```
//!
//! Every event the kit sees is also stored and read back through its codec, so an event that does not
//! survive the store fails the test that produced it.

use std::fmt::Debug;

use weft_events::{DomainEvent, StreamName, Timestamp};

use crate::aggregate::Aggregate;

/// A history to decide from.
pub struct Given<A: Aggregate> {
    state: A,
}

/// The outcome of a command, to check.
pub struct Then<A: Aggregate> {
    outcome: Result<Vec<A::Event>, A::Rejection>,
}

/// Starts a test from these events.
pub fn given<A: Aggregate>(events: impl IntoIterator<Item = A::Event>) -> Given<A>
where
    A::Event: Debug + PartialEq,
{
    let state = events.into_iter().fold(A::default(), |state, event| state.evolve(&stored(&event)));
    Given { state }
}

impl<A: Aggregate> Given<A>
where
    A::Event: Debug + PartialEq,
{
    /// Decides `command` against the history.
    pub fn when(self, command: A::Command) -> Then<A> {
        let outcome = self.state.decide(&command);
        if let Ok(events) = &outcome {
            events.iter().for_each(|e| drop(stored(e)));
        }
        Then { outcome }
    }

    /// The state the history folds to, for tests that look at it.
    pub fn state(&self) -> &A {
        &self.state
    }
}

impl<A: Aggregate> Then<A>
where
    A::Event: Debug + PartialEq,
    A::Rejection: Debug,
{
    /// The command must produce exactly these events.
    pub fn then(self, expected: impl IntoIterator<Item = A::Event>) {
        let expected: Vec<A::Event> = expected.into_iter().collect();
        match self.outcome {
            Ok(events) => assert_eq!(events, expected, "the command produced other events"),
            Err(rejection) => panic!("the command was rejected: {rejection:?} ({rejection})"),
        }
    }

    /// The command must be refused for this reason.
    pub fn then_rejected(self, expected: A::Rejection) {
        match self.outcome {
            Ok(events) => panic!("the command was accepted with {events:?}, expected {expected:?}"),
            Err(rejection) => assert_eq!(rejection, expected),
        }
    }

    /// The produced events, for checks the two above cannot express.
    pub fn events(self) -> Vec<A::Event> {
        match self.outcome {
            Ok(events) => events,
            Err(rejection) => panic!("the command was rejected: {rejection:?} ({rejection})"),
        }
    }
}

/// A submission of a job with one step that reads the job's input and is not retried: the smallest job,
/// for tests of the layers that carry commands.
pub fn one_step_job() -> crate::job::Command {
    use weft_events::domain::ids::{AgentId, DocumentId, WorkflowId};
    use weft_events::domain::workflow::{Input, RetryPolicy, Step};
    crate::job::Command::Submit {
        workflow: WorkflowId::new(),
        workflow_version: 1,
        steps: vec![Step {
            name: "only".into(),
            agent: AgentId::new(),
            instruction: "work".into(),
            inputs: vec![Input::JobInputs],
            timeout_ms: 1000,
            retry: RetryPolicy { max_attempts: 1, base_delay_ms: 0, max_delay_ms: 0 },
        }],
        inputs: vec![DocumentId::new()],
        priority: 0,
        idempotency_key: None,
        parameters: Default::default(),
        input_versions: Default::default(),
        replay_of: None,
        at: Timestamp(1),
    }
}

/// Stores an event in an envelope and reads it back, as the store would.
fn stored<E: DomainEvent + Debug + PartialEq>(event: &E) -> E {
    let envelope = event.to_new_event().unwrap_or_else(|e| panic!("{event:?} does not encode: {e}")).into_envelope(
        StreamName::new("testkit").expect("a valid name"),
        1,
        1,
        Timestamp(0),
    );
    let back = E::from_envelope(&envelope).unwrap_or_else(|e| panic!("{event:?} does not decode: {e}"));
    assert_eq!(&back, event, "the event changed on its way through the store");
    back
}

/// An agent profile for tests: the built-in provider, `limit` tasks at a time.
pub fn agent_profile(limit: u32) -> weft_events::domain::agent::Profile {
    weft_events::domain::agent::Profile {
        name: "Tess".into(),
        role: "tester".into(),
        goal: "do test steps".into(),
        instructions: "Do as the script says.".into(),
        provider: "builtin".into(),
        model: "scripted".into(),
        parameters: Default::default(),
        concurrency_limit: limit,
    }
}

/// A 3-step DAG for `agent`: `extract` reads the job's inputs; `summarise` and `report` read `extract`'s
/// output, and `report` also `summarise`'s. Each may be tried `max_attempts` times, `base_delay_ms` apart
/// at first, and times out after `timeout_ms`.
pub fn three_step_dag(
    agent: weft_events::domain::ids::AgentId,
    max_attempts: u32,
    base_delay_ms: u64,
    timeout_ms: u64,
) -> Vec<weft_events::domain::workflow::Step> {
    use weft_events::domain::workflow::{Input, RetryPolicy, Step};
    let step = |name: &str, inputs: Vec<Input>| Step {
        name: name.into(),
        agent,
        instruction: format!("{name} it"),
        inputs,
        timeout_ms,
        retry: RetryPolicy { max_attempts, base_delay_ms, max_delay_ms: base_delay_ms * 8 },
    };
    vec![
        step("extract", vec![Input::JobInputs]),
        step("summarise", vec![Input::Step("extract".into())]),
        step("report", vec![Input::Step("extract".into()), Input::Step("summarise".into())]),
    ]
}

/// What a [`ScriptedExecutor`] does with one attempt of a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scripted {
    /// Succeed after the executor's delay.
    Succeed,
    /// Fail after the executor's delay.
    Fail {
        /// Whether another attempt may succeed.
        retryable: bool,
    },
    /// Take this long (past the step's time-out, say), then succeed.
    Sleep {
        /// How long.
        ms: u64,
    },
}

/// One run of a task, as a [`ScriptedExecutor`] saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    /// The job.
    pub job: weft_events::domain::ids::JobId,
    /// The step.
    pub step: String,
    /// The attempt.
    pub attempt: u32,
    /// The documents it was given.
    pub inputs: Vec<weft_events::domain::ids::DocumentId>,
}

/// The test executor: does each attempt as its script says (succeed unless told otherwise), after a fixed
/// delay, and remembers every run. With a log file it also appends `job step attempt` to it, flushed to
/// disk, before each run: what a test that kills the process counts runs from.
#[derive(Default)]
pub struct ScriptedExecutor {
    script: std::collections::HashMap<(String, u32), Scripted>,
    /// Scripts of one job, before those of every job.
    job_script: std::collections::HashMap<(weft_events::domain::ids::JobId, String, u32), Scripted>,
    delay_ms: u64,
    log: Option<std::path::PathBuf>,
    runs: std::sync::Mutex<Vec<Run>>,
}

impl ScriptedExecutor {
    /// An executor that succeeds at everything at once.
    pub fn new() -> Self {
        Self::default()
    }

    /// Attempt `attempt` of `step` does `what`.
    pub fn on(mut self, step: &str, attempt: u32, what: Scripted) -> Self {
        self.script.insert((step.into(), attempt), what);
        self
    }

    /// Attempt `attempt` of `step` of `job` does `what` (before what [`Self::on`] says for every job).
    pub fn on_job(mut self, job: weft_events::domain::ids::JobId, step: &str, attempt: u32, what: Scripted) -> Self {
        self.job_script.insert((job, step.into(), attempt), what);
        self
    }

    /// Every run takes `ms`.
    pub fn delay_ms(mut self, ms: u64) -> Self {
        self.delay_ms = ms;
        self
    }

    /// Appends each run to `path`.
    pub fn log_to(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.log = Some(path.into());
        self
    }

    /// The runs so far.
    pub fn runs(&self) -> Vec<Run> {
        self.runs.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The document a task writes: derived from the task, so reruns would be visible as the same output.
    pub fn output_of(task: weft_events::domain::ids::Uuid) -> weft_events::domain::ids::DocumentId {
        weft_events::domain::ids::DocumentId(crate::process::derived_id(task, "output"))
    }
}

#[async_trait::async_trait(?Send)]
impl crate::process::worker::Executor for ScriptedExecutor {
    async fn run(
        &self,
        task: crate::process::worker::Task,
    ) -> Result<crate::process::worker::TaskOutput, crate::process::worker::TaskError> {
        use std::io::Write;
        if let Some(path) = &self.log {
            let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path).expect("the run log opens");
            // One write of the whole line: `writeln!` on a file writes each piece apart, and a process killed
            // between two of them left half a line that the next run's line was appended to.
            let line = format!("{} {} {}\n", task.job, task.step.name, task.attempt);
            file.write_all(line.as_bytes()).expect("the run log takes a line");
            file.sync_all().expect("the run log syncs");
        }
        self.runs.lock().unwrap_or_else(|p| p.into_inner()).push(Run {
            job: task.job,
            step: task.step.name.clone(),
            attempt: task.attempt,
            inputs: task.inputs.clone(),
        });
        let what = self
            .job_script
            .get(&(task.job, task.step.name.clone(), task.attempt))
            .or_else(|| self.script.get(&(task.step.name.clone(), task.attempt)))
            .cloned()
            .unwrap_or(Scripted::Succeed);
        let delay = match what {
            Scripted::Sleep { ms } => ms,
            _ => self.delay_ms,
        };
        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
        match what {
            Scripted::Fail { retryable } => Err(crate::process::worker::TaskError {
                message: format!("scripted failure of {} attempt {}", task.step.name, task.attempt),
                retryable,
            }),
            Scripted::Succeed | Scripted::Sleep { .. } => Ok(crate::process::worker::TaskOutput {
                document: Self::output_of(task.id),
                input_tokens: 10,
                output_tokens: 5,
                cost_nanos: 0,
            }),
        }
    }
}
