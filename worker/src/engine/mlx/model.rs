//! A Llama-family decoder in mlx-rs (Llama, Mistral, Qwen2, Qwen3), computed as mlx-lm's model classes
//! compute it, op for op: RMSNorm, rotary positions (halves for Hugging Face weights, interleaved for a
//! GGUF's permuted ones; Llama 3 frequency scaling), grouped-query attention over a KV cache with Qwen2's
//! q/k/v biases and Qwen3's per-head q/k norms, SwiGLU MLP, tied or separate output. Weights stay as
//! stored: MLX affine-quantized layers (any group size and bits, per layer) or dense ones. On the CPU
//! every float is computed in float32 (float16/bfloat16 arithmetic is emulated on x86 and far slower);
//! on Metal the stored float type is kept.

use std::path::Path;

use mlx_rs::fast::ScaledDotProductAttentionMask;
use mlx_rs::ops::indexing::IndexOp;
use mlx_rs::{Array, Dtype};
use model_input::gguf::GgufFile;
use model_input::model_folder::{is_folder, read_json};

use super::MlxResult;
use super::architecture::{Architecture, RopeScaling};
use super::weights::{Storage, Weights};

fn err(context: &str) -> impl Fn(mlx_rs::error::Exception) -> String + '_ {
    move |e| format!("{context}: {e}")
}

/// The float type the engine computes in: float32 on the CPU, the stored type on Metal.
fn compute_dtype(stored: Dtype) -> Dtype {
    if cfg!(target_os = "macos") { stored } else { Dtype::Float32 }
}

fn to_compute(array: Array) -> MlxResult<Array> {
    match array.dtype() {
        Dtype::Float16 | Dtype::Bfloat16 | Dtype::Float32 => {
            let target = compute_dtype(array.dtype());
            if target == array.dtype() { Ok(array) } else { array.as_dtype(target).map_err(err("converting a weight")) }
        }
        _ => Ok(array),
    }
}

/// A linear layer (or an embedding table, which is the same matrix read by rows), as mlx-lm's
/// `nn.Linear`/`nn.QuantizedLinear`/`nn.Embedding`/`nn.QuantizedEmbedding` store and apply it.
enum Linear {
    Dense { weight: Array, bias: Option<Array> },
    Quantized { weight: Array, scales: Array, biases: Array, group_size: i32, bits: i32, bias: Option<Array> },
}

impl Linear {
    fn load(weights: &mut Weights, path: &str, in_dims: i32, dense: bool) -> MlxResult<Self> {
        let bias_name = format!("{path}.bias");
        let bias = if weights.has(&bias_name) { Some(to_compute(weights.take(&bias_name)?)?) } else { None };
        let linear = match weights.storage(path, in_dims)? {
            Storage::Dense => Linear::Dense { weight: to_compute(weights.take(&format!("{path}.weight"))?)?, bias },
            Storage::Quantized { group_size, bits } => Linear::Quantized {
                weight: weights.take(&format!("{path}.weight"))?,
                scales: to_compute(weights.take(&format!("{path}.scales"))?)?,
                biases: to_compute(weights.take(&format!("{path}.biases"))?)?,
                group_size,
                bits,
                bias,
            },
        };
        if dense { linear.dequantized() } else { Ok(linear) }
    }

    /// The same layer with its weight dequantized to the compute type: a dense product, which MLX's CPU
    /// backend hands to BLAS (fast with an optimized BLAS, at 4-8x the memory of 4- or 8-bit weights).
    fn dequantized(self) -> MlxResult<Self> {
        match self {
            Linear::Quantized { weight, scales, biases, group_size, bits, bias } => {
                let weight = mlx_rs::ops::dequantize(&weight, &scales, &biases, group_size, bits).map_err(err("dequantize"))?;
                Ok(Linear::Dense { weight: to_compute(weight)?, bias })
            }
            dense => Ok(dense),
        }
    }

    /// `x · Wᵀ (+ bias)`: `mx.addmm` for a dense layer with a bias, a quantized product plus the bias
    /// for a quantized one, as mlx-lm does (the two round differently). With
    /// [`QuantizedProducts::DequantizedFrom`], a quantized product of enough rows dequantizes the weight
    /// for this product alone and multiplies densely (the float32 copy is freed once the product is
    /// computed: the weights stay quantized in memory).
    fn forward(&self, x: &Array, products: QuantizedProducts) -> MlxResult<Array> {
        match self {
            Linear::Dense { weight, bias: None } => x.matmul(weight.t()).map_err(err("matmul")),
            Linear::Dense { weight, bias: Some(bias) } => mlx_rs::ops::addmm(bias, x, weight.t(), None, None).map_err(err("addmm")),
            Linear::Quantized { weight, scales, biases, group_size, bits, bias } => {
                let rows: i32 = x.shape().iter().rev().skip(1).product();
                let y = match products {
                    QuantizedProducts::DequantizedFrom { rows: least } if rows >= least => {
                        let dense = mlx_rs::ops::dequantize(weight, scales, biases, *group_size, *bits).map_err(err("dequantize"))?;
                        x.matmul(dense.t()).map_err(err("dequantized matmul"))?
                    }
                    _ => mlx_rs::ops::quantized_matmul(x, weight, scales, biases, true, *group_size, *bits)
                        .map_err(err("quantized matmul"))?,
                };
                match bias {
                    Some(bias) => y.add(bias).map_err(err("bias")),
                    None => Ok(y),
                }
            }
        }
    }

    /// Rows `ids` of the matrix: the embedding lookup.
    fn rows(&self, ids: &Array) -> MlxResult<Array> {
        let take = |a: &Array| a.take_axis(ids, 0).map_err(err("embedding lookup"));
        match self {
            Linear::Dense { weight, .. } => take(weight),
            Linear::Quantized { weight, scales, biases, group_size, bits, .. } => {
                let biases = take(biases)?;
                mlx_rs::ops::dequantize(take(weight)?, take(scales)?, &biases, *group_size, *bits).map_err(err("dequantize"))
            }
        }
    }

    /// Arrays to materialise at load time (converted scales and weights).
    fn arrays(&self) -> Vec<&Array> {
        match self {
            Linear::Dense { weight, bias } => std::iter::once(weight).chain(bias.as_ref()).collect(),
            Linear::Quantized { weight, scales, biases, bias, .. } => [weight, scales, biases].into_iter().chain(bias.as_ref()).collect(),
        }
    }
}

/// How a quantized layer's products are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantizedProducts {
    /// MLX's quantized kernel for every product, as mlx-lm computes them. Its cost grows with every row
    /// (on the CPU about 0.8 ms per row for a 1536×576 4-bit weight here, however many rows share it),
    /// and each row's result does not depend on its neighbours.
    Kernel,
    /// A product of at least `rows` rows dequantizes the weight (about 1 ms for 1536×576) and multiplies
    /// it densely through BLAS, which with an optimized BLAS costs little more for 128 rows than for
    /// one (measured with OpenBLAS here: 4 rows 1.7 ms against 3.2, 32 rows 1.5 against 25, 128 rows
    /// 2.3 against 100). Rounding then depends on the batch; for the default (mixed) passes only.
    DequantizedFrom { rows: i32 },
}

struct Layer {
    attn_norm: Array,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    q_norm: Option<Array>,
    k_norm: Option<Array>,
    ffn_norm: Array,
    gate: Linear,
    up: Linear,
    down: Linear,
}

/// The decoder of the Llama family: Llama, Mistral, Qwen2 and Qwen3 differ only in the switches of
/// [`Architecture`] (biases, q/k norms, rotary layout and scaling, tied output).
pub struct MlxLlama {
    pub config: Architecture,
    embedding: Linear,
    output: Option<Linear>,
    layers: Vec<Layer>,
    output_norm: Array,
    /// Llama 3's scaled rotary frequencies (`None`: the plain base).
    rope_freqs: Option<Array>,
    /// How the layers' quantized products are computed ([`QuantizedProducts::Kernel`] unless the engine
    /// says otherwise).
    pub products: QuantizedProducts,
}

/// Keys and values of every layer for one sequence (or a batch of them), grown as tokens are decoded.
/// A clone shares the arrays (MLX arrays are immutable).
#[derive(Default, Clone)]
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

    /// Bytes of the keys and values it holds.
    pub fn nbytes(&self) -> usize {
        self.layers.iter().flatten().map(|(k, v)| k.nbytes() + v.nbytes()).sum()
    }
}

impl MlxLlama {
    /// An mlx-lm folder or a GGUF file, its weights as stored.
    pub fn load(path: &Path) -> MlxResult<Self> {
        Self::load_with(path, false)
    }

    /// With `dense`, quantized layers are dequantized once at load (see [`Linear::dequantized`]).
    pub fn load_with(path: &Path, dense: bool) -> MlxResult<Self> {
        let (config, mut weights) = if is_folder(path) {
            let json = read_json(&path.join("config.json")).map_err(|e| e.to_string())?;
            (Architecture::from_config(&json)?, Weights::from_folder(path, &json)?)
        } else {
            let meta = GgufFile::open(path).map_err(|e| e.to_string())?;
            (Architecture::from_gguf(&meta)?, Weights::from_gguf(path, &meta)?)
        };
        let c = &config;
        let norm = |weights: &mut Weights, name: &str| weights.take(name).and_then(to_compute);
        let layers = (0..c.layers)
            .map(|i| {
                let p = format!("model.layers.{i}");
                let w = &mut weights;
                Ok(Layer {
                    attn_norm: norm(w, &format!("{p}.input_layernorm.weight"))?,
                    q: Linear::load(w, &format!("{p}.self_attn.q_proj"), c.hidden, dense)?,
                    k: Linear::load(w, &format!("{p}.self_attn.k_proj"), c.hidden, dense)?,
                    v: Linear::load(w, &format!("{p}.self_attn.v_proj"), c.hidden, dense)?,
                    o: Linear::load(w, &format!("{p}.self_attn.o_proj"), c.heads * c.head_dim, dense)?,
                    q_norm: if c.qk_norm { Some(norm(w, &format!("{p}.self_attn.q_norm.weight"))?) } else { None },
                    k_norm: if c.qk_norm { Some(norm(w, &format!("{p}.self_attn.k_norm.weight"))?) } else { None },
                    ffn_norm: norm(w, &format!("{p}.post_attention_layernorm.weight"))?,
                    gate: Linear::load(w, &format!("{p}.mlp.gate_proj"), c.hidden, dense)?,
                    up: Linear::load(w, &format!("{p}.mlp.up_proj"), c.hidden, dense)?,
                    down: Linear::load(w, &format!("{p}.mlp.down_proj"), c.intermediate, dense)?,
                })
            })
            .collect::<MlxResult<Vec<_>>>()?;
        let embedding = Linear::load(&mut weights, "model.embed_tokens", c.hidden, dense)?;
        // mlx-lm drops a stored lm_head when the config ties the embeddings.
        let output = if c.tie_embeddings { None } else { Some(Linear::load(&mut weights, "lm_head", c.hidden, dense)?) };
        let output_norm = norm(&mut weights, "model.norm.weight")?;
        let rope_freqs = match c.rope_scaling {
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_context } => {
                Some(llama3_frequencies(c.head_dim, c.rope_base, factor, low_freq_factor, high_freq_factor, original_context)?)
            }
            RopeScaling::Uniform { .. } => None,
        };
        let model = Self { config, embedding, output, layers, output_norm, rope_freqs, products: QuantizedProducts::Kernel };
        // Materialise the conversions now, not on the first request.
        let mut arrays = model.embedding.arrays();
        arrays.extend(model.output.iter().flat_map(Linear::arrays));
        for layer in &model.layers {
            for linear in [&layer.q, &layer.k, &layer.v, &layer.o, &layer.gate, &layer.up, &layer.down] {
                arrays.extend(linear.arrays());
            }
        }
        arrays.extend(model.rope_freqs.iter());
        mlx_rs::transforms::eval(arrays).map_err(err("evaluating the weights"))?;
        Ok(model)
    }

    /// Bytes one token's keys and values take in a cache, over all layers.
    pub fn kv_bytes_per_token(&self) -> usize {
        let c = &self.config;
        2 * c.layers * (c.kv_heads * c.head_dim) as usize * self.output_norm.item_size()
    }

    pub fn new_cache(&self) -> KvCache {
        KvCache { layers: (0..self.config.layers).map(|_| None).collect(), len: 0 }
    }

    /// Runs `n` new tokens of each sequence through the model and returns the logits of each sequence's
    /// last new position (shape [sequences, vocab]). `tokens` holds them sequence by sequence, in the
    /// order of `caches`, one cache per sequence; each cache gets the new keys and values.
    pub fn forward(&self, tokens: &[i32], n: i32, caches: &mut [&mut KvCache]) -> MlxResult<Array> {
        let batch = caches.len();
        if batch == 0 || n < 1 || tokens.len() != batch * n as usize {
            return Err(format!("forward: {} tokens for {batch} sequences of {n}", tokens.len()));
        }
        let mut runs: Vec<(&[i32], &mut KvCache)> =
            tokens.chunks(n as usize).zip(caches.iter_mut()).map(|(tokens, cache)| (tokens, &mut **cache)).collect();
        self.forward_runs(&mut runs)
    }

    /// Runs each sequence's new tokens (any number per sequence, each sequence with its own cache)
    /// through the model in one pass and returns the logits of each run's last position (shape
    /// [runs, vocab], in the order of `runs`); each cache gets the new keys and values.
    ///
    /// The weight matrices see every run's tokens at once, as one matrix of rows (the batching gain,
    /// and one dequantization per layer where [`QuantizedProducts::DequantizedFrom`] applies). Rotary
    /// positions and attention are per run, each over its own cache: runs of unequal length need neither
    /// padding nor masks, and a run's attention is computed exactly as if it ran alone.
    pub fn forward_runs(&self, runs: &mut [(&[i32], &mut KvCache)]) -> MlxResult<Array> {
        let c = &self.config;
        if runs.is_empty() || runs.iter().any(|(tokens, _)| tokens.is_empty()) {
            return Err(format!("forward: {} runs, some empty", runs.len()));
        }
        let lengths: Vec<i32> = runs.iter().map(|(tokens, _)| tokens.len() as i32).collect();
        let ends: Vec<i32> = lengths
            .iter()
            .scan(0, |end, n| {
                *end += n;
                Some(*end)
            })
            .collect();
        let total = *ends.last().expect("at least one run");
        let ids: Vec<i32> = runs.iter().flat_map(|(tokens, _)| tokens.iter().copied()).collect();
        let mut x = self.embedding.rows(&Array::from_slice(&ids, &[total]))?.reshape(&[1, total, c.hidden]).map_err(err("reshape"))?;
        // The rows of each run: split after every run's last row but the final one.
        let splits = &ends[..ends.len() - 1];
        let per_run = |a: Array| -> MlxResult<Vec<Array>> {
            if splits.is_empty() { Ok(vec![a]) } else { a.split_at_indices(splits, 1).map_err(err("split runs")) }
        };
        let products = self.products;
        for (index, layer) in self.layers.iter().enumerate() {
            let h = mlx_rs::fast::rms_norm(&x, Some(&layer.attn_norm), c.norm_eps).map_err(err("attention norm"))?;
            // Qwen3 normalises each head's query and key before the rotation.
            let heads = |a: Array, n: i32, count: i32, norm: Option<&Array>| {
                let a = a.reshape(&[1, n, count, c.head_dim]).map_err(err("split heads"))?;
                let a = match norm {
                    Some(weight) => mlx_rs::fast::rms_norm(&a, Some(weight), c.norm_eps).map_err(err("q/k norm"))?,
                    None => a,
                };
                a.transpose_axes(&[0, 2, 1, 3]).map_err(err("split heads"))
            };
            let qs = per_run(layer.q.forward(&h, products)?)?;
            let ks = per_run(layer.k.forward(&h, products)?)?;
            let vs = per_run(layer.v.forward(&h, products)?)?;
            let mut outputs = Vec::with_capacity(runs.len());
            for ((((q, k), v), (_, cache)), &n) in qs.into_iter().zip(ks).zip(vs).zip(runs.iter_mut()).zip(&lengths) {
                let q = heads(q, n, c.heads, layer.q_norm.as_ref())?;
                let k = heads(k, n, c.kv_heads, layer.k_norm.as_ref())?;
                let v = heads(v, n, c.kv_heads, None)?;
                let attention = self.attend(q, k, v, n, cache, index)?;
                outputs.push(
                    attention
                        .transpose_axes(&[0, 2, 1, 3])
                        .and_then(|a| a.reshape(&[1, n, c.heads * c.head_dim]))
                        .map_err(err("merge heads"))?,
                );
            }
            let attention = if outputs.len() == 1 {
                outputs.pop().expect("one run")
            } else {
                mlx_rs::ops::concatenate(&outputs, 1).map_err(err("join runs"))?
            };
            x = x.add(layer.o.forward(&attention, products)?).map_err(err("residual"))?;
            let h = mlx_rs::fast::rms_norm(&x, Some(&layer.ffn_norm), c.norm_eps).map_err(err("ffn norm"))?;
            let gate = mlx_rs::nn::silu(layer.gate.forward(&h, products)?).map_err(err("silu"))?;
            let hidden = gate.multiply(layer.up.forward(&h, products)?).map_err(err("swiglu"))?;
            x = x.add(layer.down.forward(&hidden, products)?).map_err(err("residual"))?;
        }
        for ((_, cache), n) in runs.iter_mut().zip(&lengths) {
            cache.len += n;
        }
        let last_rows: Vec<i32> = ends.iter().map(|end| end - 1).collect();
        let last = x
            .take_axis(Array::from_slice(&last_rows, &[runs.len() as i32]), 1)
            .and_then(|a| a.reshape(&[runs.len() as i32, c.hidden]))
            .map_err(err("last positions"))?;
        let last = mlx_rs::fast::rms_norm(&last, Some(&self.output_norm), c.norm_eps).map_err(err("output norm"))?;
        // The output product keeps the quantized kernel: it has one row per run, and dequantizing a
        // tied 49,152-token embedding would hold a 113 MB float32 copy for each pass.
        let logits = match &self.output {
            Some(output) => output.forward(&last, QuantizedProducts::Kernel)?,
            None => self.embedding.forward(&last, QuantizedProducts::Kernel)?,
        };
        logits.as_dtype(Dtype::Float32).map_err(err("logits to f32"))
    }

    /// One sequence's attention in one layer: rotary positions after what its cache holds, the new keys
    /// and values appended to the cache, causal within the new tokens. Shapes [1, heads, n, head_dim].
    fn attend(&self, q: Array, k: Array, v: Array, n: i32, cache: &mut KvCache, layer: usize) -> MlxResult<Array> {
        let c = &self.config;
        let rope = |a: &Array| {
            match (&self.rope_freqs, &c.rope_scaling) {
                (Some(freqs), _) => mlx_rs::fast::rope(a, c.head_dim, c.rope_traditional, None, 1.0, cache.len, freqs),
                (None, RopeScaling::Uniform { scale }) => {
                    mlx_rs::fast::rope(a, c.head_dim, c.rope_traditional, c.rope_base, *scale, cache.len, None)
                }
                (None, RopeScaling::Llama3 { .. }) => unreachable!("llama3 scaling always has its frequencies"),
            }
            .map_err(err("rope"))
        };
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
        // As Python computes `head_dim ** -0.5` (in double precision, then rounded once to f32).
        let scale = (c.head_dim as f64).powf(-0.5) as f32;
        let attention = mlx_rs::fast::scaled_dot_product_attention(&q, &k, &v, scale, mask, None).map_err(err("attention"))?;
        cache.layers[layer] = Some((k, v));
        Ok(attention)
    }
}

/// Llama 3's rotary frequencies, with the same MLX operations in the same order as mlx-lm's `Llama3RoPE`
/// (so that both round alike).
fn llama3_frequencies(
    dims: i32,
    base: f32,
    factor: f32,
    low_freq_factor: f32,
    high_freq_factor: f32,
    old_context: f32,
) -> MlxResult<Array> {
    let e = err("llama3 rope frequencies");
    let scalar = Array::from_f32;
    let exponents = Array::arange::<_, i32>(0, dims, 2).map_err(&e)?.divide(Array::from_int(dims)).map_err(&e)?;
    let freqs = scalar(base).power(&exponents).map_err(&e)?;
    let wavelens = scalar((2.0 * std::f64::consts::PI) as f32).multiply(&freqs).map_err(&e)?;
    let low_freq_wavelen = old_context / low_freq_factor;
    let high_freq_wavelen = old_context / high_freq_factor;
    let freqs =
        mlx_rs::ops::select(&wavelens.gt(scalar(low_freq_wavelen)).map_err(&e)?, &freqs.multiply(scalar(factor)).map_err(&e)?, &freqs)
            .map_err(&e)?;
    let is_medium =
        wavelens.gt(scalar(high_freq_wavelen)).and_then(|a| a.logical_and(wavelens.lt(scalar(low_freq_wavelen))?)).map_err(&e)?;
    let smooth = scalar(old_context)
        .divide(&wavelens)
        .and_then(|a| a.subtract(scalar(low_freq_factor)))
        .and_then(|a| a.divide(scalar(high_freq_factor - low_freq_factor)))
        .map_err(&e)?;
    let denominator = scalar(1.0).subtract(&smooth).and_then(|a| a.divide(scalar(factor))).and_then(|a| a.add(&smooth)).map_err(&e)?;
    let smooth_freqs = freqs.divide(&denominator).map_err(&e)?;
    mlx_rs::ops::select(&is_medium, &smooth_freqs, &freqs).map_err(&e)
}
