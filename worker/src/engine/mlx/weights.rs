//! A model's tensors by their Hugging Face names (`model.layers.0.self_attn.q_proj.weight`), from an
//! mlx-lm folder's safetensors (one file or shards) or from a GGUF through MLX's own GGUF loader (its
//! names mapped to the same ones), and each linear layer's quantization as mlx-lm decides it: the
//! config's per-layer entry when it names the layer, else what the stored shapes say.

use std::collections::HashMap;
use std::path::Path;

use mlx_rs::Array;
use mlx_rs::io::GgufFile as MlxGguf;
use model_input::gguf::GgufFile;
use serde_json::Value;

use super::MlxResult;

/// How one linear layer is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    Dense,
    /// MLX's affine quantization: packed `weight`, per-group `scales` and `biases`.
    Quantized {
        group_size: i32,
        bits: i32,
    },
}

pub struct Weights {
    arrays: HashMap<String, Array>,
    /// config.json's `quantization` (per-layer entries by layer path), when present.
    quantization: Option<Value>,
}

/// GGUF tensor names → Hugging Face names, per layer part.
const GGUF_LAYER_PARTS: [(&str, &str); 9] = [
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
    ("attn_norm", "input_layernorm"),
    ("ffn_norm", "post_attention_layernorm"),
];

impl Weights {
    /// Every `model*.safetensors` of the folder (as mlx-lm globs them), with config.json's quantization.
    pub fn from_folder(folder: &Path, config: &Value) -> MlxResult<Self> {
        let mut files: Vec<_> = std::fs::read_dir(folder)
            .map_err(|e| format!("reading {}: {e}", folder.display()))?
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|path| {
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                name.starts_with("model") && name.ends_with(".safetensors")
            })
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(format!("{} has no model*.safetensors", folder.display()));
        }
        let mut arrays = HashMap::new();
        for file in &files {
            let loaded = Array::load_safetensors(file).map_err(|e| format!("loading {}: {e}", file.display()))?;
            arrays.extend(loaded);
        }
        let quantization = config.get("quantization").or_else(|| config.get("quantization_config")).cloned();
        if let Some(mode) = quantization.as_ref().and_then(|q| q.get("mode")).and_then(Value::as_str)
            && mode != "affine"
        {
            return Err(format!("quantization mode {mode:?} is not supported; supported: affine"));
        }
        Ok(Self { arrays, quantization })
    }

    /// A GGUF's tensors as MLX loads them (Q4_0/Q4_1/Q8_0 as affine quantized), under Hugging Face names.
    pub fn from_gguf(path: &Path, meta: &GgufFile) -> MlxResult<Self> {
        let file = MlxGguf::load(path).map_err(|e| format!("loading {} with MLX: {e}", path.display()))?;
        let mut arrays = HashMap::new();
        for tensor in &meta.tensors {
            let Some(base) = tensor.name.strip_suffix(".weight") else { continue };
            let target = gguf_to_hf(base).ok_or_else(|| format!("unexpected tensor {} in the GGUF", tensor.name))?;
            for suffix in ["weight", "scales", "biases"] {
                if let Some(array) = file.get_array(&format!("{base}.{suffix}")).map_err(|e| format!("reading {base}.{suffix}: {e}"))? {
                    arrays.insert(format!("{target}.{suffix}"), array);
                }
            }
        }
        Ok(Self { arrays, quantization: None })
    }

    pub fn has(&self, name: &str) -> bool {
        self.arrays.contains_key(name)
    }

    pub fn take(&mut self, name: &str) -> MlxResult<Array> {
        self.arrays.remove(name).ok_or_else(|| format!("the model has no tensor {name}"))
    }

    /// How the layer at `path` (input width `in_dims`) is stored: the config's entry for it when there is
    /// one, else quantized when it has scales, with group size and bits from the shapes.
    pub fn storage(&self, path: &str, in_dims: i32) -> MlxResult<Storage> {
        let per_layer = self.quantization.as_ref().and_then(|q| q.get(path));
        match per_layer {
            Some(Value::Bool(false)) => return Ok(Storage::Dense),
            Some(entry @ Value::Object(_)) => {
                let get = |key: &str| entry.get(key).and_then(Value::as_i64).map(|v| v as i32);
                if let (Some(group_size), Some(bits)) = (get("group_size"), get("bits")) {
                    return Ok(Storage::Quantized { group_size, bits });
                }
            }
            _ => {}
        }
        let Some(scales) = self.arrays.get(&format!("{path}.scales")) else { return Ok(Storage::Dense) };
        if scales.dtype() == mlx_rs::Dtype::Uint8 {
            return Err(format!("{path} is stored in a floating-point quantization (mxfp4/nvfp4/mxfp8); supported: affine"));
        }
        let weight = self.arrays.get(&format!("{path}.weight")).ok_or_else(|| format!("the model has no tensor {path}.weight"))?;
        let groups = *scales.shape().last().unwrap_or(&0);
        let packed = *weight.shape().last().unwrap_or(&0);
        if groups == 0 || in_dims % groups != 0 || (packed * 32) % in_dims != 0 {
            return Err(format!("{path}: packed width {packed} and {groups} groups do not fit an input width of {in_dims}"));
        }
        Ok(Storage::Quantized { group_size: in_dims / groups, bits: packed * 32 / in_dims })
    }
}

fn gguf_to_hf(base: &str) -> Option<String> {
    match base {
        "token_embd" => return Some("model.embed_tokens".into()),
        "output_norm" => return Some("model.norm".into()),
        "output" => return Some("lm_head".into()),
        _ => {}
    }
    let rest = base.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let (_, hf) = GGUF_LAYER_PARTS.iter().find(|(gguf, _)| *gguf == part)?;
    Some(format!("model.layers.{layer}.{hf}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gguf_names_map_to_hugging_face_names() {
        assert_eq!(gguf_to_hf("blk.12.attn_q").as_deref(), Some("model.layers.12.self_attn.q_proj"));
        assert_eq!(gguf_to_hf("blk.0.ffn_norm").as_deref(), Some("model.layers.0.post_attention_layernorm"));
        assert_eq!(gguf_to_hf("token_embd").as_deref(), Some("model.embed_tokens"));
        assert_eq!(gguf_to_hf("rope_freqs"), None);
    }
}
