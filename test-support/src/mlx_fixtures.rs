//! Where the MLX reference fixtures are, for the test crates that need them
//! (`worker/tests/mlx_reference.rs`, `coordinator/tests/mlx_folders.rs`).

use std::path::PathBuf;

/// The fixtures' folder: $MODELPOOL_MLX_FIXTURES (scripts/test.sh sets it), else built (or found in the
/// cache) by scripts/mlx-fixture.sh.
pub fn fixtures() -> PathBuf {
    from_env_or_script("MODELPOOL_MLX_FIXTURES", "--dir")
}

/// The Python of the fixtures' venv (pinned mlx-lm, whose `mlx_lm.server` is the MLX peer):
/// $MODELPOOL_MLX_PYTHON, else what scripts/mlx-fixture.sh --python prints (building the venv if need be).
pub fn python() -> PathBuf {
    from_env_or_script("MODELPOOL_MLX_PYTHON", "--python")
}

/// `variable`'s path if set, else the path scripts/mlx-fixture.sh prints when given `flag`.
fn from_env_or_script(variable: &str, flag: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(variable) {
        return PathBuf::from(path);
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/mlx-fixture.sh");
    let output = std::process::Command::new(&script).arg(flag).output().expect("running scripts/mlx-fixture.sh");
    assert!(output.status.success(), "scripts/mlx-fixture.sh {flag} failed:\n{}", String::from_utf8_lossy(&output.stderr));
    PathBuf::from(String::from_utf8(output.stdout).unwrap().trim())
}
