//! The follower: this process's numbering of the store's events ([`crate::index`]), built from `$all` when the
//! store opens and kept up by one catch-up-then-live subscription to `$all`, which moves the head that
//! [`weft_events::Subscription`]s and appends wait on. The KurrentDB client re-subscribes after a dropped
//! connection; should the subscription end anyway, the follower starts another from where it got to.

use std::sync::Arc;
use std::time::Duration;

use kurrentdb::{RecordedEvent, StreamPosition, SubscribeToAllOptions, SubscriptionEvent, SubscriptionFilter};
use tokio::task::JoinHandle;
use weft_events::{Error, StreamName};

use crate::store::{Shared, at, position};

/// Events one read of `$all` fetches while numbering.
pub const CATCH_UP_PAGE: usize = 4096;

/// How long a read or an append waits for the follower to number an event KurrentDB has already
/// acknowledged, before it reports the store unavailable.
pub const INDEX_WAIT: Duration = Duration::from_secs(30);

/// How long the follower waits before it subscribes again after its subscription ended.
pub const RESUBSCRIBE_DELAY: Duration = Duration::from_secs(1);

/// Aborts the follower when the last clone of the store goes.
pub(crate) struct Follower(JoinHandle<()>);

impl Follower {
    /// Follows `$all` for the store `shared` from where its index got to.
    pub(crate) fn start(shared: Arc<Shared>) -> Self {
        Self(tokio::spawn(follow(shared)))
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Follows `$all` from the index's tail for as long as the store is open.
async fn follow(shared: Arc<Shared>) {
    loop {
        let from = shared.index.lock().expect("index lock").tail();
        let start = from.map_or(StreamPosition::Start, |tail| StreamPosition::Position(position(tail)));
        let filter = SubscriptionFilter::on_stream_name().add_prefix(shared.names.events_prefix());
        let mut subscription =
            shared.client.subscribe_to_all(&SubscribeToAllOptions::default().position(start).filter(filter)).await;
        loop {
            match subscription.next_subscription_event().await {
                Ok(SubscriptionEvent::EventAppeared(event)) => {
                    shared.health.running();
                    if let Err(error) = shared.number(event.get_original_event()) {
                        tracing::error!(store = %shared.location, %error, "stopped following the store");
                        shared.health.stopped();
                        return;
                    }
                }
                Ok(_) => shared.health.running(),
                Err(error) => {
                    tracing::warn!(store = %shared.location, %error, "the subscription to $all ended; subscribing again");
                    shared.health.retrying(format!("the subscription to $all ended: {error}"));
                    break;
                }
            }
        }
        tokio::time::sleep(RESUBSCRIBE_DELAY).await;
    }
}

impl Shared {
    /// Numbers one event read from `$all`, if it is one of the store's.
    fn number(&self, event: &RecordedEvent) -> Result<(), Error> {
        let Some(stream) = self.names.stream_of(event.stream_id()) else { return Ok(()) };
        let added =
            self.index.lock().expect("index lock").add(at(event.position), event.id, &stream, event.revision + 1);
        match added {
            Ok(Some(position)) => {
                self.head.send_replace(position);
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(broken) => {
                let error = Error::Corrupt { location: self.location.clone(), detail: broken.to_string() };
                *self.broken.lock().expect("broken lock") = Some(error.clone());
                // Wake whoever waits on the head, so they see the store broken.
                self.head.send_modify(|_| {});
                Err(error)
            }
        }
    }

    /// Numbers every event of the store already in `$all` after the index's tail.
    pub(crate) async fn catch_up(&self) -> Result<(), Error> {
        loop {
            let tail = self.index.lock().expect("index lock").tail();
            let start = tail.map_or(StreamPosition::Start, |t| StreamPosition::Position(position(t)));
            let fetched = self
                .scan(start, self.names.events_prefix(), CATCH_UP_PAGE, |event| self.number(&event).map(|()| true))
                .await?;
            if fetched < CATCH_UP_PAGE {
                return Ok(());
            }
        }
    }

    /// The position of `stream`'s event at `version`, waiting (up to [`INDEX_WAIT`]) for the follower to
    /// number it: the caller knows KurrentDB holds it.
    pub(crate) async fn position_of(&self, stream: &StreamName, version: u64) -> Result<u64, Error> {
        let mut head = self.head.subscribe();
        let deadline = tokio::time::Instant::now() + INDEX_WAIT;
        loop {
            self.check()?;
            if let Some(position) = self.index.lock().expect("index lock").position_of(stream, version) {
                return Ok(position);
            }
            match tokio::time::timeout_at(deadline, head.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(Error::Closed),
                Err(_) => {
                    return Err(Error::Unavailable {
                        location: self.location.clone(),
                        reason: format!(
                            "{stream} version {version} is in KurrentDB but the follower of $all has not reached it \
                             within {} s",
                            INDEX_WAIT.as_secs()
                        ),
                    });
                }
            }
        }
    }
}
