//! The retry policy, in one place: what a failed attempt says about its worker, and what becomes of its
//! prompt. Each rule has a name; the scheduler only carries the decisions out.

use modelpool::PoolError;
use tonic::Code;

/// A transport-level failure: the worker may be dead, so it gets nothing until its next heartbeat. (A
/// cancelled call is the caller's doing, not the worker's.)
pub fn means_worker_may_be_dead(code: Code) -> bool {
    matches!(code, Code::Unavailable | Code::Unknown)
}

/// What a failed attempt leaves to do for its prompt, by the failure alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// Another worker might not share the failure: the worker died, was overloaded or timed out.
    RetryElsewhere,
    /// Run it again with no other sequence beside it (`run_alone`): its batch failed, so the cause may
    /// be a neighbour's (ABORTED); or it failed with an internal error, which gets one more attempt,
    /// alone, so that it cannot take neighbours down with it.
    RetryAlone,
    /// Retrying cannot help: the request itself was refused (invalid, too long for the context), or it
    /// failed with an internal error a second time. The prompt fails with this error.
    Final,
}

/// The rule for a failed attempt with `code`, given how many internal errors the prompt met before.
pub fn after_failure(code: Code, internal_errors_before: u32) -> AfterFailure {
    match code {
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded | Code::ResourceExhausted => {
            AfterFailure::RetryElsewhere
        }
        Code::Aborted => AfterFailure::RetryAlone,
        Code::Internal if internal_errors_before == 0 => AfterFailure::RetryAlone,
        _ => AfterFailure::Final,
    }
}

/// What a prompt has been through, as far as retrying it goes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tries {
    /// Attempts made, the failed one included.
    pub attempts: u32,
    /// Attempts before the failed one that ended in an internal error.
    pub internal_errors: u32,
    /// Text was already sent to the caller: a retry would send it again.
    pub streamed: bool,
}

/// What becomes of a prompt whose attempt failed.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Back to the head of the queue, for another worker (alone when `alone`).
    Requeue { alone: bool },
    /// The caller gets this error.
    Fail(PoolError),
    /// The caller gets this error, which says the prompt failed on every attempt it was allowed.
    OutOfAttempts(PoolError),
}

/// The decision for a prompt after `tries` whose last attempt failed with `code` and `error`: a final
/// failure fails with its own error; a streamed prompt whose text was partly sent fails saying its
/// answer is incomplete; one out of attempts fails saying so; otherwise it goes back to the queue.
pub fn decide(code: Code, error: PoolError, tries: Tries, max_attempts: u32) -> Decision {
    let next = after_failure(code, tries.internal_errors);
    if next == AfterFailure::Final {
        return Decision::Fail(error);
    }
    if tries.streamed {
        // Part of the answer has reached the caller: another worker would send it again from the
        // start. The caller is told plainly that its answer is incomplete and why.
        return Decision::Fail(PoolError::Unavailable(format!(
            "the answer is incomplete: its worker failed after part of it was sent ({error}); send the request again"
        )));
    }
    if tries.attempts >= max_attempts {
        return Decision::OutOfAttempts(PoolError::Unavailable(format!(
            "prompt failed after {} attempts; last error: {error}",
            tries.attempts
        )));
    }
    Decision::Requeue { alone: next == AfterFailure::RetryAlone }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_batch_is_retried_alone_and_an_internal_error_once() {
        assert_eq!(after_failure(Code::Aborted, 0), AfterFailure::RetryAlone);
        assert_eq!(after_failure(Code::Internal, 0), AfterFailure::RetryAlone);
        assert_eq!(after_failure(Code::Internal, 1), AfterFailure::Final, "a second internal error is the prompt's own");
        assert_eq!(after_failure(Code::Unavailable, 5), AfterFailure::RetryElsewhere);
        assert_eq!(after_failure(Code::InvalidArgument, 0), AfterFailure::Final);
    }

    #[test]
    fn a_prompt_is_requeued_until_its_attempts_run_out_or_its_text_was_sent() {
        let error = || PoolError::Unavailable("worker gone".into());
        let tries = Tries { attempts: 1, ..Tries::default() };
        assert_eq!(decide(Code::Unavailable, error(), tries, 3), Decision::Requeue { alone: false });
        assert_eq!(decide(Code::Aborted, error(), tries, 3), Decision::Requeue { alone: true });
        let Decision::OutOfAttempts(out_of_attempts) = decide(Code::Unavailable, error(), Tries { attempts: 3, ..tries }, 3) else {
            panic!("the third failure of three is final")
        };
        assert!(out_of_attempts.to_string().contains("after 3 attempts; last error: unavailable: worker gone"), "{out_of_attempts}");
        let Decision::Fail(cut_short) = decide(Code::Unknown, error(), Tries { streamed: true, ..tries }, 3) else {
            panic!("a streamed answer is never sent twice")
        };
        assert!(matches!(&cut_short, PoolError::Unavailable(m) if m.contains("incomplete")), "{cut_short:?}");
        let refused = PoolError::invalid("prompt", "too long");
        assert_eq!(decide(Code::InvalidArgument, refused.clone(), tries, 3), Decision::Fail(refused));
    }
}
