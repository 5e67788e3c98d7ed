//! The actor host: one actix actor per live aggregate instance, found through a [`Host`] per aggregate type.
//!
//! # Lifecycle
//!
//! - **Activation.** On the first command for an instance the host starts its actor, which loads the latest
//!   snapshot and the events after it before it takes any command (`ctx.wait` in `started`).
//! - **One command at a time.** A command is decided, appended and folded in as one atomic step
//!   (`AtomicResponse`): the next command waits, the await on the store included. The caller is answered
//!   only after the store acknowledged.
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
//!   finishes the commands already in its mailbox and stops, so the actors running are bounded by the cap
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
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use serde::{Deserialize, Serialize};
use weft_events::domain::ids::Uuid;
use weft_events::{
    Direction, DomainEvent, Envelope, EventStore, ExpectedVersion, NewEvent, Snapshot, StreamName, codec,
};

use crate::aggregate::Aggregate;

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

impl<A: Aggregate> Message for Execute<A> {
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
}

/// The state a snapshot holds.
#[derive(Serialize, Deserialize)]
#[serde(bound = "A: Aggregate")]
struct Saved<A: Aggregate> {
    state: A,
    recent: Vec<(Uuid, Outcome)>,
}

/// An instance as loaded from the store.
struct Loaded<A> {
    state: A,
    version: u64,
    recent: VecDeque<(Uuid, Outcome)>,
}

/// Why running a command failed inside the actor.
enum Failure<R> {
    /// Reported to the caller.
    Error(Error<R>),
    /// `decide` or `evolve` panicked: reported as unavailable, and the actor stops.
    Panicked(String),
}

pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// Remembers a command's outcome, forgetting the oldest past the limit.
fn remember(recent: &mut VecDeque<(Uuid, Outcome)>, limit: usize, command_id: Uuid, outcome: Outcome) {
    if recent.iter().any(|(id, _)| *id == command_id) {
        return;
    }
    recent.push_back((command_id, outcome));
    while recent.len() > limit {
        recent.pop_front();
    }
}

/// Folds stored events into `loaded`, remembering the commands they came from.
fn fold<A: Aggregate>(
    loaded: &mut Loaded<A>,
    events: &[Envelope],
    remembered: usize,
) -> Result<(), Failure<A::Rejection>> {
    for envelope in events {
        let event = A::Event::from_envelope(envelope).map_err(|e| {
            Failure::Error(Error::Unavailable(format!("{} version {}: {e}", envelope.stream, envelope.version)))
        })?;
        let state = std::mem::take(&mut loaded.state);
        loaded.state = catch_unwind(AssertUnwindSafe(|| state.evolve(&event)))
            .map_err(|p| Failure::Panicked(panic_message(&*p)))?;
        loaded.version = envelope.version;
        if let Some(command_id) = envelope.causation_id {
            // The events of one command are one append: the last one's place is the command's outcome.
            let first = loaded
                .recent
                .iter()
                .find(|(id, _)| *id == command_id)
                .and_then(|(_, o)| o.positions.map(|p| p.0))
                .unwrap_or(envelope.position);
            loaded.recent.retain(|(id, _)| *id != command_id);
            let outcome =
                Outcome { version: envelope.version, positions: Some((first, envelope.position)), repeated: true };
            remember(&mut loaded.recent, remembered, command_id, outcome);
        }
    }
    Ok(())
}

/// Reads the events after `loaded.version` and folds them in.
async fn catch_up<A: Aggregate>(
    store: &dyn EventStore,
    stream: &StreamName,
    loaded: &mut Loaded<A>,
    remembered: usize,
) -> Result<(), Failure<A::Rejection>> {
    loop {
        let page = store
            .read_stream(stream, loaded.version + 1, Direction::Forwards, ACTIVATION_PAGE)
            .await
            .map_err(|e| Failure::Error(Error::Unavailable(e.to_string())))?;
        if page.is_empty() {
            return Ok(());
        }
        fold(loaded, &page, remembered)?;
    }
}

/// Loads an instance: the latest usable snapshot, then the events after it.
async fn activate<A: Aggregate>(
    store: &dyn EventStore,
    stream: &StreamName,
    remembered: usize,
) -> Result<Loaded<A>, Failure<A::Rejection>> {
    let mut loaded = Loaded { state: A::default(), version: 0, recent: VecDeque::new() };
    match store.load_snapshot(stream).await {
        Ok(Some(snapshot)) if snapshot.schema_version == A::SNAPSHOT_VERSION => {
            // A snapshot is at most as large as the store lets it be; the codec's default bound is for
            // messages from outside.
            let limits = codec::Limits { max_input_bytes: snapshot.payload.len(), ..codec::Limits::default() };
            match codec::decode_with::<Saved<A>>(&snapshot.payload, limits) {
                Ok(saved) => {
                    loaded = Loaded { state: saved.state, version: snapshot.version, recent: saved.recent.into() };
                }
                Err(e) => tracing::warn!(%stream, error = %e, "ignoring a snapshot that does not decode"),
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(%stream, error = %e, "ignoring a snapshot that cannot be read"),
    }
    catch_up(store, stream, &mut loaded, remembered).await?;
    Ok(loaded)
}

/// Decides, appends and folds one command, re-reading and retrying after conflicts.
async fn run<A: Aggregate>(
    store: Arc<dyn EventStore>,
    stream: StreamName,
    mut loaded: Loaded<A>,
    message: Execute<A>,
    options: Arc<Options>,
) -> (Loaded<A>, Result<Outcome, Failure<A::Rejection>>) {
    let mut attempts = 0;
    loop {
        if let Some(expected) = message.expected_version
            && expected != loaded.version
        {
            let actual = loaded.version;
            return (loaded, Err(Failure::Error(Error::Conflict { expected, actual })));
        }
        let decided = match catch_unwind(AssertUnwindSafe(|| loaded.state.decide(&message.command))) {
            Ok(decided) => decided,
            Err(panic) => return (loaded, Err(Failure::Panicked(panic_message(&*panic)))),
        };
        let events = match decided {
            Ok(events) if !events.is_empty() => events,
            unchanged => {
                // Nothing to append, so no conflict would reveal a stale state: check that the store has not
                // moved on (another node's actor may have appended) before answering from this state.
                match store.stream_version(&stream).await {
                    Ok(version) if version > loaded.version && attempts < options.max_conflict_retries => {
                        attempts += 1;
                        if let Err(failure) = catch_up(&*store, &stream, &mut loaded, options.remembered_commands).await
                        {
                            return (loaded, Err(failure));
                        }
                        if let Some((_, outcome)) = loaded.recent.iter().find(|(id, _)| *id == message.command_id) {
                            let outcome = *outcome;
                            return (loaded, Ok(outcome));
                        }
                        continue;
                    }
                    Ok(_) => {}
                    Err(e) => return (loaded, Err(Failure::Error(Error::Unavailable(e.to_string())))),
                }
                return match unchanged {
                    Err(rejection) => (loaded, Err(Failure::Error(Error::Rejected(rejection)))),
                    Ok(_) => {
                        let version = loaded.version;
                        (loaded, Ok(Outcome { version, positions: None, repeated: false }))
                    }
                };
            }
        };
        let new_events: Result<Vec<NewEvent>, _> = events
            .iter()
            .map(|event| {
                event.to_new_event().map(|mut e| {
                    e.causation_id = Some(message.command_id);
                    e.correlation_id = message.metadata.correlation_id;
                    if let Some(tenant) = &message.metadata.tenant {
                        e.tenant.clone_from(tenant);
                    }
                    if let Some(actor) = &message.metadata.actor {
                        e.actor.clone_from(actor);
                    }
                    e
                })
            })
            .collect();
        let new_events = match new_events {
            Ok(events) => events,
            Err(e) => {
                return (loaded, Err(Failure::Error(Error::Unavailable(format!("an event does not encode: {e}")))));
            }
        };
        match store.append(&stream, ExpectedVersion::Exact(loaded.version), new_events).await {
            Ok(appended) => {
                for event in &events {
                    let state = std::mem::take(&mut loaded.state);
                    match catch_unwind(AssertUnwindSafe(|| state.evolve(event))) {
                        Ok(state) => loaded.state = state,
                        Err(panic) => return (loaded, Err(Failure::Panicked(panic_message(&*panic)))),
                    }
                }
                loaded.version = appended.version;
                let outcome = Outcome {
                    version: appended.version,
                    positions: Some((appended.first_position, appended.last_position)),
                    repeated: false,
                };
                remember(&mut loaded.recent, options.remembered_commands, message.command_id, outcome);
                return (loaded, Ok(outcome));
            }
            Err(weft_events::Error::Conflict { actual, .. }) => {
                if message.expected_version.is_some() || attempts >= options.max_conflict_retries {
                    let expected = loaded.version;
                    return (loaded, Err(Failure::Error(Error::Conflict { expected, actual })));
                }
                attempts += 1;
                if let Err(failure) = catch_up(&*store, &stream, &mut loaded, options.remembered_commands).await {
                    return (loaded, Err(failure));
                }
                // Another writer may have run this very command (a retried send to another node).
                if let Some((_, outcome)) = loaded.recent.iter().find(|(id, _)| *id == message.command_id) {
                    let outcome = *outcome;
                    return (loaded, Ok(outcome));
                }
            }
            Err(e @ weft_events::Error::TenantErased { .. }) => {
                return (loaded, Err(Failure::Error(Error::Erased(e.to_string()))));
            }
            Err(e) => return (loaded, Err(Failure::Error(Error::Unavailable(e.to_string())))),
        }
    }
}

/// The actor of one live aggregate instance.
pub struct AggregateActor<A: Aggregate> {
    stream: StreamName,
    store: Arc<dyn EventStore>,
    options: Arc<Options>,
    /// `None` while activating, and while a command is being run.
    loaded: Option<Loaded<A>>,
    /// Why activation failed, for the commands that were waiting for it (shared with the host, which tells
    /// the senders whose commands the stopping actor dropped).
    activation_error: Arc<Mutex<Option<String>>>,
    /// Events appended since the last snapshot.
    since_snapshot: u64,
    last_used: Instant,
    restarts: Arc<Restarts>,
    /// Actors of this host running (started and not yet stopped), shared by all of them.
    running: Arc<AtomicUsize>,
}

impl<A: Aggregate> Actor for AggregateActor<A> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.running.fetch_add(1, Ordering::Relaxed);
        ctx.set_mailbox_capacity(self.options.mailbox.max(1));
        let (store, stream, remembered) = (self.store.clone(), self.stream.clone(), self.options.remembered_commands);
        ctx.wait(async move { activate::<A>(&*store, &stream, remembered).await }.into_actor(self).map(
            |result, actor, ctx| match result {
                Ok(loaded) => actor.loaded = Some(loaded),
                Err(failure) => {
                    let reason = match &failure {
                        Failure::Panicked(message) => {
                            actor.restarts.record(&actor.stream);
                            tracing::error!(stream = %actor.stream, %message, "evolve panicked during activation");
                            format!("evolve panicked: {message}")
                        }
                        Failure::Error(error) => {
                            tracing::warn!(stream = %actor.stream, %error, "activation failed");
                            error.to_string()
                        }
                    };
                    *actor.activation_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason);
                    ctx.stop();
                }
            },
        ));
        let idle = Duration::from_millis(self.options.idle_timeout_ms.max(1));
        ctx.run_interval((idle / 4).max(Duration::from_millis(5)), move |actor, ctx| {
            if actor.last_used.elapsed() >= idle {
                ctx.stop();
            }
        });
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.running.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Tells an actor to stop once the commands already in its mailbox are done: what the host sends the least
/// recently used actor when [`Options::max_live`] is passed.
pub struct Passivate;

impl Message for Passivate {
    type Result = ();
}

impl<A: Aggregate> Handler<Passivate> for AggregateActor<A> {
    type Result = ();

    fn handle(&mut self, _: Passivate, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

impl<A: Aggregate> Handler<Execute<A>> for AggregateActor<A> {
    type Result = AtomicResponse<Self, Result<Outcome, Error<A::Rejection>>>;

    fn handle(&mut self, message: Execute<A>, _ctx: &mut Context<Self>) -> Self::Result {
        self.last_used = Instant::now();
        let Some(loaded) = self.loaded.take() else {
            // Activation failed and the actor is stopping.
            let reason = self.activation_error.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let reason = reason.unwrap_or_else(|| "the actor is stopping".into());
            let error = Error::Unavailable(format!("{} could not be activated: {reason}", self.stream));
            return AtomicResponse::new(Box::pin(fut::ready(Err(error)).into_actor(self)));
        };
        if let Some((_, outcome)) = loaded.recent.iter().find(|(id, _)| *id == message.command_id) {
            let outcome = Outcome { repeated: true, ..*outcome };
            self.loaded = Some(loaded);
            return AtomicResponse::new(Box::pin(fut::ready(Ok(outcome)).into_actor(self)));
        }
        let before = loaded.version;
        let work = run::<A>(self.store.clone(), self.stream.clone(), loaded, message, self.options.clone());
        AtomicResponse::new(Box::pin(work.into_actor(self).map(move |(loaded, result), actor, ctx| {
            actor.last_used = Instant::now();
            actor.since_snapshot += loaded.version.saturating_sub(before);
            let snapshot = actor.options.snapshot_every > 0 && actor.since_snapshot >= actor.options.snapshot_every;
            if snapshot {
                actor.since_snapshot = 0;
                actor.save_snapshot(&loaded, ctx);
            }
            actor.loaded = Some(loaded);
            match result {
                Ok(outcome) => Ok(outcome),
                Err(Failure::Error(error)) => Err(error),
                Err(Failure::Panicked(message)) => {
                    tracing::error!(stream = %actor.stream, %message, "the aggregate panicked; restarting it from the store");
                    actor.restarts.record(&actor.stream);
                    ctx.stop();
                    Err(Error::Unavailable(format!("the aggregate failed on this command ({message}) and restarts")))
                }
            }
        })))
    }
}

impl<A: Aggregate> AggregateActor<A> {
    /// Saves a snapshot in the background; a failure only means the next activation replays more.
    fn save_snapshot(&self, loaded: &Loaded<A>, ctx: &mut Context<Self>) {
        let saved = Saved::<A> { state: loaded.state.clone(), recent: loaded.recent.iter().copied().collect() };
        let payload = match codec::encode(&saved) {
            Ok(payload) => payload,
            Err(e) => {
                return tracing::warn!(stream = %self.stream, error = %e, "the state does not encode; no snapshot");
            }
        };
        let snapshot = Snapshot {
            stream: self.stream.clone(),
            version: loaded.version,
            schema_version: A::SNAPSHOT_VERSION,
            payload: payload.into(),
        };
        let store = self.store.clone();
        ctx.spawn(
            async move {
                if let Err(e) = store.save_snapshot(snapshot).await {
                    tracing::warn!(error = %e, "a snapshot was not saved");
                }
            }
            .into_actor(self),
        );
    }
}

/// Asks an actor for its state and version, for tests, tools and read-your-writes queries.
pub struct Inspect<A>(std::marker::PhantomData<fn() -> A>);

impl<A: Aggregate> Message for Inspect<A> {
    type Result = Option<(u64, A)>;
}

impl<A: Aggregate> Handler<Inspect<A>> for AggregateActor<A> {
    type Result = AtomicResponse<Self, Option<(u64, A)>>;

    /// The version and a copy of the state, after reading what other writers appended since the actor's
    /// last command; `None` if activation or that read failed.
    fn handle(&mut self, _: Inspect<A>, _: &mut Context<Self>) -> Self::Result {
        self.last_used = Instant::now();
        let Some(mut loaded) = self.loaded.take() else {
            return AtomicResponse::new(Box::pin(fut::ready(None).into_actor(self)));
        };
        let (store, stream, remembered) = (self.store.clone(), self.stream.clone(), self.options.remembered_commands);
        let work = async move {
            let caught_up = catch_up(&*store, &stream, &mut loaded, remembered).await.is_ok();
            (loaded, caught_up)
        };
        AtomicResponse::new(Box::pin(work.into_actor(self).map(|(loaded, caught_up), actor, ctx| {
            if !caught_up {
                // A failed read or a panicking evolve may have left the state half folded: start afresh.
                ctx.stop();
                return None;
            }
            let answer = Some((loaded.version, loaded.state.clone()));
            actor.loaded = Some(loaded);
            answer
        })))
    }
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
