//! The gRPC `Worker` service: validates a request, prepares it on a blocking thread, hands it to the
//! engine and relays the engine's events back as a unary response or a stream.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use futures::Stream;
use modelpool::proto::{self, worker_server::Worker};
use modelpool::{PoolError, PredictRequest};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};
use tracing::debug;

use crate::engine::{Completion, Delivery, Job, JobEvent};
use crate::state::{InFlight, SharedState};

pub struct WorkerService {
    state: Arc<SharedState>,
}

impl WorkerService {
    pub fn new(state: Arc<SharedState>) -> Self {
        Self { state }
    }

    /// Validates, prepares and queues a request; returns the receiver of its events.
    async fn start(
        &self,
        request: proto::PredictRequest,
        delivery: Delivery,
    ) -> Result<(mpsc::UnboundedReceiver<JobEvent>, String), PoolError> {
        let arrived = Instant::now();
        let engine = self.state.engine_for_new_request()?;
        let alone = request.run_alone;
        let prepare_engine = Arc::clone(&engine);
        // Off the runtime: converting validates (a JSON Schema is compiled once there) and preparing
        // tokenizes and compiles the schema against the model's vocabulary.
        let (prompt, request) = tokio::task::spawn_blocking(move || {
            let request = PredictRequest::try_from(request)?;
            let prompt = prepare_engine.prepare(&request);
            Ok::<_, PoolError>((prompt, request))
        })
        .await
        .map_err(|e| PoolError::Internal(format!("prepare task: {e}")))??;
        let poisoned = crate::engine::fault::is_poisoned(&request);
        let prompt = prompt?;
        debug!(request_id = %request.request_id, prompt_tokens = prompt.tokens.len(), "queued");
        let (events, rx) = mpsc::unbounded_channel();
        engine.submit(Job {
            request_id: request.request_id.clone(),
            prompt,
            sampling: request.sampling,
            arrived,
            events,
            delivery,
            alone,
            poisoned,
        })?;
        Ok((rx, request.request_id))
    }
}

/// The wire's answer for a finished generation: the worker's one conversion of an answer to proto.
fn response(request_id: String, completion: Completion) -> proto::PredictResponse {
    modelpool::response::PredictResponse {
        request_id,
        text: completion.text,
        prompt_tokens: completion.prompt_tokens,
        completion_tokens: completion.completion_tokens,
        cached_tokens: completion.cached_tokens,
        copied_tokens: completion.copied_tokens,
        finish_reason: Some(completion.finish_reason),
        timings: Some(completion.timings),
        worker_id: String::new(),
        attempts: 1,
    }
    .into()
}

/// How a stream's caller wants its text: piece by piece, or gathered per interval (see
/// [`proto::STREAM_INTERVAL_MS_HEADER`]).
fn stream_delivery(metadata: &tonic::metadata::MetadataMap) -> Result<Delivery, PoolError> {
    let Some(value) = metadata.get(proto::STREAM_INTERVAL_MS_HEADER) else { return Ok(Delivery::Pieces) };
    let field = || format!("metadata {}", proto::STREAM_INTERVAL_MS_HEADER);
    let ms: u64 = value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| PoolError::invalid(field(), "not a whole number of milliseconds"))?;
    if ms > proto::MAX_STREAM_INTERVAL_MS {
        return Err(PoolError::invalid(field(), format!("{ms} ms exceeds the limit of {} ms", proto::MAX_STREAM_INTERVAL_MS)));
    }
    Ok(if ms == 0 { Delivery::Pieces } else { Delivery::Every(std::time::Duration::from_millis(ms)) })
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<proto::PredictChunk, Status>> + Send>>;

#[tonic::async_trait]
impl Worker for WorkerService {
    async fn predict(&self, request: Request<proto::PredictRequest>) -> Result<Response<proto::PredictResponse>, Status> {
        let _in_flight = self.state.track();
        let (mut events, request_id) =
            self.start(request.into_inner(), Delivery::Whole).await.inspect_err(|e| self.state.metrics.record(Err(e)))?;
        while let Some(event) = events.recv().await {
            match event {
                JobEvent::Text(_) => {}
                JobEvent::Done(completion) => {
                    self.state.metrics.record(Ok(&completion));
                    return Ok(Response::new(response(request_id, completion)));
                }
                JobEvent::Failed(error) => {
                    self.state.metrics.record(Err(&error));
                    return Err(error.to_status());
                }
            }
        }
        let error = PoolError::Internal("the engine dropped the request".into());
        self.state.metrics.record(Err(&error));
        Err(error.to_status())
    }

    type PredictStreamStream = ChunkStream;

    async fn predict_stream(&self, request: Request<proto::PredictRequest>) -> Result<Response<Self::PredictStreamStream>, Status> {
        let in_flight = self.state.track();
        let delivery = stream_delivery(request.metadata()).inspect_err(|e| self.state.metrics.record(Err(e)))?;
        let (events, request_id) = self.start(request.into_inner(), delivery).await.inspect_err(|e| self.state.metrics.record(Err(e)))?;
        let worker = Arc::clone(&self.state);
        let stream = futures::stream::unfold(
            Some((events, request_id, in_flight, worker)),
            |state: Option<(mpsc::UnboundedReceiver<JobEvent>, String, InFlight, Arc<SharedState>)>| async move {
                let (mut events, request_id, in_flight, worker) = state?;
                match events.recv().await {
                    Some(JobEvent::Text(text)) => {
                        Some((Ok(proto::PredictChunk { text, done: None }), Some((events, request_id, in_flight, worker))))
                    }
                    Some(JobEvent::Done(completion)) => {
                        worker.metrics.record(Ok(&completion));
                        let done = response(request_id, completion);
                        Some((Ok(proto::PredictChunk { text: String::new(), done: Some(done) }), None))
                    }
                    Some(JobEvent::Failed(error)) => {
                        worker.metrics.record(Err(&error));
                        Some((Err(error.to_status()), None))
                    }
                    None => Some((Err(Status::internal("the engine dropped the request")), None)),
                }
            },
        );
        Ok(Response::new(Box::pin(stream)))
    }

    async fn info(&self, _request: Request<proto::InfoRequest>) -> Result<Response<proto::WorkerInfo>, Status> {
        Ok(Response::new(self.state.info()))
    }
}
