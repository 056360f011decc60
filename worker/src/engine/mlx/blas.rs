//! Which BLAS MLX's float32 matrix products run on in this process, and its thread count.
//!
//! MLX's CPU backend hands every float32 product (attention, dense layers) to `cblas_sgemm`. The
//! mlx-cpu wheel's libmlx finds the reference BLAS bundled beside it (about 2 GFLOP/s here); the worker
//! binary is linked with the system's OpenBLAS when the build found one (worker/build.rs), and a
//! library the executable itself needs comes before libmlx's own dependencies in the loader's search,
//! so MLX's calls then go to OpenBLAS (about 77 GFLOP/s here, as `LD_PRELOAD` would give). Which one
//! MLX really calls is asked of the loader (the library that holds `cblas_sgemm`), not assumed from
//! the build.

use std::ffi::{CStr, c_char, c_int};
use std::sync::OnceLock;

/// The BLAS behind MLX's `cblas_sgemm` in this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blas {
    /// The library file that holds `cblas_sgemm`, as the loader resolved it.
    pub library: String,
    /// OpenBLAS: its build configuration (`openblas_get_config`), e.g. "OpenBLAS 0.3.21 DYNAMIC_ARCH ...".
    pub openblas: Option<String>,
}

impl Blas {
    /// An optimized BLAS, for which dequantizing a quantized weight and multiplying it densely beats
    /// MLX's quantized kernel once a product has a few rows (see `model::QuantizedProducts`).
    pub fn is_fast(&self) -> bool {
        self.openblas.is_some()
    }

    /// How the worker's `Info` and log name it.
    pub fn describe(&self) -> String {
        match &self.openblas {
            Some(config) => format!("OpenBLAS ({})", config.trim()),
            None => format!("reference BLAS ({})", self.library),
        }
    }
}

fn symbol(name: &CStr) -> *mut libc::c_void {
    // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name only looks the name up.
    unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) }
}

/// The BLAS in use (looked up once).
pub fn in_use() -> &'static Blas {
    static BLAS: OnceLock<Blas> = OnceLock::new();
    BLAS.get_or_init(|| {
        let sgemm = symbol(c"cblas_sgemm");
        let mut library = String::from("cblas_sgemm not loaded");
        if !sgemm.is_null() {
            let mut info = std::mem::MaybeUninit::<libc::Dl_info>::zeroed();
            // SAFETY: dladdr fills `info` for an address inside a loaded object; its file name is a
            // NUL-terminated string owned by the loader for the life of the process.
            if unsafe { libc::dladdr(sgemm, info.as_mut_ptr()) } != 0 {
                let info = unsafe { info.assume_init() };
                if !info.dli_fname.is_null() {
                    library = unsafe { CStr::from_ptr(info.dli_fname) }.to_string_lossy().into_owned();
                }
            }
        }
        let config = symbol(c"openblas_get_config");
        let openblas = if config.is_null() || !library.contains("openblas") {
            None
        } else {
            // SAFETY: OpenBLAS's `char* openblas_get_config(void)` returns a static string.
            let get_config: extern "C" fn() -> *const c_char = unsafe { std::mem::transmute(config) };
            let text = get_config();
            Some(if text.is_null() { "OpenBLAS".into() } else { unsafe { CStr::from_ptr(text) }.to_string_lossy().into_owned() })
        };
        Blas { library, openblas }
    })
}

/// Threads OpenBLAS uses for one product (its default is every core, which N workers on one machine
/// would oversubscribe). Nothing to do for the reference BLAS, which is single-threaded.
pub fn set_threads(threads: u32) {
    if !in_use().is_fast() {
        return;
    }
    let set = symbol(c"openblas_set_num_threads");
    if !set.is_null() {
        // SAFETY: OpenBLAS's `void openblas_set_num_threads(int)`.
        let set: extern "C" fn(c_int) = unsafe { std::mem::transmute(set) };
        set(threads.max(1) as c_int);
    }
}
