//! A reader for the metadata and tensor table of a GGUF file (the format llama.cpp and MLX both load).
//! It reads what the engines do not expose: the tokenizer's vocabulary and merges, and the size of every
//! tensor (the bytes a decode step must read). Tensor data is not loaded.

use std::collections::HashMap;
use std::io::{BufReader, Read};
use std::path::Path;

const MAGIC: u32 = 0x4655_4747; // "GGUF", little-endian
/// Strings and arrays longer than this are refused: a corrupt length must not allocate gigabytes.
const MAX_LEN: u64 = 1 << 28;

#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("reading {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path} is not a GGUF file (bad magic)")]
    NotGguf { path: String },
    #[error("{path}: unsupported GGUF version {version} (1 is too old; 2 and 3 are read)")]
    Version { path: String, version: u32 },
    #[error("{path}: corrupt metadata: {reason}")]
    Corrupt { path: String, reason: String },
    #[error("metadata key {key}: {reason}")]
    Key { key: String, reason: String },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U64(u64),
    I64(i64),
    F64(f64),
    Bool(bool),
    Str(String),
    Array(Vec<Value>),
}

impl Value {
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U64(v) => Some(v),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F64(v) => Some(v),
            Value::U64(v) => Some(v as f64),
            Value::I64(v) => Some(v as f64),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// One tensor's entry in the table: its name, shape and storage type.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    pub dims: Vec<u64>,
    /// ggml's type id (0 F32, 1 F16, 2 Q4_0, 3 Q4_1, 8 Q8_0, ...).
    pub ggml_type: u32,
    pub offset: u64,
}

impl TensorInfo {
    pub fn elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// Bytes the tensor occupies, if its type is one this reader knows.
    pub fn bytes(&self) -> Option<u64> {
        let (block, block_bytes) = block_layout(self.ggml_type)?;
        Some(self.elements().div_ceil(block) * block_bytes)
    }
}

/// Elements per block and bytes per block of ggml's storage types.
fn block_layout(ggml_type: u32) -> Option<(u64, u64)> {
    Some(match ggml_type {
        0 => (1, 4),      // F32
        1 => (1, 2),      // F16
        2 => (32, 18),    // Q4_0
        3 => (32, 20),    // Q4_1
        6 => (32, 22),    // Q5_0
        7 => (32, 24),    // Q5_1
        8 => (32, 34),    // Q8_0
        9 => (32, 36),    // Q8_1
        10 => (256, 84),  // Q2_K
        11 => (256, 110), // Q3_K
        12 => (256, 144), // Q4_K
        13 => (256, 176), // Q5_K
        14 => (256, 210), // Q6_K
        15 => (256, 292), // Q8_K
        30 => (1, 2),     // BF16
        _ => return None,
    })
}

#[derive(Debug, Clone)]
pub struct GgufFile {
    pub version: u32,
    pub metadata: HashMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
}

struct Reader<R> {
    inner: R,
    path: String,
}

impl<R: Read> Reader<R> {
    fn bytes<const N: usize>(&mut self) -> Result<[u8; N], GgufError> {
        let mut buffer = [0u8; N];
        self.inner.read_exact(&mut buffer).map_err(|source| GgufError::Io { path: self.path.clone(), source })?;
        Ok(buffer)
    }

    fn u32(&mut self) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.bytes()?))
    }

    fn u64(&mut self) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.bytes()?))
    }

    fn length(&mut self) -> Result<usize, GgufError> {
        let len = self.u64()?;
        if len > MAX_LEN {
            return Err(GgufError::Corrupt { path: self.path.clone(), reason: format!("length {len} is implausible") });
        }
        Ok(len as usize)
    }

    fn string(&mut self) -> Result<String, GgufError> {
        let len = self.length()?;
        let mut buffer = vec![0u8; len];
        self.inner.read_exact(&mut buffer).map_err(|source| GgufError::Io { path: self.path.clone(), source })?;
        // Vocabularies hold byte-level pieces; they are valid UTF-8 in practice, but never fail on one.
        Ok(String::from_utf8(buffer).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
    }

    fn value(&mut self, value_type: u32) -> Result<Value, GgufError> {
        Ok(match value_type {
            0 => Value::U64(u64::from(self.bytes::<1>()?[0])),
            1 => Value::I64(i64::from(self.bytes::<1>()?[0] as i8)),
            2 => Value::U64(u64::from(u16::from_le_bytes(self.bytes()?))),
            3 => Value::I64(i64::from(i16::from_le_bytes(self.bytes()?))),
            4 => Value::U64(u64::from(self.u32()?)),
            5 => Value::I64(i64::from(i32::from_le_bytes(self.bytes()?))),
            6 => Value::F64(f64::from(f32::from_le_bytes(self.bytes()?))),
            7 => Value::Bool(self.bytes::<1>()?[0] != 0),
            8 => Value::Str(self.string()?),
            9 => {
                let element_type = self.u32()?;
                let count = self.length()?;
                let mut values = Vec::with_capacity(count.min(1 << 20));
                for _ in 0..count {
                    values.push(self.value(element_type)?);
                }
                Value::Array(values)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(i64::from_le_bytes(self.bytes()?)),
            12 => Value::F64(f64::from_le_bytes(self.bytes()?)),
            other => return Err(GgufError::Corrupt { path: self.path.clone(), reason: format!("unknown value type {other}") }),
        })
    }
}

impl GgufFile {
    /// Reads the header, the metadata and the tensor table.
    pub fn open(path: &Path) -> Result<Self, GgufError> {
        let name = path.display().to_string();
        let file = std::fs::File::open(path).map_err(|source| GgufError::Io { path: name.clone(), source })?;
        let mut reader = Reader { inner: BufReader::with_capacity(1 << 20, file), path: name.clone() };
        if reader.u32()? != MAGIC {
            return Err(GgufError::NotGguf { path: name });
        }
        let version = reader.u32()?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::Version { path: name, version });
        }
        let tensor_count = reader.u64()?;
        let kv_count = reader.u64()?;
        if tensor_count > MAX_LEN || kv_count > MAX_LEN {
            return Err(GgufError::Corrupt { path: name, reason: "implausible counts".into() });
        }
        let mut metadata = HashMap::new();
        for _ in 0..kv_count {
            let key = reader.string()?;
            let value_type = reader.u32()?;
            metadata.insert(key, reader.value(value_type)?);
        }
        let mut tensors = Vec::with_capacity(tensor_count as usize);
        for _ in 0..tensor_count {
            let name = reader.string()?;
            let n_dims = reader.u32()?;
            if n_dims > 8 {
                return Err(GgufError::Corrupt { path: reader.path.clone(), reason: format!("tensor {name} has {n_dims} dims") });
            }
            let dims = (0..n_dims).map(|_| reader.u64()).collect::<Result<Vec<_>, _>>()?;
            let ggml_type = reader.u32()?;
            let offset = reader.u64()?;
            tensors.push(TensorInfo { name, dims, ggml_type, offset });
        }
        Ok(Self { version, metadata, tensors })
    }

    pub fn get(&self, key: &str) -> Result<&Value, GgufError> {
        self.metadata.get(key).ok_or_else(|| GgufError::Key { key: key.into(), reason: "missing".into() })
    }

    pub fn str(&self, key: &str) -> Result<&str, GgufError> {
        self.get(key)?.as_str().ok_or_else(|| GgufError::Key { key: key.into(), reason: "not a string".into() })
    }

    pub fn u64(&self, key: &str) -> Result<u64, GgufError> {
        self.get(key)?.as_u64().ok_or_else(|| GgufError::Key { key: key.into(), reason: "not an unsigned integer".into() })
    }

    /// A string array, e.g. the vocabulary.
    pub fn strings(&self, key: &str) -> Result<Vec<&str>, GgufError> {
        let bad = || GgufError::Key { key: key.into(), reason: "not an array of strings".into() };
        self.get(key)?.as_array().ok_or_else(bad)?.iter().map(|v| v.as_str().ok_or_else(bad)).collect()
    }

    /// Total bytes of all tensors whose type is known.
    pub fn tensor_bytes(&self) -> u64 {
        self.tensors.iter().filter_map(TensorInfo::bytes).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gguf_string(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }

    #[test]
    fn reads_metadata_and_tensor_sizes_of_a_handmade_file() {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&MAGIC.to_le_bytes());
        bytes.extend_from_slice(&3u32.to_le_bytes());
        bytes.extend_from_slice(&1u64.to_le_bytes()); // tensors
        bytes.extend_from_slice(&2u64.to_le_bytes()); // kv pairs
        gguf_string(&mut bytes, "general.name");
        bytes.extend_from_slice(&8u32.to_le_bytes());
        gguf_string(&mut bytes, "tiny");
        gguf_string(&mut bytes, "tokenizer.ggml.tokens");
        bytes.extend_from_slice(&9u32.to_le_bytes());
        bytes.extend_from_slice(&8u32.to_le_bytes());
        bytes.extend_from_slice(&2u64.to_le_bytes());
        gguf_string(&mut bytes, "a");
        gguf_string(&mut bytes, "Ġb");
        gguf_string(&mut bytes, "blk.0.ffn_up.weight");
        bytes.extend_from_slice(&2u32.to_le_bytes());
        bytes.extend_from_slice(&64u64.to_le_bytes());
        bytes.extend_from_slice(&3u64.to_le_bytes());
        bytes.extend_from_slice(&3u32.to_le_bytes()); // Q4_1
        bytes.extend_from_slice(&0u64.to_le_bytes());
        let path = std::env::temp_dir().join(format!("modelpool-gguf-{}.gguf", std::process::id()));
        std::fs::write(&path, &bytes).unwrap();
        let file = GgufFile::open(&path).unwrap();
        assert_eq!(file.str("general.name").unwrap(), "tiny");
        assert_eq!(file.strings("tokenizer.ggml.tokens").unwrap(), vec!["a", "Ġb"]);
        assert_eq!(file.tensors[0].elements(), 192);
        assert_eq!(file.tensor_bytes(), 6 * 20, "192 elements = 6 Q4_1 blocks of 20 bytes");
        assert!(file.u64("general.name").unwrap_err().to_string().contains("general.name"));

        bytes.truncate(bytes.len() - 30);
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(GgufFile::open(&path), Err(GgufError::Io { .. })), "a truncated file is an error, not a panic");
        std::fs::write(&path, b"NOPE").unwrap();
        assert!(matches!(GgufFile::open(&path), Err(GgufError::NotGguf { .. })));
        std::fs::remove_file(&path).unwrap();
    }
}
