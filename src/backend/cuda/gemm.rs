//! cuBLAS GEMMs for the four projections: bf16 operands, f32 accumulation.

use cudarc::cublas::sys::{
    cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType_t,
};
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};

use super::device::{cublas_err, Device};
use crate::{Error, Result};

/// Where a GEMM writes `[m, n]`: bf16 when a custom kernel consumes it next, f32 when the
/// residual RMSNorm does.
pub enum GemmOut<'a> {
    Bf16(&'a mut CudaSlice<u16>),
    F32(&'a mut CudaSlice<f32>),
}

/// Row-major `out[m, n] = a[m, k] · w[n, k]ᵀ` (a PyTorch Linear without bias).
///
/// cuBLAS is column-major: the row-major result `[m, n]` is the column-major `n×m` matrix
/// `wᵀᵀ·aᵀ`, i.e. `gemm(op_a = T on w (k×n, ld k), op_b = N on a (k×m, ld k), ldc = n)`.
pub fn linear(
    dev: &Device,
    a: &CudaSlice<u16>,
    w: &CudaSlice<u16>,
    out: GemmOut<'_>,
    (m, n, k): (usize, usize, usize),
) -> Result<()> {
    let out_len = match &out {
        GemmOut::Bf16(o) => o.len(),
        GemmOut::F32(o) => o.len(),
    };
    if a.len() < m * k || w.len() < n * k || out_len < m * n {
        return Err(Error::Cuda(format!(
            "GEMM [{m},{k}]x[{n},{k}]^T: buffers too small (a {}, w {}, out {out_len})",
            a.len(),
            w.len()
        )));
    }
    let to_int = |x: usize| {
        i32::try_from(x).map_err(|_| Error::Cuda(format!("GEMM dimension {x} exceeds i32")))
    };
    let (mi, ni, ki) = (to_int(m)?, to_int(n)?, to_int(k)?);
    let alpha = 1.0f32;
    let beta = 0.0f32;
    let stream = &dev.stream;
    let (a_ptr, _a) = a.device_ptr(stream);
    let (w_ptr, _w) = w.device_ptr(stream);
    let (out_ptr, out_type, _out) = match out {
        GemmOut::Bf16(o) => {
            let (p, r) = o.device_ptr_mut(stream);
            (p, cudaDataType_t::CUDA_R_16BF, r)
        }
        GemmOut::F32(o) => {
            let (p, r) = o.device_ptr_mut(stream);
            (p, cudaDataType_t::CUDA_R_32F, r)
        }
    };
    // SAFETY: the three buffers are live device allocations at least as large as the
    // dimensions say (checked above); alpha/beta are host f32 as COMPUTE_32F requires.
    unsafe {
        cudarc::cublas::result::gemm_ex(
            *dev.blas.handle(),
            cublasOperation_t::CUBLAS_OP_T,
            cublasOperation_t::CUBLAS_OP_N,
            ni,
            mi,
            ki,
            (&alpha) as *const f32 as *const _,
            w_ptr as *const _,
            cudaDataType_t::CUDA_R_16BF,
            ki,
            a_ptr as *const _,
            cudaDataType_t::CUDA_R_16BF,
            ki,
            (&beta) as *const f32 as *const _,
            out_ptr as *mut _,
            out_type,
            ni,
            cublasComputeType_t::CUBLAS_COMPUTE_32F,
            cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
    }
    .map_err(cublas_err(format!("GEMM [{m},{k}]x[{n},{k}]^T")))
}
