//! Builds mlx-c for Linux against the MLX shipped in the PyPI wheel `mlx-cpu==0.32.2` and generates the
//! bindings mlx-rs expects. Nothing third-party is committed: the mlx-c sources come from the crates.io
//! package `mlx-sys` 0.7.0 (fetched by cargo), the MLX library and headers from the wheel (fetched by pip
//! into the modelpool cache directory, where the worker finds `libmlx.so` at run time).

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const MLX_CPU_WHEEL: &str = "mlx-cpu==0.32.2";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=MLX_C_SOURCE_DIR");
    println!("cargo:rerun-if-env-changed=MLX_CPU_DIR");
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let mlx_c = upstream_mlx_c(&out);
    let wheel = mlx_cpu_wheel();
    let (cxx_shim, bindgen_shim) = write_shims(&out);

    let mlx_cmake = wheel.join("mlx/share/cmake/MLX");
    let dst = cmake::Config::new(&mlx_c)
        .define("MLX_C_USE_SYSTEM_MLX", "ON")
        .define("MLX_DIR", &mlx_cmake)
        .define("CMAKE_BUILD_TYPE", "Release")
        .define("BUILD_SHARED_LIBS", "OFF")
        .cxxflag(format!("-include {}", cxx_shim.display()))
        .build_target("mlxc")
        .build();
    println!("cargo:rustc-link-search=native={}/build", dst.display());
    println!("cargo:rustc-link-lib=static=mlxc");
    let lib_dir = wheel.join("mlx/lib");
    println!("cargo:rustc-link-search=native={}", lib_dir.display());
    println!("cargo:rustc-link-lib=dylib=mlx");
    println!("cargo:rustc-link-lib=dylib=stdc++");
    // Dependents (the worker's build script) add this to the final binary's rpath.
    println!("cargo:libdir={}", lib_dir.display());

    let headers = std::fs::read_dir(mlx_c.join("mlx/c"))
        .expect("mlx-c headers")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "h"));
    let mut headers: Vec<PathBuf> = headers.collect();
    headers.sort();
    let builder = headers.iter().fold(
        bindgen::Builder::default()
            .rust_target("1.73.0".parse().expect("a Rust version"))
            .clang_arg(format!("-I{}", mlx_c.display()))
            .clang_arg("-include")
            .clang_arg(bindgen_shim.display().to_string())
            .blocklist_function("malloc")
            .blocklist_function("realloc"),
        |builder, header| builder.header(header.display().to_string()),
    );
    builder
        .generate()
        .expect("generating mlx-c bindings")
        .write_to_file(out.join("bindings.rs"))
        .expect("writing bindings.rs");
}

/// The mlx-c tree inside the crates.io package `mlx-sys` 0.7.0: `MLX_C_SOURCE_DIR` if set, else found
/// by asking cargo (which downloads the package into its registry cache if needed).
fn upstream_mlx_c(out: &Path) -> PathBuf {
    if let Some(dir) = env::var_os("MLX_C_SOURCE_DIR") {
        return PathBuf::from(dir);
    }
    let probe = out.join("upstream-mlx-sys");
    std::fs::create_dir_all(probe.join("src")).expect("creating the probe crate");
    // Its own [workspace], so that cargo does not take it for a member of the project's workspace.
    std::fs::write(
        probe.join("Cargo.toml"),
        "[package]\nname = \"upstream-mlx-sys-probe\"\nversion = \"0.0.0\"\nedition = \"2021\"\n\n\
         [dependencies]\nmlx-sys = { version = \"=0.7.0\", default-features = false }\n\n[workspace]\n",
    )
    .expect("writing the probe manifest");
    std::fs::write(probe.join("src/lib.rs"), "").expect("writing the probe crate");
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--manifest-path"])
        .arg(probe.join("Cargo.toml"))
        .env_remove("CARGO_TARGET_DIR")
        // Outside the project, so that its .cargo/config.toml (which patches mlx-sys to this crate) is
        // not read.
        .current_dir(env::temp_dir())
        .output()
        .expect("running cargo metadata to find the upstream mlx-sys sources");
    assert!(output.status.success(), "cargo metadata failed: {}", String::from_utf8_lossy(&output.stderr));
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).expect("cargo metadata JSON");
    let manifest = metadata["packages"]
        .as_array()
        .and_then(|packages| packages.iter().find(|p| p["name"] == "mlx-sys" && p["version"] == "0.7.0"))
        .and_then(|p| p["manifest_path"].as_str())
        .expect("mlx-sys 0.7.0 in cargo metadata");
    Path::new(manifest).parent().expect("a package directory").join("src/mlx-c")
}

/// The unpacked `mlx-cpu` wheel: `MLX_CPU_DIR` if set, else the modelpool cache directory, fetched with
/// pip on first use. The unpacked layout is kept: libmlx finds its BLAS through `$ORIGIN`.
fn mlx_cpu_wheel() -> PathBuf {
    if let Some(dir) = env::var_os("MLX_CPU_DIR") {
        return PathBuf::from(dir);
    }
    let cache = env::var_os("MODELPOOL_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("modelpool")))
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/modelpool")))
        .expect("HOME or MODELPOOL_CACHE_DIR");
    let dir = cache.join("mlx-cpu-0.32.2");
    if dir.join("mlx/lib/libmlx.so").is_file() {
        return dir;
    }
    let staging = cache.join(format!("mlx-cpu-fetch-{}", std::process::id()));
    std::fs::create_dir_all(&staging).expect("creating the wheel staging directory");
    let python = env::var("MODELPOOL_PYTHON").unwrap_or_else(|_| "python3".into());
    let status = Command::new(&python)
        .args(["-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "--disable-pip-version-check", "-q", "-d"])
        .arg(&staging)
        .arg(MLX_CPU_WHEEL)
        .status()
        .unwrap_or_else(|e| panic!("running {python} -m pip to fetch {MLX_CPU_WHEEL}: {e}; install python3-pip"));
    assert!(status.success(), "pip download {MLX_CPU_WHEEL} failed; is PyPI reachable?");
    let unpacked = cache.join(format!("mlx-cpu-unpack-{}", std::process::id()));
    let script = "import sys, zipfile, glob\nzipfile.ZipFile(glob.glob(sys.argv[1] + '/*.whl')[0]).extractall(sys.argv[2])\n";
    let status = Command::new(&python).args(["-c", script]).arg(&staging).arg(&unpacked).status().expect("unzipping the wheel");
    assert!(status.success(), "unpacking the {MLX_CPU_WHEEL} wheel failed");
    // zipfile drops the execute bits; shared libraries load without them, but keep them readable.
    let _ = std::fs::remove_dir_all(&staging);
    if std::fs::rename(&unpacked, &dir).is_err() {
        // Another build got there first.
        let _ = std::fs::remove_dir_all(&unpacked);
    }
    dir
}

/// Force-included headers. For the C++ compile: a minimal `std::format` (GCC 12 has none; mlx-c uses it
/// only for "{}" messages) and 16-bit storage types for the float16/bfloat16 API, which mlx-c only
/// declares on aarch64 but mlx-rs uses everywhere. For bindgen: the same types as bindgen must see them
/// for mlx-rs (`__fp16`, which it renders as `__BindgenFloat16`, and a 16-bit integer).
fn write_shims(out: &Path) -> (PathBuf, PathBuf) {
    let cxx = out.join("modelpool_mlx_cxx_shim.h");
    std::fs::write(
        &cxx,
        r#"#pragma once
#include <stdint.h>
#if !defined(__aarch64__)
#define HAS_FLOAT16
#define HAS_BFLOAT16
typedef uint16_t float16_t;
typedef uint16_t bfloat16_t;
#endif
#ifdef __cplusplus
#include <version>
#if !defined(__cpp_lib_format)
#include <sstream>
#include <string>
#include <string_view>
namespace std {
inline void modelpool_format_into(std::ostringstream& out, std::string_view fmt) { out << fmt; }
template <typename T, typename... Rest>
void modelpool_format_into(std::ostringstream& out, std::string_view fmt, T&& value, Rest&&... rest) {
  auto at = fmt.find("{}");
  if (at == std::string_view::npos) { out << fmt; return; }
  out << fmt.substr(0, at) << value;
  modelpool_format_into(out, fmt.substr(at + 2), std::forward<Rest>(rest)...);
}
template <typename... Args>
std::string format(std::string_view fmt, Args&&... args) {
  std::ostringstream out;
  modelpool_format_into(out, fmt, std::forward<Args>(args)...);
  return out.str();
}
}  // namespace std
#endif
#endif
"#,
    )
    .expect("writing the C++ shim");
    let bindgen = out.join("modelpool_mlx_bindgen_shim.h");
    std::fs::write(
        &bindgen,
        "#pragma once\n#if !defined(__aarch64__)\n#define HAS_FLOAT16\n#define HAS_BFLOAT16\n\
         typedef __fp16 float16_t;\ntypedef unsigned short bfloat16_t;\n#endif\n",
    )
    .expect("writing the bindgen shim");
    (cxx, bindgen)
}
