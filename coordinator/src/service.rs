//! The gRPC `Coordinator` service: every call is checked against its door (see `access`); membership
//! messages become `modelpool::membership` types and prompts pass admission (see `admission`) before
//! they reach the scheduler, so the wire types stop here.

use std::sync::Arc;
use std::time::Instant;

use modelpool::proto::{self, ProtocolVersion, coordinator_server::Coordinator};
use modelpool::request::carries_schema;
use modelpool::{PoolError, PredictRequest};
use tonic::{Request, Response, Status};

use crate::access::Access;
use crate::admission::{Admission, converted};
use crate::metrics::CoordinatorMetrics;
use crate::scheduler::{Scheduler, stopped};

pub struct CoordinatorService {
    access: Access,
    scheduler: Scheduler,
    metrics: Arc<CoordinatorMetrics>,
    admission: Arc<Admission>,
}

/// Most prompts in one PredictBatch.
pub const MAX_BATCH: usize = 1024;

impl CoordinatorService {
    pub fn new(access: Access, scheduler: Scheduler, metrics: Arc<CoordinatorMetrics>, admission: Arc<Admission>) -> Self {
        Self { access, scheduler, metrics, admission }
    }
}

fn error_result(index: usize, error: &PoolError) -> proto::PredictResult {
    proto::PredictResult {
        index: index as u32,
        outcome: Some(proto::predict_result::Outcome::Error(proto::PredictError { code: error.code() as i32, message: error.to_string() })),
    }
}

#[tonic::async_trait]
impl Coordinator for CoordinatorService {
    async fn register(&self, request: Request<proto::RegisterRequest>) -> Result<Response<proto::RegisterResponse>, Status> {
        self.access.worker(&request)?;
        let request = request.into_inner();
        if request.protocol_version != ProtocolVersion::ProtocolVersion1 as i32 {
            return Err(PoolError::FailedPrecondition(format!(
                "protocol_version {} is not supported; this coordinator speaks {}",
                request.protocol_version,
                ProtocolVersion::ProtocolVersion1 as i32
            ))
            .into());
        }
        let info = request.info.ok_or_else(|| PoolError::invalid("info", "missing"))?;
        Ok(Response::new(self.scheduler.register(info.into()).await?.into()))
    }

    async fn heartbeat(&self, request: Request<proto::HeartbeatRequest>) -> Result<Response<proto::HeartbeatResponse>, Status> {
        self.access.worker(&request)?;
        self.scheduler.heartbeat(request.into_inner().into()).await?;
        Ok(Response::new(proto::HeartbeatResponse {}))
    }

    async fn deregister(&self, request: Request<proto::DeregisterRequest>) -> Result<Response<proto::DeregisterResponse>, Status> {
        self.access.worker(&request)?;
        let proto::DeregisterRequest { worker_id, lease } = request.into_inner();
        self.scheduler.deregister(worker_id, lease).await?;
        Ok(Response::new(proto::DeregisterResponse {}))
    }

    async fn list_workers(&self, request: Request<proto::ListWorkersRequest>) -> Result<Response<proto::ListWorkersResponse>, Status> {
        self.access.client(&request)?;
        let workers = self.scheduler.workers().await?.iter().map(proto::WorkerStatus::from).collect();
        Ok(Response::new(proto::ListWorkersResponse { workers }))
    }

    async fn predict(&self, request: Request<proto::PredictRequest>) -> Result<Response<proto::PredictResponse>, Status> {
        let started = Instant::now();
        self.access.client(&request).inspect_err(|e| self.metrics.record(Err(e), started))?;
        let request = request.into_inner();
        let converted = converted(carries_schema(&request), move || PredictRequest::try_from(request)).await;
        let admitted = self.admission.admit(converted, "", started)?;
        let result = self.scheduler.predict(admitted).await;
        self.metrics.record(result.as_ref(), started);
        Ok(Response::new(result?.into()))
    }

    async fn predict_batch(&self, request: Request<proto::PredictBatchRequest>) -> Result<Response<proto::PredictBatchResponse>, Status> {
        let started = Instant::now();
        self.access.client(&request).inspect_err(|e| self.metrics.record(Err(e), started))?;
        let requests = request.into_inner().requests;
        if requests.is_empty() {
            return Err(PoolError::invalid("requests", "empty: give at least one prompt").into());
        }
        if requests.len() > MAX_BATCH {
            return Err(PoolError::invalid("requests", format!("{} prompts, limit {MAX_BATCH}", requests.len())).into());
        }
        // A bad prompt gets its own error result; the valid ones still run.
        let mut results: Vec<Option<proto::PredictResult>> = vec![None; requests.len()];
        let mut valid = Vec::new();
        let mut positions = Vec::new();
        for (index, request) in requests.into_iter().enumerate() {
            let converted = converted(carries_schema(&request), move || PredictRequest::try_from(request)).await;
            match self.admission.admit(converted, &format!("requests[{index}]"), started) {
                Ok(admitted) => {
                    valid.push((admitted, index));
                    positions.push(index);
                }
                Err(error) => results[index] = Some(error_result(index, &error)),
            }
        }
        if !valid.is_empty() {
            let receivers = self.scheduler.submit(valid).await?;
            let answers = futures::future::join_all(receivers).await;
            for (index, answer) in positions.into_iter().zip(answers) {
                let answer = answer.unwrap_or_else(|_| Err(stopped()));
                self.metrics.record(answer.as_ref(), started);
                results[index] = Some(match answer {
                    Ok(response) => proto::PredictResult {
                        index: index as u32,
                        outcome: Some(proto::predict_result::Outcome::Response(response.into())),
                    },
                    Err(error) => error_result(index, &error),
                });
            }
        }
        let results = results.into_iter().map(|r| r.expect("every prompt has a result")).collect();
        Ok(Response::new(proto::PredictBatchResponse { results }))
    }
}
