//! What keeps documents' uploads recorded when storage's news is late or lost: the sweep of documents still
//! waiting for their upload ([`sweep`], [`sweep_every`]), and the loop that takes storage notifications off
//! the bus ([`serve_notifications`]).

use std::sync::Arc;
use std::time::Duration;

use weft_events::Timestamp;
use weft_events::domain::ids::DocumentId;

use super::documents::{Documents, Effect, Error};

/// How far back a sweep looks for documents still waiting for their upload (by registration time).
pub const SWEEP_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// The most documents one sweep heads; the rest wait for the next sweep.
pub const SWEEP_LIMIT: usize = 1000;

/// Where a sweep finds the documents still waiting for their upload: the documents read model (see
/// [`crate::selections`]), kept behind this trait so that object storage does not depend on the read side.
#[async_trait::async_trait]
pub trait Pending: Send + Sync {
    /// A page of the documents registered since `since` (µs since the epoch) and still waiting for their
    /// upload, as of everything stored so far, after `cursor`; and the next page's cursor, if any.
    async fn pending(&self, since: i64, cursor: Option<String>) -> Result<(Vec<DocumentId>, Option<String>), Error>;
}

/// Heals lost notifications: heads the object of each document registered in the last [`SWEEP_WINDOW`] and
/// still waiting for its upload (at most [`SWEEP_LIMIT`], oldest first), and records those whose object is
/// there, as `confirm` does. Core NATS delivers a notification at most once, and not at all while no node
/// listens; a node killed between acknowledging an upload and applying its notification leaves one behind too.
/// Answers how many documents it recorded as uploaded.
pub async fn sweep(documents: &Documents, pending: &dyn Pending) -> Result<usize, Error> {
    let since = Timestamp::now().as_micros() - i64::try_from(SWEEP_WINDOW.as_micros()).unwrap_or(i64::MAX);
    let (mut checked, mut recorded, mut cursor) = (0, 0, None);
    while checked < SWEEP_LIMIT {
        let (ids, next) = pending.pending(since, cursor).await?;
        for id in ids {
            checked += 1;
            match documents.confirm(id, None).await {
                Ok(Effect::Uploaded) => recorded += 1,
                Ok(_) | Err(Error::NotFound(_)) => {}
                Err(error) => tracing::warn!(%id, %error, "a sweep could not check a document's upload"),
            }
        }
        match next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    Ok(recorded)
}

/// Sweeps (see [`sweep`]) now and then every `every`, until aborted.
/// A failed sweep is logged and said on `health` (retrying, with why) until one succeeds.
pub async fn sweep_every(
    documents: Documents,
    pending: Arc<dyn Pending>,
    every: Duration,
    health: weft_events::Health,
) {
    loop {
        match sweep(&documents, pending.as_ref()).await {
            Ok(recorded) => {
                health.running();
                if recorded > 0 {
                    tracing::info!(recorded, "a sweep recorded uploads whose notifications were lost");
                }
            }
            Err(error) => {
                tracing::warn!(%error, "sweeping for lost upload notifications failed");
                health.retrying(format!("sweeping for lost upload notifications: {error}"));
            }
        }
        tokio::time::sleep(every).await;
    }
}

/// Takes notifications off the bus ([`super::notification::SUBJECT`], queue group `weft`) until the subscription
/// ends; answers a request with the records' reports, or the notification's error. Must run on an actix
/// system (the commands go through the gateway there).
pub async fn serve_notifications(
    documents: Documents,
    mut subscription: crate::bus::Subscription,
    bus: Arc<dyn crate::bus::Bus>,
) {
    use futures::StreamExt;
    while let Some(message) = subscription.next().await {
        let answer = match documents.notified(&message.payload).await {
            Ok(reports) => serde_json::json!({ "records": reports }),
            Err(error) => {
                tracing::warn!(%error, "an object notification was refused");
                serde_json::json!({"error": {"kind": "invalid", "message": error.to_string()}})
            }
        };
        if let Some(reply) = message.reply {
            let mut answer = crate::bus::Message::new(reply, serde_json::to_vec(&answer).expect("JSON serialises"));
            answer.headers.insert(crate::bus::CONTENT_TYPE.into(), crate::bus::JSON.into());
            if let Err(error) = bus.publish(answer).await {
                tracing::debug!(%error, "answering an object notification");
            }
        }
    }
}
