//! The CUDA backend: kernels from `kernels/*.cu` (embedded fatbins, see build.rs), cuBLAS
//! GEMMs, launched through cudarc.
//!
//! Built without nvcc, the crate keeps this module's API but every entry point answers
//! [`Error::NoCudaKernels`](crate::Error::NoCudaKernels) (candle's dummy-backend pattern).

pub mod attention;
mod report;

pub use report::{print_table, write_json, KernelCheck};

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
pub use backend::CudaBackend;
#[cfg(gemma_cuda_kernels)]
pub use check::run_kernel_checks;

/// Open device 0 and load the kernels; returns the device description (`"<name> (sm_XY)"`).
#[cfg(gemma_cuda_kernels)]
pub fn probe() -> crate::Result<String> {
    device::Device::open().map(|dev| dev.description)
}

#[cfg(not(gemma_cuda_kernels))]
mod no_kernels;
#[cfg(not(gemma_cuda_kernels))]
pub use no_kernels::{probe, run_kernel_checks, CudaBackend};
