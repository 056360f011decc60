//! Which of llama.cpp's CPU kernel builds this worker runs.
//!
//! On x86-64 Linux llama.cpp is built as llama.cpp's own releases are (`GGML_BACKEND_DL` +
//! `GGML_CPU_ALL_VARIANTS`): one loadable module per CPU generation, from `x64` (SSE2) to
//! `sapphirerapids` (AMX), each reporting through `ggml_backend_score` whether the CPU has its
//! instructions. The score reads the CPU's flags, and those are not enough: on a development VM of
//! 2026-12-02 a build whose flags check passed died at start (SIGILL) on a CPU that listed AVX-512 and
//! AMX. So before a module is loaded into the serving process, a probe process loads it with this
//! worker's model and runs a small forward pass; a module whose probe dies or fails is skipped for
//! the next best, and the log says so.

use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The flag that turns a worker process into a probe of one module (hidden from `--help`).
pub const PROBE_FLAG: &str = "--probe-cpu-variant";

/// Whether this build's llama.cpp has loadable CPU modules (see worker/Cargo.toml); elsewhere its
/// kernels are compiled in (on macOS: Metal and Accelerate).
pub const LOADABLE_MODULES: bool = cfg!(all(target_os = "linux", target_arch = "x86_64"));

/// How long a probe may take: it loads the model once (memory-mapped; repacking the weights of a
/// large model for AVX-512 or AMX kernels takes seconds) and runs two small passes.
const PROBE_TIMEOUT: Duration = Duration::from_secs(180);

/// One loadable CPU module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuModule {
    /// The CPU generation it was built for, e.g. `zen4`, `haswell`, `x64`.
    pub name: String,
    pub path: PathBuf,
    /// `ggml_backend_score`: 0 when the CPU lacks its instructions, higher for newer generations.
    pub score: i32,
}

/// What the operator asked for (`worker --cpu-variant`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum VariantRequest {
    /// The best-scoring module whose probe passes.
    #[default]
    Auto,
    /// This module, still probed first (a crash at start says more than one mid-request).
    Named(String),
}

impl std::str::FromStr for VariantRequest {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim() {
            "" | "auto" => Ok(Self::Auto),
            name if name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.') => Ok(Self::Named(name.to_string())),
            other => Err(format!("--cpu-variant: {other:?} is not a module name (letters, digits, '_' and '.') or auto")),
        }
    }
}

/// The module chosen and how.
#[derive(Debug, Clone)]
pub struct VariantChoice {
    pub module: CpuModule,
    /// Modules tried before it and why each was passed over, best first.
    pub passed_over: Vec<(String, String)>,
    /// How many modules this CPU's flags allow.
    pub supported: usize,
    /// Named by `--cpu-variant` rather than chosen.
    pub named: bool,
}

impl VariantChoice {
    /// The one line the worker's log, its `Info` and the reports carry, e.g.
    /// `zen4 (probed; best of 12 this CPU supports)`.
    pub fn describe(&self) -> String {
        let how = if self.named { "as asked; one of" } else { "best of" };
        let mut text = format!("{} (probed; {how} {} this CPU supports", self.module.name, self.supported);
        for (name, why) in &self.passed_over {
            text.push_str(&format!("; {name} skipped: {why}"));
        }
        text.push(')');
        text
    }
}

/// Where modules are looked for: beside the executable first (how a shipped worker carries them, as
/// llama.cpp's releases do), then the build's own output folder.
pub fn module_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(dir) = std::env::current_exe().ok().and_then(|exe| exe.parent().map(Path::to_path_buf)) {
        dirs.push(dir);
    }
    if let Some(dir) = llama_cpp_sys_2::BACKENDS_DIR {
        dirs.push(PathBuf::from(dir));
    }
    dirs
}

/// The executable that runs probes: this one when it is the worker, else a `worker` binary beside it
/// or one folder up (where cargo puts it for the test binaries in `target/*/deps`).
pub fn default_probe_exe() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("worker"));
    if exe.file_stem().is_some_and(|stem| stem == "worker") {
        return exe;
    }
    let beside = exe.parent().map(|dir| dir.join("worker"));
    let above = exe.parent().and_then(Path::parent).map(|dir| dir.join("worker"));
    [beside, above].into_iter().flatten().find(|path| path.is_file()).unwrap_or(exe)
}

/// `worker --probe-cpu-variant MODULE --model FILE`: the probe's whole command line. Returns the exit
/// code when these arguments ask for a probe, None otherwise (a normal start).
pub fn probe_from_args(args: &[std::ffi::OsString]) -> Option<i32> {
    if args.get(1).is_none_or(|flag| flag != PROBE_FLAG) {
        return None;
    }
    let (Some(module), Some(model_flag), Some(model)) = (args.get(2), args.get(3), args.get(4)) else {
        eprintln!("usage: worker {PROBE_FLAG} MODULE --model FILE");
        return Some(2);
    };
    if model_flag != "--model" {
        eprintln!("usage: worker {PROBE_FLAG} MODULE --model FILE");
        return Some(2);
    }
    match run_probe(Path::new(module), Path::new(model)) {
        Ok(()) => Some(0),
        Err(why) => {
            eprintln!("{why}");
            Some(1)
        }
    }
}

/// The flag that prints the files a shipped worker needs beside it (hidden from `--help`).
pub const LIST_RUNTIME_FILES_FLAG: &str = "--list-runtime-files";

/// The shared libraries the worker binary loads from llama.cpp's build (by the names the loader asks
/// for), and every CPU module: what goes beside the binary when it is copied elsewhere (the container
/// image, the hosts of a multi-host run). Empty where llama.cpp is linked in.
pub fn runtime_files() -> Vec<PathBuf> {
    if !LOADABLE_MODULES {
        return Vec::new();
    }
    let lib_dirs: Vec<PathBuf> =
        module_dirs().iter().flat_map(|dir| [dir.clone(), dir.parent().map(|up| up.join("lib")).unwrap_or_default()]).collect();
    let mut files: Vec<PathBuf> = ["libllama.so.0", "libggml.so.0", "libggml-base.so.0"]
        .iter()
        .filter_map(|name| lib_dirs.iter().map(|dir| dir.join(name)).find(|path| path.is_file()))
        .collect();
    files.extend(discover_files(&module_dirs()));
    files
}

/// The module files in the first folder that has any, unscored.
fn discover_files(dirs: &[PathBuf]) -> Vec<PathBuf> {
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else { continue };
        let mut files: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .filter(|entry| entry.file_name().to_str().and_then(module_name).is_some())
            .map(|entry| entry.path())
            .collect();
        if !files.is_empty() {
            files.sort();
            return files;
        }
    }
    Vec::new()
}

/// The module name in a file name such as `libggml-cpu-zen4.so`.
pub fn module_name(file_name: &str) -> Option<&str> {
    let name = file_name.strip_prefix("libggml-cpu-")?.strip_suffix(".so")?;
    (!name.is_empty()).then_some(name)
}

/// Every CPU module in the first folder that has any, scored on this CPU, best first.
pub fn discover(dirs: &[PathBuf]) -> Vec<CpuModule> {
    let mut modules: Vec<CpuModule> = discover_files(dirs)
        .into_iter()
        .filter_map(|path| {
            let name = module_name(path.file_name()?.to_str()?)?.to_string();
            let score = module_score(&path).unwrap_or(0);
            Some(CpuModule { name, path, score })
        })
        .collect();
    modules.sort_by(|a, b| b.score.cmp(&a.score).then_with(|| a.name.cmp(&b.name)));
    modules
}

/// `ggml_backend_score` of one module, read as ggml itself reads it: open it, call, close.
fn module_score(path: &Path) -> Option<i32> {
    let c_path = CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: dlopen/dlsym/dlclose with a NUL-terminated path; the symbol, when present, is ggml's
    // `int ggml_backend_score(void)`, which only reads cpuid.
    unsafe {
        let handle = libc::dlopen(c_path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL);
        if handle.is_null() {
            return None;
        }
        let symbol = libc::dlsym(handle, c"ggml_backend_score".as_ptr());
        let score = if symbol.is_null() {
            None
        } else {
            let score_fn: extern "C" fn() -> i32 = std::mem::transmute(symbol);
            Some(score_fn())
        };
        libc::dlclose(handle);
        score
    }
}

/// Chooses a module: for `Auto` the best-scoring one whose probe passes, for `Named` that one if it
/// passes. `probe` runs a module and says why it failed.
pub fn choose(
    request: &VariantRequest,
    modules: &[CpuModule],
    mut probe: impl FnMut(&CpuModule) -> Result<(), String>,
) -> Result<VariantChoice, String> {
    let supported: Vec<&CpuModule> = modules.iter().filter(|m| m.score > 0).collect();
    if modules.is_empty() {
        return Err("no llama.cpp CPU modules (libggml-cpu-*.so) found beside the worker binary or in its build folder".into());
    }
    let candidates: Vec<&CpuModule> = match request {
        VariantRequest::Auto => supported.clone(),
        VariantRequest::Named(name) => {
            let Some(module) = modules.iter().find(|m| &m.name == name) else {
                let names: Vec<&str> = modules.iter().map(|m| m.name.as_str()).collect();
                return Err(format!("--cpu-variant {name}: no such module; there are: {}", names.join(", ")));
            };
            if module.score == 0 {
                return Err(format!("--cpu-variant {name}: this CPU lacks the instructions that module needs"));
            }
            vec![module]
        }
    };
    if candidates.is_empty() {
        return Err("no llama.cpp CPU module supports this CPU".into());
    }
    let mut passed_over = Vec::new();
    for module in candidates {
        match probe(module) {
            Ok(()) => {
                let named = matches!(request, VariantRequest::Named(_));
                return Ok(VariantChoice { module: module.clone(), passed_over, supported: supported.len(), named });
            }
            Err(why) => {
                tracing::warn!(module = %module.name, %why, "llama.cpp CPU module failed its probe; trying the next one");
                passed_over.push((module.name.clone(), why));
            }
        }
    }
    let tried: Vec<String> = passed_over.iter().map(|(name, why)| format!("{name}: {why}")).collect();
    Err(format!("every llama.cpp CPU module failed its probe ({})", tried.join("; ")))
}

/// Runs `probe_exe --probe-cpu-variant MODULE --model MODEL` and reads its end.
pub fn probe_in_child(probe_exe: &Path, module: &Path, model: &Path) -> Result<(), String> {
    let mut child = Command::new(probe_exe)
        .arg(PROBE_FLAG)
        .arg(module)
        .arg("--model")
        .arg(model)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting the probe {}: {e}", probe_exe.display()))?;
    // Read its stderr as it comes, so that a chatty child never blocks on a full pipe.
    let stderr = child.stderr.take().map(|mut pipe| {
        std::thread::spawn(move || {
            use std::io::Read;
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    });
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() > PROBE_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("no answer in {} s", PROBE_TIMEOUT.as_secs()));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(format!("waiting for the probe: {e}")),
        }
    };
    if status.success() {
        return Ok(());
    }
    let stderr = stderr.and_then(|reader| reader.join().ok()).unwrap_or_default();
    let last_line = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string();
    use std::os::unix::process::ExitStatusExt;
    let how = match (status.code(), status.signal()) {
        (_, Some(signal)) => format!("killed by signal {signal}{}", signal_name(signal)),
        (Some(code), None) => format!("exit status {code}"),
        (None, None) => "ended without a status".to_string(),
    };
    Err(if last_line.is_empty() { how } else { format!("{how}: {last_line}") })
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGILL => " (SIGILL: an instruction this CPU does not run)",
        libc::SIGSEGV => " (SIGSEGV)",
        libc::SIGBUS => " (SIGBUS)",
        libc::SIGFPE => " (SIGFPE)",
        libc::SIGABRT => " (SIGABRT)",
        _ => "",
    }
}

/// The probe itself, in the child: load `module` alone, then `model`, and run one prompt pass of a
/// few dozen tokens and one decode step, as serving would (same weights, same buffer types, so the
/// repacked AVX-512 and AMX paths run too). Any crash kills only this process.
pub fn run_probe(module: &Path, model: &Path) -> Result<(), String> {
    use llama_cpp_2::context::params::LlamaContextParams;
    use llama_cpp_2::llama_backend::LlamaBackend;
    use llama_cpp_2::llama_batch::LlamaBatch;
    use llama_cpp_2::model::LlamaModel;
    use llama_cpp_2::model::params::LlamaModelParams;
    use llama_cpp_2::token::LlamaToken;
    use std::num::NonZeroU32;

    llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default().with_logs_enabled(false));
    load_module(module)?;
    let backend = LlamaBackend::init().map_err(|e| format!("llama.cpp backend: {e}"))?;
    let model = LlamaModel::load_from_file(&backend, model, &LlamaModelParams::default()).map_err(|e| format!("loading the model: {e}"))?;
    let params = LlamaContextParams::default().with_n_ctx(NonZeroU32::new(256)).with_n_batch(64).with_n_ubatch(64);
    let mut context = model.new_context(&backend, params).map_err(|e| format!("creating a context: {e}"))?;
    // Any valid ids do: the probe checks that the kernels run and give finite numbers, not the text.
    let vocabulary = model.n_vocab().max(1) as usize;
    let mut batch = LlamaBatch::new(64, 1);
    let last = 47;
    for position in 0..=last {
        let token = LlamaToken(((position * 997 + 13) % vocabulary) as i32);
        batch.add(token, position as i32, &[0], position == last).map_err(|e| format!("building the batch: {e}"))?;
    }
    context.decode(&mut batch).map_err(|e| format!("prompt pass: {e}"))?;
    let next = argmax_checked(context.get_logits_ith(last as i32))?;
    batch.clear();
    batch.add(next, (last + 1) as i32, &[0], true).map_err(|e| format!("building the batch: {e}"))?;
    context.decode(&mut batch).map_err(|e| format!("decode step: {e}"))?;
    argmax_checked(context.get_logits_ith(0)).map(|_| ())
}

/// The most likely token, or an error if the logits are not all finite (kernels that run but
/// compute garbage fail the probe too).
fn argmax_checked(logits: &[f32]) -> Result<llama_cpp_2::token::LlamaToken, String> {
    if logits.is_empty() || logits.iter().any(|l| !l.is_finite()) {
        return Err("the forward pass gave non-finite logits".into());
    }
    let best = logits.iter().enumerate().fold(0, |best, (i, l)| if *l > logits[best] { i } else { best });
    Ok(llama_cpp_2::token::LlamaToken(best as i32))
}

/// Loads one module into this process's ggml registry.
pub fn load_module(module: &Path) -> Result<(), String> {
    let c_path = CString::new(module.as_os_str().as_encoded_bytes()).map_err(|_| "module path holds a NUL byte".to_string())?;
    // SAFETY: a NUL-terminated path; ggml returns null for a module it could not load or that this
    // CPU does not support, and otherwise keeps it registered for the process's life.
    let registered = unsafe { llama_cpp_sys_2::ggml_backend_load(c_path.as_ptr()) };
    if registered.is_null() {
        return Err(format!("ggml could not load {}", module.display()));
    }
    // SAFETY: a registered backend's name is a static NUL-terminated string.
    let name = unsafe { CStr::from_ptr(llama_cpp_sys_2::ggml_backend_reg_name(registered)) };
    tracing::debug!(backend = %name.to_string_lossy(), module = %module.display(), "loaded llama.cpp CPU module");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn module(name: &str, score: i32) -> CpuModule {
        CpuModule { name: name.into(), path: PathBuf::from(format!("/m/libggml-cpu-{name}.so")), score }
    }

    #[test]
    fn module_names_come_from_file_names() {
        assert_eq!(module_name("libggml-cpu-zen4.so"), Some("zen4"));
        assert_eq!(module_name("libggml-cpu-.so"), None);
        assert_eq!(module_name("libggml-base.so"), None);
        assert_eq!(module_name("libggml-cpu-x64.so.0"), None);
    }

    #[test]
    fn auto_falls_back_past_a_module_whose_probe_fails() {
        let modules = [module("sapphirerapids", 0), module("zen4", 90), module("haswell", 40), module("x64", 1)];
        let mut probed = Vec::new();
        let choice = choose(&VariantRequest::Auto, &modules, |m| {
            probed.push(m.name.clone());
            if m.name == "zen4" { Err("killed by signal 4".into()) } else { Ok(()) }
        })
        .unwrap();
        assert_eq!(choice.module.name, "haswell");
        assert_eq!(probed, ["zen4", "haswell"], "unsupported modules are never probed");
        assert_eq!(choice.supported, 3);
        assert!(choice.describe().contains("zen4 skipped: killed by signal 4"), "{}", choice.describe());
    }

    #[test]
    fn a_named_module_must_exist_be_supported_and_pass() {
        let modules = [module("sapphirerapids", 0), module("haswell", 40)];
        let unknown = choose(&VariantRequest::Named("zen9".into()), &modules, |_| Ok(())).unwrap_err();
        assert!(unknown.contains("there are: sapphirerapids, haswell"), "{unknown}");
        let unsupported = choose(&VariantRequest::Named("sapphirerapids".into()), &modules, |_| Ok(())).unwrap_err();
        assert!(unsupported.contains("lacks the instructions"), "{unsupported}");
        let failing = choose(&VariantRequest::Named("haswell".into()), &modules, |_| Err("exit status 1".into())).unwrap_err();
        assert!(failing.contains("haswell: exit status 1"), "{failing}");
        let named = choose(&VariantRequest::Named("haswell".into()), &modules, |_| Ok(())).unwrap();
        assert_eq!(named.describe(), "haswell (probed; as asked; one of 1 this CPU supports)");
    }

    #[test]
    fn requests_parse() {
        assert_eq!("auto".parse::<VariantRequest>().unwrap(), VariantRequest::Auto);
        assert_eq!("zen4".parse::<VariantRequest>().unwrap(), VariantRequest::Named("zen4".into()));
        assert!("../x".parse::<VariantRequest>().is_err());
    }
}
