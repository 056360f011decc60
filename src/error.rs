//! The errors a request can end with, and the one place they become gRPC statuses.

use tonic::{Code, Status};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// The request itself is wrong; retrying it anywhere gives the same answer.
    #[error("invalid {field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    /// A bounded queue is full; the caller may retry later.
    #[error("overloaded: {0}")]
    ResourceExhausted(String),
    /// No worker (or no model) can take the request now.
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("deadline exceeded: {0}")]
    DeadlineExceeded(String),
    #[error("cancelled: {0}")]
    Cancelled(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// The call lacks the pool's shared secret, or carries the wrong one.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The caller is known but may not do this (another worker's heartbeat, say).
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The attempt failed for a reason that need not be this request's own: the forward pass of a batch
    /// it was in failed. Retried alone, it either runs or fails with its own error.
    #[error("aborted: {0}")]
    Aborted(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl PoolError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        PoolError::InvalidArgument { field: field.into(), reason: reason.into() }
    }

    pub fn code(&self) -> Code {
        match self {
            PoolError::InvalidArgument { .. } => Code::InvalidArgument,
            PoolError::ResourceExhausted(_) => Code::ResourceExhausted,
            PoolError::Unavailable(_) => Code::Unavailable,
            PoolError::DeadlineExceeded(_) => Code::DeadlineExceeded,
            PoolError::Cancelled(_) => Code::Cancelled,
            PoolError::NotFound(_) => Code::NotFound,
            PoolError::FailedPrecondition(_) => Code::FailedPrecondition,
            PoolError::AlreadyExists(_) => Code::AlreadyExists,
            PoolError::Unauthenticated(_) => Code::Unauthenticated,
            PoolError::PermissionDenied(_) => Code::PermissionDenied,
            PoolError::Aborted(_) => Code::Aborted,
            PoolError::Internal(_) => Code::Internal,
        }
    }

    pub fn to_status(&self) -> Status {
        Status::new(self.code(), self.to_string())
    }

    /// Rebuilds an error from a status received from another daemon, keeping its code and message.
    pub fn from_status(status: &Status) -> Self {
        let message = status.message().to_string();
        match status.code() {
            Code::InvalidArgument => {
                // Our own refusals read "invalid FIELD: REASON"; keep field and reason apart again.
                let body = message.strip_prefix("invalid ").unwrap_or(&message);
                match body.split_once(": ") {
                    Some((field, reason)) => PoolError::invalid(field, reason),
                    None => PoolError::invalid("request", body),
                }
            }
            Code::ResourceExhausted => PoolError::ResourceExhausted(strip(&message, "overloaded")),
            Code::Unavailable => PoolError::Unavailable(strip(&message, "unavailable")),
            Code::DeadlineExceeded => PoolError::DeadlineExceeded(strip(&message, "deadline exceeded")),
            Code::Cancelled => PoolError::Cancelled(strip(&message, "cancelled")),
            Code::NotFound => PoolError::NotFound(strip(&message, "not found")),
            Code::FailedPrecondition => PoolError::FailedPrecondition(strip(&message, "failed precondition")),
            Code::AlreadyExists => PoolError::AlreadyExists(strip(&message, "already exists")),
            Code::Unauthenticated => PoolError::Unauthenticated(strip(&message, "unauthenticated")),
            Code::PermissionDenied => PoolError::PermissionDenied(strip(&message, "permission denied")),
            Code::Aborted => PoolError::Aborted(strip(&message, "aborted")),
            Code::Internal => PoolError::Internal(strip(&message, "internal error")),
            code => PoolError::Internal(format!("{code:?}: {message}")),
        }
    }
}

/// Drops the "label: " prefix that Display adds, so that an error passed between daemons is not labelled twice.
fn strip(message: &str, label: &str) -> String {
    message.strip_prefix(label).and_then(|m| m.strip_prefix(": ")).unwrap_or(message).to_string()
}

impl From<PoolError> for Status {
    fn from(error: PoolError) -> Self {
        error.to_status()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_round_trip_keeps_code_and_message() {
        let error = PoolError::invalid("sampling.max_tokens", "5000 exceeds the context (2048 tokens per slot)");
        let status = error.to_status();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(PoolError::from_status(&status), error);
        let busy = PoolError::ResourceExhausted("queue full (8 waiting, limit 8)".into());
        assert_eq!(PoolError::from_status(&busy.to_status()), busy);
        let gone = PoolError::Unavailable("no workers registered".into());
        assert_eq!(PoolError::from_status(&gone.to_status()).to_string(), "unavailable: no workers registered");
    }
}
