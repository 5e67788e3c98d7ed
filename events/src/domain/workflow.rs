//! Events of a workflow: a versioned template of named steps that jobs run.

use serde::{Deserialize, Serialize};

use super::ids::AgentId;

/// Where a step's input comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case", tag = "from", content = "name", deny_unknown_fields)]
pub enum Input {
    /// The job's input documents.
    JobInputs,
    /// The output document of an earlier step, by name.
    Step(String),
}

/// How a failed step is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts in all, the first included; 1 means no retry.
    pub max_attempts: u32,
    /// Delay before the first retry; each further retry doubles it.
    pub base_delay_ms: u64,
    /// The longest delay between attempts.
    pub max_delay_ms: u64,
}

/// One step of a workflow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Unique within the workflow.
    pub name: String,
    /// The agent that does it.
    pub agent: AgentId,
    /// What to do, for the agent.
    pub instruction: String,
    /// What it reads.
    pub inputs: Vec<Input>,
    /// How long one attempt may take.
    pub timeout_ms: u64,
    /// How failures are retried.
    pub retry: RetryPolicy,
}

/// A version of the workflow was defined: the first with `version` 1, each redefinition one more.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Defined {
    /// The version this defines.
    pub version: u32,
    /// Human name.
    pub name: String,
    /// The steps; their inputs form a DAG.
    pub steps: Vec<Step>,
    /// When.
    pub at: crate::envelope::Timestamp,
}

/// The workflow was archived: no new job runs it (those running go on) until it is restored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Archived {
    /// Why.
    pub reason: String,
    /// When.
    pub at: crate::envelope::Timestamp,
}

/// The workflow was restored from the archive: jobs may run it again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Restored {
    /// When.
    pub at: crate::envelope::Timestamp,
}

/// The workflow was deleted: no job runs it again, and it is never redefined or restored. Its history stays.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Deleted {
    /// Why.
    pub reason: String,
    /// When.
    pub at: crate::envelope::Timestamp,
}

super::domain_events! { "workflow";
    /// See [`Defined`].
    Defined(Defined) = "workflow.defined", v 1,
    /// See [`Archived`].
    Archived(Archived) = "workflow.archived", v 1,
    /// See [`Restored`].
    Restored(Restored) = "workflow.restored", v 1,
    /// See [`Deleted`].
    Deleted(Deleted) = "workflow.deleted", v 1,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::tests::round_trip;

    #[test]
    fn a_definition_round_trips() {
        let event: Event = Defined {
            version: 1,
            name: "summarise".into(),
            steps: vec![Step {
                name: "a".into(),
                agent: AgentId::new(),
                instruction: "summarise".into(),
                inputs: vec![Input::JobInputs, Input::Step("b".into())],
                timeout_ms: 1000,
                retry: RetryPolicy { max_attempts: 3, base_delay_ms: 100, max_delay_ms: 1000 },
            }],
            at: crate::envelope::Timestamp(1),
        }
        .into();
        assert_eq!(round_trip(&event), event);
    }
}
