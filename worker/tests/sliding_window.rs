//! Prefix reuse on a model with sliding-window attention layers (llama.cpp). No such GGUF ships in a
//! package this project can fetch, so the test writes one: a two-layer Gemma 2 (layer 0 attends to a
//! 32-token window, layer 1 to everything) with seeded random weights and the default model's
//! tokenizer. Its text is noise, but noise that depends on every key and value the window reads, so a
//! reused prefix that lacks some of them changes it.
//!
//! With `--sliding-window-cache window` the window layer keeps about the window plus one batch of
//! positions and overwrites older ones; a later prompt that shares only an early prefix of a long
//! request finds that prefix gone from the window's cache and must compute it again (text checked
//! against a worker that never reuses). With the default `full` cache the same prefix is reused.

mod common;

use std::path::{Path, PathBuf};

use common::{TestWorker, invariant_config};
use model_input::gguf::{GgufFile, Value};
use modelpool::proto;
use modelpool::{PredictRequest, Prompt, SamplingParams};
use worker::engine::llama::SlidingWindowCache;

const WINDOW: u32 = 32;
const EMBEDDING: usize = 64;
const FEED_FORWARD: usize = 128;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const HEAD_DIM: usize = EMBEDDING / HEADS;
const LAYERS: usize = 2;

/// A GGUF being written: metadata and float32 tensors (GGUF v3, 32-byte alignment).
#[derive(Default)]
struct GgufWriter {
    metadata: Vec<u8>,
    metadata_count: u64,
    tensors: Vec<(String, Vec<u64>, Vec<f32>)>,
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

impl GgufWriter {
    fn key(&mut self, key: &str, value_type: u32) -> &mut Vec<u8> {
        self.metadata_count += 1;
        put_string(&mut self.metadata, key);
        self.metadata.extend_from_slice(&value_type.to_le_bytes());
        &mut self.metadata
    }

    fn u32(&mut self, key: &str, value: u32) {
        self.key(key, 4).extend_from_slice(&value.to_le_bytes());
    }

    fn f32(&mut self, key: &str, value: f32) {
        self.key(key, 6).extend_from_slice(&value.to_le_bytes());
    }

    fn string(&mut self, key: &str, value: &str) {
        put_string(self.key(key, 8), value);
    }

    /// A value read from another GGUF, written in the types llama.cpp reads tokenizer keys as (ids
    /// u32, token types i32, scores f32).
    fn copy(&mut self, key: &str, value: &Value) {
        match value {
            Value::U64(v) => self.u32(key, u32::try_from(*v).unwrap()),
            Value::I64(v) => self.key(key, 5).extend_from_slice(&i32::try_from(*v).unwrap().to_le_bytes()),
            Value::F64(v) => self.f32(key, *v as f32),
            Value::Bool(v) => self.key(key, 7).push(u8::from(*v)),
            Value::Str(v) => self.string(key, v),
            Value::Array(items) => {
                let element_type = match items.first() {
                    Some(Value::Str(_)) | None => 8u32,
                    Some(Value::I64(_)) => 5,
                    Some(Value::U64(_)) => 4,
                    Some(Value::F64(_)) => 6,
                    Some(other) => panic!("{key}: arrays of {other:?} are not copied"),
                };
                let out = self.key(key, 9);
                out.extend_from_slice(&element_type.to_le_bytes());
                out.extend_from_slice(&(items.len() as u64).to_le_bytes());
                for item in items {
                    match (element_type, item) {
                        (8, Value::Str(s)) => put_string(out, s),
                        (5, Value::I64(v)) => out.extend_from_slice(&i32::try_from(*v).unwrap().to_le_bytes()),
                        (4, Value::U64(v)) => out.extend_from_slice(&u32::try_from(*v).unwrap().to_le_bytes()),
                        (6, Value::F64(v)) => out.extend_from_slice(&(*v as f32).to_le_bytes()),
                        _ => panic!("{key}: mixed array"),
                    }
                }
            }
        }
    }

    /// `dims` innermost first, as ggml counts them.
    fn tensor(&mut self, name: &str, dims: &[u64], values: Vec<f32>) {
        assert_eq!(values.len() as u64, dims.iter().product::<u64>(), "{name}");
        self.tensors.push((name.to_string(), dims.to_vec(), values));
    }

    fn write(&self, path: &Path) {
        const ALIGNMENT: usize = 32;
        let mut out = Vec::new();
        out.extend_from_slice(b"GGUF");
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&self.metadata_count.to_le_bytes());
        out.extend_from_slice(&self.metadata);
        let mut offset = 0usize;
        for (name, dims, values) in &self.tensors {
            put_string(&mut out, name);
            out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for dim in dims {
                out.extend_from_slice(&dim.to_le_bytes());
            }
            out.extend_from_slice(&0u32.to_le_bytes()); // F32
            out.extend_from_slice(&(offset as u64).to_le_bytes());
            offset += (values.len() * 4).next_multiple_of(ALIGNMENT);
        }
        out.resize(out.len().next_multiple_of(ALIGNMENT), 0);
        for (_, _, values) in &self.tensors {
            let start = out.len();
            for value in values {
                out.extend_from_slice(&value.to_le_bytes());
            }
            out.resize(start + (out.len() - start).next_multiple_of(ALIGNMENT), 0);
        }
        std::fs::write(path, out).unwrap();
    }
}

/// Seeded uniform values in [-scale, scale] (xorshift: the same file on every run).
fn random(count: usize, scale: f32, seed: &mut u64) -> Vec<f32> {
    (0..count)
        .map(|_| {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            ((*seed >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// Writes the two-layer sliding-window Gemma 2 into `dir`, with `tokenizer_gguf`'s tokenizer.
fn write_sliding_window_model(tokenizer_gguf: &Path, dir: &Path) -> PathBuf {
    let source = GgufFile::open(tokenizer_gguf).unwrap();
    let vocabulary = source.strings("tokenizer.ggml.tokens").unwrap().len() as u64;
    let mut gguf = GgufWriter::default();
    gguf.string("general.architecture", "gemma2");
    gguf.string("general.name", "sliding-window-test");
    gguf.u32("gemma2.context_length", 4096);
    gguf.u32("gemma2.embedding_length", EMBEDDING as u32);
    gguf.u32("gemma2.block_count", LAYERS as u32);
    gguf.u32("gemma2.feed_forward_length", FEED_FORWARD as u32);
    gguf.u32("gemma2.attention.head_count", HEADS as u32);
    gguf.u32("gemma2.attention.head_count_kv", KV_HEADS as u32);
    gguf.u32("gemma2.attention.key_length", HEAD_DIM as u32);
    gguf.u32("gemma2.attention.value_length", HEAD_DIM as u32);
    gguf.f32("gemma2.attention.layer_norm_rms_epsilon", 1e-6);
    gguf.u32("gemma2.attention.sliding_window", WINDOW);
    gguf.f32("gemma2.attn_logit_softcapping", 50.0);
    gguf.f32("gemma2.final_logit_softcapping", 30.0);
    let mut keys: Vec<_> = source.metadata.iter().filter(|(key, _)| key.starts_with("tokenizer.")).collect();
    keys.sort_by(|a, b| a.0.cmp(b.0));
    for (key, value) in keys {
        gguf.copy(key, value);
    }

    let mut seed = 0x5eed_0f5a_u64;
    let (e, f, q, kv) = (EMBEDDING as u64, FEED_FORWARD as u64, (HEADS * HEAD_DIM) as u64, (KV_HEADS * HEAD_DIM) as u64);
    let linear = |fan_in: u64, fan_out: u64, seed: &mut u64| random((fan_in * fan_out) as usize, (3.0 / fan_in as f32).sqrt(), seed);
    gguf.tensor("token_embd.weight", &[e, vocabulary], random((e * vocabulary) as usize, 0.1, &mut seed));
    gguf.tensor("output_norm.weight", &[e], vec![1.0; EMBEDDING]);
    for layer in 0..LAYERS {
        let name = |tensor: &str| format!("blk.{layer}.{tensor}.weight");
        for norm in ["attn_norm", "post_attention_norm", "ffn_norm", "post_ffw_norm"] {
            gguf.tensor(&name(norm), &[e], vec![1.0; EMBEDDING]);
        }
        gguf.tensor(&name("attn_q"), &[e, q], linear(e, q, &mut seed));
        gguf.tensor(&name("attn_k"), &[e, kv], linear(e, kv, &mut seed));
        gguf.tensor(&name("attn_v"), &[e, kv], linear(e, kv, &mut seed));
        gguf.tensor(&name("attn_output"), &[q, e], linear(q, e, &mut seed));
        gguf.tensor(&name("ffn_gate"), &[e, f], linear(e, f, &mut seed));
        gguf.tensor(&name("ffn_up"), &[e, f], linear(e, f, &mut seed));
        gguf.tensor(&name("ffn_down"), &[f, e], linear(f, e, &mut seed));
    }
    let path = dir.join("sliding-window-gemma2.gguf");
    gguf.write(&path);
    path
}

/// `count` words of plain prose from a fixed list, starting at `start` (different starts, different text).
fn words(start: usize, count: usize) -> String {
    const WORDS: [&str; 16] = [
        "harbour", "lantern", "gull", "tide", "cliff", "keeper", "storm", "boat", "spray", "logbook", "dusk", "beam", "paraffin", "stairs",
        "village", "clock",
    ];
    (start..start + count).map(|i| WORDS[(i * 7 + i / 16) % WORDS.len()]).collect::<Vec<_>>().join(" ")
}

fn raw(text: &str) -> proto::PredictRequest {
    // ignore_eos: a random model may pick its end token at once; 16 tokens are compared every time.
    let sampling = SamplingParams { max_tokens: 16, ignore_eos: true, ..SamplingParams::default() };
    proto::PredictRequest::from(&PredictRequest { request_id: String::new(), prompt: Prompt::Raw(text.into()), sampling })
}

async fn predict(worker: &TestWorker, request: &proto::PredictRequest) -> proto::PredictResponse {
    worker.client.clone().predict(request.clone()).await.unwrap().into_inner()
}

async fn worker(model: &Path, cache: SlidingWindowCache, prefix_cache: bool) -> TestWorker {
    let mut config = invariant_config(1).await;
    config.model = Some(model.to_path_buf());
    config.context_per_slot = 2048;
    config.sliding_window_cache = cache;
    config.prefix_cache = prefix_cache;
    config.prompt_store_bytes = 0;
    TestWorker::start(config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_prefix_is_reused_only_while_the_sliding_windows_cache_still_holds_it() {
    let dir = std::env::temp_dir().join(format!("modelpool-sliding-window-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let default_model = tokio::task::spawn_blocking(model_input::model_cache::ensure_default_model).await.unwrap().unwrap();
    let model = write_sliding_window_model(&default_model, &dir);

    // A long request (its prompt runs about 1,000 tokens past the shared prefix, more than the window's
    // cache of 32 + one 512-token batch, rounded to 768 cells, holds), then a short one sharing only
    // the first 300 or so tokens, then the long one extended.
    let prefix = words(0, 300);
    let long = format!("{prefix} {}", words(1000, 1000));
    let short = format!("{prefix} {}", words(3000, 20));
    let extended = format!("{long} {}", words(5000, 20));

    let fresh = worker(&model, SlidingWindowCache::Window, false).await;
    let fresh_short = predict(&fresh, &raw(&short)).await;
    let fresh_extended = predict(&fresh, &raw(&extended)).await;
    assert_eq!(fresh_short.cached_tokens, 0);
    assert!(fresh_short.prompt_tokens > 300, "the short prompt is {} tokens", fresh_short.prompt_tokens);
    let long_tokens = predict(&fresh, &raw(&long)).await.prompt_tokens;
    assert!(long_tokens > fresh_short.prompt_tokens + 800, "{long_tokens}: the long prompt must outrun the window's cache");
    fresh.stop().await;

    let window = worker(&model, SlidingWindowCache::Window, true).await;
    predict(&window, &raw(&long)).await;
    let short_after_long = predict(&window, &raw(&short)).await;
    // Reusing what is left of the prefix (it was shown: 296 tokens) silently changes the text.
    assert_eq!(short_after_long.text, fresh_short.text, "the short prompt after the long one: the same text as alone");
    assert_eq!(
        short_after_long.cached_tokens, 0,
        "the shared prefix's keys and values were overwritten in the window's cache: nothing may be reused"
    );
    predict(&window, &raw(&long)).await;
    let extended_after_long = predict(&window, &raw(&extended)).await;
    assert!(
        extended_after_long.cached_tokens > long_tokens - 64,
        "an extension of the long prompt finds its window cached and reuses it ({} of {long_tokens})",
        extended_after_long.cached_tokens
    );
    assert_eq!(extended_after_long.text, fresh_extended.text, "the extension's text with reuse equals it without");
    window.stop().await;

    let full = worker(&model, SlidingWindowCache::Full, true).await;
    predict(&full, &raw(&long)).await;
    let short_after_long = predict(&full, &raw(&short)).await;
    assert!(
        short_after_long.cached_tokens > 200,
        "the full cache keeps the shared prefix: {} tokens reused",
        short_after_long.cached_tokens
    );
    assert_eq!(short_after_long.text, fresh_short.text, "and its text is the same as computed in full");
    full.stop().await;
    std::fs::remove_dir_all(&dir).unwrap();
}
