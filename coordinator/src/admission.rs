//! Where every prompt enters the pool, whichever door it came through (gRPC or the HTTP API): it is
//! validated with the same rules as a worker's, given an id if it has none, and a refusal is counted.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use modelpool::proto;
use modelpool::{PoolError, PredictRequest};

use crate::metrics::CoordinatorMetrics;

/// A prompt that passed validation, ready for the scheduler.
#[derive(Debug, Clone)]
pub struct Admitted {
    pub request: proto::PredictRequest,
    pub max_tokens: u32,
}

/// Numbers prompts (one sequence for the whole coordinator) and counts refusals.
pub struct Admission {
    next_id: AtomicU64,
    metrics: Arc<CoordinatorMetrics>,
}

impl Admission {
    pub fn new(metrics: Arc<CoordinatorMetrics>) -> Self {
        Self { next_id: AtomicU64::new(1), metrics }
    }

    /// Validates one prompt; `field` prefixes the field a refusal names (`requests[3]` in a batch).
    /// A prompt without an id gets `r<N>`.
    pub fn admit(&self, mut request: proto::PredictRequest, field: &str, started: Instant) -> Result<Admitted, PoolError> {
        match PredictRequest::try_from(request.clone()) {
            Ok(validated) => {
                if request.request_id.is_empty() {
                    request.request_id = format!("r{}", self.next_id.fetch_add(1, Ordering::Relaxed));
                }
                // Running alone is the scheduler's retry tool (it idles the worker's other slots), not
                // something a client may ask of the pool.
                request.run_alone = false;
                Ok(Admitted { request, max_tokens: validated.sampling.max_tokens })
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
        let admission = Admission::new(Arc::new(CoordinatorMetrics::default()));
        let chat = |text: &str| proto::PredictRequest::from(&PredictRequest::user(text, 4));
        let first = admission.admit(chat("a"), "", Instant::now()).unwrap();
        let second = admission.admit(chat("b"), "", Instant::now()).unwrap();
        assert_ne!(first.request.request_id, second.request.request_id);
        assert_eq!(first.max_tokens, 4);
        let mut named = chat("c");
        named.request_id = "mine".into();
        named.run_alone = true;
        let named = admission.admit(named, "", Instant::now()).unwrap().request;
        assert_eq!(named.request_id, "mine");
        assert!(!named.run_alone, "only the scheduler asks a worker to run a prompt alone");
        let mut bad = chat("d");
        bad.sampling.as_mut().unwrap().max_tokens = Some(0);
        let error = admission.admit(bad, "requests[2]", Instant::now()).unwrap_err();
        assert!(error.to_string().contains("requests[2].sampling.max_tokens"), "{error}");
    }
}
