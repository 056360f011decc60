//! Where every prompt enters the pool, whichever door it came through (gRPC or the HTTP API): each door
//! has made the domain [`PredictRequest`] from what it received (validated by the same
//! [`PredictRequest::validate`] as a worker's); here it is given an id if it has none and made strict
//! about max_tokens when the coordinator is (`--strict-max-tokens`), or its refusal is counted and named
//! for its place in a batch.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use modelpool::{PoolError, PredictRequest};
use tokio::sync::Semaphore;

use crate::metrics::CoordinatorMetrics;

/// Numbers prompts (one sequence for the whole coordinator) and counts refusals.
pub struct Admission {
    next_id: AtomicU64,
    metrics: Arc<CoordinatorMetrics>,
    strict_max_tokens: bool,
}

impl Admission {
    pub fn new(metrics: Arc<CoordinatorMetrics>, strict_max_tokens: bool) -> Self {
        Self { next_id: AtomicU64::new(1), metrics, strict_max_tokens }
    }

    /// Admits one prompt as its door made it (`request`: the door's conversion and validation);
    /// `field` prefixes the field a refusal names (`requests[3]` in a batch). A prompt without an id
    /// gets `r<N>`.
    pub fn admit(&self, request: Result<PredictRequest, PoolError>, field: &str, started: Instant) -> Result<PredictRequest, PoolError> {
        match request {
            Ok(mut request) => {
                if request.request_id.is_empty() {
                    request.request_id = format!("r{}", self.next_id.fetch_add(1, Ordering::Relaxed));
                }
                request.sampling.strict_max_tokens |= self.strict_max_tokens;
                Ok(request)
            }
            Err(error) => {
                let error = prefix(error, field);
                self.metrics.record(Err(&error), started);
                Err(error)
            }
        }
    }

    /// Counts a prompt refused before it reached [`Admission::admit`] (a body that is not valid JSON,
    /// an API field out of range).
    pub fn refused(&self, error: &PoolError, started: Instant) {
        self.metrics.record(Err(error), started);
    }
}

/// Runs a door's conversion of one request (`convert`, which validates it): in place, or, when the
/// request carries a JSON Schema (`compiles`), on the blocking pool, at most one per core at a time.
/// Compiling a schema of the allowed 64 KiB takes up to about 50 ms on the development VM; on a runtime
/// thread that would hold up heartbeats, health probes and every other request's I/O.
pub async fn converted<T: Send + 'static>(
    compiles: bool,
    convert: impl FnOnce() -> Result<T, PoolError> + Send + 'static,
) -> Result<T, PoolError> {
    if !compiles {
        return convert();
    }
    static COMPILING: OnceLock<Semaphore> = OnceLock::new();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let _permit = COMPILING.get_or_init(|| Semaphore::new(cores)).acquire().await.map_err(|e| PoolError::Internal(e.to_string()))?;
    tokio::task::spawn_blocking(convert).await.map_err(|e| PoolError::Internal(format!("request conversion: {e}")))?
}

/// Puts `requests[i].` in front of a field name, so a refusal inside a batch says which prompt.
fn prefix(error: PoolError, field: &str) -> PoolError {
    match error {
        PoolError::InvalidArgument { field: inner, reason } if !field.is_empty() => {
            PoolError::InvalidArgument { field: format!("{field}.{inner}"), reason }
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_given_once_and_refusals_name_the_prompt() {
        let admission = Admission::new(Arc::new(CoordinatorMetrics::default()), false);
        let chat = |text: &str| modelpool::proto::PredictRequest::from(&PredictRequest::user(text, 4));
        let admit = |wire, field| admission.admit(PredictRequest::try_from(wire), field, Instant::now());
        let first = admit(chat("a"), "").unwrap();
        let second = admit(chat("b"), "").unwrap();
        assert_ne!(first.request_id, second.request_id);
        assert_eq!(first.sampling.max_tokens, 4);
        let mut named = chat("c");
        named.request_id = "mine".into();
        named.run_alone = true;
        let named = admit(named, "").unwrap();
        assert_eq!(named.request_id, "mine");
        // The client's run_alone has nowhere to go: the domain request has no such field, and only the
        // scheduler sets it on the wire (Job.run_alone), so it needs no assertion here.
        let mut bad = chat("d");
        bad.sampling.as_mut().unwrap().max_tokens = Some(0);
        let error = admit(bad, "requests[2]").unwrap_err();
        assert!(error.to_string().contains("requests[2].sampling.max_tokens"), "{error}");
    }

    #[test]
    fn a_strict_coordinator_makes_every_prompt_strict_and_a_lenient_one_keeps_the_callers_choice() {
        let chat = |strict: Option<bool>| {
            let mut wire = modelpool::proto::PredictRequest::from(&PredictRequest::user("a", 4));
            wire.sampling.as_mut().unwrap().strict_max_tokens = strict;
            wire
        };
        let strict = Admission::new(Arc::new(CoordinatorMetrics::default()), true);
        let lenient = Admission::new(Arc::new(CoordinatorMetrics::default()), false);
        let admitted = |admission: &Admission, strict| {
            admission.admit(PredictRequest::try_from(chat(strict)), "", Instant::now()).unwrap().sampling.strict_max_tokens
        };
        assert!(admitted(&strict, None) && admitted(&strict, Some(false)));
        assert!(!admitted(&lenient, None) && admitted(&lenient, Some(true)));
    }
}
