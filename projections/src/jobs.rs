//! The jobs read model: each job's status, progress and times, each step's status with its attempts, output
//! and last error, and the job's log in order.
//!
//! Tables:
//!
//! - `jobs (id, tenant, workflow, workflow_version, priority, status, steps_total, steps_done, error, submitted_at,
//!   finished_at, updated_at, version)`: `status` is `running`, `succeeded`, `failed`, `dead_lettered` (a
//!   step's retries are exhausted; `error` holds its last error) or `cancelled`; a retried job is `running`
//!   again; progress is `steps_done / steps_total`.
//! - `job_steps (job, step, ordinal, status, attempts, output, error, retry_at, updated_at)`: `status` is
//!   `pending`, `scheduled`, `running`, `retrying` (until `retry_at`), `succeeded` or `failed`.
//! - `job_logs (job, seq, level, message, at)`: `seq` is the job stream's version of the log event, so a page
//!   of logs is `WHERE job = ? AND seq > ? ORDER BY seq LIMIT ?`.

use rusqlite::{Transaction, params};
use weft_events::Envelope;
use weft_events::domain::DomainEvent;
use weft_events::domain::ids::JobId;
use weft_events::domain::job::{Event, Level};

use crate::model::{Model, rows};
use crate::{ApplyError, Projection};
use serde_json::{Value, json};

/// The projection's name, as the runner, `/readyz` and `GET /projections/{name}` know it.
pub const NAME: &str = "jobs";

/// The jobs read model.
pub const MODEL: Model = Model {
    name: "jobs",
    projection: NAME,
    kind: "job",
    table: "jobs",
    columns: &[
        "id",
        "tenant",
        "owner",
        "workflow",
        "workflow_version",
        "priority",
        "status",
        "steps_total",
        "steps_done",
        "input_tokens",
        "output_tokens",
        "cost_nanos",
        "error",
        "submitted_at",
        "finished_at",
        "updated_at",
        "version",
    ],
    filters: &["status", "tenant", "workflow", "owner"],
    labels: None,
    time: "submitted_at",
    details: job_details,
    shape: crate::with_cost_usd,
};

/// The columns of a job's step.
const STEP_COLUMNS: &[&str] = &[
    "step",
    "status",
    "attempts",
    "output",
    "error",
    "retry_at",
    "input_tokens",
    "output_tokens",
    "cost_nanos",
    "updated_at",
];

/// A job's steps and progress.
fn job_details(db: &rusqlite::Connection, id: &str, job: &mut Value) -> rusqlite::Result<()> {
    let sql = format!("SELECT {} FROM job_steps WHERE job = ?1 ORDER BY ordinal", STEP_COLUMNS.join(", "));
    let mut steps = rows(db, &sql, &[&id], STEP_COLUMNS)?;
    steps.iter_mut().for_each(crate::with_cost_usd);
    let total = job["steps_total"].as_f64().unwrap_or(0.0);
    let done = job["steps_done"].as_f64().unwrap_or(0.0);
    job["progress"] = json!(if total > 0.0 { done / total } else { 0.0 });
    job["steps"] = json!(steps);
    Ok(())
}

/// An agent's completed task: its tokens and cost go to its job and step.
fn task_completed(tx: &Transaction<'_>, envelope: &Envelope) -> Result<(), ApplyError> {
    use weft_events::domain::agent::Event as AgentEvent;
    let event = AgentEvent::from_envelope(envelope)
        .map_err(|source| ApplyError::Decode { position: envelope.position, source })?;
    let AgentEvent::TaskCompleted(e) = event else { return Ok(()) };
    let (job, input, output, cost) =
        (e.job.to_string(), e.input_tokens as i64, e.output_tokens as i64, crate::nanos(e.cost_nanos));
    crate::exec(
        tx,
        "UPDATE jobs SET input_tokens = input_tokens + ?2, output_tokens = output_tokens + ?3,
                      cost_nanos = cost_nanos + ?4 WHERE id = ?1",
        params![job, input, output, cost],
    )?;
    crate::exec(
        tx,
        "UPDATE job_steps SET input_tokens = input_tokens + ?2, output_tokens = output_tokens + ?3,
                           cost_nanos = cost_nanos + ?4 WHERE job = ?1 AND step = ?5",
        params![job, input, output, cost, e.step],
    )?;
    Ok(())
}

/// The jobs projection.
#[derive(Debug, Default)]
pub struct Jobs;

fn level(level: Level) -> &'static str {
    match level {
        Level::Debug => "debug",
        Level::Info => "info",
        Level::Warn => "warn",
        Level::Error => "error",
    }
}

impl Projection for Jobs {
    fn name(&self) -> &'static str {
        NAME
    }

    fn tables(&self) -> &'static [&'static str] {
        &["jobs", "job_steps", "job_logs"]
    }

    fn create(&self, db: &rusqlite::Connection) -> rusqlite::Result<()> {
        db.execute_batch(
            "CREATE TABLE IF NOT EXISTS jobs (
                 id TEXT PRIMARY KEY,
                 tenant TEXT NOT NULL,
                 workflow TEXT NOT NULL,
                 workflow_version INTEGER NOT NULL,
                 priority INTEGER NOT NULL,
                 status TEXT NOT NULL,
                 steps_total INTEGER NOT NULL,
                 steps_done INTEGER NOT NULL DEFAULT 0,
                 error TEXT,
                 submitted_at INTEGER NOT NULL,
                 finished_at INTEGER,
                 updated_at INTEGER NOT NULL,
                 version INTEGER NOT NULL
             );
             CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, id);
             CREATE INDEX IF NOT EXISTS jobs_by_workflow ON jobs (workflow, id);
             CREATE INDEX IF NOT EXISTS jobs_by_tenant ON jobs (tenant, id);
             CREATE TABLE IF NOT EXISTS job_steps (
                 job TEXT NOT NULL,
                 step TEXT NOT NULL,
                 ordinal INTEGER NOT NULL,
                 status TEXT NOT NULL,
                 attempts INTEGER NOT NULL DEFAULT 0,
                 output TEXT,
                 error TEXT,
                 retry_at INTEGER,
                 updated_at INTEGER NOT NULL,
                 PRIMARY KEY (job, step)
             );
             CREATE TABLE IF NOT EXISTS job_logs (
                 job TEXT NOT NULL,
                 seq INTEGER NOT NULL,
                 level TEXT NOT NULL,
                 message TEXT NOT NULL,
                 at INTEGER NOT NULL,
                 PRIMARY KEY (job, seq)
             );",
        )?;
        // The owner (the submitter: the actor of `job.submitted`) came after the table: a read model made
        // before it gains the column, empty for the jobs it already holds (a user sees none of those until the
        // projection is rebuilt).
        crate::add_column(db, "jobs", "owner TEXT")?;
        db.execute_batch("CREATE INDEX IF NOT EXISTS jobs_by_owner ON jobs (owner, id)")?;
        // Tokens and costs (from the agents' completed tasks) came after the tables: a read model made before
        // gains the columns, 0 for what it holds.
        for table in ["jobs", "job_steps"] {
            for column in ["input_tokens", "output_tokens", "cost_nanos"] {
                crate::add_column(db, table, &format!("{column} INTEGER NOT NULL DEFAULT 0"))?;
            }
        }
        Ok(())
    }

    fn wants(&self, event: &Envelope) -> bool {
        crate::of_kind(event, JobId::KIND) || &*event.event_type == "agent.task_completed"
    }

    fn apply(&mut self, tx: &Transaction<'_>, envelope: &Envelope) -> Result<(), ApplyError> {
        if &*envelope.event_type == "agent.task_completed" {
            return task_completed(tx, envelope);
        }
        let Some(id) = JobId::from_stream(&envelope.stream) else { return Ok(()) };
        let event = Event::from_envelope(envelope)
            .map_err(|source| ApplyError::Decode { position: envelope.position, source })?;
        let (id, version) = (id.to_string(), envelope.version as i64);
        let step = |tx: &Transaction<'_>, name: &str, status: &str, attempt: u32, at: i64| {
            crate::exec(
                tx,
                "UPDATE job_steps SET status = ?3, attempts = MAX(attempts, ?4), updated_at = ?5
                 WHERE job = ?1 AND step = ?2",
                params![id, name, status, attempt, at],
            )
        };
        let at = match event {
            Event::Submitted(e) => {
                crate::exec(
                    tx,
                    "INSERT INTO jobs (id, tenant, workflow, workflow_version, priority, status, steps_total,
                                       submitted_at, updated_at, version, owner)
                     VALUES (?1, ?8, ?2, ?3, ?4, 'running', ?5, ?6, ?6, ?7, ?9) ON CONFLICT (id) DO NOTHING",
                    params![
                        id,
                        e.workflow.to_string(),
                        e.workflow_version,
                        e.priority,
                        e.steps.len() as i64,
                        e.at.0,
                        version,
                        &*envelope.tenant,
                        &*envelope.actor
                    ],
                )?;
                for (ordinal, s) in e.steps.iter().enumerate() {
                    crate::exec(tx,
                        "INSERT INTO job_steps (job, step, ordinal, status, updated_at) VALUES (?1, ?2, ?3, 'pending', ?4)
                         ON CONFLICT DO NOTHING",
                        params![id, s.name, ordinal as i64, e.at.0],
                    )?;
                }
                e.at.0
            }
            Event::StepScheduled(e) => {
                step(tx, &e.step, "scheduled", e.attempt, e.at.0)?;
                e.at.0
            }
            Event::StepStarted(e) => {
                step(tx, &e.step, "running", e.attempt, e.at.0)?;
                e.at.0
            }
            Event::StepSucceeded(e) => {
                step(tx, &e.step, "succeeded", e.attempt, e.at.0)?;
                crate::exec(
                    tx,
                    "UPDATE job_steps SET output = ?3 WHERE job = ?1 AND step = ?2",
                    params![id, e.step, e.output.to_string()],
                )?;
                crate::exec(tx, "UPDATE jobs SET steps_done = steps_done + 1 WHERE id = ?1", params![id])?;
                e.at.0
            }
            Event::StepFailed(e) => {
                step(tx, &e.step, "failed", e.attempt, e.at.0)?;
                crate::exec(
                    tx,
                    "UPDATE job_steps SET error = ?3 WHERE job = ?1 AND step = ?2",
                    params![id, e.step, e.error],
                )?;
                e.at.0
            }
            Event::RetryScheduled(e) => {
                // The retry's attempt has not started: the step keeps its attempts so far, and its time.
                crate::exec(
                    tx,
                    "UPDATE job_steps SET status = 'retrying', retry_at = ?3 WHERE job = ?1 AND step = ?2",
                    params![id, e.step, e.due_at.0],
                )?;
                i64::MIN
            }
            Event::LogAppended(e) => {
                crate::exec(
                    tx,
                    "INSERT INTO job_logs (job, seq, level, message, at) VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT DO NOTHING",
                    params![id, version, level(e.level), e.message, e.at.0],
                )?;
                e.at.0
            }
            Event::Succeeded(e) => {
                crate::exec(
                    tx,
                    "UPDATE jobs SET status = 'succeeded', finished_at = ?2 WHERE id = ?1",
                    params![id, e.at.0],
                )?;
                e.at.0
            }
            Event::Failed(e) => {
                crate::exec(
                    tx,
                    "UPDATE jobs SET status = 'failed', finished_at = ?2, error = ?3 WHERE id = ?1",
                    params![id, e.at.0, format!("step {}: {}", e.step, e.reason)],
                )?;
                e.at.0
            }
            Event::DeadLettered(e) => {
                crate::exec(
                    tx,
                    "UPDATE jobs SET status = 'dead_lettered', finished_at = ?2, error = ?3 WHERE id = ?1",
                    params![
                        id,
                        e.at.0,
                        format!("step {}: failed {} attempts, the last with: {}", e.step, e.attempts, e.last_error)
                    ],
                )?;
                e.at.0
            }
            Event::Retried(e) => {
                crate::exec(
                    tx,
                    "UPDATE jobs SET status = 'running', finished_at = NULL, error = NULL WHERE id = ?1",
                    params![id],
                )?;
                e.at.0
            }
            Event::Cancelled(e) => {
                crate::exec(
                    tx,
                    "UPDATE jobs SET status = 'cancelled', finished_at = ?2, error = ?3 WHERE id = ?1",
                    params![id, e.at.0, e.reason],
                )?;
                e.at.0
            }
        };
        crate::exec(
            tx,
            "UPDATE jobs SET updated_at = MAX(updated_at, ?2), version = ?3 WHERE id = ?1",
            params![id, at, version],
        )?;
        Ok(())
    }
}
