//! The agent aggregate: a configured worker that takes job steps as tasks, up to its concurrency limit.

use std::collections::BTreeMap;

use weft_events::Timestamp;
use weft_events::domain::agent::{
    Disabled, Event, Profile, Registered, TaskAssigned, TaskCompleted, TaskFailed, TaskStarted, Updated,
};
use weft_events::domain::ids::{DocumentId, JobId, Uuid};

use crate::aggregate::Aggregate;

/// Longest name, role, provider or model, in bytes.
pub const MAX_NAME_BYTES: usize = 200;

/// Longest goal, instructions or error, in bytes.
pub const MAX_TEXT_BYTES: usize = 64 * 1024;

/// Most provider parameters.
pub const MAX_PARAMETERS: usize = 64;

/// Highest concurrency limit.
pub const MAX_CONCURRENCY: u32 = 1024;

/// What can be asked of an agent.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema, strum::IntoStaticStr)]
#[serde(tag = "type", content = "payload", rename_all = "snake_case", deny_unknown_fields)]
#[strum(serialize_all = "snake_case")]
pub enum Command {
    /// Register the agent.
    Register {
        /// Its set-up.
        profile: Profile,
        /// When.
        #[serde(default = "Timestamp::now")]
        at: Timestamp,
    },
    /// Replace its set-up.
    Update {
        /// The new set-up.
        profile: Profile,
        /// When.
        #[serde(default = "Timestamp::now")]
        at: Timestamp,
    },
    /// Take no new tasks.
    Disable {
        /// Why.
        reason: String,
        /// When.
        #[serde(default = "Timestamp::now")]
        at: Timestamp,
    },
    /// Give it a job step as a task.
    AssignTask {
        /// A fresh id for the task.
        task: Uuid,
        /// The job.
        job: JobId,
        /// The step.
        step: String,
        /// The step's attempt.
        attempt: u32,
        /// When.
        #[serde(default = "Timestamp::now")]
        at: Timestamp,
    },
    /// It began a task.
    StartTask {
        /// The task.
        task: Uuid,
        /// When.
        #[serde(default = "Timestamp::now")]
        at: Timestamp,
    },
    /// A task finished.
    CompleteTask {
        /// The task.
        task: Uuid,
        /// What it wrote.
        output: DocumentId,
        /// Tokens read.
        input_tokens: u64,
        /// Tokens written.
        output_tokens: u64,
        /// Provider latency.
        latency_ms: u64,
        /// What the provider calls cost, in billionths of a US dollar (see `TaskCompleted::cost_nanos`).
        #[serde(default)]
        cost_nanos: u64,
        /// When.
        #[serde(default = "Timestamp::now")]
        at: Timestamp,
    },
    /// A task failed.
    FailTask {
        /// The task.
        task: Uuid,
        /// What went wrong.
        error: String,
        /// Whether another attempt may succeed.
        retryable: bool,
        /// When.
        #[serde(default = "Timestamp::now")]
        at: Timestamp,
    },
}

/// Why an agent refuses a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(tag = "code", content = "detail", rename_all = "snake_case")]
pub enum Rejection {
    /// The agent is not registered.
    #[error("the agent is not registered")]
    NotRegistered,
    /// The agent is registered already.
    #[error("the agent is registered already")]
    AlreadyRegistered,
    /// The agent is disabled.
    #[error("the agent is disabled")]
    Disabled,
    /// The agent runs as many tasks as it may.
    #[error("the agent runs {running} tasks, its limit")]
    AtCapacity {
        /// Tasks running.
        running: u32,
    },
    /// A task of that id exists already.
    #[error("task {0} exists already")]
    DuplicateTask(Uuid),
    /// No open task of that id.
    #[error("the agent has no open task {0}")]
    UnknownTask(Uuid),
    /// The task has started already.
    #[error("task {0} has started already")]
    AlreadyStarted(Uuid),
    /// A field is out of bounds.
    #[error("{field} is invalid: {reason}")]
    Invalid {
        /// Which field.
        field: String,
        /// What is wrong.
        reason: String,
    },
}

/// Where an agent is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub enum Status {
    /// Not registered.
    #[default]
    Unregistered,
    /// Taking tasks.
    Enabled,
    /// Taking no new tasks; open tasks may still finish.
    Disabled,
}

/// A task assigned and not finished.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct OpenTask {
    /// The job.
    pub job: JobId,
    /// The step.
    pub step: String,
    /// The step's attempt.
    pub attempt: u32,
    /// Whether the agent has begun it.
    pub started: bool,
}

/// The state of an agent.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct Agent {
    /// Where it is.
    pub status: Status,
    /// Its set-up.
    pub profile: Option<Profile>,
    /// Open tasks.
    pub open_tasks: BTreeMap<Uuid, OpenTask>,
    /// Tasks finished, either way.
    pub finished_tasks: u64,
    /// Tokens used so far, read and written.
    pub tokens: u64,
}

fn bounded(field: &'static str, value: &str, limit: usize) -> Result<(), Rejection> {
    if value.trim().is_empty() || value.len() > limit {
        return Err(Rejection::Invalid { field: field.into(), reason: format!("must be 1 to {limit} bytes") });
    }
    Ok(())
}

fn check_profile(profile: &Profile) -> Result<(), Rejection> {
    bounded("name", &profile.name, MAX_NAME_BYTES)?;
    bounded("role", &profile.role, MAX_NAME_BYTES)?;
    bounded("goal", &profile.goal, MAX_TEXT_BYTES)?;
    bounded("instructions", &profile.instructions, MAX_TEXT_BYTES)?;
    bounded("provider", &profile.provider, MAX_NAME_BYTES)?;
    bounded("model", &profile.model, MAX_NAME_BYTES)?;
    if profile.parameters.len() > MAX_PARAMETERS {
        return Err(Rejection::Invalid { field: "parameters".into(), reason: format!("at most {MAX_PARAMETERS}") });
    }
    if profile.parameters.keys().any(|k| k.is_empty() || k.len() > MAX_NAME_BYTES) {
        return Err(Rejection::Invalid { field: "parameters".into(), reason: "a name is empty or too long".into() });
    }
    if profile.concurrency_limit == 0 || profile.concurrency_limit > MAX_CONCURRENCY {
        return Err(Rejection::Invalid {
            field: "concurrency limit".into(),
            reason: format!("must be 1 to {MAX_CONCURRENCY}"),
        });
    }
    Ok(())
}

impl Agent {
    fn registered(&self) -> Result<(), Rejection> {
        match self.status {
            Status::Unregistered => Err(Rejection::NotRegistered),
            Status::Enabled | Status::Disabled => Ok(()),
        }
    }

    fn enabled(&self) -> Result<(), Rejection> {
        self.registered()?;
        if self.status == Status::Disabled {
            return Err(Rejection::Disabled);
        }
        Ok(())
    }

    fn open(&self, task: Uuid) -> Result<&OpenTask, Rejection> {
        self.open_tasks.get(&task).ok_or(Rejection::UnknownTask(task))
    }
}

impl Aggregate for Agent {
    const KIND: &'static str = "agent";
    type Command = Command;
    type Event = Event;
    type Rejection = Rejection;

    fn command_name(command: &Command) -> &'static str {
        command.into()
    }

    fn decide(&self, command: &Command) -> Result<Vec<Event>, Rejection> {
        match command {
            Command::Register { profile, at } => {
                if self.status != Status::Unregistered {
                    return Err(Rejection::AlreadyRegistered);
                }
                check_profile(profile)?;
                Ok(vec![Registered { profile: profile.clone(), at: *at }.into()])
            }
            Command::Update { profile, at } => {
                self.enabled()?;
                check_profile(profile)?;
                if self.profile.as_ref() == Some(profile) {
                    return Ok(vec![]);
                }
                Ok(vec![Updated { profile: profile.clone(), at: *at }.into()])
            }
            Command::Disable { reason, at } => {
                self.enabled()?;
                bounded("reason", reason, MAX_TEXT_BYTES)?;
                Ok(vec![Disabled { reason: reason.clone(), at: *at }.into()])
            }
            Command::AssignTask { task, job, step, attempt, at } => {
                self.enabled()?;
                if self.open_tasks.contains_key(task) {
                    return Err(Rejection::DuplicateTask(*task));
                }
                let limit = self.profile.as_ref().map_or(0, |p| p.concurrency_limit);
                let running = self.open_tasks.len() as u32;
                if running >= limit {
                    return Err(Rejection::AtCapacity { running });
                }
                bounded("step", step, MAX_NAME_BYTES)?;
                Ok(vec![TaskAssigned { task: *task, job: *job, step: step.clone(), attempt: *attempt, at: *at }.into()])
            }
            Command::StartTask { task, at } => {
                self.registered()?;
                if self.open(*task)?.started {
                    return Err(Rejection::AlreadyStarted(*task));
                }
                Ok(vec![TaskStarted { task: *task, at: *at }.into()])
            }
            Command::CompleteTask { task, output, input_tokens, output_tokens, latency_ms, cost_nanos, at } => {
                self.registered()?;
                let open = self.open(*task)?;
                Ok(vec![
                    TaskCompleted {
                        task: *task,
                        job: open.job,
                        step: open.step.clone(),
                        attempt: open.attempt,
                        output: *output,
                        input_tokens: *input_tokens,
                        output_tokens: *output_tokens,
                        latency_ms: *latency_ms,
                        cost_nanos: *cost_nanos,
                        at: *at,
                    }
                    .into(),
                ])
            }
            Command::FailTask { task, error, retryable, at } => {
                self.registered()?;
                let open = self.open(*task)?;
                bounded("error", error, MAX_TEXT_BYTES)?;
                Ok(vec![
                    TaskFailed {
                        task: *task,
                        job: open.job,
                        step: open.step.clone(),
                        attempt: open.attempt,
                        error: error.clone(),
                        retryable: *retryable,
                        at: *at,
                    }
                    .into(),
                ])
            }
        }
    }

    fn evolve(mut self, event: &Event) -> Self {
        match event {
            Event::Registered(e) => {
                self.status = Status::Enabled;
                self.profile = Some(e.profile.clone());
            }
            Event::Updated(e) => self.profile = Some(e.profile.clone()),
            Event::Disabled(_) => self.status = Status::Disabled,
            Event::TaskAssigned(e) => {
                let open = OpenTask { job: e.job, step: e.step.clone(), attempt: e.attempt, started: false };
                self.open_tasks.insert(e.task, open);
            }
            Event::TaskStarted(e) => {
                if let Some(open) = self.open_tasks.get_mut(&e.task) {
                    open.started = true;
                }
            }
            Event::TaskCompleted(e) => {
                self.open_tasks.remove(&e.task);
                self.finished_tasks += 1;
                self.tokens += e.input_tokens + e.output_tokens;
            }
            Event::TaskFailed(e) => {
                self.open_tasks.remove(&e.task);
                self.finished_tasks += 1;
            }
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use weft_events::domain::agent::Param;

    use super::*;
    use crate::testkit::given;

    const AT: Timestamp = Timestamp(42);

    fn profile(limit: u32) -> Profile {
        Profile {
            name: "Sam".into(),
            role: "summariser".into(),
            goal: "short summaries".into(),
            instructions: "Be brief.".into(),
            provider: "builtin".into(),
            model: "extractive".into(),
            parameters: BTreeMap::from([("sentences".into(), Param::Int(3))]),
            concurrency_limit: limit,
        }
    }

    fn registered(limit: u32) -> Event {
        Registered { profile: profile(limit), at: AT }.into()
    }

    fn task(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn job() -> JobId {
        JobId(Uuid::from_u128(77))
    }

    fn assign(n: u128) -> Command {
        Command::AssignTask { task: task(n), job: job(), step: "summarise".into(), attempt: 1, at: AT }
    }

    fn assigned(n: u128) -> Event {
        TaskAssigned { task: task(n), job: job(), step: "summarise".into(), attempt: 1, at: AT }.into()
    }

    #[test]
    fn registering_an_agent_records_its_profile() {
        given::<Agent>([]).when(Command::Register { profile: profile(2), at: AT }).then([registered(2)]);
    }

    #[test]
    fn registering_twice_or_with_a_bad_profile_is_rejected() {
        given::<Agent>([registered(2)])
            .when(Command::Register { profile: profile(2), at: AT })
            .then_rejected(Rejection::AlreadyRegistered);
        assert!(matches!(
            Agent::default().decide(&Command::Register { profile: profile(0), at: AT }),
            Err(Rejection::Invalid { field, .. }) if field == "concurrency limit"
        ));
        let mut unnamed = profile(1);
        unnamed.name.clear();
        assert!(matches!(
            Agent::default().decide(&Command::Register { profile: unnamed, at: AT }),
            Err(Rejection::Invalid { field, .. }) if field == "name"
        ));
    }

    #[test]
    fn updating_replaces_the_profile_and_the_same_profile_changes_nothing() {
        given::<Agent>([registered(2)]).when(Command::Update { profile: profile(5), at: AT }).then([Updated {
            profile: profile(5),
            at: AT,
        }
        .into()]);
        given::<Agent>([registered(2)]).when(Command::Update { profile: profile(2), at: AT }).then([]);
    }

    #[test]
    fn updating_an_unregistered_or_disabled_agent_is_rejected() {
        given::<Agent>([])
            .when(Command::Update { profile: profile(2), at: AT })
            .then_rejected(Rejection::NotRegistered);
        given::<Agent>([registered(2), Disabled { reason: "x".into(), at: AT }.into()])
            .when(Command::Update { profile: profile(3), at: AT })
            .then_rejected(Rejection::Disabled);
    }

    #[test]
    fn disabling_records_why_and_twice_is_rejected() {
        let disabled: Event = Disabled { reason: "retired".into(), at: AT }.into();
        given::<Agent>([registered(2)])
            .when(Command::Disable { reason: "retired".into(), at: AT })
            .then([disabled.clone()]);
        given::<Agent>([registered(2), disabled])
            .when(Command::Disable { reason: "again".into(), at: AT })
            .then_rejected(Rejection::Disabled);
    }

    #[test]
    fn assigning_a_task_below_the_limit_records_it() {
        given::<Agent>([registered(2), assigned(1)]).when(assign(2)).then([assigned(2)]);
    }

    #[test]
    fn assigning_over_the_limit_to_a_disabled_agent_or_twice_is_rejected() {
        given::<Agent>([registered(1), assigned(1)])
            .when(assign(2))
            .then_rejected(Rejection::AtCapacity { running: 1 });
        given::<Agent>([registered(2), assigned(1)]).when(assign(1)).then_rejected(Rejection::DuplicateTask(task(1)));
        given::<Agent>([registered(2), Disabled { reason: "x".into(), at: AT }.into()])
            .when(assign(1))
            .then_rejected(Rejection::Disabled);
    }

    #[test]
    fn starting_an_assigned_task_records_it_and_twice_is_rejected() {
        let started: Event = TaskStarted { task: task(1), at: AT }.into();
        given::<Agent>([registered(2), assigned(1)])
            .when(Command::StartTask { task: task(1), at: AT })
            .then([started.clone()]);
        given::<Agent>([registered(2), assigned(1), started])
            .when(Command::StartTask { task: task(1), at: AT })
            .then_rejected(Rejection::AlreadyStarted(task(1)));
    }

    #[test]
    fn completing_a_task_records_usage_and_frees_a_slot() {
        let output = DocumentId(Uuid::from_u128(5));
        let completed: Event = TaskCompleted {
            task: task(1),
            job: job(),
            step: "summarise".into(),
            attempt: 1,
            output,
            input_tokens: 100,
            output_tokens: 20,
            latency_ms: 300,
            cost_nanos: 4_500,
            at: AT,
        }
        .into();
        given::<Agent>([registered(1), assigned(1)])
            .when(Command::CompleteTask {
                task: task(1),
                output,
                input_tokens: 100,
                output_tokens: 20,
                latency_ms: 300,
                cost_nanos: 4_500,
                at: AT,
            })
            .then([completed.clone()]);
        let state = Agent::replay(&[registered(1), assigned(1), completed]);
        assert_eq!((state.open_tasks.len(), state.finished_tasks, state.tokens), (0, 1, 120));
        let failed = TaskFailed {
            task: task(1),
            job: job(),
            step: "summarise".into(),
            attempt: 1,
            error: "x".into(),
            retryable: true,
            at: AT,
        };
        given::<Agent>([registered(1), assigned(1), failed.into()]).when(assign(2)).then([assigned(2)]);
    }

    #[test]
    fn finishing_an_unknown_task_is_rejected() {
        given::<Agent>([registered(1)])
            .when(Command::FailTask { task: task(9), error: "x".into(), retryable: false, at: AT })
            .then_rejected(Rejection::UnknownTask(task(9)));
        given::<Agent>([registered(1)])
            .when(Command::CompleteTask {
                task: task(9),
                output: DocumentId(Uuid::from_u128(5)),
                input_tokens: 0,
                output_tokens: 0,
                latency_ms: 0,
                cost_nanos: 0,
                at: AT,
            })
            .then_rejected(Rejection::UnknownTask(task(9)));
    }

    #[test]
    fn failing_a_task_records_the_error() {
        given::<Agent>([registered(1), assigned(1)])
            .when(Command::FailTask { task: task(1), error: "rate limited".into(), retryable: true, at: AT })
            .then([TaskFailed {
                task: task(1),
                job: job(),
                step: "summarise".into(),
                attempt: 1,
                error: "rate limited".into(),
                retryable: true,
                at: AT,
            }
            .into()]);
    }
}
