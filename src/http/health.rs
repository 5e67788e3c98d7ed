//! `GET /healthz` (the process is up) and `GET /readyz` (200 when ready, 503 when not; see
//! [`crate::health`]): each task's state, each projection's position and lag behind the store, and what is
//! not ready and why.

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::json;

use super::{State, ok};

/// Registers the routes.
pub fn routes(config: &mut web::ServiceConfig) {
    config
        .route("/healthz", web::get().to(|| async { HttpResponse::Ok().json(json!({"status": "ok"})) }))
        .route("/readyz", web::get().to(readyz));
}

async fn readyz(state: web::Data<State>, request: HttpRequest) -> HttpResponse {
    match state.reads.readiness().await {
        (true, answer) => ok(&request, answer),
        (false, answer) => HttpResponse::ServiceUnavailable().json(answer),
    }
}
