//! The read models over HTTP: lists, items, job logs, a stream's events and a projection's status, each
//! answered with an `ETag` (see [`crate::query`] for the reads themselves); the live feeds are in
//! `live`.

use actix_web::{HttpRequest, HttpResponse, web};

use super::{Params, State, access, answer, live};
use crate::query::read::{self, MODELS, Model};

/// Registers the routes: each model's list, list feed, item and item feed (`/<model>/live` before
/// `/<model>/{id}`), then the job logs, the stream histories and the projections' status.
pub fn routes(config: &mut web::ServiceConfig) {
    for model in MODELS {
        let base = format!("/{}", model.name);
        config
            .route(&base, web::get().to(move |s, r, q| list(s, r, q, model)))
            .route(&format!("{base}/live"), web::get().to(move |s, r, q| live::serve_list(s, r, q, model)))
            .route(&format!("{base}/{{id}}"), web::get().to(move |s, r, p, q| show(s, r, p, q, model)))
            .route(&format!("{base}/{{id}}/live"), web::get().to(move |s, r, p, q| live::serve(s, r, p, q, model)));
    }
    config
        .route("/jobs/{id}/logs", web::get().to(job_logs))
        .route("/documents/{id}/lineage", web::get().to(lineage))
        .route("/streams/{stream}/events", web::get().to(history))
        .route("/projections/{name}", web::get().to(projection))
        .route("/costs", web::get().to(costs));
}

async fn costs(state: web::Data<State>, request: HttpRequest, params: Params) -> HttpResponse {
    answer(&request, state.reads.costs(&params, &access::scope(&request)).await)
}

async fn list(state: web::Data<State>, request: HttpRequest, params: Params, model: &'static Model) -> HttpResponse {
    answer(&request, state.reads.list(model, &params, &access::scope(&request)).await)
}

async fn show(
    state: web::Data<State>,
    request: HttpRequest,
    id: web::Path<String>,
    params: Params,
    model: &'static Model,
) -> HttpResponse {
    if let Err(failure) = read::check_keys(&params, &["after"]) {
        return failure.respond();
    }
    let after = match read::number(&params, "after") {
        Ok(after) => after,
        Err(failure) => return failure.respond(),
    };
    answer(&request, state.reads.show(model, &id, after, &access::scope(&request)).await)
}

async fn job_logs(
    state: web::Data<State>,
    request: HttpRequest,
    id: web::Path<String>,
    params: Params,
) -> HttpResponse {
    answer(&request, state.reads.job_logs(&id, &params, &access::scope(&request)).await)
}

async fn lineage(state: web::Data<State>, request: HttpRequest, id: web::Path<String>, params: Params) -> HttpResponse {
    answer(&request, state.reads.lineage(&id, &params, &access::scope(&request)).await)
}

async fn history(
    state: web::Data<State>,
    request: HttpRequest,
    stream: web::Path<String>,
    params: Params,
) -> HttpResponse {
    answer(&request, state.reads.history(&stream, &params, &access::scope(&request)).await)
}

async fn projection(state: web::Data<State>, request: HttpRequest, name: web::Path<String>) -> HttpResponse {
    answer(&request, state.reads.projection(&name).await)
}
