//! The triggers read model: each trigger's selector, workflow and state, and how often it fired. Written by
//! the schedules projection ([`crate::schedules`]): both are what starts jobs on its own.
//!
//! Table `triggers (id, tenant, workflow, selector, parameters, priority, on_versions, own_outputs, status,
//! fires, last_job, last_fired_at, created_at, updated_at, version)`: `status` is `active`, `paused` or
//! `deleted`; `selector` and `parameters` are JSON. A trigger's firing is its job: `fires` counts the
//! `job.submitted` events whose correlation id is the trigger's.

use rusqlite::{Transaction, params};
use weft_events::Envelope;
use weft_events::domain::DomainEvent;
use weft_events::domain::ids::TriggerId;
use weft_events::domain::trigger::Event;

use crate::ApplyError;
use crate::model::{Model, parse_json_field};

/// The triggers read model.
pub const MODEL: Model = Model {
    name: "triggers",
    projection: crate::schedules::NAME,
    kind: "trigger",
    table: "triggers",
    columns: &[
        "id",
        "tenant",
        "workflow",
        "selector",
        "parameters",
        "priority",
        "on_versions",
        "own_outputs",
        "status",
        "fires",
        "last_job",
        "last_fired_at",
        "created_at",
        "updated_at",
        "version",
    ],
    filters: &["status", "tenant", "workflow"],
    labels: None,
    time: "created_at",
    details: crate::model::no_details,
    shape: |trigger| {
        parse_json_field(trigger, "selector");
        parse_json_field(trigger, "parameters");
        for flag in ["on_versions", "own_outputs"] {
            if let Some(n) = trigger[flag].as_i64() {
                trigger[flag] = serde_json::Value::Bool(n != 0);
            }
        }
    },
};

/// Creates the table.
pub(crate) fn create(db: &rusqlite::Connection) -> rusqlite::Result<()> {
    db.execute_batch(
        "CREATE TABLE IF NOT EXISTS triggers (
             id TEXT PRIMARY KEY,
             tenant TEXT NOT NULL,
             workflow TEXT NOT NULL,
             selector TEXT NOT NULL,
             parameters TEXT NOT NULL,
             priority INTEGER NOT NULL,
             on_versions INTEGER NOT NULL,
             own_outputs INTEGER NOT NULL,
             status TEXT NOT NULL,
             fires INTEGER NOT NULL DEFAULT 0,
             last_job TEXT,
             last_fired_at INTEGER,
             created_at INTEGER NOT NULL,
             updated_at INTEGER NOT NULL,
             version INTEGER NOT NULL
         );
         CREATE INDEX IF NOT EXISTS triggers_by_status ON triggers (status, id);
         CREATE INDEX IF NOT EXISTS triggers_by_workflow ON triggers (workflow, id);
         CREATE INDEX IF NOT EXISTS triggers_by_tenant ON triggers (tenant, id);",
    )
}

/// Whether the triggers read model wants `event`: a trigger's, or a job's submission that some process
/// correlated (one of a trigger's firings).
pub(crate) fn wants(event: &Envelope) -> bool {
    crate::of_kind(event, TriggerId::KIND) || (event.correlation_id.is_some() && &*event.event_type == "job.submitted")
}

/// Applies a trigger's event, or counts a job submitted by a trigger.
pub(crate) fn apply(tx: &Transaction<'_>, envelope: &Envelope) -> Result<(), ApplyError> {
    if &*envelope.event_type == "job.submitted" {
        let (Some(trigger), Some(job)) = (envelope.correlation_id, envelope.stream.as_str().strip_prefix("job-"))
        else {
            return Ok(());
        };
        crate::exec(
            tx,
            "UPDATE triggers SET fires = fires + 1, last_job = ?2, last_fired_at = ?3 WHERE id = ?1",
            params![trigger.to_string(), job, envelope.recorded_at.0],
        )?;
        return Ok(());
    }
    let Some(id) = TriggerId::from_stream(&envelope.stream) else { return Ok(()) };
    let event =
        Event::from_envelope(envelope).map_err(|source| ApplyError::Decode { position: envelope.position, source })?;
    let (id, version) = (id.to_string(), envelope.version as i64);
    let status = match event {
        Event::Created(e) => {
            crate::exec(
                tx,
                "INSERT INTO triggers (id, tenant, workflow, selector, parameters, priority, on_versions, own_outputs,
                                       status, created_at, updated_at, version)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'active', ?9, ?9, ?10)
                 ON CONFLICT (id) DO NOTHING",
                params![
                    id,
                    &*envelope.tenant,
                    e.workflow.to_string(),
                    serde_json::to_string(&e.selector).unwrap_or_default(),
                    serde_json::to_string(&e.parameters).unwrap_or_default(),
                    e.priority,
                    e.on_versions,
                    e.own_outputs,
                    e.at.0,
                    version
                ],
            )?;
            return Ok(());
        }
        Event::Paused(e) => ("paused", e.at),
        Event::Resumed(e) => ("active", e.at),
        Event::Deleted(e) => ("deleted", e.at),
    };
    crate::exec(
        tx,
        "UPDATE triggers SET status = ?2, updated_at = ?3, version = ?4 WHERE id = ?1",
        params![id, status.0, status.1.0, version],
    )?;
    Ok(())
}
