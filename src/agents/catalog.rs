//! The agents and workflows every node registers on start, so that a fresh node can run jobs with no set-up:
//! agents `summarize`, `redact` and `keywords` on the [`super::builtin`] provider, a one-step workflow of the
//! same name for each, and `redact-then-summarize`, which summarises the redacted text.
//!
//! Their ids are derived from their names (UUID v5), and so are the commands' ids: every node may register
//! them at every start, and only the first registration of each is recorded. A user who redefines one keeps
//! their version: a repeat of the original registration changes nothing.

use std::collections::BTreeMap;

use weft_actors::agent::{self, Agent};
use weft_actors::host::{self, Execute, Metadata};
use weft_actors::process::Gateway;
use weft_actors::workflow::{self, Workflow};
use weft_events::Timestamp;
use weft_events::domain::agent::Profile;
use weft_events::domain::ids::{AgentId, Uuid, WorkflowId};
use weft_events::domain::workflow::{Input, RetryPolicy, Step};

use crate::gateway::BusGateway;

/// The namespace of the catalog's ids (UUID v5).
const CATALOG: Uuid = Uuid::from_u128(0x5745_4654_0007_4361_7461_6c6f_6741_6774);

/// The built-in agents: name, role, goal, model.
const AGENTS: [(&str, &str, &str); 3] = [
    ("summarize", "summariser", "the gist of a document in a few of its own sentences"),
    ("redact", "redactor", "the document without e-mail addresses, card and phone numbers"),
    ("keywords", "indexer", "the words a document is about"),
];

/// The events the catalog appends to a fresh store: one per agent and one per workflow.
pub const EVENTS: u64 = 3 + 4;

/// The id of the built-in agent `name`.
pub fn agent_id(name: &str) -> AgentId {
    AgentId(Uuid::new_v5(&CATALOG, format!("agent:{name}").as_bytes()))
}

/// The id of the built-in workflow `name`.
pub fn workflow_id(name: &str) -> WorkflowId {
    WorkflowId(Uuid::new_v5(&CATALOG, format!("workflow:{name}").as_bytes()))
}

fn step(name: &str, agent: &str, input: Input) -> Step {
    Step {
        name: name.to_owned(),
        agent: agent_id(agent),
        instruction: format!("{name} the input"),
        inputs: vec![input],
        timeout_ms: 60_000,
        retry: RetryPolicy { max_attempts: 3, base_delay_ms: 500, max_delay_ms: 10_000 },
    }
}

/// The built-in workflows: name and steps.
pub fn workflows() -> Vec<(&'static str, Vec<Step>)> {
    let mut all: Vec<(&'static str, Vec<Step>)> =
        AGENTS.iter().map(|(name, ..)| (*name, vec![step(name, name, Input::JobInputs)])).collect();
    all.push((
        "redact-then-summarize",
        vec![step("redact", "redact", Input::JobInputs), step("summarize", "summarize", Input::Step("redact".into()))],
    ));
    all
}

/// A part of the catalog that could not be registered.
#[derive(Debug, thiserror::Error)]
#[error("registering the built-in {what}: {reason}")]
pub struct Error {
    /// Which agent or workflow.
    pub what: String,
    /// Why.
    pub reason: String,
}

/// Registers what is missing of the catalog. Must be called on an actix system, with the intake running.
pub async fn register(gateway: &BusGateway) -> Result<(), Error> {
    let metadata =
        || Metadata { tenant: None, actor: Some("system:catalog".into()), correlation_id: None, owner: None };
    for (name, role, goal) in AGENTS {
        let profile = Profile {
            name: name.to_owned(),
            role: role.to_owned(),
            goal: goal.to_owned(),
            instructions: format!("You are the {role}: {goal}."),
            provider: super::builtin::NAME.to_owned(),
            model: name.to_owned(),
            parameters: BTreeMap::new(),
            concurrency_limit: 4,
        };
        let id = agent_id(name);
        let command = agent::Command::Register { profile, at: Timestamp::now() };
        let execute = Execute {
            command_id: Uuid::new_v5(&id.0, b"register"),
            command,
            expected_version: None,
            metadata: metadata(),
        };
        match gateway.execute::<Agent>(&id.stream(), execute).await {
            Ok(_) | Err(host::Error::Rejected(agent::Rejection::AlreadyRegistered)) => {}
            Err(e) => return Err(Error { what: format!("agent {name}"), reason: e.to_string() }),
        }
    }
    for (name, steps) in workflows() {
        let id = workflow_id(name);
        let command = workflow::Command::Define { name: name.to_owned(), steps, at: Timestamp::now() };
        let execute = Execute {
            command_id: Uuid::new_v5(&id.0, b"define"),
            command,
            expected_version: None,
            metadata: metadata(),
        };
        match gateway.execute::<Workflow>(&id.stream(), execute).await {
            Ok(_) | Err(host::Error::Rejected(workflow::Rejection::AlreadyDefined)) => {}
            Err(e) => return Err(Error { what: format!("workflow {name}"), reason: e.to_string() }),
        }
    }
    Ok(())
}
