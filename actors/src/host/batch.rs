//! Commands to one instance that arrive while its last append is being made wait together and then go to the
//! store as **one append**: one group commit for all of them, where one at a time each waited for the
//! previous one's fsync. An agent or a document that every job touches takes its commands this way at the
//! speed of the store's commits, not of one fsync per command.
//!
//! A store whose multi-event append costs more than a single event's says from how many events a combined
//! append pays ([`weft_events::EventWrite::combine_from`]; JetStream's single-server stream stages every
//! multi-message append as an atomic batch on disk): while fewer wait, they run one at a time, and the queue
//! that builds up meanwhile goes together.
//!
//! Each command is still decided on its own, in arrival order, against the state its predecessors leave
//! (their events folded in memory), and answered with its own version and positions. The append is atomic:
//! all of the batch's events are stored, or none. Whatever the combined path does not cover runs one command
//! at a time as before (`actor::run`): a command naming an expected version, one that changes nothing or is
//! refused (its answer must be checked against the store, as another node may have appended), a repeated
//! command id, a panic, the first events of an instance, and every command of a combined append the store
//! refused (a conflict with another writer, or any error): those are decided again one by one.

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use tokio::sync::oneshot;
use tracing::Instrument as _;
use weft_events::{DomainEvent, EventStore, ExpectedVersion, NewEvent, StreamName};

use super::actor::{Failure, Loaded, catch_up, remember, run};
use super::{Error, Execute, Options, Outcome};
use crate::aggregate::Aggregate;

/// The most commands one append takes.
pub const MAX_BATCH: usize = 256;

/// The answer to a command.
pub(super) type Reply<A> = oneshot::Sender<Result<Outcome, Error<<A as Aggregate>::Rejection>>>;

/// Work waiting for an instance, in arrival order.
pub(super) enum Queued<A: Aggregate> {
    /// A command, and the span it runs in.
    Execute(Execute<A>, Reply<A>, tracing::Span),
    /// A read of the state, after what other writers appended.
    Inspect(oneshot::Sender<Option<(u64, A)>>),
}

impl<A: Aggregate> Queued<A> {
    /// Answers without running: the instance stops.
    pub(super) fn refuse(self, why: &str) {
        match self {
            Self::Execute(_, reply, _) => {
                let _ = reply.send(Err(Error::Unavailable(why.to_owned())));
            }
            Self::Inspect(reply) => {
                let _ = reply.send(None);
            }
        }
    }
}

/// Why an instance stops after running its queue: its state in memory can no longer be trusted, so the next
/// command starts a fresh actor that rehydrates from the store.
#[derive(Debug)]
pub(super) enum Stop {
    /// `decide` or `evolve` panicked (counted towards the instance's restarts).
    Panicked(String),
    /// Reading the events of other writers failed, or folding them panicked.
    ReadFailed,
}

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Panicked(message) => write!(f, "the aggregate panicked: {message}"),
            Self::ReadFailed => f.write_str("reading its events failed"),
        }
    }
}

/// Runs the queued work in order against `loaded`. Returns the instance and, when it must stop, why and the
/// work not run.
pub(super) async fn run_queued<A: Aggregate>(
    store: Arc<dyn EventStore>,
    stream: StreamName,
    mut loaded: Loaded<A>,
    mut queue: VecDeque<Queued<A>>,
    options: Arc<Options>,
) -> (Loaded<A>, Option<(Stop, VecDeque<Queued<A>>)>) {
    while !queue.is_empty() {
        let stop = if let Some(Queued::Inspect(reply)) = take_inspect(&mut queue) {
            if catch_up(&*store, &stream, &mut loaded, options.remembered_commands).await.is_ok() {
                let _ = reply.send(Some((loaded.version, loaded.state.clone())));
                None
            } else {
                // A failed read or a panicking evolve may have left the state half folded: start afresh.
                let _ = reply.send(None);
                Some(Stop::ReadFailed)
            }
        } else {
            let stop;
            (loaded, stop) = run_commands(&store, &stream, loaded, &mut queue, &options).await;
            stop
        };
        if let Some(stop) = stop {
            return (loaded, Some((stop, queue)));
        }
    }
    (loaded, None)
}

/// The read at the front of `queue`, taken off it.
fn take_inspect<A: Aggregate>(queue: &mut VecDeque<Queued<A>>) -> Option<Queued<A>> {
    matches!(queue.front(), Some(Queued::Inspect(_))).then(|| queue.pop_front()).flatten()
}

/// The command at the front of `queue`, taken off it.
fn take_command<A: Aggregate>(queue: &mut VecDeque<Queued<A>>) -> Option<(Execute<A>, Reply<A>, tracing::Span)> {
    match queue.pop_front()? {
        Queued::Execute(message, reply, span) => Some((message, reply, span)),
        read => {
            queue.push_front(read);
            None
        }
    }
}

/// Runs the commands at the front of `queue`, up to the next read: as many at a time as decide to events in
/// one append, the others one by one.
async fn run_commands<A: Aggregate>(
    store: &Arc<dyn EventStore>,
    stream: &StreamName,
    mut loaded: Loaded<A>,
    queue: &mut VecDeque<Queued<A>>,
    options: &Arc<Options>,
) -> (Loaded<A>, Option<Stop>) {
    loop {
        let commands = queue.iter().take(MAX_BATCH).map_while(|q| match q {
            Queued::Execute(message, ..) => Some(message),
            Queued::Inspect(_) => None,
        });
        // How many commands from the front run one at a time: the next, or a combined append's after it failed.
        let mut alone = 1;
        // Fewer events than the store finds worth one append go one command at a time (see the module doc).
        let worth = |decided: &Vec<Vec<A::Event>>| decided.iter().map(Vec::len).sum::<usize>() >= store.combine_from();
        if let Some((working, decided)) = decide_together(&loaded, commands).filter(|(_, decided)| worth(decided)) {
            let taken: Vec<_> = (0..decided.len()).map_while(|_| take_command(queue)).collect();
            // The shared append runs in the first command's span.
            let span = taken.first().map_or_else(tracing::Span::none, |(.., span)| span.clone());
            let together = append_together(&**store, stream, &mut loaded, working, &taken, decided, options);
            match together.instrument(span).await {
                Ok(outcomes) => {
                    for ((_, reply, _), outcome) in taken.into_iter().zip(outcomes) {
                        let _ = reply.send(Ok(outcome));
                    }
                    continue;
                }
                Err(e) => {
                    tracing::debug!(%stream, error = %e, commands = taken.len(), "a combined append failed; one at a time");
                    alone = taken.len();
                    for (message, reply, span) in taken.into_iter().rev() {
                        queue.push_front(Queued::Execute(message, reply, span));
                    }
                }
            }
        }
        for _ in 0..alone {
            let Some((message, reply, span)) = take_command(queue) else { return (loaded, None) };
            if let Some((_, outcome)) = loaded.recent.iter().find(|(id, _)| *id == message.command_id) {
                let _ = reply.send(Ok(Outcome { repeated: true, ..*outcome }));
                continue;
            }
            let result;
            (loaded, result) =
                run(store.clone(), stream.clone(), loaded, message, options.clone()).instrument(span).await;
            match result {
                Ok(outcome) => {
                    let _ = reply.send(Ok(outcome));
                }
                Err(Failure::Error(error)) => {
                    let _ = reply.send(Err(error));
                }
                Err(Failure::Panicked(message)) => {
                    tracing::error!(%stream, %message, "the aggregate panicked; restarting it from the store");
                    let why = format!("the aggregate failed on this command ({message}) and restarts");
                    let _ = reply.send(Err(Error::Unavailable(why)));
                    return (loaded, Some(Stop::Panicked(message)));
                }
            }
        }
    }
}

/// The longest run of commands from the front that can share one append, when it is two or more: the state
/// after them and each one's events. See the module doc for what stops a run.
fn decide_together<'a, A: Aggregate + 'a>(
    loaded: &Loaded<A>,
    commands: impl Iterator<Item = &'a Execute<A>>,
) -> Option<(A, Vec<Vec<A::Event>>)> {
    let first = loaded.first.as_ref()?;
    let mut working: Option<A> = None;
    let mut decided: Vec<Vec<A::Event>> = Vec::new();
    let mut ids = std::collections::HashSet::new();
    for message in commands {
        if message.expected_version.is_some()
            || !ids.insert(message.command_id)
            || loaded.recent.iter().any(|(id, _)| *id == message.command_id)
            || message.metadata.tenant.as_ref().is_some_and(|asked| *asked != first.tenant)
        {
            break;
        }
        if let [events] = decided.as_slice()
            && working.is_none()
        {
            // A second command: from here the state after the first is needed (a lone command costs no copy).
            let mut next = loaded.state.clone();
            for event in events {
                next = catch_unwind(AssertUnwindSafe(|| next.evolve(event))).ok()?;
            }
            working = Some(next);
        }
        let state = working.as_ref().unwrap_or(&loaded.state);
        if let Some(asked) = &message.metadata.owner {
            let creator = Some(first.actor.as_str()).filter(|_| A::OWNED_BY_CREATOR);
            if state.owner().or(creator).is_some_and(|own| own != asked) {
                break;
            }
        }
        let events = match catch_unwind(AssertUnwindSafe(|| state.decide(&message.command))) {
            Ok(Ok(events)) if !events.is_empty() => events,
            _ => break,
        };
        if let Some(mut next) = working.take() {
            for event in &events {
                // A panic loses the state folded so far; the commands then run one at a time, where it is
                // reported.
                next = catch_unwind(AssertUnwindSafe(|| next.evolve(event))).ok()?;
            }
            working = Some(next);
        }
        decided.push(events);
    }
    (decided.len() >= 2).then_some(())?;
    Some((working?, decided))
}

/// Appends the events of `taken` (each command's `decided` events) at once and folds them into `loaded`;
/// returns each command's outcome. On an error `loaded` is unchanged.
async fn append_together<A: Aggregate>(
    store: &dyn EventStore,
    stream: &StreamName,
    loaded: &mut Loaded<A>,
    working: A,
    taken: &[(Execute<A>, Reply<A>, tracing::Span)],
    decided: Vec<Vec<A::Event>>,
    options: &Options,
) -> Result<Vec<Outcome>, String> {
    let mut new_events: Vec<NewEvent> = Vec::new();
    let instance = loaded.first.as_ref().map(|first| first.tenant.clone());
    for ((message, ..), events) in taken.iter().zip(&decided) {
        for event in events {
            let event = stamped(event, message, instance.as_deref());
            new_events.push(event.map_err(|e| format!("an event does not encode: {e}"))?);
        }
    }
    let total = new_events.len() as u64;
    let appended =
        store.append(stream, ExpectedVersion::Exact(loaded.version), new_events).await.map_err(|e| e.to_string())?;
    decided.iter().flatten().for_each(counted::<A>);
    if appended.version != loaded.version + total || appended.last_position + 1 - appended.first_position != total {
        // The store broke its contract: the events are stored, but the outcomes cannot be told apart.
        return Err(format!("the store answered {appended:?} to an append of {total} events"));
    }
    let (mut version, mut position) = (loaded.version, appended.first_position);
    let mut outcomes = Vec::with_capacity(taken.len());
    for ((message, ..), events) in taken.iter().zip(&decided) {
        let count = events.len() as u64;
        let outcome =
            Outcome { version: version + count, positions: Some((position, position + count - 1)), repeated: false };
        (version, position) = (version + count, position + count);
        remember(&mut loaded.recent, options.remembered_commands, message.command_id, outcome);
        outcomes.push(outcome);
    }
    loaded.state = working;
    loaded.version = appended.version;
    Ok(outcomes)
}

/// An event as a command stores it: caused by the command, in its correlation (or the command's id), and with its tenant and
/// actor when it names them. A command that names no tenant (the node's own, or one of an identity reaching
/// every tenant) records the tenant of the instance (`instance`, its first event's) when it has one: the
/// instance's events are its tenant's, whoever sent the command, so that they are sealed with its key.
pub(super) fn stamped<A: Aggregate>(
    event: &A::Event,
    message: &Execute<A>,
    instance: Option<&str>,
) -> Result<NewEvent, weft_events::codec::Error> {
    event.to_new_event().map(|mut e| {
        e.causation_id = Some(message.command_id);
        // A command outside any flow starts one: its own id is the flow's (and its trace's, see `crate::trace`).
        e.correlation_id = Some(crate::trace::flow_of(message.metadata.correlation_id, message.command_id));
        if let Some(tenant) = message.metadata.tenant.as_deref().or(instance) {
            e.tenant = tenant.to_owned();
        }
        if let Some(actor) = &message.metadata.actor {
            e.actor.clone_from(actor);
        }
        e
    })
}

/// Counts an event appended, by type (`weft_events_appended_total`), and the job events operators watch most
/// (`weft_job_retries_total`, `weft_job_dead_letters_total`).
pub(super) fn counted<A: Aggregate>(event: &A::Event) {
    let kind = event.event_type();
    metrics::counter!("weft_events_appended_total", "type" => kind).increment(1);
    match kind {
        "job.retry_scheduled" => metrics::counter!("weft_job_retries_total").increment(1),
        "job.dead_lettered" => metrics::counter!("weft_job_dead_letters_total").increment(1),
        _ => {}
    }
}
