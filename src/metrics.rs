//! Prometheus text exposition, written by hand: counters, gauges and fixed-bucket histograms, enough
//! for `GET /metrics` on both daemons without a metrics framework.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Latency buckets in seconds: 5 ms to 5 minutes, the range from a refused request to a long generation.
pub const LATENCY_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];

/// A histogram of seconds with fixed upper bounds. Lock-free: one atomic per bucket.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Non-cumulative counts per bound, plus one for +Inf.
    counts: Vec<AtomicU64>,
    sum_nanos: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self { bounds, counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(), sum_nanos: AtomicU64::new(0) }
    }

    pub fn latency() -> Self {
        Self::new(LATENCY_BUCKETS)
    }

    pub fn observe(&self, seconds: f64) {
        if !seconds.is_finite() || seconds < 0.0 {
            return;
        }
        let index = self.bounds.iter().position(|&b| seconds <= b).unwrap_or(self.bounds.len());
        self.counts[index].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add((seconds * 1e9) as u64, Ordering::Relaxed);
    }

    pub fn observe_ms(&self, ms: f64) {
        self.observe(ms / 1000.0);
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

/// The text of one scrape.
#[derive(Debug, Default)]
pub struct Exposition {
    text: String,
}

impl Exposition {
    pub fn new() -> Self {
        Self::default()
    }

    /// `# HELP` and `# TYPE` lines; call once per metric name, before its samples.
    pub fn describe(&mut self, name: &str, kind: &str, help: &str) -> &mut Self {
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
        self
    }

    /// One sample; `labels` are name/value pairs (values are escaped).
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) -> &mut Self {
        self.text.push_str(name);
        write_labels(&mut self.text, labels, None);
        let _ = writeln!(self.text, " {}", format_value(value));
        self
    }

    pub fn gauge(&mut self, name: &str, help: &str, value: f64) -> &mut Self {
        self.describe(name, "gauge", help).sample(name, &[], value)
    }

    pub fn counter(&mut self, name: &str, help: &str, value: u64) -> &mut Self {
        self.describe(name, "counter", help).sample(name, &[], value as f64)
    }

    pub fn histogram(&mut self, name: &str, help: &str, histogram: &Histogram) -> &mut Self {
        self.describe(name, "histogram", help);
        let mut cumulative = 0;
        for (i, count) in histogram.counts.iter().enumerate() {
            cumulative += count.load(Ordering::Relaxed);
            let bound = histogram.bounds.get(i).map_or("+Inf".to_string(), |b| format_value(*b));
            self.text.push_str(name);
            self.text.push_str("_bucket");
            write_labels(&mut self.text, &[], Some(&bound));
            let _ = writeln!(self.text, " {cumulative}");
        }
        let sum = histogram.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(self.text, "{name}_sum {}", format_value(sum));
        let _ = writeln!(self.text, "{name}_count {cumulative}");
        self
    }

    pub fn finish(self) -> String {
        self.text
    }
}

fn write_labels(out: &mut String, labels: &[(&str, &str)], le: Option<&str>) {
    if labels.is_empty() && le.is_none() {
        return;
    }
    out.push('{');
    let mut first = true;
    for (name, value) in labels.iter().copied().chain(le.map(|le| ("le", le))) {
        if !first {
            out.push(',');
        }
        first = false;
        let escaped = value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
        let _ = write!(out, "{name}=\"{escaped}\"");
    }
    out.push('}');
}

fn format_value(value: f64) -> String {
    if value.is_infinite() { if value > 0.0 { "+Inf".into() } else { "-Inf".into() } } else { format!("{value}") }
}

/// Counts of requests by how they ended, as one labelled counter.
#[derive(Debug, Default)]
pub struct Outcomes {
    counts: [AtomicU64; Outcome::ALL.len()],
}

/// How a request ended, from the caller's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Invalid,
    Overloaded,
    Unavailable,
    Timeout,
    Cancelled,
    Unauthenticated,
    Error,
}

impl Outcome {
    pub const ALL: [Outcome; 8] = [
        Outcome::Ok,
        Outcome::Invalid,
        Outcome::Overloaded,
        Outcome::Unavailable,
        Outcome::Timeout,
        Outcome::Cancelled,
        Outcome::Unauthenticated,
        Outcome::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Invalid => "invalid",
            Outcome::Overloaded => "overloaded",
            Outcome::Unavailable => "unavailable",
            Outcome::Timeout => "timeout",
            Outcome::Cancelled => "cancelled",
            Outcome::Unauthenticated => "unauthenticated",
            Outcome::Error => "error",
        }
    }

    pub fn of_error(error: &crate::PoolError) -> Self {
        use crate::PoolError as E;
        match error {
            E::InvalidArgument { .. } | E::FailedPrecondition(_) | E::NotFound(_) | E::AlreadyExists(_) => Outcome::Invalid,
            E::ResourceExhausted(_) => Outcome::Overloaded,
            E::Unavailable(_) => Outcome::Unavailable,
            E::DeadlineExceeded(_) => Outcome::Timeout,
            E::Cancelled(_) => Outcome::Cancelled,
            E::Unauthenticated(_) | E::PermissionDenied(_) => Outcome::Unauthenticated,
            E::Internal(_) | E::Aborted(_) => Outcome::Error,
        }
    }
}

impl Outcomes {
    pub fn record(&self, outcome: Outcome) {
        let index = Outcome::ALL.iter().position(|o| *o == outcome).expect("every outcome is listed");
        self.counts[index].fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self, outcome: Outcome) -> u64 {
        let index = Outcome::ALL.iter().position(|o| *o == outcome).expect("every outcome is listed");
        self.counts[index].load(Ordering::Relaxed)
    }

    pub fn render(&self, out: &mut Exposition, name: &str, help: &str) {
        out.describe(name, "counter", help);
        for outcome in Outcome::ALL {
            out.sample(name, &[("outcome", outcome.as_str())], self.get(outcome) as f64);
        }
    }
}

/// The per-request figures both daemons keep: how requests ended, three latency histograms and the
/// tokens generated. Each daemon names its series with its own prefix and says what its stages mean.
#[derive(Debug)]
pub struct RequestMetrics {
    requests: Outcomes,
    queue_wait: Histogram,
    ttft: Histogram,
    duration: Histogram,
    generated_tokens: AtomicU64,
}

/// The help text of each series of [`RequestMetrics`].
pub struct RequestHelp {
    pub requests: &'static str,
    pub queue_wait: &'static str,
    pub ttft: &'static str,
    pub duration: &'static str,
    pub tokens: &'static str,
}

impl Default for RequestMetrics {
    fn default() -> Self {
        Self {
            requests: Outcomes::default(),
            queue_wait: Histogram::latency(),
            ttft: Histogram::latency(),
            duration: Histogram::latency(),
            generated_tokens: AtomicU64::new(0),
        }
    }
}

impl RequestMetrics {
    /// An answered request: its queue wait and time to first token (when known), its duration and its
    /// tokens.
    pub fn record_answer(&self, stages_ms: Option<(f64, f64)>, duration_seconds: f64, tokens: u32) {
        self.requests.record(Outcome::Ok);
        self.duration.observe(duration_seconds);
        self.generated_tokens.fetch_add(u64::from(tokens), Ordering::Relaxed);
        if let Some((queue_ms, ttft_ms)) = stages_ms {
            self.queue_wait.observe_ms(queue_ms);
            self.ttft.observe_ms(ttft_ms);
        }
    }

    pub fn record_error(&self, error: &crate::PoolError) {
        self.requests.record(Outcome::of_error(error));
    }

    /// Requests by how they ended, in [`Outcome::ALL`]'s order.
    pub fn outcomes(&self) -> Vec<(&'static str, u64)> {
        Outcome::ALL.iter().map(|&outcome| (outcome.as_str(), self.requests.get(outcome))).collect()
    }

    /// Answered requests and the tokens generated for them, since the start.
    pub fn answered_and_tokens(&self) -> (u64, u64) {
        (self.requests.get(Outcome::Ok), self.generated_tokens.load(Ordering::Relaxed))
    }

    /// The series `{prefix}_requests_total`, `_queue_wait_seconds`, `_time_to_first_token_seconds`,
    /// `_request_duration_seconds` and `_generated_tokens_total`.
    pub fn render(&self, out: &mut Exposition, prefix: &str, help: &RequestHelp) {
        self.requests.render(out, &format!("{prefix}_requests_total"), help.requests);
        out.histogram(&format!("{prefix}_queue_wait_seconds"), help.queue_wait, &self.queue_wait);
        out.histogram(&format!("{prefix}_time_to_first_token_seconds"), help.ttft, &self.ttft);
        out.histogram(&format!("{prefix}_request_duration_seconds"), help.duration, &self.duration);
        out.counter(&format!("{prefix}_generated_tokens_total"), help.tokens, self.generated_tokens.load(Ordering::Relaxed));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_with_sum_and_count() {
        let h = Histogram::new(&[0.1, 1.0]);
        h.observe(0.05);
        h.observe(0.5);
        h.observe(0.5);
        h.observe(7.0);
        let mut out = Exposition::new();
        out.histogram("t_seconds", "test", &h);
        let text = out.finish();
        assert!(text.contains("t_seconds_bucket{le=\"0.1\"} 1\n"), "{text}");
        assert!(text.contains("t_seconds_bucket{le=\"1\"} 3\n"), "{text}");
        assert!(text.contains("t_seconds_bucket{le=\"+Inf\"} 4\n"), "{text}");
        assert!(text.contains("t_seconds_sum 8.05\n"), "{text}");
        assert!(text.contains("t_seconds_count 4\n"), "{text}");
        assert!(text.contains("# TYPE t_seconds histogram\n"));
    }

    #[test]
    fn label_values_are_escaped() {
        let mut out = Exposition::new();
        out.sample("m", &[("worker", "a\"b\\c")], 1.0);
        assert_eq!(out.finish(), "m{worker=\"a\\\"b\\\\c\"} 1\n");
    }

    #[test]
    fn outcomes_count_by_label() {
        let outcomes = Outcomes::default();
        outcomes.record(Outcome::Ok);
        outcomes.record(Outcome::Ok);
        outcomes.record(Outcome::of_error(&crate::PoolError::ResourceExhausted("full".into())));
        let mut out = Exposition::new();
        outcomes.render(&mut out, "r_total", "requests");
        let text = out.finish();
        assert!(text.contains("r_total{outcome=\"ok\"} 2\n"));
        assert!(text.contains("r_total{outcome=\"overloaded\"} 1\n"));
        assert!(text.contains("r_total{outcome=\"timeout\"} 0\n"));
    }
}
