//! HTTP/1.1 routes served on the worker's gRPC port: Prometheus `/metrics` (behind the pool token when
//! one is set), liveness `/health` and readiness `/ready` (the model is loaded and the worker is not
//! draining).

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use modelpool::auth::Token;
use serde_json::json;

use crate::state::SharedState;

#[derive(Clone)]
struct HttpState {
    worker: Arc<SharedState>,
    token: Token,
}

pub fn router(worker: Arc<SharedState>, token: Token) -> Router {
    let state = HttpState { worker, token };
    Router::new()
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token))
        .route("/health", get(|| async { axum::Json(json!({"status": "ok"})) }))
        .route("/ready", get(ready))
        .with_state(state)
}

async fn require_token(State(state): State<HttpState>, request: Request, next: Next) -> Response {
    if state.token.admits_authorization(request.headers().get(header::AUTHORIZATION).map(HeaderValue::as_bytes)) {
        next.run(request).await
    } else {
        (StatusCode::UNAUTHORIZED, axum::Json(json!({"error": {"message": "missing or wrong pool token", "type": "authentication_error"}})))
            .into_response()
    }
}

async fn metrics(State(state): State<HttpState>) -> Response {
    let engine = state.worker.engine();
    let text = state.worker.metrics.render(
        engine.map(|e| e.stats()),
        engine.map_or(0, |e| e.info().slots),
        engine.map_or(0, |e| e.info().prompt_store_capacity_bytes),
        state.worker.memory.latest(),
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}

async fn ready(State(state): State<HttpState>) -> Response {
    let ready = state.worker.engine_for_new_request().is_ok();
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, axum::Json(json!({"ready": ready}))).into_response()
}
