//! The reads, free of HTTP and NATS: what each read model is, and reading one item or a page of a list from
//! the read models' SQLite file. Both the HTTP routes ([`crate::http`]) and the NATS query service
//! ([`crate::bus::queries`]) call these.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{OpenFlags, OptionalExtension, ToSql};
use serde_json::{Value, json};
use tokio::sync::watch;
use weft_events::EventRead;
pub use weft_projections::documents::MODEL as DOCUMENTS;
pub use weft_projections::history::{NAME as HISTORY, rows as history_rows};

use super::Scope;
pub use super::params::{
    LabelFilters, MAX_LABEL_FILTERS, check_keys, label_conditions, label_filters, number, parse_id,
};
use super::params::{ListParams, limit};
pub use weft_projections::model::{MODELS, Model};
use weft_projections::model::{row_to_json, rows};

/// How long a read with `after` waits for the read model.
pub const MAX_WAIT: Duration = Duration::from_secs(5);
/// Items in a page of a list when `limit` is not given.
pub const DEFAULT_LIMIT: usize = 100;
/// Most items in a page of a list.
pub const MAX_LIMIT: usize = 1000;

thread_local! {
    /// Each blocking-pool thread's read-only connection to the read models, opened on its first read: opening
    /// one per read (and parsing the schema each time) cost more than the read itself.
    static CONNECTION: std::cell::RefCell<Option<(PathBuf, rusqlite::Connection)>> = const { std::cell::RefCell::new(None) };
}

/// What the reads share.
#[derive(Clone)]
pub struct Reads {
    /// The read models' file.
    pub read_models: PathBuf,
    /// Each projection's name and applied position.
    pub positions: Vec<(&'static str, watch::Receiver<u64>)>,
    /// The event store, for the head position (lag).
    pub store: Arc<dyn EventRead>,
    /// Each projection's latest rebuild or reset: under way (with its progress) or done.
    pub maintenance: Arc<Maintenance>,
    /// The node's tasks and how each is doing, for readiness.
    pub health: crate::health::Board,
}

/// What an operator may ask of a projection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// Rebuild into a shadow model, then swap it in; the old one serves meanwhile.
    Rebuild,
    /// Empty the model and apply the log again in place.
    Reset,
}

impl Work {
    fn name(self) -> &'static str {
        match self {
            Work::Rebuild => "rebuild",
            Work::Reset => "reset",
        }
    }
}

/// A projection to rebuild or reset, by name, and where to answer with the position the model took over at.
pub type RebuildRequest = (String, Work, tokio::sync::oneshot::Sender<Result<u64, Failure>>);

/// One projection's latest rebuild or reset.
#[derive(Debug, Clone)]
struct Record {
    work: Work,
    started_at: weft_events::Timestamp,
    started: std::time::Instant,
    /// The fresh model's position and the head it must reach (a rebuild, once started).
    progress: Option<(watch::Receiver<u64>, u64)>,
    /// When it ended, and with what: the position taken over at, or why it failed.
    ended: Option<(weft_events::Timestamp, Result<u64, String>)>,
}

impl Record {
    /// Whether the work is under way: not ended, or a reset whose model is still filling.
    fn busy(&self) -> bool {
        let filling = self.work == Work::Reset
            && self.progress.as_ref().is_some_and(|(position, target)| *position.borrow() < *target);
        self.ended.is_none() || filling
    }
}

/// The projections' latest rebuilds and resets, as the node runs them and `GET /projections/{name}` shows
/// them.
#[derive(Debug, Default)]
pub struct Maintenance(std::sync::Mutex<std::collections::HashMap<String, Record>>);

impl Maintenance {
    fn records(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Record>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `work` on `name` began.
    pub fn started(&self, name: &str, work: Work) {
        let record = Record {
            work,
            started_at: weft_events::Timestamp::now(),
            started: std::time::Instant::now(),
            progress: None,
            ended: None,
        };
        self.records().insert(name.to_owned(), record);
    }

    /// The rebuild of `name` applies the log into its shadow model: watch `position` up to `target`.
    pub fn progress(&self, name: &str, position: watch::Receiver<u64>, target: u64) {
        if let Some(record) = self.records().get_mut(name) {
            record.progress = Some((position, target));
        }
    }

    /// Takes `name` for `work`, unless a rebuild or reset of it is under way (or a reset's model is still
    /// filling): one at a time per model, a second is refused rather than queued behind a whole replay.
    pub fn claim(&self, name: &str, work: Work) -> bool {
        let busy = self.records().get(name).is_some_and(Record::busy);
        if !busy {
            self.started(name, work);
        }
        !busy
    }

    /// A reset `name` has emptied and is filling again: its position and the head it must reach.
    pub fn filling(&self, name: &str) -> Option<(u64, u64)> {
        let records = self.records();
        let record = records.get(name).filter(|r| r.work == Work::Reset)?;
        let (position, target) = record.progress.as_ref().map(|(p, t)| (*p.borrow(), *t))?;
        // Refused from before the model is emptied until it has applied the log again (a failed reset
        // serves the model it left).
        let failed = matches!(record.ended, Some((_, Err(_))));
        (!failed && (record.ended.is_none() || position < target)).then_some((position, target))
    }

    /// The work on `name` ended.
    pub fn ended(&self, name: &str, outcome: Result<u64, String>) {
        if let Some(record) = self.records().get_mut(name) {
            record.ended = Some((weft_events::Timestamp::now(), outcome));
        }
    }

    fn show(&self, name: &str) -> Value {
        let Some(record) = self.records().get(name).cloned() else { return Value::Null };
        let time = |t: weft_events::Timestamp| t.0;
        let (position, target) =
            record.progress.as_ref().map_or((0, 0), |(position, target)| (*position.borrow(), *target));
        let seconds = record.started.elapsed().as_secs_f64();
        let mut shown = json!({
            "work": record.work.name(),
            "started_at": time(record.started_at),
            "position": position,
            "target": target,
        });
        match record.ended {
            None => {
                shown["state"] = json!("running");
                shown["events_per_s"] = json!(if seconds > 0.0 { (position as f64 / seconds).round() } else { 0.0 });
            }
            Some((at, Ok(took_over))) => {
                shown["state"] = json!("done");
                shown["ended_at"] = json!(time(at));
                shown["took_over_at"] = json!(took_over);
            }
            Some((at, Err(error))) => {
                shown["state"] = json!("failed");
                shown["ended_at"] = json!(time(at));
                shown["error"] = json!(error);
            }
        }
        shown
    }
}

/// A read that failed, with what to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// `invalid`, `not_found`, `not_yet`, `unavailable`, `too_large`.
    pub kind: &'static str,
    /// For people.
    pub message: String,
}

impl Failure {
    /// Bad input.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self { kind: "invalid", message: message.into() }
    }

    /// No such thing.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self { kind: "not_found", message: message.into() }
    }

    /// The store or the read models failed.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self { kind: "unavailable", message: message.into() }
    }
}

impl Reads {
    /// Runs `read` on a read-only connection to the read models, on the blocking pool.
    pub async fn query<T: Send + 'static>(
        &self,
        read: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, Failure> {
        let path = self.read_models.clone();
        let result = tokio::task::spawn_blocking(move || {
            CONNECTION.with_borrow_mut(|cached| {
                if cached.as_ref().is_none_or(|(p, _)| *p != path) {
                    let db = rusqlite::Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
                    db.busy_timeout(Duration::from_secs(5))?;
                    crate::store::sqlite::stable_plans(&db)?;
                    *cached = Some((path, db));
                }
                let (_, db) = cached.as_ref().expect("just opened");
                let result = read(db);
                if result.is_err() {
                    // Whatever went wrong, the next read starts on a fresh connection.
                    *cached = None;
                }
                result
            })
        })
        .await;
        match result {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(Failure::unavailable(format!("read models: {e}"))),
            Err(e) => Err(Failure::unavailable(e.to_string())),
        }
    }

    /// The projection's applied position watch.
    pub fn position(&self, projection: &str) -> Option<watch::Receiver<u64>> {
        self.positions.iter().find(|(n, _)| *n == projection).map(|(_, p)| p.clone())
    }

    /// Waits until `projection` has applied `after` (up to [`MAX_WAIT`]).
    pub async fn caught_up(&self, projection: &str, after: Option<u64>) -> Result<(), Failure> {
        if let (Some(after), Some(mut position)) = (after, self.position(projection)) {
            let reached = tokio::time::timeout(MAX_WAIT, position.wait_for(|p| *p >= after)).await;
            if !matches!(reached, Ok(Ok(_))) {
                return Err(Failure {
                    kind: "not_yet",
                    message: format!("the {projection} read model has not reached position {after} yet"),
                });
            }
        }
        // A model being reset is empty, then filling: it would answer "no such item" and short lists.
        if let Some((position, target)) = self.maintenance.filling(projection) {
            return Err(Failure::unavailable(format!(
                "the {projection} read model is being reset: it has applied {position} of {target} events; try again"
            )));
        }
        Ok(())
    }

    /// One item with its details; `not_found` if there is none, or if `scope` does not see it.
    pub async fn show(
        &self,
        model: &'static Model,
        id: &str,
        after: Option<u64>,
        scope: &Scope,
    ) -> Result<Value, Failure> {
        let id = parse_id(id)?.to_string();
        let scope = scope.clone();
        self.caught_up(model.projection, after).await?;
        let found = self
            .query(move |db| {
                let sql = format!("SELECT {} FROM {} WHERE id = ?1", model.columns.join(", "), model.table);
                let item =
                    db.prepare_cached(&sql)?.query_row([&id], |row| row_to_json(row, model.columns)).optional()?;
                let Some(mut item) = item else { return Ok(None) };
                if !scope.admits_in(db, model, &item)? {
                    return Ok(None);
                }
                (model.shape)(&mut item);
                (model.details)(db, &id, &mut item)?;
                Ok(Some(item))
            })
            .await?;
        found.ok_or_else(|| Failure::not_found(format!("no such {}", model.kind)))
    }

    /// A page of a list: `{"items": [...], "next_cursor": "..." | null}`, ordered by id (`order=desc`: newest
    /// first). The cursor is the last
    /// id of the page, so paging is stable: an item present throughout is seen exactly once, whatever is added
    /// meanwhile.
    pub async fn list(
        &self,
        model: &'static Model,
        params: &BTreeMap<String, String>,
        scope: &Scope,
    ) -> Result<Value, Failure> {
        let page = ListParams::parse(model, params)?;
        let scope = scope.clone();
        self.caught_up(model.projection, page.after).await?;
        self.query(move |db| {
            let mut sql = format!("SELECT {} FROM {} WHERE 1 = 1", model.columns.join(", "), model.table);
            let mut args: Vec<Box<dyn ToSql + Send>> = Vec::new();
            for (column, value) in &page.filters {
                args.push(Box::new(value.clone()));
                sql.push_str(&format!(" AND {column} = ?{}", args.len()));
            }
            if let Some(column) = model.labels {
                label_conditions(column, &page.labels, &mut sql, &mut args);
            }
            scope.restrict(model, &mut sql, &mut args);
            for (op, bound) in [(">=", page.since), ("<", page.until)] {
                if let Some(bound) = bound {
                    args.push(Box::new(bound));
                    sql.push_str(&format!(" AND {} {op} ?{}", model.time, args.len()));
                }
            }
            if let Some(cursor) = &page.cursor {
                args.push(Box::new(cursor.clone()));
                let op = if page.descending { "<" } else { ">" };
                sql.push_str(&format!(" AND id {op} ?{}", args.len()));
            }
            args.push(Box::new(page.limit as i64 + 1));
            let order = if page.descending { "DESC" } else { "ASC" };
            sql.push_str(&format!(" ORDER BY id {order} LIMIT ?{}", args.len()));
            let params: Vec<&dyn ToSql> = args.iter().map(|a| a.as_ref() as &dyn ToSql).collect();
            let mut items = rows(db, &sql, &params, model.columns)?;
            items.iter_mut().for_each(model.shape);
            let more = items.len() > page.limit;
            items.truncate(page.limit);
            let next = if more { items.last().map(|item| item["id"].clone()) } else { None };
            Ok(json!({"items": items, "next_cursor": next}))
        })
        .await
    }

    /// A job's log from after `after_seq`, in order: `{"items": [...], "next_cursor": <seq> | null}`.
    pub async fn job_logs(&self, id: &str, params: &BTreeMap<String, String>, scope: &Scope) -> Result<Value, Failure> {
        let id = parse_id(id)?.to_string();
        let scope = scope.clone();
        check_keys(params, &["after", "cursor", "limit"])?;
        let after = number(params, "after")?;
        let cursor = number::<i64>(params, "cursor")?.unwrap_or(0);
        let limit = limit(params)?;
        self.caught_up(weft_projections::jobs::NAME, after).await?;
        let found = self
            .query(move |db| {
                let job: Option<(String, Option<String>)> = db
                    .prepare_cached("SELECT tenant, owner FROM jobs WHERE id = ?1")?
                    .query_row([&id], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()?;
                let owner_ok = |owner: &Option<String>| scope.owner.is_none() || *owner == scope.owner;
                if !job.is_some_and(|(tenant, owner)| scope.tenant_ok(&tenant) && owner_ok(&owner)) {
                    return Ok(None);
                }
                let mut items = rows(
                    db,
                    "SELECT seq, level, message, at FROM job_logs WHERE job = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
                    &[&id, &cursor, &(limit as i64 + 1)],
                    &["seq", "level", "message", "at"],
                )?;
                let more = items.len() > limit;
                items.truncate(limit);
                let next = if more { items.last().map(|item| item["seq"].clone()) } else { None };
                Ok(Some(json!({"items": items, "next_cursor": next})))
            })
            .await?;
        found.ok_or_else(|| Failure::not_found("no such job"))
    }

    /// A document's lineage to any depth: `{"ancestors": [...], "descendants": [...], "truncated"}` (see
    /// [`weft_projections::documents::lineage`]); `direction` (`ancestors`, `descendants`, `both`, the
    /// default) and `depth` (1 to 64, default 64).
    pub async fn lineage(&self, id: &str, params: &BTreeMap<String, String>, scope: &Scope) -> Result<Value, Failure> {
        let id = parse_id(id)?.to_string();
        check_keys(params, &["after", "depth", "direction"])?;
        let after = number(params, "after")?;
        let depth = number::<u32>(params, "depth")?.unwrap_or(64);
        if !(1..=64).contains(&depth) {
            return Err(Failure::invalid(format!("depth must be 1 to 64, not {depth}")));
        }
        let (up, down) = match params.get("direction").map(String::as_str) {
            None | Some("both") => (true, true),
            Some("ancestors") => (true, false),
            Some("descendants") => (false, true),
            Some(other) => {
                return Err(Failure::invalid(format!(
                    "direction must be ancestors, descendants or both, not {other:?}"
                )));
            }
        };
        // The document itself, as its item is read: one out of reach is not found.
        self.show(&DOCUMENTS, &id, after, scope).await?;
        self.query(move |db| {
            let (ancestors, more_up) =
                if up { weft_projections::documents::lineage(db, &id, depth, true)? } else { (vec![], false) };
            let (descendants, more_down) =
                if down { weft_projections::documents::lineage(db, &id, depth, false)? } else { (vec![], false) };
            Ok(json!({"id": id, "ancestors": ancestors, "descendants": descendants, "truncated": more_up || more_down}))
        })
        .await
    }

    /// A stream's events from the history read model, from version `cursor + 1`, oldest first.
    pub async fn history(
        &self,
        stream: &str,
        params: &BTreeMap<String, String>,
        scope: &Scope,
    ) -> Result<Value, Failure> {
        weft_events::StreamName::new(stream).map_err(|e| Failure::invalid(format!("stream: {e}")))?;
        check_keys(params, &["after", "cursor", "limit"])?;
        let after = number(params, "after")?;
        let cursor = number::<i64>(params, "cursor")?.unwrap_or(0);
        let limit = limit(params)?;
        self.caught_up(HISTORY, after).await?;
        let owned = stream.to_owned();
        let (items, more) = self
            .query(move |db| {
                let mut items = history_rows(db, &owned, cursor, limit + 1)?;
                let more = items.len() > limit;
                items.truncate(limit);
                Ok((items, more))
            })
            .await?;
        // A stream is its first event's tenant's: another tenant's answers as a missing one does.
        let seen = |item: &Value| scope.tenant_ok(item["tenant"].as_str().unwrap_or(""));
        if (items.is_empty() && cursor == 0) || !items.iter().all(seen) {
            return Err(Failure::not_found("no such stream"));
        }
        // A reader confined to what it owns reads only the histories of its own documents and jobs.
        let owned = MODELS
            .into_iter()
            .filter(|m| m.columns.contains(&"owner"))
            .find_map(|model| stream.strip_prefix(model.kind).and_then(|s| s.strip_prefix('-')).map(|id| (model, id)));
        if scope.owner.is_some()
            && let Some((model, id)) = owned
            && self.show(model, id, None, scope).await.is_err()
        {
            return Err(Failure::not_found("no such stream"));
        }
        let next = if more { items.last().map(|item| item["version"].clone()) } else { None };
        Ok(json!({"items": items, "next_cursor": next}))
    }

    /// One projection: its position, the store's head, its lag in events, and its latest rebuild or reset
    /// (`null` when it had none since the node started).
    pub async fn projection(&self, name: &str) -> Result<Value, Failure> {
        let Some((name, position)) = self.positions.iter().find(|(n, _)| *n == name) else {
            return Err(Failure::not_found(format!("no projection named {name:?}")));
        };
        let head = self.store.head().await.map_err(|e| Failure::unavailable(format!("event store: {e}")))?;
        let position = *position.borrow();
        Ok(json!({
            "name": name,
            "position": position,
            "head": head,
            "lag_events": head.saturating_sub(position),
            "rebuild": self.maintenance.show(name),
        }))
    }

    /// Whether the node is ready (see [`crate::health`]): every task on the board running, the store
    /// answering, no read model more than [`crate::health::MAX_READY_LAG_SECS`] behind. The answer is
    /// [`Self::lag`]'s with `status` (`ready` or `not_ready`), `tasks` (each task's report) and, when not
    /// ready, `not_ready` (what, and why); the flag says which.
    pub async fn readiness(&self) -> (bool, Value) {
        let mut not_ready = self.health.not_running();
        let mut answer = match self.lag().await {
            Ok(lag) => lag,
            Err(failure) => {
                not_ready.push(failure.message);
                json!({})
            }
        };
        if let Some(projections) = answer["projections"].as_object() {
            for (name, lag) in projections {
                let seconds = lag["lag_seconds"].as_f64().unwrap_or(0.0);
                if seconds > crate::health::MAX_READY_LAG_SECS {
                    let events = lag["lag_events"].as_u64().unwrap_or(0);
                    not_ready.push(format!("projection {name}: {events} events ({seconds:.0} s) behind the log"));
                }
            }
        }
        let tasks: serde_json::Map<String, Value> = self
            .health
            .reports()
            .into_iter()
            .map(|(name, report)| (name, serde_json::to_value(report).unwrap_or_default()))
            .collect();
        answer["tasks"] = Value::Object(tasks);
        let ready = not_ready.is_empty();
        answer["status"] = json!(if ready { "ready" } else { "not_ready" });
        if !ready {
            answer["not_ready"] = json!(not_ready);
        }
        (ready, answer)
    }

    /// Each projection's position, the store's head, and how far behind each is (events and seconds: the age
    /// of the oldest event it has not applied).
    pub async fn lag(&self) -> Result<Value, Failure> {
        let head = self.store.head().await.map_err(|e| Failure::unavailable(format!("event store: {e}")))?;
        let mut projections = serde_json::Map::new();
        for (name, position) in &self.positions {
            let position = *position.borrow();
            let behind = head.saturating_sub(position);
            let seconds = if behind == 0 {
                0.0
            } else {
                let next =
                    self.store.read_all(position + 1, 1).await.map_err(|e| Failure::unavailable(e.to_string()))?;
                next.first()
                    .map_or(0.0, |e| (weft_events::envelope::Timestamp::now().0 - e.recorded_at.0).max(0) as f64 / 1e6)
            };
            projections.insert(
                (*name).to_owned(),
                json!({"position": position, "lag_events": behind, "lag_seconds": seconds}),
            );
        }
        Ok(json!({"head": head, "projections": projections}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_rebuild_or_reset_at_a_time_per_model_and_a_filling_reset_counts() {
        let maintenance = Maintenance::default();
        assert!(maintenance.claim("jobs", Work::Rebuild));
        assert!(!maintenance.claim("jobs", Work::Reset), "a second while the first runs");
        assert!(maintenance.claim("documents", Work::Reset), "another model is free");
        maintenance.ended("jobs", Ok(7));
        assert!(maintenance.claim("jobs", Work::Reset));
        // The reset emptied the model, which fills up to 10: busy, and its reads refused, until then.
        let (position, watch) = watch::channel(12);
        maintenance.progress("jobs", watch, 10);
        assert_eq!(maintenance.filling("jobs"), Some((12, 10)), "refused from before the model is emptied");
        position.send_replace(3);
        maintenance.ended("jobs", Ok(0));
        assert_eq!(maintenance.filling("jobs"), Some((3, 10)));
        assert!(!maintenance.claim("jobs", Work::Rebuild));
        position.send_replace(10);
        assert_eq!(maintenance.filling("jobs"), None);
        assert!(maintenance.claim("jobs", Work::Rebuild));
    }
}
