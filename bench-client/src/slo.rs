//! Service-level objectives and goodput: the share of requests that were answered within the latency
//! targets the user set.

use crate::record::RequestRecord;

/// Latency targets; an unset target is always met.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Slo {
    pub ttft_ms: Option<f64>,
    pub e2e_ms: Option<f64>,
}

impl Slo {
    pub fn is_set(&self) -> bool {
        self.ttft_ms.is_some() || self.e2e_ms.is_some()
    }

    /// Whether a request succeeded within every target.
    pub fn met_by(&self, record: &RequestRecord) -> bool {
        record.ok && self.ttft_ms.is_none_or(|limit| record.ttft_ms <= limit) && self.e2e_ms.is_none_or(|limit| record.e2e_ms <= limit)
    }

    /// Share of all requests (failed ones included) that met the targets.
    pub fn goodput<'a>(&self, records: impl IntoIterator<Item = &'a RequestRecord>) -> f64 {
        let (mut met, mut all) = (0usize, 0usize);
        for record in records {
            all += 1;
            met += usize::from(self.met_by(record));
        }
        if all == 0 { 0.0 } else { met as f64 / all as f64 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(ok: bool, ttft_ms: f64, e2e_ms: f64) -> RequestRecord {
        RequestRecord { ok, ttft_ms, e2e_ms, ..Default::default() }
    }

    #[test]
    fn goodput_counts_requests_within_every_target() {
        let records = [record(true, 100.0, 900.0), record(true, 300.0, 800.0), record(true, 100.0, 1500.0), record(false, 10.0, 10.0)];
        let both = Slo { ttft_ms: Some(200.0), e2e_ms: Some(1000.0) };
        assert_eq!(both.goodput(&records), 0.25, "only the first meets both; a failure never counts");
        let ttft_only = Slo { ttft_ms: Some(200.0), e2e_ms: None };
        assert_eq!(ttft_only.goodput(&records), 0.5);
        assert_eq!(Slo::default().goodput(&records), 0.75, "no targets: every success counts");
        assert_eq!(both.goodput(&[]), 0.0);
        assert!(both.met_by(&record(true, 200.0, 1000.0)), "a target is met at equality");
    }
}
