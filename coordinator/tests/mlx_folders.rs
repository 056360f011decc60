//! mlx-lm model folders serve through the coordinator: `coordinator run-bench --engine mlx --model DIR
//! --sanity` (a real coordinator, a real worker process) answers every prompt with generated text for
//! each fixture folder that scripts/mlx-fixture.sh builds, and a folder given to llama.cpp is refused
//! with a message that says why.

use std::path::{Path, PathBuf};
use std::process::Command;

use test_support::mlx_fixtures::fixtures;

fn run_bench(folder: &Path, engine: &str, json: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_coordinator"))
        .args(["run-bench", "--sanity", "--max-tokens", "8", "--show-outputs", "--engine", engine, "--model"])
        .arg(folder)
        .arg("--json")
        .arg(json)
        .env_remove("MODELPOOL_TOKEN")
        .output()
        .expect("running coordinator run-bench")
}

#[test]
fn every_fixture_folder_serves_through_run_bench() {
    let dir = fixtures();
    let mut folders: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_dir()).collect();
    folders.sort();
    assert!(folders.len() >= 6, "the fixture folders: {folders:?}");
    let scratch = std::env::temp_dir().join(format!("mlx-folders-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).unwrap();
    for folder in &folders {
        let name = folder.file_name().unwrap().to_string_lossy().into_owned();
        let json = scratch.join(format!("{name}.json"));
        let output = run_bench(folder, "mlx", &json);
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{name}: run-bench failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
        let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        let records = report["runs"][0]["records"].as_array().unwrap();
        assert_eq!(records.len(), 3, "{name}: three sanity prompts");
        for record in records {
            assert!(record["ok"].as_bool().unwrap(), "{name}: {record}");
            assert!(record["completion_tokens"].as_u64().unwrap() > 0, "{name}: generated tokens");
        }
        let texts: Vec<&str> = records.iter().map(|r| r["text"].as_str().unwrap_or_default()).collect();
        assert!(texts.iter().any(|t| !t.trim().is_empty()), "{name}: some text came back: {texts:?}");
        println!("{name}: {:?}", texts);
    }
    let _ = std::fs::remove_dir_all(&scratch);
}

#[test]
fn a_folder_for_llama_cpp_is_refused_with_the_reason() {
    let dir = fixtures();
    let output = run_bench(&dir.join("qwen2-tiny"), "llama", &std::env::temp_dir().join("unused.json"));
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("llama.cpp needs a GGUF file") && stderr.contains("--engine mlx"), "{stderr}");
}
