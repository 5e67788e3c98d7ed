//! A node's place among the nodes sharing its JetStream store (`crate::cluster::members`): its entry, and the
//! task that keeps it alive.

use crate::health::Board;

use super::Error;

/// This node as the membership lists it, serving HTTP on `http`.
pub(super) fn this_member(http: std::net::SocketAddr) -> crate::cluster::members::Member {
    let now = weft_events::Timestamp::now().0;
    crate::cluster::members::Member {
        id: crate::cluster::members::node_id(),
        http: Some(http.to_string()),
        started_at: now,
        beat_at: now,
        version: env!("CARGO_PKG_VERSION").into(),
    }
}

/// Announces this node among those sharing its JetStream store and keeps its entry alive, watched on `board`.
pub(super) async fn join(
    client: async_nats::Client,
    http: std::net::SocketAddr,
    replicas: usize,
    board: &Board,
) -> Result<(crate::cluster::members::Members, actix_rt::task::JoinHandle<()>), Error> {
    use crate::cluster::members::{Members, MembersOptions};
    let options = MembersOptions { replicas, ..MembersOptions::default() };
    let members = Members::join(client, &options, this_member(http)).await?;
    let health = weft_events::Health::default();
    board.watch("membership", health.clone());
    let beating = members.clone();
    let beats = actix_rt::spawn(async move {
        health.running();
        loop {
            actix_rt::time::sleep(options.beat_every).await;
            match beating.beat().await {
                Ok(()) => health.running(),
                Err(error) => {
                    tracing::warn!(%error, "renewing this node's membership");
                    health.retrying(error.to_string());
                }
            }
        }
    });
    Ok((members, beats))
}
