//! The model's own tokenizer, built from a GGUF file's metadata: byte-level BPE (`tokenizer.ggml.model =
//! gpt2`) with the vocabulary, merges and token types stored there, and the pre-tokenizer the file names
//! (`tokenizer.ggml.pre`). It must agree token for token with llama.cpp's, which a test checks on hard
//! strings. Engines without a tokenizer of their own (MLX) use it, and the bench counts tokens with it.

use std::collections::HashMap;

use fancy_regex::Regex;

use crate::gguf::{GgufError, GgufFile};

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("tokenizer.ggml.model is {0:?}; only byte-level BPE (\"gpt2\") is supported")]
    Model(String),
    #[error("tokenizer.ggml.pre is {0:?}; supported: smollm, gpt2, default")]
    PreTokenizer(String),
    #[error("malformed merge {0:?}")]
    Merge(String),
}

/// llama.cpp's token types that are matched literally in text (when special tokens are parsed).
const TYPE_CONTROL: u64 = 3;
const TYPE_USER_DEFINED: u64 = 4;

/// GPT-2's split of text into words, numbers, punctuation runs and spaces (as llama.cpp writes it).
const GPT2_SPLIT: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";

pub struct Tokenizer {
    vocab: HashMap<String, u32>,
    pieces: Vec<String>,
    merges: HashMap<(String, String), u32>,
    /// Special tokens matched literally, longest first.
    specials: Vec<(String, u32)>,
    /// Regexes applied one after another, each to the pieces of the previous.
    splits: Vec<Regex>,
    byte_to_char: [char; 256],
    char_to_byte: HashMap<char, u8>,
    pub bos: Option<u32>,
    pub add_bos: bool,
    pub eos: Option<u32>,
}

/// GPT-2's reversible map from bytes to printable characters, so that BPE works on text.
fn byte_chars() -> [char; 256] {
    let mut map = ['\0'; 256];
    let mut next = 256u32;
    for byte in 0..=255u8 {
        let printable = matches!(byte, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        map[byte as usize] = if printable {
            char::from(byte)
        } else {
            let c = char::from_u32(next).expect("valid code point");
            next += 1;
            c
        };
    }
    map
}

impl Tokenizer {
    pub fn from_gguf(file: &GgufFile) -> Result<Self, TokenizerError> {
        let model = file.str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(TokenizerError::Model(model.into()));
        }
        let pre = file.str("tokenizer.ggml.pre").unwrap_or("default");
        let splits = match pre {
            // Every digit on its own first, then GPT-2's split.
            "smollm" => vec![r"\p{N}", GPT2_SPLIT],
            "gpt2" | "default" => vec![GPT2_SPLIT],
            other => return Err(TokenizerError::PreTokenizer(other.into())),
        };
        let splits = splits.into_iter().map(|p| Regex::new(p).expect("pattern compiles")).collect();
        let pieces: Vec<String> = file.strings("tokenizer.ggml.tokens")?.into_iter().map(String::from).collect();
        let vocab = pieces.iter().enumerate().map(|(id, p)| (p.clone(), id as u32)).collect();
        let mut merges = HashMap::new();
        for (rank, merge) in file.strings("tokenizer.ggml.merges")?.into_iter().enumerate() {
            let (left, right) = merge.split_once(' ').ok_or_else(|| TokenizerError::Merge(merge.into()))?;
            merges.insert((left.to_string(), right.to_string()), rank as u32);
        }
        let types: Vec<u64> = file
            .get("tokenizer.ggml.token_type")
            .ok()
            .and_then(|v| v.as_array())
            .map(|a| a.iter().map(|v| v.as_u64().unwrap_or(1)).collect())
            .unwrap_or_default();
        let mut specials: Vec<(String, u32)> = types
            .iter()
            .enumerate()
            .filter(|(_, t)| matches!(**t, TYPE_CONTROL | TYPE_USER_DEFINED))
            .map(|(id, _)| (pieces[id].clone(), id as u32))
            .filter(|(text, _)| !text.is_empty())
            .collect();
        specials.sort_by_key(|s| std::cmp::Reverse(s.0.len()));
        let byte_to_char = byte_chars();
        let char_to_byte = byte_to_char.iter().enumerate().map(|(b, c)| (*c, b as u8)).collect();
        let id = |key: &str| file.u64(key).ok().map(|v| v as u32);
        let add_bos = matches!(file.get("tokenizer.ggml.add_bos_token"), Ok(crate::gguf::Value::Bool(true)));
        Ok(Self {
            vocab,
            pieces,
            merges,
            specials,
            splits,
            byte_to_char,
            char_to_byte,
            bos: id("tokenizer.ggml.bos_token_id"),
            add_bos,
            eos: id("tokenizer.ggml.eos_token_id"),
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.pieces.len()
    }

    /// Token ids of `text`. With `parse_special`, special tokens written in the text (such as
    /// `<|im_start|>`) become their ids, as llama.cpp does for chat templates.
    pub fn encode(&self, text: &str, parse_special: bool) -> Vec<u32> {
        let mut ids = Vec::new();
        if self.add_bos {
            ids.extend(self.bos);
        }
        let mut rest = text;
        while !rest.is_empty() {
            let next_special = if parse_special {
                self.specials.iter().filter_map(|(s, id)| rest.find(s.as_str()).map(|at| (at, s.len(), *id))).min_by_key(|&(at, len, _)| (at, usize::MAX - len))
            } else {
                None
            };
            match next_special {
                Some((at, len, id)) => {
                    self.encode_plain(&rest[..at], &mut ids);
                    ids.push(id);
                    rest = &rest[at + len..];
                }
                None => {
                    self.encode_plain(rest, &mut ids);
                    break;
                }
            }
        }
        ids
    }

    fn encode_plain(&self, text: &str, ids: &mut Vec<u32>) {
        if text.is_empty() {
            return;
        }
        let mut pieces = vec![text];
        for regex in &self.splits {
            pieces = pieces.into_iter().flat_map(|p| split_keeping_gaps(regex, p)).collect();
        }
        for piece in pieces {
            self.bpe(piece, ids);
        }
    }

    /// Merges the byte-level symbols of one piece, lowest merge rank first, and looks them up.
    fn bpe(&self, piece: &str, ids: &mut Vec<u32>) {
        let mut symbols: Vec<String> = piece.bytes().map(|b| self.byte_to_char[b as usize].to_string()).collect();
        loop {
            let best = symbols
                .windows(2)
                .enumerate()
                .filter_map(|(i, pair)| self.merges.get(&(pair[0].clone(), pair[1].clone())).map(|rank| (*rank, i)))
                .min();
            let Some((_, i)) = best else { break };
            let right = symbols.remove(i + 1);
            symbols[i].push_str(&right);
        }
        for symbol in symbols {
            match self.vocab.get(&symbol) {
                Some(id) => ids.push(*id),
                // Not in the vocabulary (a broken file): fall back to its single bytes.
                None => ids.extend(symbol.chars().filter_map(|c| self.vocab.get(&c.to_string()).copied())),
            }
        }
    }

    /// The bytes a token stands for; special tokens give their text only when `special` is set.
    pub fn token_bytes(&self, id: u32, special: bool) -> Vec<u8> {
        let Some(piece) = self.pieces.get(id as usize) else { return Vec::new() };
        if self.specials.iter().any(|(_, s)| *s == id) {
            return if special { piece.as_bytes().to_vec() } else { Vec::new() };
        }
        piece.chars().filter_map(|c| self.char_to_byte.get(&c).copied()).collect()
    }

    pub fn decode(&self, ids: &[u32], special: bool) -> String {
        let bytes: Vec<u8> = ids.iter().flat_map(|id| self.token_bytes(*id, special)).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    pub fn is_special(&self, id: u32) -> bool {
        self.specials.iter().any(|(_, s)| *s == id)
    }
}

/// Splits `text` into the regex's matches and the text between them, in order: nothing is dropped.
fn split_keeping_gaps<'t>(regex: &Regex, text: &'t str) -> Vec<&'t str> {
    let mut out = Vec::new();
    let mut last = 0;
    for m in regex.find_iter(text).filter_map(Result::ok) {
        if m.start() > last {
            out.push(&text[last..m.start()]);
        }
        if m.end() > m.start() {
            out.push(m.as_str());
        }
        last = m.end();
    }
    if last < text.len() {
        out.push(&text[last..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_map_is_a_bijection_onto_printable_characters() {
        let map = byte_chars();
        let distinct: std::collections::HashSet<char> = map.iter().copied().collect();
        assert_eq!(distinct.len(), 256);
        assert_eq!(map[b'a' as usize], 'a');
        assert_eq!(map[b' ' as usize], 'Ġ');
        assert_eq!(map[b'\n' as usize], 'Ċ');
    }

    #[test]
    fn splitting_keeps_every_character() {
        let digits = Regex::new(r"\p{N}").unwrap();
        assert_eq!(split_keeping_gaps(&digits, "ab 12c"), vec!["ab ", "1", "2", "c"]);
        let gpt2 = Regex::new(GPT2_SPLIT).unwrap();
        assert_eq!(split_keeping_gaps(&gpt2, "Hi  there\t!"), vec!["Hi", " ", " there", "\t", "!"]);
    }
}
