//! Link settings for the worker binary.
//! - The MLX shared library from the mlx-cpu wheel is found through an rpath (its path comes from the
//!   mlx-sys build script; a link argument emitted by mlx-sys itself would not reach this final link).
//! - On x86-64 Linux llama.cpp is shared libraries (libllama, libggml, libggml-base), which the
//!   llama-cpp-sys-2 build puts beside the binaries (target/<profile> and its deps/): `$ORIGIN` finds
//!   them there and wherever the worker is shipped with them.
//! - MLX's float32 products call `cblas_sgemm`, which libmlx would find in the reference BLAS bundled
//!   with the mlx-cpu wheel (about 2 GFLOP/s). Where the system has OpenBLAS (Debian's
//!   libopenblas0-pthread, installed by scripts/setup.sh and in the container image), the worker needs
//!   it directly: a library the executable needs is searched before libmlx's own dependencies, so
//!   MLX's calls go to OpenBLAS (src/engine/mlx/blas.rs says at run time which one they reach).
//! - Symbols of the statically linked libraries are not exported: llama.cpp's ggml (where it is static)
//!   and the gguflib inside libmlx.so both define functions named `gguf_*`, and an exported ggml copy
//!   would interpose on MLX's own calls (seen: MLX's GGUF loader ended in a ggml assertion).
fn main() {
    if let Ok(dir) = std::env::var("DEP_MLX_LIBDIR") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,$ORIGIN");
        // llama-cpp-sys-2 links only the unversioned names beside the binaries (dangling symlinks to
        // the versioned files the loader asks for), so the build's own library folder is searched too.
        if let Ok(backends) = std::env::var("DEP_LLAMA_BACKENDS_DIR")
            && let Some(out) = std::path::Path::new(&backends).parent()
        {
            println!("cargo:rustc-link-arg=-Wl,-rpath,{}", out.join("lib").display());
        }
        println!("cargo:rustc-link-arg=-Wl,--exclude-libs,ALL");
        link_openblas();
    }
}

/// Where Debian and other distributions put OpenBLAS's shared library.
const OPENBLAS_DIRS: [&str; 4] = ["/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib"];

fn link_openblas() {
    const FILE: &str = "libopenblas.so.0";
    match OPENBLAS_DIRS.iter().map(std::path::Path::new).find(|dir| dir.join(FILE).exists()) {
        Some(dir) => {
            // Needed even though no Rust code calls it by name (rustc links with --as-needed).
            println!("cargo:rustc-link-arg=-Wl,--push-state,--no-as-needed,-L{},-l:{FILE},--pop-state", dir.display());
        }
        None => {
            println!(
                "cargo:warning=no {FILE} found: MLX's products will use the mlx-cpu wheel's reference BLAS (scripts/setup.sh installs libopenblas0-pthread)"
            );
        }
    }
}
