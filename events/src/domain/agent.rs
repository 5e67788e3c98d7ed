//! Events of an agent: a configured worker (provider, model, instructions) that does job steps as tasks.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::ids::{DocumentId, JobId};
use crate::envelope::Timestamp;

/// One setting passed to the agent's provider, such as `temperature = 0.2`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum Param {
    /// A flag.
    Bool(bool),
    /// A whole number.
    Int(i64),
    /// A number.
    Float(f64),
    /// Text.
    Text(String),
}

/// How an agent is set up; registered whole and replaced whole by an update.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Human name.
    pub name: String,
    /// What it is, such as `summariser`.
    pub role: String,
    /// What it is for.
    pub goal: String,
    /// Its standing instructions (a system prompt).
    pub instructions: String,
    /// Which provider runs it: `builtin`, `openai`, `anthropic`, ...
    pub provider: String,
    /// The provider's model.
    pub model: String,
    /// Settings for the provider.
    pub parameters: BTreeMap<String, Param>,
    /// Most tasks at once.
    pub concurrency_limit: u32,
}

/// The agent was registered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Registered {
    /// Its set-up.
    pub profile: Profile,
    /// When.
    pub at: Timestamp,
}

/// The agent's set-up was replaced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Updated {
    /// Its new set-up.
    pub profile: Profile,
    /// When.
    pub at: Timestamp,
}

/// The agent takes no new tasks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Disabled {
    /// Why.
    pub reason: String,
    /// When.
    pub at: Timestamp,
}

/// A job step was given to the agent as a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TaskAssigned {
    /// The task's id.
    pub task: Uuid,
    /// The job.
    pub job: JobId,
    /// The step.
    pub step: String,
    /// The step's attempt.
    pub attempt: u32,
    /// When.
    pub at: Timestamp,
}

/// The agent began a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TaskStarted {
    /// The task.
    pub task: Uuid,
    /// When.
    pub at: Timestamp,
}

/// A task finished and wrote `output`. It names the job step it did, so that whoever reacts to it (the job
/// orchestrator) needs no memory of the assignment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TaskCompleted {
    /// The task.
    pub task: Uuid,
    /// The job.
    pub job: JobId,
    /// The step.
    pub step: String,
    /// The step's attempt.
    pub attempt: u32,
    /// The document written.
    pub output: DocumentId,
    /// Tokens the provider read.
    pub input_tokens: u64,
    /// Tokens the provider wrote.
    pub output_tokens: u64,
    /// How long the provider took.
    pub latency_ms: u64,
    /// What the provider calls cost, in billionths of a US dollar, at the prices the node that ran the task
    /// was given (`--price`); 0 for a model without a price. Since schema version 2 (0 before).
    #[serde(default)]
    pub cost_nanos: u64,
    /// When.
    pub at: Timestamp,
}

/// A task failed. Like [`TaskCompleted`], it names the job step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TaskFailed {
    /// The task.
    pub task: Uuid,
    /// The job.
    pub job: JobId,
    /// The step.
    pub step: String,
    /// The step's attempt.
    pub attempt: u32,
    /// What went wrong.
    pub error: String,
    /// Whether another attempt may succeed.
    pub retryable: bool,
    /// When.
    pub at: Timestamp,
}

super::domain_events! { "agent";
    /// See [`Registered`].
    Registered(Registered) = "agent.registered", v 1,
    /// See [`Updated`].
    Updated(Updated) = "agent.updated", v 1,
    /// See [`Disabled`].
    Disabled(Disabled) = "agent.disabled", v 1,
    /// See [`TaskAssigned`].
    TaskAssigned(TaskAssigned) = "agent.task_assigned", v 1,
    /// See [`TaskStarted`].
    TaskStarted(TaskStarted) = "agent.task_started", v 1,
    /// See [`TaskCompleted`].
    TaskCompleted(TaskCompleted) = "agent.task_completed", v 2,
    /// See [`TaskFailed`].
    TaskFailed(TaskFailed) = "agent.task_failed", v 1,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::tests::round_trip;

    #[test]
    fn every_agent_event_round_trips() {
        let at = Timestamp(9);
        let profile = Profile {
            name: "Sam".into(),
            role: "summariser".into(),
            goal: "short summaries".into(),
            instructions: "Be brief.".into(),
            provider: "builtin".into(),
            model: "extractive".into(),
            parameters: BTreeMap::from([
                ("temperature".into(), Param::Float(0.2)),
                ("max_tokens".into(), Param::Int(400)),
                ("stream".into(), Param::Bool(false)),
                ("style".into(), Param::Text("plain".into())),
            ]),
            concurrency_limit: 4,
        };
        let task = Uuid::now_v7();
        let events: Vec<Event> = vec![
            Registered { profile: profile.clone(), at }.into(),
            Updated { profile, at }.into(),
            Disabled { reason: "retired".into(), at }.into(),
            TaskAssigned { task, job: JobId::new(), step: "s".into(), attempt: 1, at }.into(),
            TaskStarted { task, at }.into(),
            TaskCompleted {
                task,
                job: JobId::new(),
                step: "s".into(),
                attempt: 1,
                output: DocumentId::new(),
                input_tokens: 10,
                output_tokens: 5,
                latency_ms: 30,
                cost_nanos: 45_000,
                at,
            }
            .into(),
            TaskFailed {
                task,
                job: JobId::new(),
                step: "s".into(),
                attempt: 2,
                error: "rate limited".into(),
                retryable: true,
                at,
            }
            .into(),
        ];
        for event in events {
            assert_eq!(round_trip(&event), event);
        }
    }
}
