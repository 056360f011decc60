//! The hyper-parameters of a Llama-family decoder (Llama, Mistral, Qwen2, Qwen3), from an mlx-lm folder's
//! `config.json` or a GGUF's metadata, read as mlx-lm reads them (its defaults where a key is absent).

use model_input::gguf::GgufFile;
use serde_json::Value;

use super::MlxResult;

/// What mlx-lm's model classes of these names compute; Mistral is Llama (mlx-lm maps it so).
pub const SUPPORTED_MODEL_TYPES: &str = "llama, mistral, qwen2, qwen3";

/// How rotary positions are scaled.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Positions multiplied by `scale` (1 for none; 1/factor for "linear").
    Uniform { scale: f32 },
    /// Llama 3's per-frequency scaling.
    Llama3 { factor: f32, low_freq_factor: f32, high_freq_factor: f32, original_context: f32 },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Architecture {
    pub model_type: String,
    pub layers: usize,
    pub hidden: i32,
    pub intermediate: i32,
    pub heads: i32,
    pub kv_heads: i32,
    pub head_dim: i32,
    pub vocab: i32,
    pub norm_eps: f32,
    pub rope_base: f32,
    /// Interleaved rotary pairs (GGUF's permuted weights) rather than halves (Hugging Face's layout).
    pub rope_traditional: bool,
    pub rope_scaling: RopeScaling,
    /// q, k and v projections carry biases (Qwen2; Llama's `attention_bias`).
    pub attention_bias: bool,
    /// Per-head RMSNorm on queries and keys before the rotation (Qwen3).
    pub qk_norm: bool,
    pub tie_embeddings: bool,
    pub context_train: u32,
}

impl Architecture {
    /// From an mlx-lm folder's config.json.
    pub fn from_config(config: &Value) -> MlxResult<Self> {
        let model_type = config.get("model_type").and_then(Value::as_str).unwrap_or_default().to_string();
        let (attention_bias_default, qk_norm, rope_default) = match model_type.as_str() {
            "llama" | "mistral" => (false, false, Some(10_000.0)),
            "qwen2" => (true, false, Some(1_000_000.0)),
            "qwen3" => (false, true, None),
            "" => return Err("config.json has no model_type".into()),
            other => return Err(format!("model_type {other:?} is not supported; supported: {SUPPORTED_MODEL_TYPES}")),
        };
        let int = |key: &str| -> MlxResult<i64> {
            config.get(key).and_then(Value::as_i64).ok_or_else(|| format!("config.json has no integer {key}"))
        };
        let float = |key: &str| config.get(key).and_then(Value::as_f64);
        if config.get("mlp_bias").and_then(Value::as_bool) == Some(true) {
            return Err("config.json sets mlp_bias; MLP biases are not supported".into());
        }
        if let Some(types) = config.get("layer_types").and_then(Value::as_array)
            && types.iter().any(|t| t.as_str() == Some("sliding_attention"))
        {
            return Err("config.json has sliding-window attention layers; they are not supported".into());
        }
        let hidden = int("hidden_size")? as i32;
        let heads = int("num_attention_heads")? as i32;
        // transformers >= 5 nests rope_theta and the scaling under rope_parameters.
        let rope_parameters = config.get("rope_parameters").filter(|v| v.is_object());
        let rope_base = float("rope_theta")
            .or_else(|| rope_parameters.and_then(|p| p.get("rope_theta")).and_then(Value::as_f64))
            .or(rope_default)
            .ok_or("config.json has no rope_theta")? as f32;
        let scaling = config.get("rope_scaling").filter(|v| v.is_object()).or(rope_parameters);
        let attention_bias = match model_type.as_str() {
            "qwen2" => true,
            _ => config.get("attention_bias").and_then(Value::as_bool).unwrap_or(attention_bias_default),
        };
        Ok(Self {
            layers: int("num_hidden_layers")? as usize,
            hidden,
            intermediate: int("intermediate_size")? as i32,
            heads,
            kv_heads: config.get("num_key_value_heads").and_then(Value::as_i64).map(|v| v as i32).unwrap_or(heads),
            head_dim: config.get("head_dim").and_then(Value::as_i64).map(|v| v as i32).unwrap_or(hidden / heads),
            vocab: int("vocab_size")? as i32,
            norm_eps: float("rms_norm_eps").ok_or("config.json has no rms_norm_eps")? as f32,
            rope_base,
            rope_traditional: config.get("rope_traditional").and_then(Value::as_bool).unwrap_or(false),
            rope_scaling: rope_scaling(scaling)?,
            attention_bias,
            qk_norm,
            tie_embeddings: config.get("tie_word_embeddings").and_then(Value::as_bool).unwrap_or(true),
            context_train: config.get("max_position_embeddings").and_then(Value::as_u64).unwrap_or(2048) as u32,
            model_type,
        })
    }

    /// From a GGUF's metadata (Llama architecture; its q/k weights are permuted for interleaved rotary).
    pub fn from_gguf(file: &GgufFile) -> MlxResult<Self> {
        let arch = file.str("general.architecture").map_err(|e| e.to_string())?.to_string();
        if arch != "llama" {
            return Err(format!("general.architecture is {arch:?}; from a GGUF the MLX engine runs Llama-architecture models"));
        }
        let int = |key: &str| file.u64(&format!("llama.{key}")).map_err(|e| e.to_string());
        let float = |key: &str| file.get(&format!("llama.{key}")).ok().and_then(|v| v.as_f64());
        let hidden = int("embedding_length")? as i32;
        let heads = int("attention.head_count")? as i32;
        Ok(Self {
            model_type: "llama".into(),
            layers: int("block_count")? as usize,
            hidden,
            intermediate: int("feed_forward_length")? as i32,
            heads,
            kv_heads: int("attention.head_count_kv").unwrap_or(heads as u64) as i32,
            head_dim: hidden / heads,
            vocab: file.strings("tokenizer.ggml.tokens").map(|t| t.len() as i32).map_err(|e| e.to_string())?,
            norm_eps: float("attention.layer_norm_rms_epsilon").unwrap_or(1e-5) as f32,
            rope_base: float("rope.freq_base").unwrap_or(10_000.0) as f32,
            rope_traditional: true,
            rope_scaling: RopeScaling::Uniform { scale: 1.0 },
            attention_bias: false,
            qk_norm: false,
            tie_embeddings: !file.tensors.iter().any(|t| t.name == "output.weight"),
            context_train: int("context_length").unwrap_or(2048) as u32,
        })
    }
}

/// mlx-lm's `initialize_rope` choices that this engine computes: none/"default", "linear", "llama3".
fn rope_scaling(scaling: Option<&Value>) -> MlxResult<RopeScaling> {
    let Some(scaling) = scaling else { return Ok(RopeScaling::Uniform { scale: 1.0 }) };
    let kind = scaling.get("type").or_else(|| scaling.get("rope_type")).and_then(Value::as_str).unwrap_or("default");
    let float = |key: &str, default: Option<f64>| -> MlxResult<f32> {
        scaling
            .get(key)
            .and_then(Value::as_f64)
            .or(default)
            .map(|v| v as f32)
            .ok_or_else(|| format!("rope_scaling of type {kind} needs {key}"))
    };
    match kind {
        "default" => Ok(RopeScaling::Uniform { scale: 1.0 }),
        "linear" => Ok(RopeScaling::Uniform { scale: 1.0 / float("factor", None)? }),
        "llama3" => Ok(RopeScaling::Llama3 {
            factor: float("factor", None)?,
            low_freq_factor: float("low_freq_factor", Some(1.0))?,
            high_freq_factor: float("high_freq_factor", Some(4.0))?,
            original_context: float("original_max_position_embeddings", Some(8192.0))?,
        }),
        other => Err(format!("rope_scaling of type {other:?} is not supported; supported: default, linear, llama3")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn qwen3() -> Value {
        json!({"model_type": "qwen3", "hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 128,
               "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32, "rms_norm_eps": 1e-6,
               "vocab_size": 100, "rope_theta": 1e6, "tie_word_embeddings": false, "max_position_embeddings": 4096})
    }

    #[test]
    fn qwen3_reads_its_head_dim_norms_and_untied_output() {
        let arch = Architecture::from_config(&qwen3()).unwrap();
        assert_eq!((arch.head_dim, arch.qk_norm, arch.attention_bias, arch.tie_embeddings), (32, true, false, false));
        assert!(!arch.rope_traditional);
    }

    #[test]
    fn an_unsupported_model_type_is_named_with_the_supported_ones() {
        let mut config = qwen3();
        config["model_type"] = json!("gemma3");
        let error = Architecture::from_config(&config).unwrap_err();
        assert!(error.contains("\"gemma3\"") && error.contains(SUPPORTED_MODEL_TYPES), "{error}");
    }

    #[test]
    fn rope_scaling_types() {
        let mut config = qwen3();
        config["rope_scaling"] = json!({"rope_type": "llama3", "factor": 8.0});
        let arch = Architecture::from_config(&config).unwrap();
        assert_eq!(
            arch.rope_scaling,
            RopeScaling::Llama3 { factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_context: 8192.0 }
        );
        config["rope_scaling"] = json!({"type": "linear", "factor": 4.0});
        assert_eq!(Architecture::from_config(&config).unwrap().rope_scaling, RopeScaling::Uniform { scale: 0.25 });
        config["rope_scaling"] = json!({"type": "yarn", "factor": 4.0});
        assert!(Architecture::from_config(&config).unwrap_err().contains("yarn"));
    }
}
