//! Weft's read side: projections fold the event log into read models in SQLite, for status reads.
//!
//! A [`Projection`] creates its tables and applies one event at a time inside a transaction it is handed. The
//! [`runner`] feeds it from the store's subscribe-all, a batch at a time, and writes the batch's effects and
//! the projection's position in **one** SQLite transaction: after a crash the projection resumes exactly after
//! the last batch that committed, so no event is applied twice or skipped. Projections depend on the `events`
//! crate only.
//!
//! - [`documents`]: every document's status, size, versions and lineage.
//! - [`jobs`]: every job's status and progress, its steps, and its log.
//! - [`agents`]: every agent's set-up, state, tasks, tokens and latency.
//! - [`workflows`]: every workflow's latest definition and its versions.
//! - [`schedules`]: every schedule's rule, state and firings, and every trigger's ([`triggers`]).
//! - [`history`]: every stream's events with their metadata and payloads as JSON, for operators.
//! - [`identities`]: the users and API keys (without their hashes), for admins.
//!
//! Each projection owns its read model: its tables, and the [`model::Model`] its readers go by (columns,
//! filters, time column, how an item is completed). [`Name`] names them all; an unknown name is an error.

use rusqlite::Transaction;
use weft_events::Envelope;
use weft_events::domain::DecodeError;

pub mod agents;
pub mod documents;
pub mod history;
pub mod identities;
pub mod jobs;
pub mod model;
pub mod runner;
pub mod schedules;
pub mod triggers;
pub mod workflows;

pub use runner::{Running, rebuild, start, start_group};

/// Every projection of this crate, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Name {
    /// [`documents`].
    Documents,
    /// [`jobs`].
    Jobs,
    /// [`agents`].
    Agents,
    /// [`workflows`].
    Workflows,
    /// [`schedules`].
    Schedules,
    /// [`history`].
    History,
    /// [`identities`].
    Identities,
}

impl Name {
    /// Every one, in the order a node starts them.
    pub const ALL: [Name; 7] =
        [Name::Documents, Name::Jobs, Name::Agents, Name::Workflows, Name::Schedules, Name::History, Name::Identities];

    /// Its name, as the projection's own `NAME`.
    pub fn as_str(self) -> &'static str {
        match self {
            Name::Documents => documents::NAME,
            Name::Jobs => jobs::NAME,
            Name::Agents => agents::NAME,
            Name::Workflows => workflows::NAME,
            Name::Schedules => schedules::NAME,
            Name::History => history::NAME,
            Name::Identities => identities::NAME,
        }
    }

    /// The projection named `name`, if this crate has one.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|n| n.as_str() == name)
    }
}

/// Starts every projection of this crate on the read models at `path` (what a node runs), as one group: one
/// thread, one subscription and one transaction a batch for all of them (see [`runner`]).
pub fn start_all(
    path: &std::path::Path,
    store: std::sync::Arc<dyn weft_events::EventRead>,
) -> Result<Vec<Running>, runner::Error> {
    start_group(
        vec![
            Box::new(documents::Documents),
            Box::new(jobs::Jobs),
            Box::new(agents::Agents),
            Box::new(workflows::Workflows),
            Box::new(schedules::Schedules),
            Box::new(history::History),
            Box::new(identities::Identities),
        ],
        path,
        store,
    )
}

/// [`rebuild`]s `live`, whichever of this crate's projections it runs, telling `on_start` where to watch the
/// fresh projection's progress (see [`runner::rebuild_watched`]).
pub async fn rebuild_running(
    live: &mut Running,
    on_start: impl FnOnce(tokio::sync::watch::Receiver<u64>, u64) + Send,
) -> Result<u64, runner::Error> {
    match Name::parse(live.name()) {
        Some(Name::Documents) => runner::rebuild_watched::<documents::Documents>(live, on_start).await,
        Some(Name::Jobs) => runner::rebuild_watched::<jobs::Jobs>(live, on_start).await,
        Some(Name::Agents) => runner::rebuild_watched::<agents::Agents>(live, on_start).await,
        Some(Name::Workflows) => runner::rebuild_watched::<workflows::Workflows>(live, on_start).await,
        Some(Name::Schedules) => runner::rebuild_watched::<schedules::Schedules>(live, on_start).await,
        Some(Name::History) => runner::rebuild_watched::<history::History>(live, on_start).await,
        Some(Name::Identities) => runner::rebuild_watched::<identities::Identities>(live, on_start).await,
        None => Err(runner::Error::Unknown { name: live.name() }),
    }
}

/// [`runner::reset`]s `live`, whichever of this crate's projections it runs.
pub async fn reset_running(live: &mut Running) -> Result<(), runner::Error> {
    match Name::parse(live.name()) {
        Some(Name::Documents) => runner::reset::<documents::Documents>(live).await,
        Some(Name::Jobs) => runner::reset::<jobs::Jobs>(live).await,
        Some(Name::Agents) => runner::reset::<agents::Agents>(live).await,
        Some(Name::Workflows) => runner::reset::<workflows::Workflows>(live).await,
        Some(Name::Schedules) => runner::reset::<schedules::Schedules>(live).await,
        Some(Name::History) => runner::reset::<history::History>(live).await,
        Some(Name::Identities) => runner::reset::<identities::Identities>(live).await,
        None => Err(runner::Error::Unknown { name: live.name() }),
    }
}

/// Why a projection could not apply an event. The runner stops the projection on it rather than skip the
/// event: a read model that silently missed an event would be wrong from then on.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// An event of a type the projection handles does not decode.
    #[error("event at position {position}: {source}")]
    Decode {
        /// Its position.
        position: u64,
        /// Why.
        source: DecodeError,
    },
    /// SQLite failed.
    #[error("read model: {0}")]
    Sql(#[from] rusqlite::Error),
}

/// The kind of a tenant's stream (`tenant-<name>`), whose `tenant.erased` the models with personal columns
/// apply.
const TENANT_KIND: &str = "tenant";

/// Whether `event` is in a stream of `kind` (`<kind>-<id>`).
fn of_kind(event: &Envelope, kind: &str) -> bool {
    event.stream.as_str().strip_prefix(kind).is_some_and(|rest| rest.starts_with('-'))
}

/// The tenant a `tenant.erased` event erases, for the projections that scrub its personal data; `None` for
/// every other event.
fn erased_tenant(envelope: &Envelope) -> Result<Option<String>, ApplyError> {
    use weft_events::domain::DomainEvent;
    use weft_events::domain::tenant;
    if &*envelope.event_type != "tenant.erased" || !of_kind(envelope, TENANT_KIND) {
        return Ok(None);
    }
    match tenant::Event::from_envelope(envelope) {
        Ok(tenant::Event::Erased(e)) => Ok(Some(e.tenant)),
        Err(source) => Err(ApplyError::Decode { position: envelope.position, source }),
    }
}

/// Runs one statement through the connection's statement cache: a projection runs the same few statements for
/// every event, and parsing each anew cost more than running it.
fn exec(tx: &Transaction<'_>, sql: &str, params: impl rusqlite::Params) -> rusqlite::Result<usize> {
    tx.prepare_cached(sql)?.execute(params)
}

/// One read model, built from the events.
pub trait Projection: Send + 'static {
    /// Its name: unique among the projections of one database, the key of its position.
    fn name(&self) -> &'static str;

    /// Creates its tables (and their indexes) if missing.
    fn create(&self, db: &rusqlite::Connection) -> rusqlite::Result<()>;

    /// The tables [`create`](Projection::create) makes: what a [`runner::rebuild`] swaps.
    fn tables(&self) -> &'static [&'static str];

    /// Applies one event (any event of the log: it skips those it does not read). A batch whose transaction
    /// rolled back (this model's failure, or another's of its group) is applied again: keep what it needs in
    /// the transaction's tables, never in `self`.
    fn apply(&mut self, tx: &Transaction<'_>, event: &Envelope) -> Result<(), ApplyError>;

    /// Whether [`apply`](Projection::apply) may change anything for `event`: a cheap look at its stream and
    /// type, never at its payload. A batch of which it wants nothing is passed over without a transaction
    /// (its position is saved with the next batch that is applied, when the projection is idle, or at the
    /// stop). Everything by default.
    fn wants(&self, _event: &Envelope) -> bool {
        true
    }
}

/// Nano-dollars as SQLite stores them (saturating: no sum of real costs comes near).
pub(crate) fn nanos(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Adds `cost_usd` (dollars, from the row's `cost_nanos`) to a row read as JSON.
pub fn with_cost_usd(row: &mut serde_json::Value) {
    if let Some(nanos) = row["cost_nanos"].as_u64() {
        row["cost_usd"] = serde_json::json!(nanos as f64 / 1e9);
    }
}

/// Adds the column `column` (`<name> <type>`) to `table` when a read model made before it lacks it.
pub(crate) fn add_column(db: &rusqlite::Connection, table: &str, column: &str) -> rusqlite::Result<()> {
    let name = column.split_whitespace().next().unwrap_or(column);
    let has = db.prepare(&format!("SELECT 1 FROM pragma_table_info('{table}') WHERE name = ?1"))?.exists([name])?;
    if !has {
        db.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column}"))?;
    }
    Ok(())
}
