//! Process managers: readers of the whole log that turn events into commands, each resuming from a
//! checkpoint after a restart.
//!
//! - [`orchestrator`] moves jobs along: a scheduled step becomes a task of its agent, and a task's completion
//!   or failure becomes the step's.
//! - [`worker`] does the tasks assigned to agents by handing them to an [`worker::Executor`].
//! - [`timers`] fires what is due later: retries, step time-outs, schedule occurrences.
//! - [`triggers`] submits a job for each upload that an active trigger matches.
//!
//! Each runs as one task on the actix system ([`start`]). It handles events in log order and saves its position
//! and state as a store [`Checkpoint`](weft_events::Checkpoint) every so many events or milliseconds, and when it stops. A process
//! without state may overlap ([`Process::OVERLAP`]): it handles the events of different instances at once
//! (at most [`OVERLAP_WINDOW`] in hand), each instance's one after another in log order, and its checkpoint is
//! the watermark below which every event is handled; a retry then holds back only its instance.
//! After a crash it handles again the events since its last checkpoint, so handling must be idempotent:
//! every command a process sends has an id derived from the event (or timer) that caused it
//! ([`derived_id`]), so the host answers a repeat with the first outcome and appends nothing; a repeat the
//! host has forgotten meets a rejection that the process recognises as "done already".
//!
//! A command that cannot be done now (the store is unavailable, a conflict outlasted the host's retries) is
//! retried with back-off, holding the process (an overlapping one: the instance) at that event: nothing after
//! it is handled out of order.
//!
//! **Supervision.** A process never ends on a failure it can outlast: a log it cannot read now (the store or
//! NATS unavailable, a read timed out) is read again with bounded back-off from the same position, for as long
//! as it takes. One that ends anyway (a corrupt checkpoint, a panic in a handler) is logged and started again
//! from its checkpoint, with back-off. Its [`Health`] says which it is doing, for the node's `/readyz`.

mod checkpoints;
mod line;
pub mod orchestrator;
mod overlap;
mod positions;
mod running;
pub mod timers;
pub mod triggers;
pub mod worker;

use std::fmt::Display;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::Instrument as _;
use weft_events::domain::ids::Uuid;
use weft_events::{Envelope, Error as StoreError, EventStore, Health, Partition, StreamName, Timestamp, codec};

use crate::Aggregate;
use crate::agent::Agent;
use crate::document::Document;
use crate::host::{self, Execute, Host, Metadata, Outcome};
use crate::job::Job;
use crate::schedule::Schedule;
use crate::trigger::Trigger;
use crate::workflow::Workflow;

use self::checkpoints::{Progress, load};
pub use self::checkpoints::{checkpoint_name, checkpoint_name_in};
pub use self::line::Lines;
pub use self::overlap::OVERLAP_WINDOW;
use self::overlap::Overlap;
pub use self::positions::positions;
use self::positions::{forget, moved};
pub use self::running::{Processes, Scope};

/// The hosts of every aggregate type over one store: what process managers send commands to.
#[derive(Clone)]
pub struct Hosts {
    /// Documents.
    pub document: Host<Document>,
    /// Workflows.
    pub workflow: Host<Workflow>,
    /// Jobs.
    pub job: Host<Job>,
    /// Agents.
    pub agent: Host<Agent>,
    /// Schedules.
    pub schedule: Host<Schedule>,
    /// Triggers.
    pub trigger: Host<Trigger>,
}

impl Hosts {
    /// One host per aggregate type, all with `options`.
    pub fn new(store: Arc<dyn EventStore>, options: host::Options) -> Self {
        Self {
            document: Host::new(store.clone(), options.clone()),
            workflow: Host::new(store.clone(), options.clone()),
            job: Host::new(store.clone(), options.clone()),
            agent: Host::new(store.clone(), options.clone()),
            schedule: Host::new(store.clone(), options.clone()),
            trigger: Host::new(store, options),
        }
    }
}

impl Hosts {
    /// The host of aggregate type `A`.
    pub fn host<A: Aggregate>(&self) -> &Host<A> {
        let hosts: [&dyn std::any::Any; 6] =
            [&self.document, &self.workflow, &self.job, &self.agent, &self.schedule, &self.trigger];
        hosts
            .into_iter()
            .find_map(|h| h.downcast_ref::<Host<A>>())
            .unwrap_or_else(|| panic!("no host for aggregate {}", A::KIND))
    }
}

/// Where process managers send commands and read state: the [`Hosts`] of this node, or the bus (in the
/// `weft` crate), so that nothing in a process knows which node holds which actor.
#[async_trait::async_trait(?Send)]
pub trait Gateway: Clone + 'static {
    /// Runs a command on the instance whose events are in `stream`.
    async fn execute<A: Aggregate>(
        &self,
        stream: &StreamName,
        execute: Execute<A>,
    ) -> Result<Outcome, host::Error<A::Rejection>>;

    /// The current state of an instance.
    async fn state<A: Aggregate>(&self, stream: &StreamName) -> Result<A, host::Error<A::Rejection>>;
}

#[async_trait::async_trait(?Send)]
impl Gateway for Hosts {
    async fn execute<A: Aggregate>(
        &self,
        stream: &StreamName,
        execute: Execute<A>,
    ) -> Result<Outcome, host::Error<A::Rejection>> {
        self.host::<A>().execute(stream, execute).await
    }

    async fn state<A: Aggregate>(&self, stream: &StreamName) -> Result<A, host::Error<A::Rejection>> {
        self.host::<A>().inspect(stream).await.map(|(state, _)| state)
    }
}

/// The id of the command that `what` (a short name such as `"assign"`) sends because of `cause` (an event id,
/// or the id of the instance a timer belongs to): the same cause and name always give the same id.
pub fn derived_id(cause: Uuid, what: &str) -> Uuid {
    Uuid::new_v5(&cause, what.as_bytes())
}

/// A number in `[0, 1]` taken from an id, for the jitter of a retry: random enough to spread retries, and the
/// same each time the same event is handled.
pub fn jitter_of(id: Uuid) -> f64 {
    let bytes = id.as_bytes();
    f64::from(u16::from_le_bytes([bytes[14], bytes[15]])) / f64::from(u16::MAX)
}

/// Handling must be tried again later; the reason is logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retry(pub String);

/// Sends a command on behalf of process `by`, caused by `cause`. A rejection is an answer (`Ok(Err(..))`);
/// a conflict or an unavailable host is a [`Retry`].
pub(crate) async fn send<A: Aggregate, G: Gateway>(
    gateway: &G,
    stream: &StreamName,
    command_id: Uuid,
    command: A::Command,
    by: &str,
    correlation_id: Option<Uuid>,
) -> Result<Result<Outcome, A::Rejection>, Retry>
where
    A::Rejection: Display,
{
    let metadata = Metadata { tenant: None, actor: Some(format!("system:{by}")), correlation_id, owner: None };
    match gateway.execute(stream, Execute::<A> { command_id, command, expected_version: None, metadata }).await {
        Ok(outcome) => Ok(Ok(outcome)),
        Err(host::Error::Rejected(rejection)) => Ok(Err(rejection)),
        Err(e) => Err(Retry(format!("{stream}: {e}"))),
    }
}

/// The state of an instance, for a process deciding what to send.
pub(crate) async fn inspect<A: Aggregate, G: Gateway>(gateway: &G, stream: &StreamName) -> Result<A, Retry>
where
    A::Rejection: Display,
{
    gateway.state::<A>(stream).await.map_err(|e| Retry(format!("{stream}: {e}")))
}

/// A process manager. See the module doc.
#[async_trait::async_trait(?Send)]
pub trait Process: 'static {
    /// Its name: its checkpoint is saved as `process-<name>`.
    const NAME: &'static str;
    /// What it remembers between events, saved with its checkpoint.
    type State: Default + Serialize + DeserializeOwned;

    /// Called once on start with the state of the last checkpoint, before any event.
    async fn resume(&self, _state: &mut Self::State) -> Result<(), Retry> {
        Ok(())
    }

    /// Handles one event. Called again with the same event after a [`Retry`], and after a restart for every
    /// event since the last checkpoint.
    async fn handle(&self, state: &mut Self::State, event: &Envelope) -> Result<(), Retry>;

    /// Whether handling `event` is a step of a flow worth a span of its own (a `process` span, a child of the
    /// command that appended the event): true for what the process acts on, false for the events it passes
    /// over or only notes. Every event is handled either way.
    fn traced(&self, _event: &Envelope) -> bool {
        true
    }

    /// How many events it may handle at once, each of another instance ([`Process::instance`]); 1 (the
    /// default): one at a time, in log order. A process that overlaps gets a fresh default state for each
    /// event; what it must remember it keeps itself and hands over for each checkpoint ([`Process::kept`]).
    const OVERLAP: usize = 1;

    /// For a process that overlaps: the state to save with the next checkpoint, which it keeps itself (the
    /// state after every event it has handled, some of them beyond the checkpoint's position: handling them
    /// again after a restart must agree with it). `None`: nothing to save.
    fn kept(&self) -> Option<Self::State> {
        None
    }

    /// The instance `event` is for, when the process overlaps: the events of one instance are handled one
    /// after another in log order, a retry holding back only them; `None`: the process has nothing to do with
    /// it. Not called when the process does not overlap.
    fn instance(&self, event: &Envelope) -> Option<String> {
        Some(event.stream.as_str().to_owned())
    }

    /// For a process that overlaps: told of each event as it is read, in log order, before it waits for a
    /// handler (behind its instance's, behind a full set of handlers, or for room in the window). What it learns here is a hint for
    /// handlers already waiting (a slot freed, say), never a decision: after a restart it is told again.
    fn noticed(&self, _event: &Envelope) {}

    /// When [`Process::fire`] should next be called, if ever.
    fn next_due(&self, _state: &Self::State) -> Option<Timestamp> {
        None
    }

    /// Does what is due at `now`.
    async fn fire(&self, _state: &mut Self::State, _now: Timestamp) -> Result<(), Retry> {
        Ok(())
    }

    /// Called before each checkpoint is saved: an error means that what was handled since the last checkpoint
    /// may not have taken effect (a publish lost with its connection), so the checkpoint is not saved and the
    /// process starts again from the last one, handling those events again.
    async fn confirm(&self) -> Result<(), String> {
        Ok(())
    }

    /// The name its checkpoint is saved under when it reads `partition` (the whole log with `None`):
    /// [`checkpoint_name_in`] unless it says otherwise.
    fn checkpoint(&self, partition: Option<Partition>) -> StreamName {
        checkpoint_name_in(Self::NAME, partition)
    }

    /// Where it starts when it has no checkpoint of its own: at the position of this checkpoint, with a
    /// default state, if there is one. For a process that keeps no state and takes over its share of what
    /// another reader did (a partition's publisher from the whole log's). `None` (the default): from the start.
    fn seed(&self, _partition: Option<Partition>) -> Option<StreamName> {
        None
    }
}

/// How a process runs. Defaults in [`RunOptions::default`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", default)]
pub struct RunOptions {
    /// Save the checkpoint after this many events. Default 1000.
    pub checkpoint_every_events: u64,
    /// Save the checkpoint this long after a change at the latest. Default 1 s.
    pub checkpoint_every_ms: u64,
    /// First wait before trying a failed event again; doubled up to `retry_max_ms`. Default 50 ms.
    pub retry_min_ms: u64,
    /// Longest wait between tries. Default 5 s.
    pub retry_max_ms: u64,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self { checkpoint_every_events: 1000, checkpoint_every_ms: 1000, retry_min_ms: 50, retry_max_ms: 5000 }
    }
}

/// A running process.
pub struct Running {
    stop: watch::Sender<bool>,
    done: oneshot::Receiver<Result<(), String>>,
    health: Health,
}

impl Running {
    /// Stops the process after the event or timer at hand, saving its checkpoint.
    pub async fn stop(self) -> Result<(), String> {
        let _ = self.stop.send(true);
        self.done.await.unwrap_or_else(|_| Err("the process task was dropped".into()))
    }

    /// How it is doing.
    pub fn health(&self) -> Health {
        self.health.clone()
    }
}

/// A process that ran at least this long before it ended is restarted after the shortest wait again.
const STEADY_AFTER: Duration = Duration::from_secs(60);

/// Starts `process` over `store`, supervised (see the module doc). Must be called on an actix system.
pub fn start<P: Process>(process: P, store: Arc<dyn EventStore>, options: RunOptions) -> Running {
    start_in(process, store, options, None)
}

/// Starts `process` over the events of `partition` only (the whole log with `None`), with a checkpoint of its
/// own ([`checkpoint_name_in`]): one of a set that share the work by partition, each partition's on its owner.
pub fn start_in<P: Process>(
    process: P,
    store: Arc<dyn EventStore>,
    options: RunOptions,
    partition: Option<Partition>,
) -> Running {
    let (stop, mut stopped) = watch::channel(false);
    let (report, done) = oneshot::channel();
    let health = Health::default();
    let watched = health.clone();
    actix::spawn(async move {
        let (min_delay, max_delay) =
            (Duration::from_millis(options.retry_min_ms.max(1)), Duration::from_millis(options.retry_max_ms.max(1)));
        let mut delay = min_delay;
        loop {
            let began = Instant::now();
            let attempt = std::panic::AssertUnwindSafe(run(
                &process,
                store.clone(),
                &options,
                partition,
                stopped.clone(),
                &watched,
            ))
            .catch_unwind()
            .await;
            let error = match attempt {
                Ok(Ok(())) => break,
                Ok(Err(error)) => error,
                Err(panic) => format!("it panicked: {}", host::panic_message(&*panic)),
            };
            if began.elapsed() >= STEADY_AFTER {
                delay = min_delay;
            }
            tracing::error!(process = P::NAME, %error, retry_in_ms = delay.as_millis() as u64, "the process ended; restarting it from its checkpoint");
            watched.restarting(error);
            if !back_off(&mut stopped, &mut delay, max_delay).await {
                break;
            }
        }
        watched.stopped();
        if let Some(partition) = partition {
            forget(P::NAME, partition.index);
        }
        let _ = report.send(Ok(()));
    });
    Running { stop, done, health }
}

/// The span of handling `event`: a `process` span when the process traces it, none otherwise.
fn traced<P: Process>(process: &P, event: &Envelope) -> tracing::Span {
    if process.traced(event) { crate::trace::process_span(P::NAME, event) } else { tracing::Span::none() }
}

/// Waits before the next try; false when the process was asked to stop meanwhile.
pub(super) async fn back_off(stopped: &mut watch::Receiver<bool>, delay: &mut Duration, max: Duration) -> bool {
    let wait = *delay;
    *delay = (*delay * 2).min(max);
    tokio::select! {
        _ = tokio::time::sleep(wait) => true,
        _ = stopped.wait_for(|s| *s) => false,
    }
}

/// Runs `process` from its checkpoint until it is stopped (`Ok`) or fails in a way waiting cannot mend (`Err`).
async fn run<P: Process>(
    process: &P,
    store: Arc<dyn EventStore>,
    options: &RunOptions,
    partition: Option<Partition>,
    mut stopped: watch::Receiver<bool>,
    health: &Health,
) -> Result<(), String> {
    let name = process.checkpoint(partition);
    let (min_delay, max_delay) =
        (Duration::from_millis(options.retry_min_ms.max(1)), Duration::from_millis(options.retry_max_ms.max(1)));
    let save_every = Duration::from_millis(options.checkpoint_every_ms);
    let Some(checkpoint) = load(&*store, &name, health, &mut stopped, (min_delay, max_delay)).await? else {
        return Ok(());
    };
    let (position, state) = match checkpoint {
        Some(c) => {
            let state = codec::decode(&c.state).map_err(|e| format!("checkpoint {name} does not decode: {e}"))?;
            (c.position, state)
        }
        None => match process.seed(partition) {
            Some(seed) => {
                let Some(from) = load(&*store, &seed, health, &mut stopped, (min_delay, max_delay)).await? else {
                    return Ok(());
                };
                (from.map_or(0, |c| c.position), P::State::default())
            }
            None => (0, P::State::default()),
        },
    };
    let index = partition.map(|p| p.index);
    let mut progress = Progress { name, partition: index, position, state, unsaved: 0, saved_at: Instant::now() };
    metrics::counter!("weft_process_retries_total", "process" => P::NAME).increment(0);
    moved(P::NAME, index, position);
    tracing::info!(process = P::NAME, partition = ?index, from = position, "process starting");

    let mut delay = min_delay;
    while let Err(Retry(why)) = process.resume(&mut progress.state).await {
        tracing::warn!(process = P::NAME, %why, "resuming failed; trying again");
        health.retrying(format!("resuming: {why}"));
        if !back_off(&mut stopped, &mut delay, max_delay).await {
            return Ok(());
        }
    }

    health.running();
    // The subscription runs in its own task and hands batches over a channel: the loop below waits on the
    // channel, which loses nothing when a timer wins the race, and a subscription read might. A read that
    // failed in a way that may pass is reported, then tried again from the same position after a wait
    // (the subscription keeps its place); any other failure ends the task.
    let (batches, mut incoming) = mpsc::channel::<Result<Vec<Envelope>, StoreError>>(2);
    let mut subscription = match partition {
        Some(partition) => store.subscribe_partition(partition, position + 1),
        None => store.subscribe_all(position + 1),
    };
    actix::spawn(async move {
        let mut wait = min_delay;
        loop {
            tokio::select! {
                batch = subscription.next_batch() => {
                    let retryable = batch.as_ref().err().map(StoreError::is_retryable);
                    if batch.is_ok() {
                        wait = min_delay;
                    }
                    if batches.send(batch).await.is_err() || retryable == Some(false) {
                        return;
                    }
                    if retryable == Some(true) {
                        tokio::select! {
                            _ = tokio::time::sleep(wait) => wait = (wait * 2).min(max_delay),
                            _ = batches.closed() => return,
                        }
                    }
                }
                _ = batches.closed() => return,
            }
        }
    });

    // The handlers below back off watching a second receiver: the first is borrowed by the select.
    let mut stopped_meanwhile = stopped.clone();
    let mut overlap = Overlap::new(position);
    'run: loop {
        let due = process.next_due(&progress.state);
        let until_due = due.map(|d| Duration::from_micros(u64::try_from(d.0 - Timestamp::now().0).unwrap_or(0)));
        let save_in = (progress.unsaved > 0).then(|| save_every.saturating_sub(progress.saved_at.elapsed()));
        tokio::select! {
            biased;
            _ = stopped.wait_for(|s| *s) => break 'run,
            done = overlap.running.next(), if !overlap.running.is_empty() => {
                let Some(Some((instance, position))) = done else { break 'run };
                overlap.done(instance, position, process, &stopped_meanwhile, health, (min_delay, max_delay), &mut progress);
            }
            batch = incoming.recv(), if overlap.backlog.is_empty() => {
                let batch = match batch {
                    Some(Ok(batch)) => batch,
                    Some(Err(StoreError::Closed)) | None => break 'run,
                    Some(Err(e)) if e.is_retryable() => {
                        tracing::warn!(process = P::NAME, at = progress.position, error = %e, "reading the log failed; trying again");
                        health.retrying(format!("reading the log after position {}: {e}", progress.position));
                        continue 'run;
                    }
                    Some(Err(e)) => return Err(format!("reading the log: {e}")),
                };
                health.running();
                if P::OVERLAP > 1 {
                    overlap.read(process, batch);
                    overlap.dispatch(process, &stopped_meanwhile, health, (min_delay, max_delay), &mut progress);
                    continue 'run;
                }
                for event in batch {
                    delay = min_delay;
                    let span = traced(process, &event);
                    while let Err(Retry(why)) = process.handle(&mut progress.state, &event).instrument(span.clone()).await {
                        metrics::counter!("weft_process_retries_total", "process" => P::NAME).increment(1);
                        tracing::warn!(process = P::NAME, position = event.position, %why, "handling failed; trying again");
                        health.retrying(format!("handling position {}: {why}", event.position));
                        if !back_off(&mut stopped_meanwhile, &mut delay, max_delay).await {
                            break 'run;
                        }
                    }
                    health.running();
                    progress.position = event.position;
                    progress.unsaved += 1;
                }
                moved(P::NAME, progress.partition, progress.position);
            }
            _ = tokio::time::sleep(until_due.unwrap_or_default()), if until_due.is_some() => {
                if let Err(Retry(why)) = process.fire(&mut progress.state, Timestamp::now()).await {
                    tracing::warn!(process = P::NAME, %why, "a timer failed; trying again");
                    health.retrying(format!("a timer: {why}"));
                    if !back_off(&mut stopped_meanwhile, &mut delay, max_delay).await {
                        break 'run;
                    }
                } else {
                    delay = min_delay;
                    health.running();
                }
                progress.unsaved += 1;
            }
            _ = tokio::time::sleep(save_in.unwrap_or_default()), if save_in.is_some() => {}
        }
        if progress.unsaved >= options.checkpoint_every_events.max(1)
            || (progress.unsaved > 0 && progress.saved_at.elapsed() >= save_every)
        {
            process.confirm().await.map_err(|why| format!("{why}; handling again from the checkpoint"))?;
            if let Some(kept) = process.kept() {
                progress.state = kept;
            }
            if let Err(error) = progress.save(&*store).await {
                // The events are handled; losing this save only means handling them again after a restart.
                tracing::warn!(process = P::NAME, %error, "saving the checkpoint failed");
                progress.saved_at = Instant::now();
            }
        }
    }
    if progress.unsaved > 0 {
        if let Some(kept) = process.kept() {
            progress.state = kept;
        }
        if let Err(why) = process.confirm().await {
            tracing::warn!(process = P::NAME, %why, "not saving the last checkpoint: the events since the previous one will be handled again");
        } else if let Err(error) = progress.save(&*store).await {
            tracing::warn!(process = P::NAME, %error, "saving the last checkpoint failed; the events since the previous one will be handled again");
        }
    }
    tracing::info!(process = P::NAME, partition = ?index, at = progress.position, "process stopped");
    Ok(())
}

/// Decodes `event`, which the caller knows to be one of `E`'s types; one that does not decode is logged and
/// skipped, since trying again cannot help.
pub(crate) fn decode<E: weft_events::DomainEvent>(event: &Envelope) -> Option<E> {
    match E::from_envelope(event) {
        Ok(decoded) => Some(decoded),
        Err(error) => {
            tracing::error!(position = event.position, stream = %event.stream, %error, "an event does not decode; skipped");
            None
        }
    }
}
