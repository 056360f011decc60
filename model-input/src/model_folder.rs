//! An mlx-lm (Hugging Face) model folder: `config.json` (architecture, sizes, quantization),
//! `tokenizer.json`, `tokenizer_config.json` (BOS/EOS tokens, the Jinja chat template, or
//! `chat_template.jinja` beside it) and `generation_config.json` (EOS ids, which override the config's).
//! What the folder says about text lives here; its weights are the MLX engine's business.

use std::path::{Path, PathBuf};

use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum FolderError {
    #[error("{path}: {message}")]
    Read { path: String, message: String },
    #[error("{path} is a directory without config.json; an mlx-lm model folder has config.json, tokenizer.json and *.safetensors")]
    NotAModelFolder { path: String },
}

/// Whether `path` names a model folder rather than a single model file.
pub fn is_folder(path: &Path) -> bool {
    path.is_dir()
}

/// The bytes of a model's weights: the file, or a folder's safetensors.
pub fn model_bytes(path: &Path) -> u64 {
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    if !is_folder(path) {
        return size(path);
    }
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
                .map(|p| size(&p))
                .sum()
        })
        .unwrap_or(0)
}

/// A JSON file of the folder; `None` when it is absent and optional.
pub fn read_json(path: &Path) -> Result<Value, FolderError> {
    let text = std::fs::read_to_string(path).map_err(|e| FolderError::Read { path: path.display().to_string(), message: e.to_string() })?;
    serde_json::from_str(&text).map_err(|e| FolderError::Read { path: path.display().to_string(), message: format!("not valid JSON: {e}") })
}

fn read_optional(path: &Path) -> Result<Option<Value>, FolderError> {
    if path.exists() { read_json(path).map(Some) } else { Ok(None) }
}

/// The text-side facts of a folder.
#[derive(Debug, Clone)]
pub struct FolderText {
    pub tokenizer_json: PathBuf,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    /// EOS ids from config.json, or generation_config.json when it names them (as mlx-lm reads them).
    pub eos_ids: Vec<u32>,
    pub chat_template: Option<String>,
    /// config.json's `_name_or_path`, else the folder's name.
    pub model_name: String,
}

impl FolderText {
    pub fn read(folder: &Path) -> Result<Self, FolderError> {
        let config_path = folder.join("config.json");
        if !config_path.exists() {
            return Err(FolderError::NotAModelFolder { path: folder.display().to_string() });
        }
        let config = read_json(&config_path)?;
        let tokenizer_config = read_optional(&folder.join("tokenizer_config.json"))?.unwrap_or(Value::Null);
        let generation = read_optional(&folder.join("generation_config.json"))?.unwrap_or(Value::Null);
        let ids = |value: Option<&Value>| -> Vec<u32> {
            match value {
                Some(Value::Number(n)) => n.as_u64().map(|id| vec![id as u32]).unwrap_or_default(),
                Some(Value::Array(items)) => items.iter().filter_map(Value::as_u64).map(|id| id as u32).collect(),
                _ => Vec::new(),
            }
        };
        let mut eos_ids = ids(generation.get("eos_token_id"));
        if eos_ids.is_empty() {
            eos_ids = ids(config.get("eos_token_id"));
        }
        // A token may be written as its text or as {"content": text, ...}.
        let token = |key: &str| -> Option<String> {
            match tokenizer_config.get(key)? {
                Value::String(s) => Some(s.clone()),
                Value::Object(o) => o.get("content").and_then(Value::as_str).map(String::from),
                _ => None,
            }
        };
        let chat_template = match tokenizer_config.get("chat_template") {
            Some(Value::String(s)) => Some(s.clone()),
            // Several named templates: the default one.
            Some(Value::Array(named)) => named
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                .and_then(|t| t.get("template"))
                .and_then(Value::as_str)
                .map(String::from),
            _ => None,
        };
        let chat_template = match chat_template {
            Some(template) => Some(template),
            None => {
                let file = folder.join("chat_template.jinja");
                if file.exists() {
                    Some(
                        std::fs::read_to_string(&file)
                            .map_err(|e| FolderError::Read { path: file.display().to_string(), message: e.to_string() })?,
                    )
                } else {
                    None
                }
            }
        };
        let model_name = config
            .get("_name_or_path")
            .and_then(Value::as_str)
            .map(String::from)
            .unwrap_or_else(|| folder.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
        Ok(Self {
            tokenizer_json: folder.join("tokenizer.json"),
            bos_token: token("bos_token"),
            eos_token: token("eos_token"),
            eos_ids,
            chat_template,
            model_name,
        })
    }
}
