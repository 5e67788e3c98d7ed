//! `GET /metrics`: the node's metrics in the Prometheus text format ([`crate::telemetry::metrics`]), for an
//! `Inspect` role (operator, admin) on a node with authentication; [`record`] wraps every route.
//!
//! The levels are read as the page is asked for: the store's head, each projection's position and lag (as
//! `/readyz` reports them), each process manager's position and lag, and jobs by status in the read model.

use std::time::Instant;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{HttpResponse, web};

use super::State;

/// The statuses a job's read model holds, each reported even at zero.
const JOB_STATUSES: [&str; 5] = ["running", "succeeded", "failed", "dead_lettered", "cancelled"];

/// Registers the route.
pub fn routes(config: &mut web::ServiceConfig) {
    config.route("/metrics", web::get().to(metrics));
}

async fn metrics(state: web::Data<State>) -> HttpResponse {
    levels(&state).await;
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .insert_header((actix_web::http::header::CACHE_CONTROL, "no-store"))
        .body(crate::telemetry::metrics::render())
}

/// Sets the gauges read on demand. What cannot be read now (the store unavailable) keeps its last value.
async fn levels(state: &State) {
    if let Ok(lag) = state.reads.lag().await {
        let head = lag["head"].as_u64().unwrap_or(0);
        metrics::gauge!("weft_store_head_position").set(head as f64);
        for (name, projection) in lag["projections"].as_object().into_iter().flatten() {
            let name = name.clone();
            metrics::gauge!("weft_projection_position", "projection" => name.clone())
                .set(projection["position"].as_f64().unwrap_or(0.0));
            metrics::gauge!("weft_projection_lag_events", "projection" => name.clone())
                .set(projection["lag_events"].as_f64().unwrap_or(0.0));
            metrics::gauge!("weft_projection_lag_seconds", "projection" => name)
                .set(projection["lag_seconds"].as_f64().unwrap_or(0.0));
        }
        // A process of one partition has no lag to speak of here: the events after its position may all be
        // other partitions'. Its position is exported (`weft_process_position`).
        for (process, _, position) in weft_actors::process::positions().into_iter().filter(|(_, p, _)| p.is_none()) {
            metrics::gauge!("weft_process_lag_events", "process" => process).set(head.saturating_sub(position) as f64);
        }
    }
    let counted = state
        .reads
        .query(|db| {
            let mut statement = db.prepare_cached("SELECT status, count(*) FROM jobs GROUP BY status")?;
            let rows = statement.query_map([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?)))?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
        })
        .await;
    if let Ok(counted) = counted {
        for status in JOB_STATUSES {
            let count = counted.iter().find(|(s, _)| s == status).map_or(0, |(_, n)| *n);
            metrics::gauge!("weft_jobs", "status" => status).set(count as f64);
        }
        for (status, count) in counted.into_iter().filter(|(s, _)| !JOB_STATUSES.contains(&s.as_str())) {
            metrics::gauge!("weft_jobs", "status" => status).set(count as f64);
        }
    }
    for provider in &state.providers {
        let health = provider.health();
        let open = health.circuit == crate::agents::remote::Circuit::Open;
        metrics::gauge!("weft_provider_circuit_open", "provider" => health.name).set(if open { 1.0 } else { 0.0 });
    }
}

/// The middleware: counts each request by route pattern (`unmatched` for no route: a client's path is not a
/// label), method and status, with its latency.
pub async fn record(
    request: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let started = Instant::now();
    let route = request.match_pattern().unwrap_or_else(|| "unmatched".to_owned());
    let method = request.method().as_str().to_owned();
    let response = next.call(request).await.map(ServiceResponse::map_into_boxed_body);
    let status = match &response {
        Ok(response) => response.status().as_u16(),
        Err(error) => error.as_response_error().status_code().as_u16(),
    };
    metrics::counter!("weft_http_requests_total", "route" => route.clone(), "method" => method, "status" => status.to_string())
        .increment(1);
    metrics::histogram!("weft_http_request_duration_seconds", "route" => route).record(started.elapsed());
    response
}
