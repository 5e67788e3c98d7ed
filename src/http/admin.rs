//! What operators do over HTTP: rebuild or reset a read model (`POST /projections/{name}/rebuild|reset`),
//! erase a tenant (`POST /tenants/{tenant}/erase`), and see the providers' circuits (`GET /providers`).

use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Value, json};

use super::{State, answer, documents, error, ok};
use crate::query::Failure;
use crate::query::read::{RebuildRequest, Work};

/// What the operators' routes act through; each `None` is not offered by this node.
#[derive(Clone, Default)]
pub struct Admin {
    /// Where to ask for a projection's rebuild or reset (see [`weft_projections::rebuild`]).
    pub rebuilds: Option<tokio::sync::mpsc::Sender<RebuildRequest>>,
    /// Where to erase a tenant.
    pub erase: Option<Arc<dyn crate::store::sealed::Erase>>,
}

/// Registers the routes.
pub fn routes(config: &mut web::ServiceConfig) {
    config
        .route("/providers", web::get().to(provider_health))
        .route("/cluster", web::get().to(cluster))
        .route("/tenants/{tenant}/erase", web::post().to(erase_tenant))
        .route("/projections/{name}/rebuild", web::post().to(move |s, r, n| maintain(s, r, n, Work::Rebuild)))
        .route("/projections/{name}/reset", web::post().to(move |s, r, n| maintain(s, r, n, Work::Reset)));
}

/// Asks the node to rebuild or reset `projection`, unless one is under way (one at a time per model), and
/// waits for the position the model took over at.
async fn rebuild(state: &State, projection: &str, work: Work) -> Result<Value, Failure> {
    let Some(rebuilds) = &state.admin.rebuilds else {
        return Err(Failure::unavailable("rebuilds are not offered here"));
    };
    let reads = &state.reads;
    if reads.position(projection).is_none() {
        return Err(Failure::not_found(format!("no projection named {projection:?}")));
    }
    if !reads.maintenance.claim(projection, work) {
        return Err(Failure {
            kind: "conflict",
            message: format!(
                "a rebuild or reset of {projection} is under way: one at a time (see GET /projections/{projection})"
            ),
        });
    }
    let (answer, answered) = tokio::sync::oneshot::channel();
    rebuilds
        .send((projection.to_owned(), work, answer))
        .await
        .map_err(|_| Failure::unavailable("the node is stopping"))?;
    let position = answered.await.map_err(|_| Failure::unavailable("the node is stopping"))??;
    Ok(json!({"projection": projection, "position": position}))
}

/// `GET /cluster`: the live nodes, the partitions and each node's share of them. With partition routing, the
/// shares are the leases as the bucket holds them, and each partition is listed with its holder, fencing
/// token and the age of its lease; without, the shares are the assignment the membership gives.
async fn cluster(state: web::Data<State>, request: HttpRequest) -> HttpResponse {
    use crate::cluster::{DEFAULT_PARTITIONS, assignment};
    let (me, nodes, routing) = match &state.cluster {
        None => return Failure::not_found("this node serves no cluster status").respond(),
        Some(super::Cluster::Alone(me)) => (me.id.clone(), vec![serde_json::to_value(me).unwrap_or_default()], None),
        Some(super::Cluster::Shared(members, routing)) => match members.live().await {
            Ok(live) => {
                let now = weft_events::Timestamp::now().0;
                let nodes = live
                    .into_iter()
                    .map(|m| {
                        let age_ms = (now - m.beat_at).max(0) / 1000;
                        let mut node = serde_json::to_value(&m).unwrap_or_default();
                        node["heartbeat_age_ms"] = json!(age_ms);
                        node
                    })
                    .collect();
                (members.me().id.clone(), nodes, routing.as_deref())
            }
            Err(error) => return Failure::unavailable(error.to_string()).respond(),
        },
    };
    let ids: Vec<&str> = nodes.iter().filter_map(|n| n["id"].as_str()).collect();
    let (count, owned, leases) = match routing {
        None => (DEFAULT_PARTITIONS, assignment(DEFAULT_PARTITIONS, &ids), Value::Null),
        Some((partitions, kv)) => {
            let count = partitions.count();
            let holders = match crate::cluster::ownership::holders(kv, count).await {
                Ok(holders) => holders,
                Err(error) => return Failure::unavailable(error).respond(),
            };
            let now = weft_events::Timestamp::now().0;
            let mut owned: std::collections::BTreeMap<&str, Vec<u32>> = ids.iter().map(|n| (*n, Vec::new())).collect();
            let mut leases = Vec::new();
            for partition in 0..count {
                let Some((lease, revision, written)) = holders.get(&partition) else {
                    leases.push(json!({"partition": partition, "owner": null}));
                    continue;
                };
                if let Some(share) = owned.get_mut(lease.node.as_str()) {
                    share.push(partition);
                }
                leases.push(json!({
                    "partition": partition,
                    "owner": lease.node,
                    "revision": revision,
                    "held_ms": (now - lease.since).max(0) / 1000,
                    "renewed_ms_ago": (now - written).max(0) / 1000,
                }));
            }
            (count, owned, Value::Array(leases))
        }
    };
    let nodes: Vec<Value> = nodes
        .iter()
        .map(|node| {
            let mut node = node.clone();
            let partitions = owned.get(node["id"].as_str().unwrap_or("")).cloned().unwrap_or_default();
            node["partitions"] = json!(partitions);
            node
        })
        .collect();
    let mut answer =
        json!({"this_node": me, "partitions": count, "partition_routing": routing.is_some(), "nodes": nodes});
    if routing.is_some() {
        answer["leases"] = leases;
    }
    ok(&request, answer)
}

async fn provider_health(state: web::Data<State>, request: HttpRequest) -> HttpResponse {
    let health: Vec<_> = state.providers.iter().map(|p| p.health()).collect();
    ok(&request, json!({ "providers": health }))
}

async fn maintain(state: web::Data<State>, request: HttpRequest, name: web::Path<String>, work: Work) -> HttpResponse {
    answer(&request, rebuild(&state, &name, work).await)
}

/// What `POST /tenants/{tenant}/erase` takes.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EraseRequest {
    /// Why, for the record.
    reason: String,
    /// The tenant's name again: erasing cannot be undone, so the caller says twice which tenant it means.
    confirm: String,
}

/// Longest reason of an erasure, in bytes.
const MAX_REASON_BYTES: usize = 500;

/// Largest body of an erasure request, in bytes.
const MAX_ERASE_BODY_BYTES: usize = 4096;

async fn erase_tenant(
    state: web::Data<State>,
    request: HttpRequest,
    tenant: web::Path<String>,
    payload: web::Payload,
) -> HttpResponse {
    let Some(eraser) = state.admin.erase.clone() else {
        return error(StatusCode::NOT_FOUND, "not_found", "this node does not erase tenants");
    };
    let body = match documents::read_body(payload, MAX_ERASE_BODY_BYTES, state.limits.body_idle_timeout).await {
        Ok(body) => body,
        Err(refusal) => return refusal.respond(),
    };
    let body: EraseRequest = match serde_json::from_slice(&body) {
        Ok(body) => body,
        Err(e) => {
            let message = format!("the body is not {{\"reason\": ..., \"confirm\": \"<tenant>\"}}: {e}");
            return error(StatusCode::BAD_REQUEST, "invalid", message);
        }
    };
    if let Err(e) = weft_events::envelope::check_label("tenant", &tenant) {
        return error(StatusCode::BAD_REQUEST, "invalid", e.to_string());
    }
    if body.confirm != *tenant {
        let message = format!("`confirm` must repeat the tenant's name, {:?}: erasing cannot be undone", *tenant);
        return error(StatusCode::BAD_REQUEST, "invalid", message);
    }
    match eraser.known(&tenant).await {
        Ok(true) => {}
        Ok(false) => {
            let message = format!("no tenant {:?}: nothing of it is stored, so there is nothing to erase", *tenant);
            return error(StatusCode::NOT_FOUND, "not_found", message);
        }
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e.to_string()),
    }
    if body.reason.trim().is_empty() || body.reason.len() > MAX_REASON_BYTES {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid",
            format!("the reason must hold 1 to {MAX_REASON_BYTES} bytes"),
        );
    }
    let actor = request
        .headers()
        .get(crate::bus::ACTOR)
        .and_then(|v| v.to_str().ok())
        .filter(|a| weft_events::envelope::check_label("actor", a).is_ok())
        .unwrap_or("operator")
        .to_owned();
    match eraser.erase(&tenant, &body.reason, &actor).await {
        Ok(erasure) => {
            tracing::warn!(tenant = %erasure.tenant, destroyed_key = erasure.destroyed_key, "tenant erased");
            let mut answer = serde_json::to_value(&erasure).unwrap_or_default();
            // The documents' bytes go too. Their key is destroyed already: a failure here is finished by
            // erasing again, which deletes what is left.
            if let Some(objects) = &state.objects {
                match objects.documents.objects().delete_tenant(&tenant).await {
                    Ok(deleted) => answer["objects_deleted"] = json!(deleted),
                    Err(e) => {
                        let message = format!(
                            "the tenant's key is destroyed, but deleting its objects failed ({e}): erase again to finish"
                        );
                        return error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message);
                    }
                }
            }
            HttpResponse::Ok().json(answer)
        }
        Err(e @ weft_events::Error::InvalidEvent { .. }) => error(StatusCode::BAD_REQUEST, "invalid", e.to_string()),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e.to_string()),
    }
}
