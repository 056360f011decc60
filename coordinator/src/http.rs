//! The coordinator's HTTP side, on its own port: an OpenAI-compatible API (`/v1/chat/completions`,
//! `/v1/completions` with server-sent events when `stream` is true, `/v1/models`), Prometheus
//! `/metrics`, liveness `/health`, readiness `/ready`, and a status page at `/` (`status_page`). Prompts
//! go through the same scheduler as gRPC.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use modelpool::{PoolError, PredictRequest};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::access::Access;
use crate::admission::{Admission, converted};
use crate::http_server::BodyTimedOut;
use crate::metrics::CoordinatorMetrics;
use crate::model_names::ModelNames;
use crate::openai::{ApiError, ChatCompletionRequest, CompletionRequest, Envelope, Kind};
use crate::scheduler::{Scheduler, stopped};

pub struct HttpState {
    pub scheduler: Scheduler,
    pub metrics: Arc<CoordinatorMetrics>,
    pub admission: Arc<Admission>,
    pub access: Access,
    /// Longest a request may take from admission to its last token before it fails with 504.
    pub request_timeout: Duration,
    /// Longest a stream's next event may wait for a client that takes no data; then it is dropped.
    pub stall_timeout: Duration,
    pub model_names: ModelNames,
}

/// The most bytes one request body may have: a prompt's 1 MiB of text (`limits::MAX_PROMPT_BYTES`) with
/// room for JSON's escapes and a schema. Bodies are read whole before parsing, so this times the
/// connection limit bounds what requests being read can hold.
pub const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;

pub fn router(state: Arc<HttpState>) -> Router {
    let protected = Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/metrics", get(metrics))
        .route("/status.json", get(status))
        .route_layer(middleware::from_fn_with_state(Arc::clone(&state), require_client_key))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES));
    Router::new()
        .merge(protected)
        // The page holds no data (it asks for /status.json, behind the keys): a browser may load it.
        .route("/", get(crate::status_page::page))
        .route("/health", get(|| async { axum::Json(json!({"status": "ok"})) }))
        .route("/ready", get(ready))
        .fallback(|| async {
            error_response(&ApiError {
                status: 404,
                message: "no such route".into(),
                kind: "invalid_request_error",
                param: None,
                code: Some("not_found"),
            })
        })
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

/// A body axum could not read, as the API's JSON error: 408 past the body deadline, 413 over the size
/// limit, 400 otherwise.
fn body_error(rejection: &BytesRejection) -> ApiError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(rejection);
    while let Some(error) = source {
        if let Some(timeout) = error.downcast_ref::<BodyTimedOut>() {
            return ApiError {
                status: 408,
                message: timeout.to_string(),
                kind: "invalid_request_error",
                param: None,
                code: Some("body_timeout"),
            };
        }
        source = error.source();
    }
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError {
            status: 413,
            message: format!("request body over the limit of {MAX_BODY_BYTES} bytes"),
            kind: "invalid_request_error",
            param: None,
            code: Some("request_too_large"),
        };
    }
    ApiError { status: rejection.status().as_u16(), message: rejection.body_text(), kind: "invalid_request_error", param: None, code: None }
}

fn parse<T: serde::de::DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    crate::request_body::parse(&body.map_err(|rejection| body_error(&rejection))?)
}

async fn chat_completions(State(state): State<Arc<HttpState>>, body: Result<Bytes, BytesRejection>) -> Response {
    let request: ChatCompletionRequest = match parse(body) {
        Ok(request) => request,
        Err(error) => return error_response(&error),
    };
    let (model, stream, include_usage) = (request.model.clone(), request.sampling.stream, request.sampling.include_usage());
    // Consumed: while the prompt waits, the coordinator holds its text once (in the queued request).
    let compiles = request.sampling.response_format.as_ref().is_some_and(|format| !format.is_null());
    let request = converted(compiles, move || request.into_request()).await;
    complete(state, Kind::Chat, model, request, stream, include_usage).await
}

async fn completions(State(state): State<Arc<HttpState>>, body: Result<Bytes, BytesRejection>) -> Response {
    let request: CompletionRequest = match parse(body) {
        Ok(request) => request,
        Err(error) => return error_response(&error),
    };
    let (model, stream, include_usage) = (request.model.clone(), request.sampling.stream, request.sampling.include_usage());
    // Consumed: while the prompt waits, the coordinator holds its text once (in the queued request).
    let compiles = request.sampling.response_format.as_ref().is_some_and(|format| !format.is_null());
    let request = converted(compiles, move || request.into_request()).await;
    complete(state, Kind::Text, model, request, stream, include_usage).await
}

/// Validates, admits and runs one prompt, as one JSON response or as server-sent events.
async fn complete(
    state: Arc<HttpState>,
    kind: Kind,
    model: Option<String>,
    request: Result<PredictRequest, PoolError>,
    stream: bool,
    include_usage: bool,
) -> Response {
    let started = Instant::now();
    if let Some(refusal) = unknown_model(&state, model.as_deref(), started).await {
        return refusal;
    }
    let admitted = state.admission.admit(request, "", started);
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

/// With `--strict-model`, the 404 for a `model` that is none of the pool's model's names (OpenAI's
/// answer to an unknown model), counted as a refusal.
async fn unknown_model(state: &HttpState, requested: Option<&str>, started: Instant) -> Option<Response> {
    let requested = requested.filter(|_| state.model_names.strict)?;
    let workers = state.scheduler.workers().await.unwrap_or_default();
    let descriptions: Vec<_> = workers.iter().map(|w| &w.report.description).collect();
    if state.model_names.accepts(requested, &descriptions) {
        return None;
    }
    let served = state.model_names.listed(descriptions.iter().copied()).join(", ");
    let error = PoolError::NotFound(format!("model {requested:?} is not served here (--strict-model); this pool serves: {served}"));
    state.admission.refused(&error, started);
    Some(error_response(&ApiError { param: Some("model".into()), code: Some("model_not_found"), ..ApiError::from_pool(&error) }))
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
        let data = |value: Value| Event::default().data(value.to_string());
        let deadline = tokio::time::Instant::now() + state.request_timeout;
        let stall = state.stall_timeout;
        // The client closed the connection or stopped reading (the listener's write deadline dropped
        // it, or its HTTP/2 stream took no data for the stall limit): returning drops the receivers,
        // which cancels the prompt, queued or running.
        let gone = |state: &HttpState| {
            let error = PoolError::Cancelled("the HTTP client went away or stopped reading".into());
            state.metrics.record(Err(&error), started);
        };
        let mut first = true;
        let ended = loop {
            tokio::select! {
                piece = pieces.recv() => match piece {
                    Some(text) => match deliver(&events, data(envelope.chunk(Some(&text), first, None, include_usage)), deadline, stall).await {
                        Delivery::Sent => first = false,
                        Delivery::Gone => return gone(&state),
                        Delivery::PastDeadline => break None,
                    },
                    None => break Some(result.await.unwrap_or_else(|_| Err(stopped()))),
                },
                // Noticed while the prompt waits in the queue too, so it is never dispatched.
                () = events.closed() => return gone(&state),
                () = tokio::time::sleep_until(deadline) => break None,
            }
        };
        let mut last = Vec::new();
        match ended {
            None => {
                let error = timed_out(state.request_timeout);
                state.metrics.record(Err(&error), started);
                last.push(data(ApiError::from_pool(&error).body()));
            }
            Some(outcome) => {
                state.metrics.record(outcome.as_ref(), started);
                match outcome {
                    Ok(response) => {
                        if first {
                            last.push(data(envelope.chunk(None, true, None, include_usage)));
                        }
                        last.push(data(envelope.chunk(None, false, Some(&response), include_usage)));
                        if include_usage {
                            last.push(data(envelope.usage_chunk(&response)));
                        }
                    }
                    Err(error) => last.push(data(ApiError::from_pool(&error).body())),
                }
            }
        }
        last.push(Event::default().data("[DONE]"));
        // Past the request's deadline the last events still get the stall limit to go out.
        let until = deadline.max(tokio::time::Instant::now() + stall);
        for event in last {
            if deliver(&events, event, until, stall).await != Delivery::Sent {
                return;
            }
        }
    });
    Sse::new(ReceiverStream::new(receiver)).keep_alive(KeepAlive::default()).into_response()
}

#[derive(Debug, PartialEq, Eq)]
enum Delivery {
    Sent,
    /// The client left, or took no data for the stall limit.
    Gone,
    PastDeadline,
}

/// Queues one event for the client's stream, raced against its departure, a stall and the deadline:
/// an HTTP/2 client that holds its stream's window at 0 keeps a healthy socket (no write deadline
/// fires), and only this notices it.
async fn deliver(
    events: &mpsc::Sender<Result<Event, std::convert::Infallible>>,
    event: Event,
    deadline: tokio::time::Instant,
    stall: Duration,
) -> Delivery {
    tokio::select! {
        sent = events.send(Ok(event)) => if sent.is_ok() { Delivery::Sent } else { Delivery::Gone },
        () = events.closed() => Delivery::Gone,
        () = tokio::time::sleep(stall) => Delivery::Gone,
        () = tokio::time::sleep_until(deadline) => Delivery::PastDeadline,
    }
}

async fn models(State(state): State<Arc<HttpState>>) -> Response {
    let workers = state.scheduler.workers().await.unwrap_or_default();
    let names = state.model_names.listed(workers.iter().map(|w| &w.report.description));
    let data: Vec<Value> = names.iter().map(|name| json!({"id": name, "object": "model", "created": 0, "owned_by": "modelpool"})).collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

async fn status(State(state): State<Arc<HttpState>>) -> Response {
    let workers = state.scheduler.workers().await.unwrap_or_default();
    crate::status_page::status(&workers, state.scheduler.gauges(), &state.metrics, &state.model_names)
}

async fn metrics(State(state): State<Arc<HttpState>>) -> Response {
    let workers = state.scheduler.workers().await.unwrap_or_default();
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    (headers, state.metrics.render(&workers, state.scheduler.gauges())).into_response()
}

/// Ready when at least one worker takes prompts.
/// Read from what the scheduler published, never by asking it: probes are unauthenticated and must not
/// queue behind (or delay) heartbeats and prompts.
async fn ready(State(state): State<Arc<HttpState>>) -> Response {
    let serving = state.scheduler.gauges().serving_workers;
    let status = if serving > 0 { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, axum::Json(json!({"ready": serving > 0, "workers_serving": serving}))).into_response()
}
