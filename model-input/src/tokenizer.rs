//! The model's tokenizer, through Hugging Face's `tokenizers` library: loaded from an mlx-lm folder's
//! `tokenizer.json`, or for a GGUF built into the same kind of tokenizer from the vocabulary, merges and
//! token types stored in its metadata (byte-level BPE, with the pre-tokenizer `tokenizer.ggml.pre`
//! names). A GGUF's must agree token for token with llama.cpp's, which a test checks on hard strings; a
//! folder's with the Python `tokenizers` package's, which the MLX reference test checks.
//!
//! Two encodings of the same text: with special-token markers (`<|im_start|>`) parsed into their ids,
//! for the parts a chat template writes and for raw prompts, whose caller owns the whole text; and with
//! every marker read as plain text, for what users write ([`crate::chat_template`] keeps them apart).

use std::path::Path;

use serde_json::{Value, json};

use crate::gguf::{GgufError, GgufFile};

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("tokenizer.ggml.model is {0:?}; only byte-level BPE (\"gpt2\") is supported")]
    Model(String),
    #[error("tokenizer.ggml.pre is {0:?}; supported: {SUPPORTED_PRE_TOKENIZERS}")]
    PreTokenizer(String),
    #[error("reading {path}: {message}")]
    File { path: String, message: String },
    #[error("the tokenizer cannot encode this text: {0}")]
    Encode(String),
    #[error("the tokenizer's decoder is {0}; supported: ByteLevel (GPT-2 style) and byte-fallback BPE")]
    Decoder(String),
}

/// llama.cpp's token types: control tokens are special (matched literally only where special tokens are
/// parsed); user-defined tokens are matched literally everywhere.
const TYPE_CONTROL: u64 = 3;
const TYPE_USER_DEFINED: u64 = 4;

const SUPPORTED_PRE_TOKENIZERS: &str = "smollm, gpt2, default, llama-bpe, qwen2";

/// Llama 3's split (llama.cpp's `llama-bpe`): numbers in runs of up to three digits.
const LLAMA3_SPLIT: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's split: single digits.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

pub struct Tokenizer {
    /// Special-token markers in text become their ids.
    parsing: tokenizers::Tokenizer,
    /// Special-token markers in text are text.
    literal: tokenizers::Tokenizer,
    /// Each token's bytes, as they appear in decoded text (special tokens: their marker).
    bytes: Vec<Vec<u8>>,
    special: Vec<bool>,
    /// The special tokens' markers and ids, longest marker first.
    pub specials: Vec<(String, u32)>,
    pub bos: Option<u32>,
    /// Whether a raw prompt starts with `bos` (the tokenizer's post-processor adds it, or the GGUF says so).
    pub add_bos: bool,
    /// Every id that ends a generation (Qwen declares several).
    pub eos: Vec<u32>,
    /// See [`Tokenizer::longest_token_bytes`].
    longest_token_bytes: Option<u32>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer").field("vocab", &self.bytes.len()).field("bos", &self.bos).field("eos", &self.eos).finish()
    }
}

impl Tokenizer {
    /// The GGUF's tokenizer, as the `tokenizers` library's JSON describes it, then loaded by that library.
    pub fn from_gguf(file: &GgufFile) -> Result<Self, TokenizerError> {
        let model = file.str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(TokenizerError::Model(model.into()));
        }
        let split = |pattern: &str| json!({"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false});
        let byte_level =
            |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": use_regex});
        let pre = file.str("tokenizer.ggml.pre").unwrap_or("default");
        let pre_tokenizer = match pre {
            "smollm" => json!({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level(true)]}),
            "gpt2" | "default" => byte_level(true),
            "llama-bpe" | "llama3" => json!({"type": "Sequence", "pretokenizers": [split(LLAMA3_SPLIT), byte_level(false)]}),
            "qwen2" => json!({"type": "Sequence", "pretokenizers": [split(QWEN2_SPLIT), byte_level(false)]}),
            other => return Err(TokenizerError::PreTokenizer(other.into())),
        };
        let tokens = file.strings("tokenizer.ggml.tokens")?;
        let types: Vec<u64> = file
            .get("tokenizer.ggml.token_type")
            .ok()
            .and_then(|v| v.as_array())
            .map(|a| a.iter().map(|v| v.as_u64().unwrap_or(1)).collect())
            .unwrap_or_default();
        let merges: Vec<Value> = file
            .strings("tokenizer.ggml.merges")?
            .into_iter()
            .map(|m| m.split_once(' ').map(|(l, r)| json!([l, r])).unwrap_or_else(|| json!([m, ""])))
            .collect();
        let vocab: serde_json::Map<String, Value> = tokens.iter().enumerate().map(|(i, t)| (t.to_string(), json!(i))).collect();
        let added: Vec<Value> = tokens
            .iter()
            .enumerate()
            .filter(|(i, _)| matches!(types.get(*i), Some(&TYPE_CONTROL) | Some(&TYPE_USER_DEFINED)))
            .map(|(i, t)| {
                json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                       "normalized": false, "special": types[i] == TYPE_CONTROL})
            })
            .collect();
        let bos = file.u64("tokenizer.ggml.bos_token_id").ok().map(|v| v as u32);
        let add_bos = file.get("tokenizer.ggml.add_bos_token").ok().and_then(|v| v.as_u64()).map(|v| v != 0).unwrap_or(false);
        let description = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": pre_tokenizer,
            "post_processor": byte_level(true),
            "decoder": byte_level(true),
            "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                      "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                      "vocab": vocab, "merges": merges},
        });
        let parsing = description
            .to_string()
            .parse::<tokenizers::Tokenizer>()
            .map_err(|e| TokenizerError::File { path: "the GGUF's tokenizer metadata".into(), message: e.to_string() })?;
        let eos = file.u64("tokenizer.ggml.eos_token_id").ok().map(|v| vec![v as u32]).unwrap_or_default();
        let mut eos = eos;
        if let Ok(eot) = file.u64("tokenizer.ggml.eot_token_id") {
            eos.push(eot as u32);
        }
        Self::new(parsing, bos, add_bos, eos)
    }

    /// An mlx-lm (Hugging Face) folder's `tokenizer.json`, with the BOS and EOS tokens its configuration
    /// names (see [`crate::model_folder`]).
    pub fn from_file(path: &Path, bos: Option<&str>, eos: &[u32]) -> Result<Self, TokenizerError> {
        let parsing = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| TokenizerError::File { path: path.display().to_string(), message: e.to_string() })?;
        let bos = bos.and_then(|b| parsing.token_to_id(b));
        // The post-processor decides whether encoding with special tokens adds BOS (Llama 3's does).
        let add_bos = match (bos, parsing.encode("", true)) {
            (Some(bos), Ok(encoding)) => encoding.get_ids().first() == Some(&bos),
            _ => false,
        };
        Self::new(parsing, bos, add_bos, eos.to_vec())
    }

    fn new(parsing: tokenizers::Tokenizer, bos: Option<u32>, add_bos: bool, mut eos: Vec<u32>) -> Result<Self, TokenizerError> {
        let mut literal = parsing.clone();
        literal.set_encode_special_tokens(true);
        let size = parsing.get_vocab_size(true);
        let decoder = token_decoder(&parsing)?;
        let mut special = vec![false; size];
        let mut specials = Vec::new();
        for (id, token) in parsing.get_added_tokens_decoder() {
            if token.special && (id as usize) < size {
                special[id as usize] = true;
                specials.push((token.content.clone(), id));
            }
        }
        specials.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        let pieces: Vec<String> = (0..size as u32).map(|id| parsing.id_to_token(id).unwrap_or_default()).collect();
        let bytes: Vec<Vec<u8>> = pieces
            .iter()
            .enumerate()
            .map(|(id, piece)| if special[id] { piece.clone().into_bytes() } else { decoder.bytes(piece) })
            .collect();
        eos.sort_unstable();
        eos.dedup();
        let longest_token_bytes = keeps_every_byte(&parsing).then(|| {
            // The vocabulary entry's own length as well as its decoded bytes: "Ġthe" or "▁the" is longer
            // than the text it covers, so the larger of the two is never short of it.
            let longest = bytes.iter().zip(&pieces).map(|(b, piece)| b.len().max(piece.len())).max().unwrap_or(0);
            u32::try_from(longest).unwrap_or(u32::MAX).max(1)
        });
        Ok(Self { parsing, literal, bytes, special, specials, bos, add_bos, eos, longest_token_bytes })
    }

    /// The most bytes of input text one token can cover, when this tokenizer turns every byte of its
    /// input into some token (no normalizer that shortens text, no pre-tokenizer that drops any); `None`
    /// otherwise. A text of N bytes is then at least N / this many tokens: what lets the coordinator
    /// refuse, without a tokenizer, a prompt that cannot fit a slot.
    pub fn longest_token_bytes(&self) -> Option<u32> {
        self.longest_token_bytes
    }

    pub fn vocab_size(&self) -> usize {
        self.bytes.len()
    }

    /// The ids of `text`: with special-token markers parsed into their ids, or all of it as text. Empty
    /// if the library fails (it does not for UTF-8 text); [`Tokenizer::try_encode`] says why.
    pub fn encode(&self, text: &str, parse_special: bool) -> Vec<u32> {
        self.try_encode(text, parse_special).unwrap_or_default()
    }

    pub fn try_encode(&self, text: &str, parse_special: bool) -> Result<Vec<u32>, TokenizerError> {
        let tokenizer = if parse_special { &self.parsing } else { &self.literal };
        tokenizer.encode_fast(text, false).map(|e| e.get_ids().to_vec()).map_err(|e| TokenizerError::Encode(e.to_string()))
    }

    /// A raw prompt's ids, as mlx-lm encodes one: special-token markers parsed, and BOS first when the
    /// tokenizer adds it and the text does not already start with it.
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let mut ids = self.try_encode(text, true)?;
        if let Some(bos) = self.bos.filter(|_| self.add_bos)
            && ids.first() != Some(&bos)
        {
            ids.insert(0, bos);
        }
        Ok(ids)
    }

    /// The bytes of one token in decoded text; special tokens give their marker only when `special`.
    pub fn token_bytes(&self, id: u32, special: bool) -> Vec<u8> {
        match self.bytes.get(id as usize) {
            Some(_) if self.is_special(id) && !special => Vec::new(),
            Some(bytes) => bytes.clone(),
            None => Vec::new(),
        }
    }

    pub fn decode(&self, ids: &[u32], special: bool) -> String {
        let bytes: Vec<u8> = ids.iter().flat_map(|&id| self.token_bytes(id, special)).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    pub fn is_special(&self, id: u32) -> bool {
        self.special.get(id as usize).copied().unwrap_or(false)
    }

    /// One more id that ends a generation.
    pub fn add_eos(&mut self, id: u32) {
        if !self.eos.contains(&id) {
            self.eos.push(id);
            self.eos.sort_unstable();
        }
    }

    pub fn is_eos(&self, id: u32) -> bool {
        self.eos.contains(&id)
    }

    /// The id of a token given by its text (`<|im_end|>`).
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.parsing.token_to_id(token)
    }
}

/// Whether every byte of a text reaches some token: no normalizer but ones that only add or replace
/// with text at least as long, and no pre-tokenizer that removes what it splits on (BERT's whitespace
/// split does). Read from the library's own description of the pipeline, so an unknown step counts as
/// dropping text.
fn keeps_every_byte(tokenizer: &tokenizers::Tokenizer) -> bool {
    let normalizer = tokenizer.get_normalizer().map(serde_json::to_value);
    let pre_tokenizer = tokenizer.get_pre_tokenizer().map(serde_json::to_value);
    let normalizer_keeps = match normalizer {
        None => true,
        Some(Ok(step)) => step_keeps_bytes(&step, &["Prepend", "Replace"], "normalizers"),
        Some(Err(_)) => false,
    };
    let pre_tokenizer_keeps = match pre_tokenizer {
        None => true,
        Some(Ok(step)) => step_keeps_bytes(&step, &["ByteLevel", "Digits", "Metaspace", "Split", "Punctuation"], "pretokenizers"),
        Some(Err(_)) => false,
    };
    normalizer_keeps && pre_tokenizer_keeps
}

fn step_keeps_bytes(step: &Value, kept: &[&str], nested: &str) -> bool {
    let kind = step.get("type").and_then(Value::as_str).unwrap_or("");
    if kind == "Sequence" {
        return step.get(nested).and_then(Value::as_array).is_some_and(|steps| steps.iter().all(|s| step_keeps_bytes(s, kept, nested)));
    }
    if !kept.contains(&kind) || step.get("behavior").and_then(Value::as_str) == Some("Removed") {
        return false;
    }
    if kind == "Replace" {
        // Only a plain string replaced by one at least as long: a regex may match any length.
        let pattern = step.get("pattern").and_then(|p| p.get("String")).and_then(Value::as_str);
        let content = step.get("content").and_then(Value::as_str).unwrap_or("");
        return pattern.is_some_and(|p| content.len() >= p.len());
    }
    true
}

/// How a token's vocabulary entry turns into the bytes it stands for.
enum TokenDecoder {
    /// GPT-2's byte-to-character map (each byte a printable character).
    ByteLevel(Box<[Option<u8>; 512]>),
    /// SentencePiece-style BPE: `▁` is a space, `<0x0A>` is that byte.
    ByteFallback,
}

impl TokenDecoder {
    fn bytes(&self, piece: &str) -> Vec<u8> {
        match self {
            TokenDecoder::ByteLevel(map) => piece
                .chars()
                .flat_map(|c| match map.get(c as usize).copied().flatten() {
                    Some(byte) => vec![byte],
                    None => c.to_string().into_bytes(),
                })
                .collect(),
            TokenDecoder::ByteFallback => {
                if let Some(hex) = piece.strip_prefix("<0x").and_then(|p| p.strip_suffix('>'))
                    && let Ok(byte) = u8::from_str_radix(hex, 16)
                {
                    return vec![byte];
                }
                piece.replace('\u{2581}', " ").into_bytes()
            }
        }
    }
}

fn token_decoder(tokenizer: &tokenizers::Tokenizer) -> Result<TokenDecoder, TokenizerError> {
    let description = serde_json::to_value(tokenizer.get_decoder()).unwrap_or(Value::Null);
    let kinds = decoder_kinds(&description);
    if kinds.iter().any(|k| k == "ByteLevel") {
        return Ok(TokenDecoder::ByteLevel(Box::new(byte_level_map())));
    }
    if kinds.iter().any(|k| k == "ByteFallback" || k == "Metaspace") {
        return Ok(TokenDecoder::ByteFallback);
    }
    Err(TokenizerError::Decoder(if kinds.is_empty() { "missing".into() } else { kinds.join("+") }))
}

/// The decoder types in a decoder description (a Sequence lists several).
fn decoder_kinds(description: &Value) -> Vec<String> {
    let mut kinds = Vec::new();
    if let Some(kind) = description.get("type").and_then(Value::as_str) {
        kinds.push(kind.to_string());
    }
    if let Some(parts) = description.get("decoders").and_then(Value::as_array) {
        kinds.extend(parts.iter().flat_map(decoder_kinds));
    }
    kinds
}

/// GPT-2's reversible map between bytes and printable characters, inverted: character → byte.
fn byte_level_map() -> [Option<u8>; 512] {
    let mut map = [None; 512];
    let mut next = 256usize;
    for byte in 0..=255u8 {
        let printable = matches!(byte, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        let c = if printable {
            byte as usize
        } else {
            next += 1;
            next - 1
        };
        map[c] = Some(byte);
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_byte_map_covers_every_byte_once() {
        let map = byte_level_map();
        let mut seen: Vec<u8> = map.iter().flatten().copied().collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..=255u8).collect::<Vec<_>>());
        assert_eq!(map['Ġ' as usize], Some(b' '));
        assert_eq!(map['Ċ' as usize], Some(b'\n'));
    }

    #[test]
    fn byte_fallback_pieces_decode_to_their_bytes() {
        assert_eq!(TokenDecoder::ByteFallback.bytes("<0x0A>"), b"\n");
        assert_eq!(TokenDecoder::ByteFallback.bytes("\u{2581}Hello"), b" Hello");
    }

    /// A byte-level BPE over "a", "b" and "ab", with the given pre-tokenizer.
    fn tiny(pre_tokenizer: Value) -> Tokenizer {
        let description = json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": [], "normalizer": null,
            "pre_tokenizer": pre_tokenizer, "post_processor": null,
            "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false},
            "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                      "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                      "vocab": {"a": 0, "b": 1, "Ġ": 2, "ab": 3, "Ġab": 4}, "merges": [["a", "b"], ["Ġ", "ab"]]},
        });
        Tokenizer::new(description.to_string().parse().unwrap(), None, false, Vec::new()).unwrap()
    }

    #[test]
    fn the_longest_token_bounds_text_only_when_no_byte_is_dropped() {
        let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": true});
        // "Ġab" is three characters in four UTF-8 bytes and stands for three bytes of text (" ab").
        assert_eq!(tiny(byte_level.clone()).longest_token_bytes(), Some(4));
        let sequence = json!({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level]});
        assert_eq!(tiny(sequence).longest_token_bytes(), Some(4));
        // BERT's whitespace split drops every space: a megabyte of them is no token at all.
        assert_eq!(tiny(json!({"type": "WhitespaceSplit"})).longest_token_bytes(), None);
        let removed = json!({"type": "Split", "pattern": {"String": " "}, "behavior": "Removed", "invert": false});
        assert_eq!(tiny(removed).longest_token_bytes(), None);
    }
}
