//! The workflows read model: each workflow's latest definition, and every version it had (jobs name the
//! version they run).
//!
//! Tables:
//!
//! - `workflows (id, tenant, name, latest_version, steps_count, status, defined_at, updated_at, version)`: the
//!   latest definition; `status` is `active`, `archived` or `deleted` (a read model made before the column existed gains
//!   it on start, `active` until `weft projection rebuild workflows`); `defined_at` is the first definition's
//!   time.
//! - `workflow_versions (workflow, workflow_version, name, steps, defined_at)`: `steps` is the definition's
//!   steps as JSON.

use rusqlite::{Transaction, params};
use weft_events::Envelope;
use weft_events::domain::DomainEvent;
use weft_events::domain::ids::WorkflowId;
use weft_events::domain::workflow::Event;

use crate::model::{Model, parse_json_field, rows};
use crate::{ApplyError, Projection};
use serde_json::{Value, json};

/// The projection's name, as the runner, `/readyz` and `GET /projections/{name}` know it.
pub const NAME: &str = "workflows";

/// The workflows read model.
pub const MODEL: Model = Model {
    name: "workflows",
    projection: NAME,
    kind: "workflow",
    table: "workflows",
    columns: &[
        "id",
        "tenant",
        "name",
        "latest_version",
        "steps_count",
        "status",
        "defined_at",
        "updated_at",
        "version",
    ],
    filters: &["tenant", "name", "status"],
    labels: None,
    time: "defined_at",
    details: workflow_details,
    shape: |_| {},
};

/// The columns of a workflow's version.
const WORKFLOW_VERSION_COLUMNS: &[&str] = &["workflow_version", "name", "steps", "defined_at"];

/// A workflow's versions, and its latest steps.
fn workflow_details(db: &rusqlite::Connection, id: &str, workflow: &mut Value) -> rusqlite::Result<()> {
    let sql = format!(
        "SELECT {} FROM workflow_versions WHERE workflow = ?1 ORDER BY workflow_version",
        WORKFLOW_VERSION_COLUMNS.join(", ")
    );
    let mut versions = rows(db, &sql, &[&id], WORKFLOW_VERSION_COLUMNS)?;
    for version in &mut versions {
        parse_json_field(version, "steps");
    }
    workflow["steps"] = versions.last().map_or(Value::Null, |v| v["steps"].clone());
    workflow["versions"] = json!(versions);
    Ok(())
}

/// Sets a workflow's `status` (`archived` or `active`).
fn archive(tx: &Transaction<'_>, id: &str, status: &str, at: i64, version: i64) -> rusqlite::Result<()> {
    crate::exec(
        tx,
        "UPDATE workflows SET status = ?2, updated_at = ?3, version = ?4 WHERE id = ?1",
        params![id, status, at, version],
    )
    .map(|_| ())
}

/// The workflows projection.
#[derive(Debug, Default)]
pub struct Workflows;

impl Projection for Workflows {
    fn name(&self) -> &'static str {
        NAME
    }

    fn tables(&self) -> &'static [&'static str] {
        &["workflows", "workflow_versions"]
    }

    fn create(&self, db: &rusqlite::Connection) -> rusqlite::Result<()> {
        db.execute_batch(
            "CREATE TABLE IF NOT EXISTS workflows (
                 id TEXT PRIMARY KEY,
                 tenant TEXT NOT NULL,
                 name TEXT NOT NULL,
                 latest_version INTEGER NOT NULL,
                 steps_count INTEGER NOT NULL,
                 defined_at INTEGER NOT NULL,
                 updated_at INTEGER NOT NULL,
                 version INTEGER NOT NULL
             );
             CREATE INDEX IF NOT EXISTS workflows_by_tenant ON workflows (tenant, id);
             CREATE TABLE IF NOT EXISTS workflow_versions (
                 workflow TEXT NOT NULL,
                 workflow_version INTEGER NOT NULL,
                 name TEXT NOT NULL,
                 steps TEXT NOT NULL,
                 defined_at INTEGER NOT NULL,
                 PRIMARY KEY (workflow, workflow_version)
             );",
        )?;
        crate::add_column(db, "workflows", "status TEXT NOT NULL DEFAULT 'active'")
    }

    fn wants(&self, event: &Envelope) -> bool {
        crate::of_kind(event, WorkflowId::KIND)
    }

    fn apply(&mut self, tx: &Transaction<'_>, envelope: &Envelope) -> Result<(), ApplyError> {
        let Some(id) = WorkflowId::from_stream(&envelope.stream) else { return Ok(()) };
        let event = Event::from_envelope(envelope)
            .map_err(|source| ApplyError::Decode { position: envelope.position, source })?;
        let (id, version) = (id.to_string(), envelope.version as i64);
        match event {
            Event::Defined(e) => {
                let steps = serde_json::to_string(&e.steps).unwrap_or_default();
                crate::exec(
                    tx,
                    "INSERT INTO workflows (id, tenant, name, latest_version, steps_count, defined_at, updated_at,
                                            version)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, ?7)
                     ON CONFLICT (id) DO UPDATE SET name = excluded.name, latest_version = excluded.latest_version,
                         steps_count = excluded.steps_count, updated_at = excluded.updated_at,
                         version = excluded.version",
                    params![id, &*envelope.tenant, e.name, e.version, e.steps.len() as i64, e.at.0, version],
                )?;
                crate::exec(
                    tx,
                    "INSERT INTO workflow_versions (workflow, workflow_version, name, steps, defined_at)
                     VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
                    params![id, e.version, e.name, steps, e.at.0],
                )?;
            }
            Event::Archived(e) => archive(tx, &id, "archived", e.at.0, version)?,
            Event::Restored(e) => archive(tx, &id, "active", e.at.0, version)?,
            Event::Deleted(e) => archive(tx, &id, "deleted", e.at.0, version)?,
        }
        Ok(())
    }
}
