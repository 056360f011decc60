//! The coordinator's HTTP side, on its own port: an OpenAI-compatible API (`/v1/chat/completions`,
//! `/v1/completions` with server-sent events when `stream` is true, `/v1/models`), Prometheus
//! `/metrics`, liveness `/health` and readiness `/ready`. Prompts go through the same scheduler as gRPC.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use modelpool::membership::WorkerPhase;
use modelpool::proto;
use modelpool::{PoolError, PredictRequest};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::access::Access;
use crate::admission::Admission;
use crate::metrics::CoordinatorMetrics;
use crate::openai::{ApiError, ChatCompletionRequest, CompletionRequest, Envelope, Kind};
use crate::scheduler::{Scheduler, stopped};

pub struct HttpState {
    pub scheduler: Scheduler,
    pub metrics: Arc<CoordinatorMetrics>,
    pub admission: Arc<Admission>,
    pub access: Access,
    /// Longest a request may take from admission to its last token before it fails with 504.
    pub request_timeout: Duration,
}

pub fn router(state: Arc<HttpState>) -> Router {
    let protected = Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(Arc::clone(&state), require_client_key));
    Router::new()
        .merge(protected)
        .route("/health", get(|| async { axum::Json(json!({"status": "ok"})) }))
        .route("/ready", get(ready))
        .fallback(|| async { error_response(&ApiError { status: 404, message: "no such route".into(), kind: "invalid_request_error", param: None, code: Some("not_found") }) })
        .with_state(state)
}

async fn require_client_key(State(state): State<Arc<HttpState>>, request: Request, next: Next) -> Response {
    let authorization = request.headers().get(header::AUTHORIZATION).map(HeaderValue::as_bytes);
    if state.access.admits_client(authorization) {
        next.run(request).await
    } else {
        error_response(&ApiError::from_pool(&state.access.client_refusal()))
    }
}

fn error_response(error: &ApiError) -> Response {
    let status = StatusCode::from_u16(error.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, axum::Json(error.body())).into_response();
    if status == StatusCode::TOO_MANY_REQUESTS {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    // No live worker (waited for one already): a restart takes seconds, so say when to try again.
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    }
    response
}

fn parse<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError {
        status: 400,
        message: format!("invalid JSON body: {e}"),
        kind: "invalid_request_error",
        param: None,
        code: None,
    })
}

async fn chat_completions(State(state): State<Arc<HttpState>>, body: Bytes) -> Response {
    let request: ChatCompletionRequest = match parse(&body) {
        Ok(request) => request,
        Err(error) => return error_response(&error),
    };
    let wire = request.to_proto();
    complete(state, Kind::Chat, request.model, wire, request.sampling.stream, request.sampling.include_usage()).await
}

async fn completions(State(state): State<Arc<HttpState>>, body: Bytes) -> Response {
    let request: CompletionRequest = match parse(&body) {
        Ok(request) => request,
        Err(error) => return error_response(&error),
    };
    let wire = request.to_proto();
    complete(state, Kind::Text, request.model, wire, request.sampling.stream, request.sampling.include_usage()).await
}

/// Validates, admits and runs one prompt, as one JSON response or as server-sent events.
async fn complete(
    state: Arc<HttpState>,
    kind: Kind,
    model: Option<String>,
    wire: Result<proto::PredictRequest, PoolError>,
    stream: bool,
    include_usage: bool,
) -> Response {
    let started = Instant::now();
    let admitted = match wire {
        // The caller's id is not taken from the API body: every HTTP prompt gets the coordinator's.
        Ok(wire) => state.admission.admit(proto::PredictRequest { request_id: String::new(), ..wire }, "", started),
        Err(error) => {
            state.admission.refused(&error, started);
            Err(error)
        }
    };
    let request = match admitted {
        Ok(request) => request,
        Err(error) => return error_response(&ApiError::from_pool(&error)),
    };
    let envelope = Envelope {
        kind,
        id: format!("{}{}", kind.id_prefix(), request.request_id),
        created: SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        model: model.unwrap_or_else(|| "modelpool".into()),
    };
    if stream {
        return stream_response(state, envelope, request, include_usage, started).await;
    }
    let result = match tokio::time::timeout(state.request_timeout, state.scheduler.predict(request)).await {
        Ok(result) => result,
        Err(_) => Err(timed_out(state.request_timeout)),
    };
    state.metrics.record(result.as_ref(), started);
    match result {
        Ok(response) => axum::Json(envelope.response(&response)).into_response(),
        Err(error) => error_response(&ApiError::from_pool(&error)),
    }
}

fn timed_out(limit: Duration) -> PoolError {
    PoolError::DeadlineExceeded(format!("no complete answer within {limit:?}"))
}

/// Server-sent events: a first chunk with the role, a chunk per piece of text as the worker generates
/// it, a last chunk with the finish reason, OpenAI's usage-only chunk when `stream_options.include_usage`
/// is set, then `[DONE]`. Admission errors are plain HTTP errors; a
/// failure after the stream began is sent as an `error` event.
async fn stream_response(
    state: Arc<HttpState>,
    envelope: Envelope,
    request: PredictRequest,
    include_usage: bool,
    started: Instant,
) -> Response {
    let (mut pieces, result) = match state.scheduler.predict_stream(request).await {
        Ok(streams) => streams,
        Err(error) => {
            state.metrics.record(Err(&error), started);
            return error_response(&ApiError::from_pool(&error));
        }
    };
    let (events, receiver) = mpsc::channel::<Result<Event, std::convert::Infallible>>(64);
    tokio::spawn(async move {
        let send = |value: Value| {
            let events = events.clone();
            async move { events.send(Ok(Event::default().data(value.to_string()))).await.is_ok() }
        };
        // The client closed the connection or stopped reading (the listener's write deadline dropped
        // it): returning drops the receivers, which cancels the prompt, queued or running.
        let gone = |state: &HttpState| {
            let error = PoolError::Cancelled("the HTTP client went away or stopped reading".into());
            state.metrics.record(Err(&error), started);
        };
        let deadline = tokio::time::sleep(state.request_timeout);
        tokio::pin!(deadline);
        let mut first = true;
        let mut open = true;
        while open {
            tokio::select! {
                piece = pieces.recv() => match piece {
                    Some(text) => {
                        if !send(envelope.chunk(Some(&text), first, None, include_usage)).await {
                            return gone(&state);
                        }
                        first = false;
                    }
                    None => open = false,
                },
                // Noticed while the prompt waits in the queue too, so it is never dispatched.
                () = events.closed() => return gone(&state),
                () = &mut deadline => {
                    let error = timed_out(state.request_timeout);
                    state.metrics.record(Err(&error), started);
                    send(ApiError::from_pool(&error).body()).await;
                    let _ = events.send(Ok(Event::default().data("[DONE]"))).await;
                    return;
                }
            }
        }
        let outcome = result.await.unwrap_or_else(|_| Err(stopped()));
        state.metrics.record(outcome.as_ref(), started);
        match outcome {
            Ok(response) => {
                if first {
                    send(envelope.chunk(None, true, None, include_usage)).await;
                }
                send(envelope.chunk(None, false, Some(&response), include_usage)).await;
                if include_usage {
                    send(envelope.usage_chunk(&response)).await;
                }
            }
            Err(error) => {
                send(ApiError::from_pool(&error).body()).await;
            }
        }
        let _ = events.send(Ok(Event::default().data("[DONE]"))).await;
    });
    Sse::new(ReceiverStream::new(receiver)).keep_alive(KeepAlive::default()).into_response()
}

async fn models(State(state): State<Arc<HttpState>>) -> Response {
    let workers = state.scheduler.workers().await.unwrap_or_default();
    let mut names: Vec<String> = workers.iter().map(|w| w.report.description.model_name.clone()).collect();
    names.sort();
    names.dedup();
    let data: Vec<Value> = names.iter().map(|name| json!({"id": name, "object": "model", "created": 0, "owned_by": "modelpool"})).collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

async fn metrics(State(state): State<Arc<HttpState>>) -> Response {
    let workers = state.scheduler.workers().await.unwrap_or_default();
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    (headers, state.metrics.render(&workers, state.scheduler.queue_depth())).into_response()
}

/// Ready when at least one worker takes prompts.
async fn ready(State(state): State<Arc<HttpState>>) -> Response {
    let workers = state.scheduler.workers().await.unwrap_or_default();
    let serving = workers.iter().filter(|w| w.phase == WorkerPhase::Serving).count();
    let status = if serving > 0 { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, axum::Json(json!({"ready": serving > 0, "workers_serving": serving}))).into_response()
}
