//! The roofline of decoding: every generated token needs the model's weights read from memory once per
//! step (shared by all sequences decoded in that step) plus its own KV cache. With the machine's memory
//! bandwidth that gives a ceiling on tokens/s for N replicas (which share the bandwidth) and for B
//! sequences batched in one process (which share the weight reads), and tells how close each measured
//! configuration came to it.

use std::path::Path;
use std::time::Instant;

use model_input::gguf::GgufFile;

/// What one decode step reads, from the GGUF's tensor table and hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct ModelTraffic {
    /// Weight bytes read per decode step.
    pub weight_bytes: u64,
    /// KV-cache bytes per token of context (keys and values of every layer, f16).
    pub kv_bytes_per_context_token: u64,
}

impl ModelTraffic {
    pub fn from_gguf(path: &Path) -> Result<Self, model_input::gguf::GgufError> {
        let file = GgufFile::open(path)?;
        let arch = file.str("general.architecture")?.to_string();
        let key = |name: &str| file.u64(&format!("{arch}.{name}"));
        let layers = key("block_count")?;
        let embedding = key("embedding_length")?;
        let heads = key("attention.head_count")?.max(1);
        let kv_heads = key("attention.head_count_kv").unwrap_or(heads);
        let head_dim = embedding / heads;
        let tied = !file.tensors.iter().any(|t| t.name == "output.weight");
        // The embedding table is only gathered from (one row per token), unless it doubles as the output
        // projection (tied embeddings), which reads all of it every step.
        let weight_bytes = file.tensors.iter().filter(|t| tied || t.name != "token_embd.weight").filter_map(|t| t.bytes()).sum();
        Ok(Self { weight_bytes, kv_bytes_per_context_token: 2 * layers * kv_heads * head_dim * 2 })
    }

    /// Bytes one step reads for `batch` sequences with `context` tokens each.
    pub fn step_bytes(&self, batch: u64, context: u64) -> u64 {
        self.weight_bytes + batch * context * self.kv_bytes_per_context_token
    }

    /// Tokens/s ceiling for processes each decoding `slots` sequences of `context` tokens, all sharing
    /// `bandwidth` bytes/s. The number of processes does not enter: replicas split the same bandwidth,
    /// each step of each one reading the weights again.
    pub fn ceiling_tokens_per_s(&self, bandwidth: f64, slots: u64, context: u64) -> f64 {
        let bytes_per_token = self.step_bytes(slots, context) as f64 / slots as f64;
        bandwidth / bytes_per_token
    }
}

/// Measures the memory bandwidth available to `threads` threads reading a buffer much larger than the
/// caches; the best of a few passes, in bytes/s.
pub fn measure_bandwidth(threads: usize, megabytes: usize) -> f64 {
    let words = megabytes * (1 << 20) / 8;
    let buffer: Vec<u64> = (0..words as u64).collect();
    let chunk = words.div_ceil(threads.max(1));
    let mut best = 0.0f64;
    for _ in 0..4 {
        let start = Instant::now();
        let total: u64 = std::thread::scope(|scope| {
            let handles: Vec<_> =
                buffer.chunks(chunk).map(|part| scope.spawn(move || part.iter().fold(0u64, |acc, &w| acc.wrapping_add(w)))).collect();
            handles.into_iter().map(|h| h.join().unwrap_or(0)).fold(0u64, u64::wrapping_add)
        });
        std::hint::black_box(total);
        best = best.max((words * 8) as f64 / start.elapsed().as_secs_f64());
    }
    best
}

/// The roofline of a report: the model's traffic, the machine's bandwidth, and what each configuration
/// achieved against its ceiling.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Roofline {
    pub traffic: ModelTraffic,
    pub bandwidth_bytes_per_s: f64,
    /// Mean context length assumed for the KV term (prompt plus half the output).
    pub context_tokens: u64,
    pub points: Vec<RooflinePoint>,
    pub verdict: String,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct RooflinePoint {
    pub name: String,
    pub workers: usize,
    pub slots: u32,
    pub achieved_tokens_per_s: f64,
    pub ceiling_tokens_per_s: f64,
    /// Achieved over ceiling: model-bandwidth utilisation.
    pub utilisation: f64,
}

impl Roofline {
    /// `configs` holds (name, workers, slots per worker, achieved output tokens/s).
    pub fn new(traffic: ModelTraffic, bandwidth: f64, context_tokens: u64, configs: &[(String, usize, u32, f64)]) -> Self {
        let points: Vec<RooflinePoint> = configs
            .iter()
            .map(|(name, workers, slots, achieved)| {
                let ceiling = traffic.ceiling_tokens_per_s(bandwidth, u64::from(*slots), context_tokens);
                RooflinePoint {
                    name: name.clone(),
                    workers: *workers,
                    slots: *slots,
                    achieved_tokens_per_s: *achieved,
                    ceiling_tokens_per_s: ceiling,
                    utilisation: achieved / ceiling,
                }
            })
            .collect();
        let verdict = verdict(&points);
        Self { traffic, bandwidth_bytes_per_s: bandwidth, context_tokens, points, verdict }
    }
}

/// Plain words about where the limit is, from the best one-slot configuration.
fn verdict(points: &[RooflinePoint]) -> String {
    let Some(best) = points.iter().filter(|p| p.slots == 1).max_by(|a, b| a.utilisation.total_cmp(&b.utilisation)) else {
        return "no one-slot configuration was measured".into();
    };
    let percent = best.utilisation * 100.0;
    if best.utilisation >= 0.7 {
        format!(
            "bandwidth-bound: {} reached {percent:.0}% of the memory-bandwidth ceiling; more replicas cannot help, \
             batching can (one weight read serves every sequence in a step)",
            best.name
        )
    } else {
        format!(
            "not bandwidth-bound: the best one-slot configuration ({}) used {percent:.0}% of the memory bandwidth; \
             the cores are the limit, so extra processes only share them; batching helps as far as it saves work per token",
            best.name
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceilings_follow_the_bytes_per_token() {
        let traffic = ModelTraffic { weight_bytes: 100, kv_bytes_per_context_token: 1 };
        // one sequence at context 10: 110 bytes per token
        assert_eq!(traffic.ceiling_tokens_per_s(1100.0, 1, 10), 10.0);
        // four sequences share one weight read: (100 + 40) / 4 = 35 bytes per token
        assert_eq!(traffic.ceiling_tokens_per_s(1400.0, 4, 10), 40.0);
    }

    #[test]
    fn the_verdict_names_the_limit() {
        let traffic = ModelTraffic { weight_bytes: 100, kv_bytes_per_context_token: 0 };
        let bound = Roofline::new(traffic, 1000.0, 0, &[("serial".into(), 1, 1, 8.0), ("batched-4".into(), 1, 4, 20.0)]);
        assert!((bound.points[0].utilisation - 0.8).abs() < 1e-9);
        assert!(bound.verdict.starts_with("bandwidth-bound") && bound.verdict.contains("80%"), "{}", bound.verdict);
        let free = Roofline::new(traffic, 1000.0, 0, &[("serial".into(), 1, 1, 3.0)]);
        assert!(free.verdict.starts_with("not bandwidth-bound") && free.verdict.contains("30%"), "{}", free.verdict);
    }

    #[test]
    fn the_default_model_reads_its_weights_and_kv() {
        let path = model_input::model_cache::ensure_default_model().unwrap();
        let traffic = ModelTraffic::from_gguf(&path).unwrap();
        // 135M parameters at ~4.5 bits plus the tied Q8_0 embedding: 90-100 MB per step
        assert!((85_000_000..100_000_000).contains(&traffic.weight_bytes), "{traffic:?}");
        // 30 layers x 3 KV heads x 64 dims x (K + V) x 2 bytes
        assert_eq!(traffic.kv_bytes_per_context_token, 30 * 3 * 64 * 2 * 2);
    }

    #[test]
    fn bandwidth_probe_measures_something_plausible() {
        let bandwidth = measure_bandwidth(1, 32);
        assert!(bandwidth > 1e8 && bandwidth < 1e12, "{bandwidth}");
    }
}
