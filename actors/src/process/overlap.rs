//! How an overlapping process ([`super::Process::OVERLAP`]) holds its events: handlers of different instances
//! at once, each instance's in log order, and the watermark its checkpoint is saved at.

use std::time::Duration;
use tracing::Instrument as _;

use tokio::sync::watch;
use weft_events::{Envelope, Health};

use super::{Process, Progress, Retry, back_off};

/// The most events an overlapping process holds at once: being handled (a step waiting for a busy agent
/// among them), or waiting behind their instance's. Past it the process reads no further until some are done.
pub const OVERLAP_WINDOW: usize = 16_384;

/// A handler of one event of an overlapping process: the event's instance and position once handled, `None`
/// when the process was stopped while the handler waited to try again.
type Handling<'a> = futures::future::LocalBoxFuture<'a, Option<(String, u64)>>;

/// What an overlapping process ([`Process::OVERLAP`]) has in hand: the events read and not yet taken up, the
/// positions taken up and not handled, the events waiting behind their instance's or for a free handler, and
/// the handlers running (at most `OVERLAP`).
/// Its checkpoint is the watermark: the position below which every event is handled.
pub(super) struct Overlap<'a> {
    pub(super) backlog: std::collections::VecDeque<Envelope>,
    window: std::collections::BTreeSet<u64>,
    waiting: std::collections::HashMap<String, std::collections::VecDeque<Envelope>>,
    /// The next event of each instance that has none being handled, in the order they came: started as
    /// handlers finish, so that at most [`Process::OVERLAP`] run at once.
    ready: std::collections::VecDeque<(String, Envelope)>,
    pub(super) running: futures::stream::FuturesUnordered<Handling<'a>>,
    /// The last position taken up (or passed over).
    taken: u64,
}

impl<'a> Overlap<'a> {
    pub(super) fn new(position: u64) -> Self {
        Self {
            backlog: Default::default(),
            window: Default::default(),
            waiting: Default::default(),
            ready: Default::default(),
            running: Default::default(),
            taken: position,
        }
    }

    /// The position below which everything taken up is handled.
    fn watermark(&self) -> u64 {
        self.window.first().map_or(self.taken, |first| first - 1)
    }

    /// Events read from the log: the process notices each ([`Process::noticed`]) before they wait their turn.
    pub(super) fn read<P: Process>(&mut self, process: &P, batch: Vec<Envelope>) {
        for event in &batch {
            process.noticed(event);
        }
        self.backlog.extend(batch);
    }

    /// Takes up events from the backlog while the window has room: an event of an instance with a handler
    /// running waits behind it; one of no instance is passed over.
    pub(super) fn dispatch<P: Process, S>(
        &mut self,
        process: &'a P,
        stopped: &watch::Receiver<bool>,
        health: &'a Health,
        delays: (Duration, Duration),
        progress: &mut Progress<S>,
    ) {
        while self.window.len() < OVERLAP_WINDOW
            && let Some(event) = self.backlog.pop_front()
        {
            self.taken = event.position;
            let Some(instance) = process.instance(&event) else { continue };
            self.window.insert(event.position);
            match self.waiting.get_mut(&instance) {
                Some(queue) => queue.push_back(event),
                None => {
                    self.waiting.insert(instance.clone(), Default::default());
                    self.ready.push_back((instance, event));
                }
            }
        }
        while self.running.len() < P::OVERLAP
            && let Some((instance, event)) = self.ready.pop_front()
        {
            self.running.push(handling(process, event, instance, stopped.clone(), health, delays));
        }
        self.advance(P::NAME, progress);
    }

    /// An event of `instance` at `position` is handled: the next of its instance starts, and more are taken up.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn done<P: Process, S>(
        &mut self,
        instance: String,
        position: u64,
        process: &'a P,
        stopped: &watch::Receiver<bool>,
        health: &'a Health,
        delays: (Duration, Duration),
        progress: &mut Progress<S>,
    ) {
        self.window.remove(&position);
        health.running();
        match self.waiting.get_mut(&instance).and_then(std::collections::VecDeque::pop_front) {
            Some(next) => self.ready.push_back((instance, next)),
            None => {
                self.waiting.remove(&instance);
            }
        }
        self.dispatch(process, stopped, health, delays, progress);
    }

    /// Moves the checkpoint's position up to the watermark.
    fn advance<S>(&self, process: &'static str, progress: &mut Progress<S>) {
        let watermark = self.watermark();
        if watermark > progress.position {
            progress.unsaved += watermark - progress.position;
            progress.position = watermark;
            super::moved(process, progress.partition, watermark);
        }
    }
}

/// Handles `event` with a fresh state, trying again with back-off until it is handled or the process stops.
fn handling<'a, P: Process>(
    process: &'a P,
    event: Envelope,
    instance: String,
    mut stopped: watch::Receiver<bool>,
    health: &'a Health,
    (min_delay, max_delay): (Duration, Duration),
) -> Handling<'a> {
    Box::pin(async move {
        let mut delay = min_delay;
        let mut state = P::State::default();
        let span = super::traced(process, &event);
        while let Err(Retry(why)) = process.handle(&mut state, &event).instrument(span.clone()).await {
            metrics::counter!("weft_process_retries_total", "process" => P::NAME).increment(1);
            tracing::warn!(process = P::NAME, position = event.position, %why, "handling failed; trying again");
            health.retrying(format!("handling position {}: {why}", event.position));
            if !back_off(&mut stopped, &mut delay, max_delay).await {
                return None;
            }
        }
        Some((instance, event.position))
    })
}
