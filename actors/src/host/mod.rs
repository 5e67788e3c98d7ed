//! The actor host: one actix actor per live aggregate instance, found through a [`Host`] per aggregate type.
//!
//! # Lifecycle
//!
//! - **Activation.** On the first command for an instance the host starts its actor, which loads the latest
//!   snapshot and the events after it before it takes any command (`ctx.wait` in `started`).
//! - **Decided one at a time, appended together.** Commands are decided in arrival order, each against the
//!   state its predecessors leave. Those that arrive while an append is being made wait, and then go to the
//!   store as one atomic append (one group commit), each answered with its own version and positions (see
//!   [`batch`]); what that path does not cover (an expected version, a refusal or no-op, a repeat, a new
//!   instance, a conflict) runs one command at a time. The caller is answered only after the store
//!   acknowledged. Reads of the state ([`Host::inspect`]) queue behind the commands sent before them.
//! - **Idempotency.** Every event carries its command's id as causation id. An actor remembers the outcome
//!   of its last [`Options::remembered_commands`] commands (rebuilt from the events, and kept in snapshots):
//!   the same `command_id` again returns the first outcome with `repeated: true` and appends nothing, after
//!   passivation and restarts too.
//! - **Conflicts.** If the append finds the stream moved (another node, a restarted actor), the actor reads
//!   the new events, decides again, and retries up to [`Options::max_conflict_retries`] times, then reports
//!   [`Error::Conflict`]. A command with an `expected_version` is not retried.
//! - **Snapshots** every [`Options::snapshot_every`] events, saved in the background.
//! - **Passivation** after [`Options::idle_timeout_ms`] without a command, and when more than
//!   [`Options::max_live`] actors are live: the least recently used is told to stop ([`Passivate`]); it
//!   finishes the commands already in its mailbox and queue and stops, so the actors running are bounded by the cap
//!   (a command sent to it after that goes to a fresh actor).
//! - **Supervision.** A panic in `decide` or `evolve` is caught: the caller gets [`Error::Unavailable`] and the
//!   actor stops; the next command starts a fresh actor that rehydrates from the store, never from memory.
//!   More than [`Options::max_restarts`] panics of one instance within [`Options::restart_window_ms`] and the
//!   host refuses it with a clear error until the window has passed (no restart storms).
//!
//! A command in flight when its actor stops (passivation racing a send, a crash) is either answered with an
//! error or, if it never reached the actor, delivered to its successor; because outcomes are remembered by
//! command id, a retried command never appends twice.

use std::collections::{HashMap, VecDeque};
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use serde::{Deserialize, Serialize};
use weft_events::domain::ids::Uuid;
use weft_events::{Direction, DomainEvent, EventStore, StreamName};

use crate::aggregate::Aggregate;

mod actor;
pub mod batch;

pub(crate) use actor::panic_message;
pub use actor::{AggregateActor, Inspect, Passivate};
use actor::{Failure, activate};

/// Events read per page while activating.
const ACTIVATION_PAGE: usize = 1000;

/// Options of a host. Defaults in [`Options::default`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", default)]
pub struct Options {
    /// Save a snapshot every this many events; 0 never. Default 100.
    pub snapshot_every: u64,
    /// Passivate an actor after this long without a command. Default 5 minutes.
    pub idle_timeout_ms: u64,
    /// Most live actors; past it the least recently used passivate. Default 100,000.
    pub max_live: usize,
    /// Times a command is decided again after a conflict before the conflict is reported. Default 5.
    pub max_conflict_retries: u32,
    /// Outcomes of recent commands each instance remembers, for idempotency. Default 1,000.
    pub remembered_commands: usize,
    /// Commands that may wait in one actor's mailbox before senders wait too. Default 64.
    pub mailbox: usize,
    /// Panics of one instance tolerated within the window before the host refuses it. Default 5.
    pub max_restarts: u32,
    /// The window for `max_restarts`. Default 10 s.
    pub restart_window_ms: u64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            snapshot_every: 100,
            idle_timeout_ms: 5 * 60 * 1000,
            max_live: 100_000,
            max_conflict_retries: 5,
            remembered_commands: 1000,
            mailbox: 64,
            max_restarts: 5,
            restart_window_ms: 10_000,
        }
    }
}

/// Who asked, stamped on the events a command produces.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    /// The tenant; the store's default when `None`.
    pub tenant: Option<String>,
    /// Who: `user:alice`, `system:orchestrator`; the system when `None`.
    pub actor: Option<String>,
    /// The request or flow the command belongs to.
    pub correlation_id: Option<Uuid>,
    /// When set, the command reaches only instances this owner owns ([`crate::Aggregate::owner`]), or that
    /// nobody owns yet; another's is answered as a missing one (a `user`'s commands).
    pub owner: Option<String>,
}

/// A command to one aggregate instance.
#[derive(Debug, Clone)]
pub struct Execute<A: Aggregate> {
    /// Unique per command; a repeat returns the first outcome.
    pub command_id: Uuid,
    /// The command.
    pub command: A::Command,
    /// If set, the command applies only at exactly this version, and a conflict is not retried.
    pub expected_version: Option<u64>,
    /// Who asked.
    pub metadata: Metadata,
}

/// A command with the span it runs in, as the host hands it to the instance's actor: the append it shares
/// runs in its first command's span.
pub(crate) struct Traced<A: Aggregate>(pub(crate) Execute<A>, pub(crate) tracing::Span);

impl<A: Aggregate> Clone for Traced<A> {
    fn clone(&self) -> Self {
        Self(self.0.clone(), self.1.clone())
    }
}

impl<A: Aggregate> Message for Traced<A> {
    type Result = Result<Outcome, Error<A::Rejection>>;
}

/// What a command did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// The instance's version after it.
    pub version: u64,
    /// The positions of the events it appended; `None` when it changed nothing.
    pub positions: Option<(u64, u64)>,
    /// Whether this is the remembered outcome of an earlier delivery of the same command.
    pub repeated: bool,
}

/// Why a command did not go through.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error<R> {
    /// The aggregate refused it; retrying the same command will not help.
    #[error("rejected: {0}")]
    Rejected(R),
    /// The instance is not at the expected version, or kept moving while the command was retried.
    #[error("conflict: expected version {expected}, the instance is at {actual}")]
    Conflict {
        /// The version the command was decided at.
        expected: u64,
        /// The version found.
        actual: u64,
    },
    /// The host or the store could not do it now; the same command may succeed later.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The command's tenant is erased: its events would carry personal data, which is accepted for it no more.
    /// Retrying will not help. The message names the tenant.
    #[error("{0}")]
    Erased(String),
    /// The instance is another tenant's than the command's, or another owner's for a command confined to its owner's: it
    /// is answered as a missing one (`not_found`).
    #[error("no such instance")]
    OtherTenant,
}

/// Recent panics per instance, for the restart limit.
struct Restarts {
    window: Duration,
    limit: u32,
    recent: Mutex<HashMap<StreamName, VecDeque<Instant>>>,
}

impl Restarts {
    fn record(&self, stream: &StreamName) {
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent.entry(stream.clone()).or_default().push_back(Instant::now());
    }

    /// Whether the instance has panicked more than the limit within the window.
    fn exhausted(&self, stream: &StreamName) -> bool {
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        let Some(times) = recent.get_mut(stream) else { return false };
        while times.front().is_some_and(|t| t.elapsed() > self.window) {
            times.pop_front();
        }
        if times.is_empty() {
            recent.remove(stream);
            return false;
        }
        times.len() as u32 > self.limit
    }
}

/// A live actor's address, and where it says why its activation failed.
struct Live<A: Aggregate> {
    address: Addr<AggregateActor<A>>,
    activation_error: Arc<Mutex<Option<String>>>,
}

impl<A: Aggregate> Clone for Live<A> {
    fn clone(&self) -> Self {
        Self { address: self.address.clone(), activation_error: self.activation_error.clone() }
    }
}

/// The host of one aggregate type: finds or starts the actor of an instance and sends it commands. Cheap to
/// clone. Actors run on the actix arbiter of the thread that starts them.
pub struct Host<A: Aggregate> {
    store: Arc<dyn EventStore>,
    options: Arc<Options>,
    live: Arc<Mutex<lru::LruCache<StreamName, Live<A>>>>,
    restarts: Arc<Restarts>,
    running: Arc<AtomicUsize>,
}

impl<A: Aggregate> Clone for Host<A> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            options: self.options.clone(),
            live: self.live.clone(),
            restarts: self.restarts.clone(),
            running: self.running.clone(),
        }
    }
}

impl<A: Aggregate> Host<A> {
    /// A host over `store`.
    pub fn new(store: Arc<dyn EventStore>, options: Options) -> Self {
        let capacity = NonZeroUsize::new(options.max_live.max(1)).expect("at least one");
        // The series exist from the start (at zero), so that rates over them are defined.
        for counter in ["weft_actor_activations_total", "weft_actor_passivations_total", "weft_actor_restarts_total"] {
            metrics::counter!(counter, "aggregate" => A::KIND).increment(0);
        }
        metrics::gauge!("weft_actors_live", "aggregate" => A::KIND).increment(0.0);
        let restarts = Restarts {
            window: Duration::from_millis(options.restart_window_ms),
            limit: options.max_restarts,
            recent: Mutex::new(HashMap::new()),
        };
        Self {
            store,
            options: Arc::new(options),
            live: Arc::new(Mutex::new(lru::LruCache::new(capacity))),
            restarts: Arc::new(restarts),
            running: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The store the host's actors read and append to.
    pub fn store(&self) -> &Arc<dyn EventStore> {
        &self.store
    }

    /// Runs a command on the instance whose events are in `stream`. Must be called on an actix system.
    pub async fn execute(&self, stream: &StreamName, message: Execute<A>) -> Result<Outcome, Error<A::Rejection>> {
        let (command, started) = (A::command_name(&message.command), Instant::now());
        let flow = crate::trace::flow_of(message.metadata.correlation_id, message.command_id);
        let span = crate::trace::command_span(A::KIND, command, stream.as_str(), flow, message.command_id);
        // The actor runs the command within the span (entered at each poll of its work, not of this wait).
        let result = self.send(stream, Traced(message, span.clone())).await;
        let outcome = match &result {
            Ok(outcome) if outcome.repeated => "repeated",
            Ok(_) => "ok",
            Err(Error::Rejected(_)) => "rejected",
            Err(Error::Conflict { .. }) => "conflict",
            Err(Error::Unavailable(_)) => "unavailable",
            Err(Error::Erased(_)) => "erased",
            Err(Error::OtherTenant) => "not_found",
        };
        // Within the span, so that a log line names its trace; entered only when the line is wanted.
        if tracing::enabled!(tracing::Level::DEBUG) {
            span.in_scope(|| tracing::debug!(outcome, "command run"));
        }
        metrics::counter!("weft_commands_total", "aggregate" => A::KIND, "command" => command, "outcome" => outcome)
            .increment(1);
        metrics::histogram!("weft_command_duration_seconds", "aggregate" => A::KIND, "command" => command)
            .record(started.elapsed());
        result
    }

    async fn send(&self, stream: &StreamName, message: Traced<A>) -> Result<Outcome, Error<A::Rejection>> {
        // A send can find the actor stopped (passivated or crashed) after the look-up: the command did not
        // reach it, so it goes to a fresh one. Twice is plenty; a third failure is a real problem.
        let mut why = None;
        for _ in 0..3 {
            let live = self.address(stream)?;
            match live.address.send(message.clone()).await {
                Ok(result) => return result,
                Err(MailboxError::Closed) => {
                    // Activation failed and the actor stopped before it took the command: say why.
                    why = live.activation_error.lock().unwrap_or_else(|p| p.into_inner()).take().or(why);
                    self.forget(stream, &live.address);
                }
                Err(MailboxError::Timeout) => {
                    return Err(Error::Unavailable(format!("{stream} did not answer in time")));
                }
            }
        }
        let why = why.unwrap_or_else(|| "its actor stopped each time".into());
        Err(Error::Unavailable(format!("{stream} could not be activated: {why}")))
    }

    /// The state and version of an instance: its actor's, brought up to date with the store (other nodes
    /// may have appended), activating it if need be.
    pub async fn inspect(&self, stream: &StreamName) -> Result<(A, u64), Error<A::Rejection>> {
        let unavailable = |what: String| Error::Unavailable(format!("{stream}: {what}"));
        let live = self.address(stream)?;
        let (version, state) = live
            .address
            .send(Inspect(std::marker::PhantomData))
            .await
            .map_err(|e| unavailable(e.to_string()))?
            .ok_or_else(|| unavailable("not activated".into()))?;
        Ok((state, version))
    }

    /// Actors of this host running: started and not yet stopped, whether the host still routes commands to
    /// them or has passivated them and they are finishing their mailbox.
    pub fn live(&self) -> usize {
        self.running.load(Ordering::Relaxed)
    }

    fn address(&self, stream: &StreamName) -> Result<Live<A>, Error<A::Rejection>> {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(found) = live.get(stream).filter(|l| l.address.connected()) {
            return Ok(found.clone());
        }
        if self.restarts.exhausted(stream) {
            return Err(Error::Unavailable(format!(
                "{stream} panicked more than {} times within {} ms; refusing it until that passes",
                self.options.max_restarts, self.options.restart_window_ms
            )));
        }
        let activation_error = Arc::new(Mutex::new(None));
        let actor = AggregateActor::<A> {
            stream: stream.clone(),
            store: self.store.clone(),
            options: self.options.clone(),
            loaded: None,
            activation_error: activation_error.clone(),
            since_snapshot: 0,
            last_used: Instant::now(),
            restarts: self.restarts.clone(),
            running: self.running.clone(),
            queue: Default::default(),
            busy: false,
            stop_when_idle: false,
        };
        let started = Live { address: actor.start(), activation_error };
        // Pushing past the capacity drops the least recently used address: that actor is told to stop
        // after its mailbox (its idle timer would otherwise keep it running beside a successor).
        if let Some((evicted, old)) = live.push(stream.clone(), started.clone())
            && evicted != *stream
        {
            old.address.do_send(Passivate);
        }
        Ok(started)
    }

    fn forget(&self, stream: &StreamName, address: &Addr<AggregateActor<A>>) {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        if live.peek(stream).is_some_and(|l| l.address == *address) {
            live.pop(stream);
        }
    }
}

/// The current state and version of an instance, read from the store (snapshot, then events) without an
/// actor: what a node that does not host the instance reads.
pub async fn load_state<A: Aggregate>(
    store: &dyn EventStore,
    stream: &StreamName,
) -> Result<(A, u64), Error<A::Rejection>> {
    match activate::<A>(store, stream, 0).await {
        Ok(loaded) => Ok((loaded.state, loaded.version)),
        Err(Failure::Error(e)) => Err(e),
        Err(Failure::Panicked(why)) => Err(Error::Unavailable(format!("{stream}: {why}"))),
    }
}

/// Every event of a stream as the aggregate's events, page by page, for tests and tools.
pub async fn load_events<A: Aggregate>(store: &dyn EventStore, stream: &StreamName) -> Result<Vec<A::Event>, String> {
    let mut events = Vec::new();
    loop {
        let page = store
            .read_stream(stream, events.len() as u64 + 1, Direction::Forwards, ACTIVATION_PAGE)
            .await
            .map_err(|e| e.to_string())?;
        if page.is_empty() {
            return Ok(events);
        }
        for envelope in &page {
            events.push(A::Event::from_envelope(envelope).map_err(|e| e.to_string())?);
        }
    }
}
