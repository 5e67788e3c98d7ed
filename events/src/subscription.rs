//! Subscribe-all: catch up from storage, then follow live appends.
//!
//! A [`Subscription`] pulls pages from [`EventRead::read_all`] starting at its next position, and when it has
//! read everything committed it waits on the store's head (a `watch` channel the backend bumps after each
//! commit). Because every event it yields comes from a read by position, there is no separate "live" path
//! to hand over to: an append that races with the end of catch-up is simply in the next page, so there is
//! no gap and no duplicate by construction.
//!
//! Back-pressure is the pull itself: a subscriber that stops reading holds at most two pages in memory (the
//! one it is working through and the one read ahead) and nothing else, and when it reads again it catches
//! up from storage. Writers never wait for subscribers.
//!
//! While catching up (a page came back full), the next page is read in a background task while the
//! consumer works through the current one, so reading and processing overlap on separate cores.

use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::envelope::Envelope;
use crate::partition::Partition;
use crate::store::{Error, EventRead};

/// A page read, and the position the read went through.
type Page = (Vec<Envelope>, u64);

/// Default events per page a subscription reads.
pub const DEFAULT_PAGE_SIZE: usize = 1000;

/// A subscription to every event of a store from a position on. Build one with
/// [`EventRead::subscribe_all`].
pub struct Subscription {
    reader: Arc<dyn EventRead>,
    head: watch::Receiver<u64>,
    /// Position of the next event to yield.
    next: u64,
    page_size: usize,
    /// Only the events of this partition ([`EventRead::subscribe_partition`]).
    partition: Option<Partition>,
    /// What is left of the page being yielded: handed over whole by `next_batch`, one by one by `next`.
    page: std::vec::IntoIter<Envelope>,
    /// The page from `next` on, being read ahead while the consumer works through `page`.
    ahead: Option<JoinHandle<Result<Page, Error>>>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(ahead) = self.ahead.take() {
            ahead.abort();
        }
    }
}

impl Subscription {
    /// A subscription reading through `reader`, woken by `head` (the last committed position), yielding
    /// events from position `from` on. Backends call this from their `subscribe_all`.
    pub fn new(reader: Arc<dyn EventRead>, head: watch::Receiver<u64>, from: u64) -> Self {
        let page_size = DEFAULT_PAGE_SIZE.min(reader.limits().max_page_size).max(1);
        Self { reader, head, next: from.max(1), page_size, partition: None, page: Vec::new().into_iter(), ahead: None }
    }

    /// Yields only the events of `partition`, read with [`EventRead::read_partition`]; `head` then need only
    /// move when that partition gets an event. Backends call this from their `subscribe_partition`.
    pub fn only(mut self, partition: Partition) -> Self {
        self.partition = Some(partition);
        self
    }

    /// Reads the pages through `reader` instead: a store around another (sealing, say) follows the head of the
    /// one inside.
    pub fn through(mut self, reader: Arc<dyn EventRead>) -> Self {
        self.reader = reader;
        self
    }

    /// Sets how many events one read fetches.
    pub fn page_size(mut self, events: usize) -> Self {
        self.page_size = events.clamp(1, self.reader.limits().max_page_size.max(1));
        self
    }

    /// The position of the next event this subscription will yield.
    pub fn next_position(&self) -> u64 {
        self.page.as_slice().first().map_or(self.next, |e| e.position)
    }

    /// The next event, waiting for it to be committed if need be. Fails with [`Error::Closed`] when the store
    /// closes.
    pub async fn next(&mut self) -> Result<Envelope, Error> {
        loop {
            if let Some(event) = self.page.next() {
                return Ok(event);
            }
            self.page = self.fill().await?.into_iter();
        }
    }

    /// The events available now (at least one, waiting for it if need be), up to one page: for consumers
    /// that process in batches, such as projections that commit a batch with its checkpoint.
    ///
    /// Cancel-safe: a call dropped while it waits loses nothing; the next call yields the same events.
    pub async fn next_batch(&mut self) -> Result<Vec<Envelope>, Error> {
        if self.page.len() > 0 {
            return Ok(std::mem::replace(&mut self.page, Vec::new().into_iter()).collect());
        }
        self.fill().await
    }

    /// Reads the next page (never empty), waiting for a commit when caught up.
    async fn fill(&mut self) -> Result<Vec<Envelope>, Error> {
        loop {
            // Awaited in place and taken only once done: a call dropped meanwhile leaves the page being read
            // ahead (already counted past) for the next call.
            if let Some(ahead) = self.ahead.as_mut() {
                let page = ahead.await;
                self.ahead = None;
                let page = page.map_err(|e| Error::Unavailable {
                    location: "subscription".into(),
                    reason: format!("reading ahead failed: {e}"),
                })??;
                if let Some(events) = self.accept(page)? {
                    return Ok(events);
                }
                continue;
            }
            let head = *self.head.borrow_and_update();
            if head >= self.next {
                let before = self.next;
                let page = read(&*self.reader, self.partition, self.next, self.page_size).await?;
                if let Some(events) = self.accept(page)? {
                    return Ok(events);
                }
                if self.next > before {
                    // Only other partitions' events so far: read on.
                    continue;
                }
                // The head says more is committed but the read found nothing: the head ran ahead of what a
                // reader can see. Wait for the next change rather than spin.
            }
            self.head.changed().await.map_err(|_| Error::Closed)?;
        }
    }

    /// Checks a page and moves past it; `None` when it holds no event. A page that went through a full page
    /// of positions means more is probably stored, so the next one is read ahead.
    fn accept(&mut self, (page, through): Page) -> Result<Option<Vec<Envelope>>, Error> {
        let from = self.next;
        let corrupt = |detail: String| Error::Corrupt { location: "subscription".into(), detail };
        match self.partition {
            // The backend promises dense positions from `next`; check it here too, so that a broken backend
            // shows up as an error instead of a silent gap in a projection.
            None => {
                if let (Some(first), Some(last)) = (page.first(), page.last())
                    && (first.position != from || last.position != from + page.len() as u64 - 1)
                {
                    return Err(corrupt(format!(
                        "read from position {from} returned positions {}..={}",
                        first.position, last.position
                    )));
                }
            }
            // A partition's positions grow but have gaps: those of the other partitions.
            Some(partition) => {
                let mut after = from - 1;
                for event in &page {
                    if event.position <= after || event.position > through || !partition.contains(&event.stream) {
                        return Err(corrupt(format!(
                            "read of partition {partition} from position {from} through {through} returned \
                             position {} of {} out of place",
                            event.position, event.stream
                        )));
                    }
                    after = event.position;
                }
            }
        }
        if through < from {
            return Ok(None);
        }
        self.next = through + 1;
        if through + 1 - from >= self.page_size as u64 || page.len() >= self.page_size {
            let (reader, partition, next, size) = (self.reader.clone(), self.partition, self.next, self.page_size);
            self.ahead = Some(tokio::spawn(async move { read(&*reader, partition, next, size).await }));
        }
        Ok((!page.is_empty()).then_some(page))
    }
}

/// A page of the whole log or of `partition` from `from` on, and the position it went through.
async fn read(reader: &dyn EventRead, partition: Option<Partition>, from: u64, size: usize) -> Result<Page, Error> {
    match partition {
        Some(partition) => reader.read_partition(partition, from, size).await,
        None => {
            let page = reader.read_all(from, size).await?;
            let through = page.last().map_or(from - 1, |e| e.position);
            Ok((page, through))
        }
    }
}
