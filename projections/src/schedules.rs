//! The schedules read model, and the triggers read model ([`crate::triggers`]) beside it: each schedule's rule, target and state, how often it fired and how many jobs it
//! submitted, and up to which time its occurrences are done (the next fire time is the rule's first occurrence
//! after that, worked out when read: it needs the cron rule, which is not this crate's business).
//!
//! Table `schedules (id, tenant, cron, time_zone, workflow, target, strategy, status, fires, jobs_submitted,
//! last_due, fired_up_to, created_at, updated_at, version)`: `status` is `active`, `paused` or `deleted`;
//! `target` and `strategy` are JSON; `fired_up_to` is the latest of the creation, the last resumption and the
//! last occurrence fired, as the schedule actor counts it.

use rusqlite::{Transaction, params};
use weft_events::Envelope;
use weft_events::domain::DomainEvent;
use weft_events::domain::ids::ScheduleId;
use weft_events::domain::schedule::Event;

use crate::model::{Model, parse_json_field};
use crate::{ApplyError, Projection};
use serde_json::{Value, json};

/// The projection's name, as the runner, `/readyz` and `GET /projections/{name}` know it.
pub const NAME: &str = "schedules";

/// The schedules read model.
pub const MODEL: Model = Model {
    name: "schedules",
    projection: NAME,
    kind: "schedule",
    table: "schedules",
    columns: &[
        "id",
        "tenant",
        "cron",
        "time_zone",
        "workflow",
        "target",
        "strategy",
        "status",
        "fires",
        "jobs_submitted",
        "last_due",
        "fired_up_to",
        "created_at",
        "updated_at",
        "version",
    ],
    filters: &["status", "tenant", "workflow"],
    labels: None,
    time: "created_at",
    details: crate::model::no_details,
    shape: shape_schedule,
};

/// Parses the target and strategy, and works out the next fire time from the rule, as the schedule actor does.
fn shape_schedule(schedule: &mut Value) {
    parse_json_field(schedule, "target");
    parse_json_field(schedule, "strategy");
    let active = schedule["status"] == "active";
    let next = match (schedule["cron"].as_str(), schedule["time_zone"].as_str(), schedule["fired_up_to"].as_i64()) {
        (Some(cron), Some(zone), Some(after)) if active => weft_events::domain::schedule::Rule::parse(cron, zone)
            .ok()
            .and_then(|rule| rule.next_after(weft_events::Timestamp(after))),
        _ => None,
    };
    schedule["next_fire_at"] = next.map_or(Value::Null, |t| json!(t.0));
}

/// The schedules projection.
#[derive(Debug, Default)]
pub struct Schedules;

impl Projection for Schedules {
    fn name(&self) -> &'static str {
        NAME
    }

    fn tables(&self) -> &'static [&'static str] {
        &["schedules", "triggers"]
    }

    fn create(&self, db: &rusqlite::Connection) -> rusqlite::Result<()> {
        db.execute_batch(
            "CREATE TABLE IF NOT EXISTS schedules (
                 id TEXT PRIMARY KEY,
                 tenant TEXT NOT NULL,
                 cron TEXT NOT NULL,
                 time_zone TEXT NOT NULL,
                 workflow TEXT NOT NULL,
                 target TEXT NOT NULL,
                 strategy TEXT NOT NULL,
                 status TEXT NOT NULL,
                 fires INTEGER NOT NULL DEFAULT 0,
                 jobs_submitted INTEGER NOT NULL DEFAULT 0,
                 last_due INTEGER,
                 fired_up_to INTEGER NOT NULL,
                 created_at INTEGER NOT NULL,
                 updated_at INTEGER NOT NULL,
                 version INTEGER NOT NULL
             );
             CREATE INDEX IF NOT EXISTS schedules_by_status ON schedules (status, id);
             CREATE INDEX IF NOT EXISTS schedules_by_workflow ON schedules (workflow, id);
             CREATE INDEX IF NOT EXISTS schedules_by_tenant ON schedules (tenant, id);",
        )?;
        crate::triggers::create(db)
    }

    fn wants(&self, event: &Envelope) -> bool {
        crate::of_kind(event, ScheduleId::KIND) || crate::triggers::wants(event)
    }

    fn apply(&mut self, tx: &Transaction<'_>, envelope: &Envelope) -> Result<(), ApplyError> {
        if crate::triggers::wants(envelope) {
            return crate::triggers::apply(tx, envelope);
        }
        let Some(id) = ScheduleId::from_stream(&envelope.stream) else { return Ok(()) };
        let event = Event::from_envelope(envelope)
            .map_err(|source| ApplyError::Decode { position: envelope.position, source })?;
        let (id, version) = (id.to_string(), envelope.version as i64);
        let set_status = |status: &str, at: i64, fired_up_to: Option<i64>| {
            crate::exec(
                tx,
                "UPDATE schedules SET status = ?2, fired_up_to = max(fired_up_to, coalesce(?3, fired_up_to)),
                                      updated_at = ?4, version = ?5 WHERE id = ?1",
                params![id, status, fired_up_to, at, version],
            )
        };
        match event {
            Event::Created(e) => {
                crate::exec(
                    tx,
                    "INSERT INTO schedules (id, tenant, cron, time_zone, workflow, target, strategy, status,
                                            fired_up_to, created_at, updated_at, version)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'active', ?8, ?8, ?8, ?9)
                     ON CONFLICT (id) DO NOTHING",
                    params![
                        id,
                        &*envelope.tenant,
                        e.cron,
                        e.time_zone,
                        e.workflow.to_string(),
                        serde_json::to_string(&e.target).unwrap_or_default(),
                        serde_json::to_string(&e.strategy).unwrap_or_default(),
                        e.at.0,
                        version
                    ],
                )?;
            }
            Event::Paused(e) => {
                set_status("paused", e.at.0, None)?;
            }
            Event::Resumed(e) => {
                set_status("active", e.at.0, Some(e.at.0))?;
            }
            Event::Deleted(e) => {
                set_status("deleted", e.at.0, None)?;
            }
            Event::Fired(e) => {
                crate::exec(
                    tx,
                    "UPDATE schedules SET fires = fires + 1, jobs_submitted = jobs_submitted + ?2, last_due = ?3,
                                          fired_up_to = max(fired_up_to, ?3), updated_at = ?4, version = ?5
                     WHERE id = ?1",
                    params![id, e.jobs.len() as i64, e.due_at.0, e.at.0, version],
                )?;
            }
        }
        Ok(())
    }
}
