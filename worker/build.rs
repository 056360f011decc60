//! Link settings for the worker binary.
//! - The MLX shared library from the mlx-cpu wheel is found through an rpath (its path comes from the
//!   mlx-sys build script; a link argument emitted by mlx-sys itself would not reach this final link).
//! - Symbols of the statically linked libraries are not exported: llama.cpp's ggml and the gguflib inside
//!   libmlx.so both define functions named `gguf_*`, and an exported ggml copy would interpose on MLX's
//!   own calls (seen: MLX's GGUF loader ended in a ggml assertion).
fn main() {
    if let Ok(dir) = std::env::var("DEP_MLX_LIBDIR") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-link-arg=-Wl,--exclude-libs,ALL");
    }
}
