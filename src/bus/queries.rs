//! The read models over the bus: a request on `weft.qry.<model>.<verb>` gets the same answer as the HTTP
//! route, as JSON.
//!
//! | subject | body | HTTP twin |
//! | --- | --- | --- |
//! | `weft.qry.<model>.get` (`documents`, `jobs`, `agents`, `workflows`, `schedules`, `triggers`) | `{"id": "<uuid>", "after": <position>?}` | `GET /<model>/{id}` |
//! | `weft.qry.<model>.list` | the list's parameters, e.g. `{"status": "running", "limit": 10}` | `GET /<model>` |
//! | `weft.qry.jobs.logs` | `{"id": "<uuid>", "cursor"?, "limit"?, "after"?}` | `GET /jobs/{id}/logs` |
//! | `weft.qry.documents.lineage` | `{"id": "<uuid>", "direction"?, "depth"?, "after"?}` | `GET /documents/{id}/lineage` |
//! | `weft.qry.streams.events` | `{"stream": "<name>", "cursor"?, "limit"?, "after"?}` | `GET /streams/{stream}/events` |
//! | `weft.qry.costs.tenants` | `{"since"?, "until"?, "tenant"?}` | `GET /costs` |
//! | `weft.qry.status.lag` | `{}` | `GET /readyz` |
//!
//! A failure answers `{"error": {"kind", "message"}}` with the kinds of the HTTP API. Nodes answer in queue
//! group `weft`, so each query is answered once.
//!
//! On a node with authentication on, a query carries `Authorization: Bearer <token>` as an HTTP read does:
//! without a valid one it answers `unauthenticated`, and it answers only what the identity may read (its
//! tenants; a `user`'s own documents), another tenant's item answering `not_found` as a missing one does. The
//! `status` queries, like `/readyz`, are open.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use serde_json::{Value, json};

use crate::auth::Permission;
use crate::auth::token::Verifier;
use crate::bus::{AUTHORIZATION, Bus, BusError, CONTENT_TYPE, Headers, JSON, Message};
use crate::query::Scope;
use crate::query::read::{Failure, MODELS, Reads};

/// The first tokens of query subjects.
pub const QUERIES: &str = "weft.qry";
/// Largest query body.
const MAX_QUERY_BYTES: usize = 64 * 1024;

/// Serves queries until the returned task is aborted; `health` says running until then, stopped (and logged)
/// should the subscription end (the connection gone for good).
pub async fn start(
    bus: Arc<dyn Bus>,
    reads: Reads,
    health: weft_events::Health,
    verifier: Option<Arc<Verifier>>,
) -> Result<tokio::task::JoinHandle<()>, BusError> {
    let mut subscription = bus.subscribe(&format!("{QUERIES}.>"), Some(crate::protocol::QUEUE_GROUP)).await?;
    // A round trip: the server has the subscription when this returns (see the intake's start).
    bus.confirm().await?;
    health.running();
    Ok(tokio::spawn(async move {
        let _stopped = crate::health::StoppedOnDrop(health);
        while let Some(message) = subscription.next().await {
            let (bus, reads, verifier) = (bus.clone(), reads.clone(), verifier.clone());
            tokio::spawn(async move {
                let Some(reply) = message.reply.clone() else { return };
                let answer = match answer(&reads, &message, verifier.as_deref()).await {
                    Ok(value) => value,
                    Err(Refusal::Failure(failure)) => {
                        json!({"error": {"kind": failure.kind, "message": failure.message}})
                    }
                    Err(Refusal::RateLimited(millis)) => json!({"error": {"kind": "unavailable",
                        "message": format!("over the request rate allowed; retry in {millis} ms"),
                        "retry_after_ms": millis}}),
                };
                let headers = Headers::from([(CONTENT_TYPE.to_owned(), JSON.to_owned())]);
                let reply = Message { subject: reply, reply: None, headers, payload: answer.to_string().into() };
                if let Err(error) = bus.publish(reply).await {
                    tracing::debug!(%error, "answering a query failed");
                }
            });
        }
        tracing::error!("the query service's subscription ended; restart the node to serve it again");
    }))
}

/// The body as parameters: an object whose values are strings or numbers (an empty body is `{}`).
fn params(payload: &[u8]) -> Result<BTreeMap<String, String>, Failure> {
    if payload.len() > MAX_QUERY_BYTES {
        return Err(Failure { kind: "too_large", message: format!("a query is at most {MAX_QUERY_BYTES} bytes") });
    }
    if payload.iter().all(u8::is_ascii_whitespace) {
        return Ok(BTreeMap::new());
    }
    let Ok(Value::Object(object)) = serde_json::from_slice::<Value>(payload) else {
        return Err(Failure::invalid("a query body is a JSON object"));
    };
    object
        .into_iter()
        .map(|(key, value)| match value {
            Value::String(s) => Ok((key, s)),
            Value::Number(n) => Ok((key, n.to_string())),
            _ => Err(Failure::invalid(format!("{key}: values are strings or numbers"))),
        })
        .collect()
}

/// What the query's caller may read, or why it may read nothing; `status` queries are open.
/// Why a query is not answered.
enum Refusal {
    /// As the read models or the checks of the caller say.
    Failure(Failure),
    /// The caller is over its rate limit: retry after this many milliseconds.
    RateLimited(u64),
}

impl From<Failure> for Refusal {
    fn from(failure: Failure) -> Self {
        Self::Failure(failure)
    }
}

async fn scope(verb: &str, message: &Message, verifier: Option<&Verifier>) -> Result<Scope, Refusal> {
    let Some(verifier) = verifier.filter(|_| !verb.starts_with("status.")) else { return Ok(Scope::ALL) };
    let identity = verifier
        .authorization(message.headers.get(AUTHORIZATION).map(String::as_str))
        .await
        .map_err(|why| Failure { kind: "unauthenticated", message: why.to_string() })?;
    if let Err(wait) = verifier.spend(&identity, None) {
        return Err(Refusal::RateLimited(crate::auth::limits::retry_after_ms(wait)));
    }
    if !identity.role.may(Permission::Read) {
        let message = format!("a {} may not read", identity.role.as_str());
        return Err(Failure { kind: "forbidden", message }.into());
    }
    Ok(Scope::of(Some(&identity)))
}

async fn answer(reads: &Reads, message: &Message, verifier: Option<&Verifier>) -> Result<Value, Refusal> {
    let verb = message.subject.strip_prefix(QUERIES).and_then(|s| s.strip_prefix('.')).unwrap_or_default();
    let scope = scope(verb, message, verifier).await?;
    Ok(read(reads, message, verb, &scope).await?)
}

async fn read(reads: &Reads, message: &Message, verb: &str, scope: &Scope) -> Result<Value, Failure> {
    let mut params = params(&message.payload)?;
    let mut take = |key: &str| params.remove(key).ok_or_else(|| Failure::invalid(format!("{key} is required")));
    match verb {
        "jobs.logs" => {
            let id = take("id")?;
            reads.job_logs(&id, &params, scope).await
        }
        "streams.events" => {
            let stream = take("stream")?;
            reads.history(&stream, &params, scope).await
        }
        "documents.lineage" => {
            let id = take("id")?;
            reads.lineage(&id, &params, scope).await
        }
        "costs.tenants" => reads.costs(&params, scope).await,
        "status.lag" => reads.lag().await,
        "status.ready" => Ok(reads.readiness().await.1),
        _ => {
            let (model, verb) = verb.rsplit_once('.').unwrap_or((verb, ""));
            let Some(model) = MODELS.into_iter().find(|m| m.name == model) else {
                return Err(Failure::not_found(format!("no query {:?}", message.subject)));
            };
            match verb {
                "get" => {
                    let id = take("id")?;
                    crate::query::read::check_keys(&params, &["after"])?;
                    reads.show(model, &id, crate::query::read::number(&params, "after")?, scope).await
                }
                "list" => reads.list(model, &params, scope).await,
                _ => Err(Failure::not_found(format!("no query {:?}", message.subject))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn bodies_become_parameters_or_typed_errors() {
        assert_eq!(super::params(b"").unwrap().len(), 0);
        assert_eq!(super::params(br#"{"limit": 5, "status": "running"}"#).unwrap()["limit"], "5");
        assert_eq!(super::params(b"[1]").unwrap_err().kind, "invalid");
        assert_eq!(super::params(br#"{"a": {"b": 1}}"#).unwrap_err().kind, "invalid");
        assert_eq!(super::params(&vec![b' '; 70_000]).unwrap_err().kind, "too_large");
    }
}
