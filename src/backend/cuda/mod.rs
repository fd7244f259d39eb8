//! The CUDA backend: kernels from `kernels/*.cu` (embedded fatbins, see build.rs), cuBLAS
//! GEMMs, launched through cudarc.
//!
//! Built without nvcc, the crate keeps this module's API but every entry point answers
//! [`Error::NoCudaKernels`](crate::Error::NoCudaKernels) (candle's dummy-backend pattern).

pub mod attention;
pub mod mlp;
pub mod options;
pub mod profile;
pub mod qkv;
mod report;
pub mod residual;

pub use options::{BranchStorage, CudaOptions, KernelChoice};
pub use report::{print_table, write_json, CheckFamily, KernelCheck, KernelChecks};

/// The GPU architectures whose machine code is embedded, e.g. `sm_80 sm_86 sm_89 sm_90a`;
/// empty when the binary has no kernels.
pub const EMBEDDED_ARCHS: &str = env!("GEMMA_EMBED_CUDA_ARCHS");

#[cfg(gemma_cuda_kernels)]
mod backend;
#[cfg(gemma_cuda_kernels)]
pub mod check;
#[cfg(gemma_cuda_kernels)]
pub mod device;
#[cfg(gemma_cuda_kernels)]
pub mod gemm;
#[cfg(gemma_cuda_kernels)]
pub mod ops;
#[cfg(gemma_cuda_kernels)]
pub mod params;
#[cfg(gemma_cuda_kernels)]
mod tma;

#[cfg(gemma_cuda_kernels)]
pub use backend::CudaBackend;
#[cfg(gemma_cuda_kernels)]
pub use check::run_kernel_checks;

/// A TMA kernel's `setmaxnreg` hand-over: its first 128 threads (the producer warpgroup) lower
/// their registers to `producer` per thread, the other `threads - 128` raise theirs to
/// `consumer`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegisterHandOver {
    pub threads: usize,
    pub producer: usize,
    pub consumer: usize,
}

impl RegisterHandOver {
    /// Whether the kernel compiled to `registers` per thread can hand them over: the consumers'
    /// `setmaxnreg.inc` draws on the CTA's launch allocation and would wait forever if that
    /// were smaller than what both roles hold afterwards.
    pub fn fits(self, registers: usize) -> bool {
        let producer_threads = 128;
        self.threads * registers
            >= producer_threads * self.producer + (self.threads - producer_threads) * self.consumer
    }
}

/// What [`probe`] found.
#[derive(Clone, Debug)]
pub struct DeviceInfo {
    /// `"<name> (sm_XY)"`, for logs.
    pub description: String,
    /// (major, minor), e.g. (9, 0) for H100 and H200.
    pub compute_capability: (i32, i32),
}

/// Open device 0 and load the kernels.
#[cfg(gemma_cuda_kernels)]
pub fn probe() -> crate::Result<DeviceInfo> {
    device::Device::open().map(|dev| dev.info)
}

#[cfg(not(gemma_cuda_kernels))]
mod no_kernels;
#[cfg(not(gemma_cuda_kernels))]
pub use no_kernels::{probe, run_kernel_checks, CudaBackend};

/// The value of `#define name value` in a kernel header's source (`include_str!`), for the
/// tests that hold the Rust mirrors of compile-time shapes to their headers.
#[cfg(test)]
fn header_define(header: &str, name: &str) -> i64 {
    let line = header
        .lines()
        .find(|l| l.starts_with("#define") && l.split_whitespace().nth(1) == Some(name))
        .unwrap_or_else(|| panic!("#define {name} missing"));
    let value = line.split_whitespace().nth(2).expect("a value");
    value
        .trim_matches(|c| c == '(' || c == ')')
        .parse()
        .unwrap_or_else(|e| panic!("#define {name} {value}: {e}"))
}

/// [`header_define`] of `kernels/params.h`.
#[cfg(test)]
fn params_define(name: &str) -> i64 {
    header_define(include_str!("../../../kernels/params.h"), name)
}

/// [`header_define`] of `kernels/tile.cuh`.
#[cfg(test)]
fn tile_define(name: &str) -> i64 {
    header_define(include_str!("../../../kernels/tile.cuh"), name)
}

/// Compile and run a warp-emulator check of `kernels/tests/` (`"<kernel>_fragments.c"`) with
/// the C compiler the Rust toolchain links with (`CC`, else `cc`); it prints "ok" when the
/// kernel's fragment index math matches direct matrix products.
#[cfg(test)]
fn run_fragment_emulator(file: &str) {
    let kernels = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels");
    let exe = std::env::temp_dir().join(format!(
        "{}_{}",
        file.trim_end_matches(".c"),
        std::process::id()
    ));
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let status = std::process::Command::new(&cc)
        .args(["-std=c99", "-O1", "-I"])
        .arg(&kernels)
        .arg("-I")
        .arg(kernels.join("tests"))
        .arg(kernels.join("tests").join(file))
        .args(["-lm", "-o"])
        .arg(&exe)
        .status()
        .unwrap_or_else(|e| panic!("cannot run the C compiler `{cc}`: {e}"));
    assert!(status.success(), "compiling {file} failed");
    let output = std::process::Command::new(&exe)
        .output()
        .unwrap_or_else(|e| panic!("run {file}: {e}"));
    let _ = std::fs::remove_file(&exe);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{file}:\n{stdout}");
    assert_eq!(stdout.trim(), "ok");
}
