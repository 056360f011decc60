//! Fault injection for drills and tests (scripts/fault-drill.sh, coordinator/tests/hardening.rs): each
//! fault is off unless its environment variable is set, and then behaves as a bug in an engine would.
//! The variables are read once, when the worker starts ([`faults`]), and each fault that is on is logged
//! as a warning then: never looked up on the engine thread per job.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use modelpool::{PredictRequest, Prompt};

/// The faults this process injects.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Faults {
    /// `MODELPOOL_FAULT_ENGINE_PANIC_AFTER=N`: the engine thread panics when it takes job N+1 (the
    /// warm-up is job 1).
    pub engine_panic_after: Option<u64>,
    /// `MODELPOOL_FAULT_POISON=TEXT`: a request whose prompt contains TEXT is poisoned: every decode
    /// step that includes it fails (see `Job::poisoned`).
    pub poison: Option<String>,
    /// `MODELPOOL_FAULT_STALL_SECS=S`: the first time a job generates its second token, the engine
    /// thread stops for S seconds (a stuck kernel) while the rest of the worker, heartbeats included,
    /// goes on.
    pub stall_secs: Option<u64>,
}

impl Faults {
    fn from(var: impl Fn(&str) -> Option<String>) -> Self {
        Self {
            engine_panic_after: var("MODELPOOL_FAULT_ENGINE_PANIC_AFTER").and_then(|v| v.parse().ok()),
            poison: var("MODELPOOL_FAULT_POISON").filter(|marker| !marker.is_empty()),
            stall_secs: var("MODELPOOL_FAULT_STALL_SECS").and_then(|v| v.parse().ok()),
        }
    }
}

/// This process's faults, read from its environment the first time (the worker asks at start).
pub fn faults() -> &'static Faults {
    static FAULTS: OnceLock<Faults> = OnceLock::new();
    FAULTS.get_or_init(|| {
        let faults = Faults::from(|name| std::env::var(name).ok());
        if faults != Faults::default() {
            tracing::warn!(?faults, "fault injection is on: this worker fails on purpose");
        }
        faults
    })
}

pub fn panics_taking(job_number: u64) -> bool {
    faults().engine_panic_after.is_some_and(|n| job_number > n)
}

pub fn is_poisoned(request: &PredictRequest) -> bool {
    let Some(marker) = &faults().poison else { return false };
    match &request.prompt {
        Prompt::Raw(text) => text.contains(marker.as_str()),
        Prompt::Chat(messages) => messages.iter().any(|m| m.content.contains(marker.as_str())),
    }
}

pub fn stall_once_at_second_token(generated: u32) {
    static STALLED: AtomicBool = AtomicBool::new(false);
    if generated != 2 {
        return;
    }
    let Some(secs) = faults().stall_secs else { return };
    if !STALLED.swap(true, Ordering::SeqCst) {
        tracing::warn!(secs, "fault injection (MODELPOOL_FAULT_STALL_SECS): the engine thread stalls");
        std::thread::sleep(Duration::from_secs(secs));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_are_off_unless_their_variable_is_set_and_valid() {
        assert_eq!(Faults::from(|_| None), Faults::default());
        let set = |name: &str| match name {
            "MODELPOOL_FAULT_ENGINE_PANIC_AFTER" => Some("1".to_string()),
            "MODELPOOL_FAULT_POISON" => Some(String::new()),
            "MODELPOOL_FAULT_STALL_SECS" => Some("soon".to_string()),
            _ => None,
        };
        assert_eq!(
            Faults::from(set),
            Faults { engine_panic_after: Some(1), ..Faults::default() },
            "an empty marker or a bad number is off"
        );
    }
}
