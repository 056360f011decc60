//! A Llama-architecture forward pass in mlx-rs over a GGUF's weights, kept quantized as MLX loads them:
//! Q4_1 as 4-bit affine with groups of 32, the tied Q8_0 embedding as 8-bit. RMSNorm, RoPE in the
//! traditional (interleaved) layout that GGUF weights use, grouped-query attention with a KV cache,
//! SwiGLU MLP, and the embedding reused as the output projection.

use std::path::Path;

use mlx_rs::ops::indexing::IndexOp;
use mlx_rs::fast::ScaledDotProductAttentionMask;
use mlx_rs::io::GgufFile as MlxGguf;
use mlx_rs::{Array, Dtype};
use modelpool::gguf::GgufFile;

pub type MlxResult<T> = Result<T, String>;

fn err(context: &str) -> impl Fn(mlx_rs::error::Exception) -> String + '_ {
    move |e| format!("{context}: {e}")
}

/// A quantized linear layer: packed weight, scales and biases, as MLX loads them from GGUF.
struct QuantizedLinear {
    weight: Array,
    scales: Array,
    biases: Array,
    bits: i32,
}

const GROUP_SIZE: i32 = 32;

impl QuantizedLinear {
    fn load(file: &MlxGguf, name: &str) -> MlxResult<Self> {
        let get = |suffix: &str| -> MlxResult<Array> {
            file.get_array(&format!("{name}.{suffix}"))
                .map_err(|e| format!("reading {name}.{suffix}: {e}"))?
                .ok_or_else(|| format!("the model has no tensor {name}.{suffix} (is it Q4_0/Q4_1/Q8_0?)"))
        };
        let weight = get("weight")?;
        // Float16 arithmetic is emulated on x86 CPUs and very slow: keep scales and biases in float32.
        let scales = get("scales")?.as_dtype(Dtype::Float32).map_err(err("scales to f32"))?;
        let biases = get("biases")?.as_dtype(Dtype::Float32).map_err(err("biases to f32"))?;
        let packed_columns = weight.shape()[1];
        let columns = scales.shape()[1] * GROUP_SIZE;
        let bits = 32 * packed_columns / columns;
        Ok(Self { weight, scales, biases, bits })
    }

    fn forward(&self, x: &Array) -> MlxResult<Array> {
        mlx_rs::ops::quantized_matmul(x, &self.weight, &self.scales, &self.biases, true, GROUP_SIZE, self.bits)
            .map_err(err("quantized matmul"))
    }

    /// Rows `ids` of the weight, dequantized: the embedding lookup.
    fn rows(&self, ids: &Array) -> MlxResult<Array> {
        let take = |a: &Array| a.take_axis(ids, 0).map_err(err("embedding lookup"));
        let biases = take(&self.biases)?;
        mlx_rs::ops::dequantize(take(&self.weight)?, take(&self.scales)?, &biases, GROUP_SIZE, self.bits)
            .map_err(err("dequantize"))
    }
}

struct Layer {
    attn_norm: Array,
    q: QuantizedLinear,
    k: QuantizedLinear,
    v: QuantizedLinear,
    o: QuantizedLinear,
    ffn_norm: Array,
    gate: QuantizedLinear,
    up: QuantizedLinear,
    down: QuantizedLinear,
}

/// Hyper-parameters from the GGUF metadata.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    pub layers: usize,
    pub hidden: i32,
    pub heads: i32,
    pub kv_heads: i32,
    pub head_dim: i32,
    pub rope_base: f32,
    pub norm_eps: f32,
    pub context_train: u32,
}

impl Config {
    fn from_gguf(file: &GgufFile) -> MlxResult<Self> {
        let arch = file.str("general.architecture").map_err(|e| e.to_string())?.to_string();
        if arch != "llama" {
            return Err(format!("general.architecture is {arch:?}; the MLX engine runs Llama-architecture models"));
        }
        let int = |key: &str| file.u64(&format!("llama.{key}")).map_err(|e| e.to_string());
        let float = |key: &str| file.get(&format!("llama.{key}")).ok().and_then(|v| v.as_f64());
        let hidden = int("embedding_length")? as i32;
        let heads = int("attention.head_count")? as i32;
        Ok(Self {
            layers: int("block_count")? as usize,
            hidden,
            heads,
            kv_heads: int("attention.head_count_kv").unwrap_or(heads as u64) as i32,
            head_dim: hidden / heads,
            rope_base: float("rope.freq_base").unwrap_or(10_000.0) as f32,
            norm_eps: float("attention.layer_norm_rms_epsilon").unwrap_or(1e-5) as f32,
            context_train: int("context_length").unwrap_or(2048) as u32,
        })
    }
}

pub struct MlxLlama {
    pub config: Config,
    embedding: QuantizedLinear,
    output: Option<QuantizedLinear>,
    layers: Vec<Layer>,
    output_norm: Array,
}

/// Keys and values of every layer for one sequence (or a batch of them), grown as tokens are decoded.
#[derive(Default)]
pub struct KvCache {
    layers: Vec<Option<(Array, Array)>>,
    pub len: i32,
}

impl KvCache {
    /// The keys and values of the first `len` positions, sharing this cache's arrays (MLX arrays are
    /// immutable: appending later makes new ones, so neither cache sees the other's additions).
    pub fn prefix(&self, len: i32) -> MlxResult<KvCache> {
        if len > self.len || len < 0 {
            return Err(format!("a prefix of {len} positions from a cache of {}", self.len));
        }
        let layers = self
            .layers
            .iter()
            .map(|layer| match layer {
                Some((k, v)) if len > 0 => {
                    let cut = |a: &Array| a.index((.., .., ..len, ..));
                    Some((cut(k), cut(v)))
                }
                _ => None,
            })
            .collect();
        Ok(KvCache { layers, len })
    }
}

impl MlxLlama {
    pub fn load(path: &Path) -> MlxResult<Self> {
        let meta = GgufFile::open(path).map_err(|e| e.to_string())?;
        let config = Config::from_gguf(&meta)?;
        let file = MlxGguf::load(path).map_err(|e| format!("loading {} with MLX: {e}", path.display()))?;
        let norm = |name: &str| -> MlxResult<Array> {
            file.get_array(name).map_err(|e| format!("{name}: {e}"))?.ok_or_else(|| format!("the model has no {name}"))
        };
        let layers = (0..config.layers)
            .map(|i| {
                let linear = |part: &str| QuantizedLinear::load(&file, &format!("blk.{i}.{part}"));
                Ok(Layer {
                    attn_norm: norm(&format!("blk.{i}.attn_norm.weight"))?,
                    q: linear("attn_q")?,
                    k: linear("attn_k")?,
                    v: linear("attn_v")?,
                    o: linear("attn_output")?,
                    ffn_norm: norm(&format!("blk.{i}.ffn_norm.weight"))?,
                    gate: linear("ffn_gate")?,
                    up: linear("ffn_up")?,
                    down: linear("ffn_down")?,
                })
            })
            .collect::<MlxResult<Vec<_>>>()?;
        let output = match file.get_array("output.weight") {
            Ok(Some(_)) => Some(QuantizedLinear::load(&file, "output")?),
            _ => None,
        };
        let model = Self {
            config,
            embedding: QuantizedLinear::load(&file, "token_embd")?,
            output,
            layers,
            output_norm: norm("output_norm.weight")?,
        };
        // Materialise the f32 scale and bias conversions now, not on the first request.
        let mut arrays = vec![&model.embedding.scales, &model.embedding.biases];
        for layer in &model.layers {
            for linear in [&layer.q, &layer.k, &layer.v, &layer.o, &layer.gate, &layer.up, &layer.down] {
                arrays.push(&linear.scales);
                arrays.push(&linear.biases);
            }
        }
        mlx_rs::transforms::eval(arrays).map_err(err("evaluating the weights"))?;
        Ok(model)
    }

    pub fn new_cache(&self) -> KvCache {
        KvCache { layers: (0..self.config.layers).map(|_| None).collect(), len: 0 }
    }

    /// Runs `n` new tokens of each sequence through the model and returns the logits of each sequence's
    /// last new position (shape [sequences, vocab]). `tokens` holds them sequence by sequence, in the
    /// order of `caches`, one cache per sequence; each cache gets the new keys and values.
    ///
    /// The weight matrices see all sequences' tokens at once (the batching gain). Rotary positions and
    /// attention are per sequence, each over its own cache: sequences of unequal length need neither
    /// padding nor masks, and a sequence's attention is computed exactly as if it ran alone.
    pub fn forward(&self, tokens: &[i32], n: i32, caches: &mut [&mut KvCache]) -> MlxResult<Array> {
        let c = self.config;
        let batch = caches.len() as i32;
        if batch == 0 || n < 1 || tokens.len() as i32 != batch * n {
            return Err(format!("forward: {} tokens for {batch} sequences of {n}", tokens.len()));
        }
        let ids = Array::from_slice(tokens, &[batch * n]);
        let mut x = self.embedding.rows(&ids)?.reshape(&[batch, n, c.hidden]).map_err(err("reshape"))?;
        for (index, layer) in self.layers.iter().enumerate() {
            let h = mlx_rs::fast::rms_norm(&x, Some(&layer.attn_norm), c.norm_eps).map_err(err("attention norm"))?;
            let heads = |a: Array, count: i32| {
                a.reshape(&[batch, n, count, c.head_dim]).and_then(|a| a.transpose_axes(&[0, 2, 1, 3])).map_err(err("split heads"))
            };
            let q = heads(layer.q.forward(&h)?, c.heads)?;
            let k = heads(layer.k.forward(&h)?, c.kv_heads)?;
            let v = heads(layer.v.forward(&h)?, c.kv_heads)?;
            let attention = if batch == 1 {
                self.attend(q, k, v, n, caches[0], index)?
            } else {
                let rows = |a: &Array| a.split_equal(batch, 0).map_err(err("split sequences"));
                let (qs, ks, vs) = (rows(&q)?, rows(&k)?, rows(&v)?);
                let mut outputs = Vec::with_capacity(batch as usize);
                for (((q, k), v), cache) in qs.into_iter().zip(ks).zip(vs).zip(caches.iter_mut()) {
                    outputs.push(self.attend(q, k, v, n, cache, index)?);
                }
                mlx_rs::ops::concatenate(&outputs, 0).map_err(err("join sequences"))?
            };
            let attention = attention
                .transpose_axes(&[0, 2, 1, 3])
                .and_then(|a| a.reshape(&[batch, n, c.heads * c.head_dim]))
                .map_err(err("merge heads"))?;
            x = x.add(layer.o.forward(&attention)?).map_err(err("residual"))?;
            let h = mlx_rs::fast::rms_norm(&x, Some(&layer.ffn_norm), c.norm_eps).map_err(err("ffn norm"))?;
            let gate = mlx_rs::nn::silu(layer.gate.forward(&h)?).map_err(err("silu"))?;
            let hidden = gate.multiply(layer.up.forward(&h)?).map_err(err("swiglu"))?;
            x = x.add(layer.down.forward(&hidden)?).map_err(err("residual"))?;
        }
        for cache in caches.iter_mut() {
            cache.len += n;
        }
        let last = x
            .take_axis(Array::from_int(n - 1), 1)
            .map_err(err("last position"))?;
        let last = mlx_rs::fast::rms_norm(&last, Some(&self.output_norm), c.norm_eps).map_err(err("output norm"))?;
        let logits = match &self.output {
            Some(output) => output.forward(&last)?,
            None => self.embedding.forward(&last)?,
        };
        logits.as_dtype(Dtype::Float32).map_err(err("logits to f32"))
    }

    /// One sequence's attention in one layer: rotary positions after what its cache holds, the new keys
    /// and values appended to the cache, causal within the new tokens. Shapes [1, heads, n, head_dim].
    fn attend(&self, q: Array, k: Array, v: Array, n: i32, cache: &mut KvCache, layer: usize) -> MlxResult<Array> {
        let c = self.config;
        let rope = |a: &Array| mlx_rs::fast::rope(a, c.head_dim, true, c.rope_base, 1.0, cache.len, None).map_err(err("rope"));
        let (q, k) = (rope(&q)?, rope(&k)?);
        let (k, v) = match cache.layers[layer].take() {
            Some((past_k, past_v)) => (
                mlx_rs::ops::concatenate(&[past_k, k], 2).map_err(err("kv cache"))?,
                mlx_rs::ops::concatenate(&[past_v, v], 2).map_err(err("kv cache"))?,
            ),
            None => (k, v),
        };
        // MLX aligns a causal mask to the end of the keys: new token i sees the cache and new tokens 0..=i.
        let mask = (n > 1).then_some(ScaledDotProductAttentionMask::Causal);
        let scale = 1.0 / (c.head_dim as f32).sqrt();
        let attention = mlx_rs::fast::scaled_dot_product_attention(&q, &k, &v, scale, mask, None).map_err(err("attention"))?;
        cache.layers[layer] = Some((k, v));
        Ok(attention)
    }
}
