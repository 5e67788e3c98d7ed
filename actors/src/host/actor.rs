//! The actor of one aggregate instance: activation from the latest snapshot and the events after it, commands
//! decided one at a time and appended together when they wait together ([`super::batch`]), idempotency by command id, conflict retries, snapshots, panics
//! caught, and passivation.

use std::collections::VecDeque;
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

use super::batch::{Queued, Stop, run_queued, stamped};
use super::{ACTIVATION_PAGE, Error, Execute, Options, Outcome, Restarts, Traced};
use crate::aggregate::Aggregate;

/// The state a snapshot holds.
#[derive(Serialize, Deserialize)]
#[serde(bound = "A: Aggregate")]
pub(super) struct Saved<A: Aggregate> {
    state: A,
    recent: Vec<(Uuid, Outcome)>,
}

/// An instance as loaded from the store.
pub(super) struct Loaded<A> {
    pub(super) state: A,
    pub(super) version: u64,
    pub(super) recent: VecDeque<(Uuid, Outcome)>,
    /// The tenant and actor of the instance's first event: commands naming another tenant are refused, and
    /// for an aggregate [owned by its creator](crate::Aggregate::OWNED_BY_CREATOR) the actor is its owner.
    /// `None` until the instance has an event.
    pub(super) first: Option<First>,
}

/// The tenant and actor of an instance's first event.
#[derive(Debug, Clone)]
pub(super) struct First {
    pub(super) tenant: String,
    pub(super) actor: String,
}

impl First {
    fn of(envelope: &weft_events::Envelope) -> Self {
        Self { tenant: envelope.tenant.to_string(), actor: envelope.actor.to_string() }
    }
}

/// Why running a command failed inside the actor.
pub(super) enum Failure<R> {
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
pub(super) fn remember(recent: &mut VecDeque<(Uuid, Outcome)>, limit: usize, command_id: Uuid, outcome: Outcome) {
    if recent.iter().any(|(id, _)| *id == command_id) {
        return;
    }
    recent.push_back((command_id, outcome));
    while recent.len() > limit {
        recent.pop_front();
    }
}

/// Folds stored events into `loaded`, remembering the commands they came from.
pub(super) fn fold<A: Aggregate>(
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
        if envelope.version == 1 {
            loaded.first = Some(First::of(envelope));
        }
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
pub(super) async fn catch_up<A: Aggregate>(
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

/// Loads an instance: the latest usable snapshot, then the events after it (the first page of them read with
/// the snapshot, in one trip to the store).
pub(super) async fn activate<A: Aggregate>(
    store: &dyn EventStore,
    stream: &StreamName,
    remembered: usize,
) -> Result<Loaded<A>, Failure<A::Rejection>> {
    let mut loaded = Loaded { state: A::default(), version: 0, recent: VecDeque::new(), first: None };
    let (snapshot, page) = match store.read_latest(stream, ACTIVATION_PAGE).await {
        Ok(latest) => latest,
        Err(e) => {
            // Read again in turn below: an unreadable snapshot is passed over, an unreadable stream is the error.
            tracing::warn!(%stream, error = %e, "reading a snapshot with the events after it failed");
            (
                store.load_snapshot(stream).await.unwrap_or_else(|e| {
                    tracing::warn!(%stream, error = %e, "ignoring a snapshot that cannot be read");
                    None
                }),
                Vec::new(),
            )
        }
    };
    // The page read with it follows the snapshot: of use only with it, or without any snapshot.
    let mut page = Some(page);
    if let Some(snapshot) = snapshot {
        let usable = snapshot.schema_version == A::SNAPSHOT_VERSION && {
            // A snapshot is at most as large as the store lets it be; the codec's default bound is for
            // messages from outside.
            let limits = codec::Limits { max_input_bytes: snapshot.payload.len(), ..codec::Limits::default() };
            match codec::decode_with::<Saved<A>>(&snapshot.payload, limits) {
                Ok(saved) => {
                    loaded = Loaded {
                        state: saved.state,
                        version: snapshot.version,
                        recent: saved.recent.into(),
                        first: None,
                    };
                    true
                }
                Err(e) => {
                    tracing::warn!(%stream, error = %e, "ignoring a snapshot that does not decode");
                    false
                }
            }
        };
        if !usable {
            page = None;
        }
    }
    // An empty page is the stream's end, as it is to `catch_up` (a short one need not be, on every store).
    let ended = page.as_ref().is_some_and(Vec::is_empty);
    if let Some(page) = page.filter(|page| !page.is_empty()) {
        fold(&mut loaded, &page, remembered)?;
    }
    if !ended {
        catch_up(store, stream, &mut loaded, remembered).await?;
    }
    if loaded.first.is_none() && loaded.version > 0 {
        // Loaded from a snapshot: the tenant and creator are its first event's.
        let first = store
            .read_stream(stream, 1, Direction::Forwards, 1)
            .await
            .map_err(|e| Failure::Error(Error::Unavailable(e.to_string())))?;
        loaded.first = first.first().map(First::of);
    }
    Ok(loaded)
}

/// Decides, appends and folds one command, re-reading and retrying after conflicts.
pub(super) async fn run<A: Aggregate>(
    store: Arc<dyn EventStore>,
    stream: StreamName,
    mut loaded: Loaded<A>,
    message: Execute<A>,
    options: Arc<Options>,
) -> (Loaded<A>, Result<Outcome, Failure<A::Rejection>>) {
    let mut attempts = 0;
    loop {
        // A command that names a tenant reaches only that tenant's instances (one without a tenant, the
        // node's own, reaches any).
        if let (Some(asked), Some(own)) = (&message.metadata.tenant, &loaded.first)
            && *asked != own.tenant
        {
            return (loaded, Err(Failure::Error(Error::OtherTenant)));
        }
        if let Some(asked) = &message.metadata.owner {
            let creator = loaded.first.as_ref().filter(|_| A::OWNED_BY_CREATOR).map(|f| f.actor.as_str());
            if loaded.state.owner().or(creator).is_some_and(|own| own != asked) {
                return (loaded, Err(Failure::Error(Error::OtherTenant)));
            }
        }
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
        let instance = loaded.first.as_ref().map(|first| first.tenant.as_str());
        let new_events: Result<Vec<NewEvent>, _> =
            events.iter().map(|event| stamped(event, &message, instance)).collect();
        let new_events = match new_events {
            Ok(events) => events,
            Err(e) => {
                return (loaded, Err(Failure::Error(Error::Unavailable(format!("an event does not encode: {e}")))));
            }
        };
        let new_events_first =
            new_events.first().map(|e| First { tenant: e.tenant.to_string(), actor: e.actor.to_string() });
        match store.append(&stream, ExpectedVersion::Exact(loaded.version), new_events).await {
            Ok(appended) => {
                events.iter().for_each(super::batch::counted::<A>);
                for event in &events {
                    let state = std::mem::take(&mut loaded.state);
                    match catch_unwind(AssertUnwindSafe(|| state.evolve(event))) {
                        Ok(state) => loaded.state = state,
                        Err(panic) => return (loaded, Err(Failure::Panicked(panic_message(&*panic)))),
                    }
                }
                loaded.version = appended.version;
                if loaded.first.is_none() {
                    loaded.first = new_events_first.clone();
                }
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
    pub(super) stream: StreamName,
    pub(super) store: Arc<dyn EventStore>,
    pub(super) options: Arc<Options>,
    /// `None` while activating, and while commands are being run.
    pub(super) loaded: Option<Loaded<A>>,
    /// Commands and reads that came while others were being run: they go next, the commands in one append
    /// (see [`super::batch`]).
    /// (Boxed: an actor must be `Unpin`, and a `VecDeque` is only as `Unpin` as the commands it holds.)
    #[allow(clippy::box_collection)]
    pub(super) queue: Box<VecDeque<Queued<A>>>,
    /// Whether work is being run (`loaded` is taken).
    pub(super) busy: bool,
    /// Told to passivate while busy: it stops once its queue is done.
    pub(super) stop_when_idle: bool,
    /// Why activation failed, for the commands that were waiting for it (shared with the host, which tells
    /// the senders whose commands the stopping actor dropped).
    pub(super) activation_error: Arc<Mutex<Option<String>>>,
    /// Events appended since the last snapshot.
    pub(super) since_snapshot: u64,
    pub(super) last_used: Instant,
    pub(super) restarts: Arc<Restarts>,
    /// Actors of this host running (started and not yet stopped), shared by all of them.
    pub(super) running: Arc<AtomicUsize>,
}

impl<A: Aggregate> Actor for AggregateActor<A> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.running.fetch_add(1, Ordering::Relaxed);
        metrics::gauge!("weft_actors_live", "aggregate" => A::KIND).increment(1.0);
        ctx.set_mailbox_capacity(self.options.mailbox.max(1));
        let (store, stream, remembered) = (self.store.clone(), self.stream.clone(), self.options.remembered_commands);
        ctx.wait(async move { activate::<A>(&*store, &stream, remembered).await }.into_actor(self).map(
            |result, actor, ctx| match result {
                Ok(loaded) => {
                    metrics::counter!("weft_actor_activations_total", "aggregate" => A::KIND).increment(1);
                    actor.loaded = Some(loaded);
                }
                Err(failure) => {
                    let reason = match &failure {
                        Failure::Panicked(message) => {
                            actor.restarts.record(&actor.stream);
                            metrics::counter!("weft_actor_restarts_total", "aggregate" => A::KIND).increment(1);
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
            if actor.last_used.elapsed() >= idle && !actor.busy && actor.queue.is_empty() {
                metrics::counter!("weft_actor_passivations_total", "aggregate" => A::KIND).increment(1);
                ctx.stop();
            }
        });
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.running.fetch_sub(1, Ordering::Relaxed);
        metrics::gauge!("weft_actors_live", "aggregate" => A::KIND).decrement(1.0);
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
        metrics::counter!("weft_actor_passivations_total", "aggregate" => A::KIND).increment(1);
        if self.busy || !self.queue.is_empty() {
            self.stop_when_idle = true;
        } else {
            ctx.stop();
        }
    }
}

impl<A: Aggregate> Handler<Traced<A>> for AggregateActor<A> {
    type Result = ResponseFuture<Result<Outcome, Error<A::Rejection>>>;

    /// Runs the command after the work before it; commands that wait together share one append.
    fn handle(&mut self, Traced(message, span): Traced<A>, ctx: &mut Context<Self>) -> Self::Result {
        self.last_used = Instant::now();
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.queue.push_back(Queued::Execute(message, reply, span));
        self.drain(ctx);
        Box::pin(async move {
            answer
                .await
                .unwrap_or_else(|_| Err(Error::Unavailable("the instance stopped before it ran the command".into())))
        })
    }
}

impl<A: Aggregate> AggregateActor<A> {
    /// Runs what is queued, unless work is running already (it drains the queue again when done).
    fn drain(&mut self, ctx: &mut Context<Self>) {
        if self.busy || self.queue.is_empty() {
            return;
        }
        let Some(loaded) = self.loaded.take() else {
            // Activation failed and the actor is stopping (it takes no message while activating).
            let reason = self.activation_error.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let reason = reason.unwrap_or_else(|| "the actor is stopping".into());
            for item in self.queue.drain(..) {
                item.refuse(&format!("{} could not be activated: {reason}", self.stream));
            }
            return;
        };
        self.busy = true;
        let before = loaded.version;
        let queued = std::mem::take(&mut *self.queue);
        let work = run_queued(self.store.clone(), self.stream.clone(), loaded, queued, self.options.clone());
        ctx.spawn(work.into_actor(self).map(move |(loaded, stop), actor, ctx| {
            actor.busy = false;
            actor.last_used = Instant::now();
            if let Some((stop, not_run)) = stop {
                if matches!(stop, Stop::Panicked(_)) {
                    actor.restarts.record(&actor.stream);
                    metrics::counter!("weft_actor_restarts_total", "aggregate" => A::KIND).increment(1);
                }
                for item in not_run.into_iter().chain(actor.queue.drain(..)) {
                    item.refuse(&format!("{} restarts ({stop}); try again", actor.stream));
                }
                ctx.stop();
                return;
            }
            actor.since_snapshot += loaded.version.saturating_sub(before);
            if actor.options.snapshot_every > 0 && actor.since_snapshot >= actor.options.snapshot_every {
                actor.since_snapshot = 0;
                actor.save_snapshot(&loaded, ctx);
            }
            actor.loaded = Some(loaded);
            if actor.stop_when_idle && actor.queue.is_empty() {
                ctx.stop();
            } else {
                actor.drain(ctx);
            }
        }));
    }

    /// Saves a snapshot in the background; a failure only means the next activation replays more.
    pub(super) fn save_snapshot(&self, loaded: &Loaded<A>, ctx: &mut Context<Self>) {
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
pub struct Inspect<A>(pub(super) std::marker::PhantomData<fn() -> A>);

impl<A: Aggregate> Message for Inspect<A> {
    type Result = Option<(u64, A)>;
}

impl<A: Aggregate> Handler<Inspect<A>> for AggregateActor<A> {
    type Result = ResponseFuture<Option<(u64, A)>>;

    /// The version and a copy of the state, after reading what other writers appended since the actor's
    /// last command (and after the commands sent before); `None` if activation or that read failed.
    fn handle(&mut self, _: Inspect<A>, ctx: &mut Context<Self>) -> Self::Result {
        self.last_used = Instant::now();
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.queue.push_back(Queued::Inspect(reply));
        self.drain(ctx);
        Box::pin(async move { answer.await.ok().flatten() })
    }
}
