//! Fault injection for drills and tests (scripts/fault-drill.sh, coordinator/tests/hardening.rs): each
//! fault is off unless its environment variable is set, and then behaves as a bug in an engine would.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use modelpool::{PredictRequest, Prompt};

/// `MODELPOOL_FAULT_ENGINE_PANIC_AFTER=N`: the engine thread panics when it takes job N+1 (the warm-up
/// is job 1).
pub fn panics_taking(job_number: u64) -> bool {
    std::env::var("MODELPOOL_FAULT_ENGINE_PANIC_AFTER").ok().and_then(|v| v.parse::<u64>().ok()).is_some_and(|n| job_number > n)
}

/// `MODELPOOL_FAULT_POISON=TEXT`: a request whose prompt contains TEXT is poisoned: every decode step
/// that includes it fails (see `Job::poisoned`).
pub fn is_poisoned(request: &PredictRequest) -> bool {
    let Ok(marker) = std::env::var("MODELPOOL_FAULT_POISON") else { return false };
    !marker.is_empty()
        && match &request.prompt {
            Prompt::Raw(text) => text.contains(&marker),
            Prompt::Chat(messages) => messages.iter().any(|m| m.content.contains(&marker)),
        }
}

/// `MODELPOOL_FAULT_STALL_SECS=S`: the first time a job generates its second token, the engine thread
/// stops for S seconds (a stuck kernel) while the rest of the worker, heartbeats included, goes on.
pub fn stall_once_at_second_token(generated: u32) {
    static STALLED: AtomicBool = AtomicBool::new(false);
    if generated != 2 {
        return;
    }
    let Some(secs) = std::env::var("MODELPOOL_FAULT_STALL_SECS").ok().and_then(|v| v.parse::<u64>().ok()) else { return };
    if !STALLED.swap(true, Ordering::SeqCst) {
        tracing::warn!(secs, "fault injection (MODELPOOL_FAULT_STALL_SECS): the engine thread stalls");
        std::thread::sleep(Duration::from_secs(secs));
    }
}
