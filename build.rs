//! Compiles proto/modelpool/v1/*.proto into Rust with tonic-prost-build, using the protoc binary
//! vendored in protoc-bin-vendored so that no system protoc is needed.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the environment concurrently.
    unsafe { std::env::set_var("PROTOC", protoc) };

    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let protos = ["proto/modelpool/v1/predict.proto", "proto/modelpool/v1/worker.proto", "proto/modelpool/v1/coordinator.proto"];
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("modelpool_descriptor.bin"))
        .compile_protos(&protos, &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
