//! The agents read model: each agent's set-up, whether it takes tasks, and what it has done: tasks assigned,
//! running, done and failed, tokens used and the total provider latency (the mean is total over done).
//!
//! Table `agents (id, tenant, name, role, provider, model, profile, status, disabled_reason, tasks_assigned,
//! tasks_running, tasks_done, tasks_failed, input_tokens, output_tokens, latency_total_ms, registered_at,
//! updated_at, version)`: `status` is `active` or `disabled`; `profile` is the whole set-up as JSON; a task
//! counts as running from its assignment until it completes or fails.

use rusqlite::{Transaction, params};
use weft_events::Envelope;
use weft_events::domain::DomainEvent;
use weft_events::domain::agent::{Event, Profile};
use weft_events::domain::ids::AgentId;

use crate::model::{Model, parse_json_field};
use crate::{ApplyError, Projection};
use serde_json::{Value, json};

/// The projection's name, as the runner, `/readyz` and `GET /projections/{name}` know it.
pub const NAME: &str = "agents";

/// The agents read model.
pub const MODEL: Model = Model {
    name: "agents",
    projection: NAME,
    kind: "agent",
    table: "agents",
    columns: &[
        "id",
        "tenant",
        "name",
        "role",
        "provider",
        "model",
        "profile",
        "status",
        "disabled_reason",
        "tasks_assigned",
        "tasks_running",
        "tasks_done",
        "tasks_failed",
        "input_tokens",
        "output_tokens",
        "cost_nanos",
        "latency_total_ms",
        "registered_at",
        "updated_at",
        "version",
    ],
    filters: &["status", "tenant", "provider", "name"],
    labels: None,
    time: "registered_at",
    details: crate::model::no_details,
    shape: shape_agent,
};

/// An agent's profile parsed, and its mean latency.
fn shape_agent(agent: &mut Value) {
    parse_json_field(agent, "profile");
    let done = agent["tasks_done"].as_u64().unwrap_or(0);
    let total = agent["latency_total_ms"].as_u64().unwrap_or(0);
    agent["mean_latency_ms"] = if done > 0 { json!(total as f64 / done as f64) } else { Value::Null };
    crate::with_cost_usd(agent);
}

/// The agents projection.
#[derive(Debug, Default)]
pub struct Agents;

fn profile_json(profile: &Profile) -> String {
    serde_json::to_string(profile).unwrap_or_default()
}

impl Projection for Agents {
    fn name(&self) -> &'static str {
        NAME
    }

    fn tables(&self) -> &'static [&'static str] {
        &["agents"]
    }

    fn create(&self, db: &rusqlite::Connection) -> rusqlite::Result<()> {
        db.execute_batch(
            "CREATE TABLE IF NOT EXISTS agents (
                 id TEXT PRIMARY KEY,
                 tenant TEXT NOT NULL,
                 name TEXT NOT NULL,
                 role TEXT NOT NULL,
                 provider TEXT NOT NULL,
                 model TEXT NOT NULL,
                 profile TEXT NOT NULL,
                 status TEXT NOT NULL,
                 disabled_reason TEXT,
                 tasks_assigned INTEGER NOT NULL DEFAULT 0,
                 tasks_running INTEGER NOT NULL DEFAULT 0,
                 tasks_done INTEGER NOT NULL DEFAULT 0,
                 tasks_failed INTEGER NOT NULL DEFAULT 0,
                 input_tokens INTEGER NOT NULL DEFAULT 0,
                 output_tokens INTEGER NOT NULL DEFAULT 0,
                 cost_nanos INTEGER NOT NULL DEFAULT 0,
                 latency_total_ms INTEGER NOT NULL DEFAULT 0,
                 registered_at INTEGER NOT NULL,
                 updated_at INTEGER NOT NULL,
                 version INTEGER NOT NULL
             );
             CREATE INDEX IF NOT EXISTS agents_by_status ON agents (status, id);
             CREATE INDEX IF NOT EXISTS agents_by_provider ON agents (provider, id);
             CREATE INDEX IF NOT EXISTS agents_by_tenant ON agents (tenant, id);",
        )?;
        // Costs came after the table: a read model made before gains the column (0 for what it holds).
        crate::add_column(db, "agents", "cost_nanos INTEGER NOT NULL DEFAULT 0")
    }

    fn wants(&self, event: &Envelope) -> bool {
        crate::of_kind(event, AgentId::KIND)
    }

    fn apply(&mut self, tx: &Transaction<'_>, envelope: &Envelope) -> Result<(), ApplyError> {
        let Some(id) = AgentId::from_stream(&envelope.stream) else { return Ok(()) };
        let event = Event::from_envelope(envelope)
            .map_err(|source| ApplyError::Decode { position: envelope.position, source })?;
        let (id, version) = (id.to_string(), envelope.version as i64);
        match event {
            Event::Registered(e) => {
                let p = &e.profile;
                crate::exec(
                    tx,
                    "INSERT INTO agents (id, tenant, name, role, provider, model, profile, status, registered_at,
                                         updated_at, version)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'active', ?8, ?8, ?9)
                     ON CONFLICT (id) DO NOTHING",
                    params![
                        id,
                        &*envelope.tenant,
                        p.name,
                        p.role,
                        p.provider,
                        p.model,
                        profile_json(p),
                        e.at.0,
                        version
                    ],
                )?;
            }
            Event::Updated(e) => {
                let p = &e.profile;
                crate::exec(
                    tx,
                    "UPDATE agents SET name = ?2, role = ?3, provider = ?4, model = ?5, profile = ?6,
                                       updated_at = ?7, version = ?8 WHERE id = ?1",
                    params![id, p.name, p.role, p.provider, p.model, profile_json(p), e.at.0, version],
                )?;
            }
            Event::Disabled(e) => {
                crate::exec(
                    tx,
                    "UPDATE agents SET status = 'disabled', disabled_reason = ?2, updated_at = ?3, version = ?4
                     WHERE id = ?1",
                    params![id, e.reason, e.at.0, version],
                )?;
            }
            Event::TaskAssigned(e) => {
                crate::exec(
                    tx,
                    "UPDATE agents SET tasks_assigned = tasks_assigned + 1, tasks_running = tasks_running + 1,
                                       updated_at = ?2, version = ?3 WHERE id = ?1",
                    params![id, e.at.0, version],
                )?;
            }
            Event::TaskStarted(e) => {
                crate::exec(
                    tx,
                    "UPDATE agents SET updated_at = ?2, version = ?3 WHERE id = ?1",
                    params![id, e.at.0, version],
                )?;
            }
            Event::TaskCompleted(e) => {
                crate::exec(
                    tx,
                    "UPDATE agents SET tasks_done = tasks_done + 1, tasks_running = max(tasks_running - 1, 0),
                                       input_tokens = input_tokens + ?2, output_tokens = output_tokens + ?3,
                                       latency_total_ms = latency_total_ms + ?4, updated_at = ?5, version = ?6,
                                       cost_nanos = cost_nanos + ?7
                     WHERE id = ?1",
                    params![
                        id,
                        e.input_tokens as i64,
                        e.output_tokens as i64,
                        e.latency_ms as i64,
                        e.at.0,
                        version,
                        crate::nanos(e.cost_nanos)
                    ],
                )?;
            }
            Event::TaskFailed(e) => {
                crate::exec(
                    tx,
                    "UPDATE agents SET tasks_failed = tasks_failed + 1, tasks_running = max(tasks_running - 1, 0),
                                       updated_at = ?2, version = ?3 WHERE id = ?1",
                    params![id, e.at.0, version],
                )?;
            }
        }
        Ok(())
    }
}
