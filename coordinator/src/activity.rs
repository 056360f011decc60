//! What the status page shows beside the workers: the last errors the coordinator answered, and the
//! prompts answered and tokens generated per interval over the last minutes. Both are bounded (a
//! number of entries, each error message cut to a number of bytes), so watching costs fixed memory.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use modelpool::PoolError;
use modelpool::metrics::Outcome;

/// Errors kept, newest first on the page.
pub const RECENT_ERRORS: usize = 20;
/// Bytes of an error's message kept.
pub const ERROR_MESSAGE_BYTES: usize = 300;
/// How often the throughput series takes a sample, and how many it keeps (10 minutes).
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);
pub const SAMPLES: usize = 120;

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RecentError {
    pub at_unix_ms: u64,
    /// The outcome label /metrics counts it under (`overloaded`, `invalid`, …).
    pub outcome: &'static str,
    pub message: String,
}

/// One interval of the throughput series, ending at `at_unix_ms`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Sample {
    pub at_unix_ms: u64,
    pub answered: u64,
    pub tokens: u64,
}

#[derive(Debug, Default)]
pub struct Activity {
    errors: Mutex<VecDeque<RecentError>>,
    series: Mutex<Series>,
}

#[derive(Debug, Default)]
struct Series {
    samples: VecDeque<Sample>,
    /// The totals at the last sample, so each sample holds its interval's increase.
    last_totals: Option<(u64, u64)>,
}

impl Activity {
    pub fn record_error(&self, error: &PoolError) {
        let mut message = error.to_string();
        if message.len() > ERROR_MESSAGE_BYTES {
            let cut = (0..=ERROR_MESSAGE_BYTES).rev().find(|&i| message.is_char_boundary(i)).unwrap_or(0);
            message.truncate(cut);
            message.push('…');
        }
        let entry = RecentError { at_unix_ms: now_ms(), outcome: Outcome::of_error(error).as_str(), message };
        let mut errors = self.errors.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if errors.len() == RECENT_ERRORS {
            errors.pop_back();
        }
        errors.push_front(entry);
    }

    /// Takes a sample from the running totals of answered prompts and generated tokens. The first call
    /// only sets the baseline.
    pub fn sample(&self, answered_total: u64, tokens_total: u64) {
        let mut series = self.series.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((answered, tokens)) = series.last_totals {
            if series.samples.len() == SAMPLES {
                series.samples.pop_front();
            }
            let sample = Sample {
                at_unix_ms: now_ms(),
                answered: answered_total.saturating_sub(answered),
                tokens: tokens_total.saturating_sub(tokens),
            };
            series.samples.push_back(sample);
        }
        series.last_totals = Some((answered_total, tokens_total));
    }

    /// Newest first.
    pub fn recent_errors(&self) -> Vec<RecentError> {
        self.errors.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).iter().cloned().collect()
    }

    /// Oldest first.
    pub fn series(&self) -> Vec<Sample> {
        self.series.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).samples.iter().copied().collect()
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_kept_newest_first_bounded_and_cut() {
        let activity = Activity::default();
        for i in 0..RECENT_ERRORS + 5 {
            activity.record_error(&PoolError::ResourceExhausted(format!("queue full {i}")));
        }
        activity.record_error(&PoolError::invalid("prompt", "é".repeat(ERROR_MESSAGE_BYTES)));
        let errors = activity.recent_errors();
        assert_eq!(errors.len(), RECENT_ERRORS);
        assert_eq!(errors[0].outcome, "invalid");
        assert!(errors[0].message.len() <= ERROR_MESSAGE_BYTES + '…'.len_utf8() && errors[0].message.ends_with('…'));
        assert_eq!(errors[1].message, format!("overloaded: queue full {}", RECENT_ERRORS + 4));
        assert_eq!(errors[1].outcome, "overloaded");
    }

    #[test]
    fn samples_hold_each_intervals_increase_and_the_oldest_leave() {
        let activity = Activity::default();
        activity.sample(10, 500);
        assert!(activity.series().is_empty(), "the first call sets the baseline");
        activity.sample(13, 620);
        activity.sample(13, 620);
        let series = activity.series();
        assert_eq!((series[0].answered, series[0].tokens), (3, 120));
        assert_eq!((series[1].answered, series[1].tokens), (0, 0));
        for i in 0..SAMPLES as u64 + 3 {
            activity.sample(13 + i, 620);
        }
        assert_eq!(activity.series().len(), SAMPLES);
    }
}
