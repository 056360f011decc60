//! How reports name a llama.cpp tool build (the peers' llama-server, llama-bench): by the folder
//! scripts/build-llama-tool.sh built it in, and for a release build by the CPU module ggml loaded.

/// A llama.cpp tool build's name in a report, from its build directory (scripts/build-llama-tool.sh:
/// `build` is portable, `build-native-…` native, `build-release` every CPU variant, with the module ggml
/// loaded here once a run of it has logged one, see [`note_cpu_module`]).
pub fn llama_build_name(binary: &std::path::Path) -> String {
    use std::path::Path;
    let dir =
        binary.parent().and_then(Path::parent).and_then(Path::file_name).map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if dir.starts_with("build-native") {
        "native".into()
    } else if dir == "build" {
        "portable".into()
    } else if dir == "build-release" {
        let folder = binary.parent().map(Path::to_path_buf).unwrap_or_default();
        let known = loaded_modules().get(&folder).cloned();
        match known.or_else(|| ask_cpu_module(&folder)) {
            Some(module) => format!("release, {module} module chosen at start"),
            None => "release, every CPU variant".into(),
        }
    } else {
        binary.display().to_string()
    }
}

/// The CPU module each build folder's programs loaded, as their logs said.
fn loaded_modules() -> std::sync::MutexGuard<'static, std::collections::HashMap<std::path::PathBuf, String>> {
    use std::sync::{Mutex, OnceLock};
    static LOADED: OnceLock<Mutex<std::collections::HashMap<std::path::PathBuf, String>>> = OnceLock::new();
    LOADED.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner())
}

/// Reads a llama.cpp program's log for the CPU module ggml loaded ("load_backend: loaded CPU backend from
/// …/libggml-cpu-zen4.so", what a build with every CPU variant logs when it starts), so that reports can
/// name it; other lines are ignored.
pub fn note_cpu_module(binary: &std::path::Path, log: &str) {
    if let (Some(module), Some(dir)) = (loaded_cpu_module(log), binary.parent()) {
        loaded_modules().insert(dir.to_path_buf(), module);
    }
}

/// The CPU module the programs in `folder` load here, from `llama-bench --list-devices` there (the one
/// program of the folder that logs it without a model; llama-server logs it only at a verbosity that
/// would also log every request). Asked once per folder.
fn ask_cpu_module(folder: &std::path::Path) -> Option<String> {
    let bench = folder.join("llama-bench");
    let output = std::process::Command::new(&bench).arg("--list-devices").stdin(std::process::Stdio::null()).output().ok()?;
    note_cpu_module(&bench, &String::from_utf8_lossy(&output.stderr));
    note_cpu_module(&bench, &String::from_utf8_lossy(&output.stdout));
    loaded_modules().get(folder).cloned()
}

/// The CPU module named by ggml's "load_backend: loaded CPU backend from …/libggml-cpu-NAME.so".
fn loaded_cpu_module(log: &str) -> Option<String> {
    log.lines().filter_map(|line| line.split_once("loaded CPU backend from ")).find_map(|(_, path)| {
        let stem = std::path::Path::new(path.trim()).file_stem()?.to_str()?;
        stem.strip_prefix("libggml-cpu-").map(str::to_string)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loaded_cpu_module_is_read_from_ggml_log() {
        let log = "load_backend: loaded RPC backend from /x/libggml-rpc.so\n\
                   load_backend: loaded CPU backend from /c/build-release/bin/libggml-cpu-zen4.so\n";
        assert_eq!(loaded_cpu_module(log).as_deref(), Some("zen4"));
        assert_eq!(loaded_cpu_module("register_backend: registered backend CPU (1 devices)\n"), None);
    }

    #[test]
    fn builds_are_named_for_their_directory_and_a_release_build_for_the_module_it_loaded() {
        use std::path::Path;
        assert_eq!(llama_build_name(Path::new("/c/build/bin/llama-server")), "portable");
        assert_eq!(llama_build_name(Path::new("/c/build-native-0123abcd/bin/llama-server")), "native");
        let release = Path::new("/c/build-release/bin/llama-server");
        assert_eq!(llama_build_name(release), "release, every CPU variant");
        note_cpu_module(Path::new("/c/build-release/bin/llama-bench"), "load_backend: loaded CPU backend from /c/libggml-cpu-haswell.so");
        assert_eq!(llama_build_name(release), "release, haswell module chosen at start", "the folder's programs share their modules");
    }
}
