//! The attention block's QKV projection and its q/k post-processing: the host half of
//! `kernels/qkv_proj.cu`.
//!
//! - The ways to compute attention-ready Q, K, V from the residual stream: the cuBLAS QKV GEMM
//!   followed by `qkv_post`, or `qkv_proj_wgmma` (sm_90 only), one persistent kernel (one CTA
//!   per SM walking the tiles) with `qkv_post`'s arithmetic in its epilogue, or `qkv_proj_tma`,
//!   the same with TMA-filled stages ([`QkvKernel`]).
//! - The fused kernel's compile-time tile (mirrors of the `QKV_PROJ_*` defines in
//!   `kernels/params.h`) and its check against the model's shape.
//! - The typed launch wrapper (with the `gemma_cuda_kernels` cfg).

use super::options::KernelChoice;
use crate::{Error, Result};

/// `QKV_PROJ_BLOCK_M`: token rows per tile.
pub const BLOCK_M: usize = 128;
/// `QKV_PROJ_STAGES`: depth of the cp.async pipeline.
pub const STAGES: usize = 4;
/// `QKV_PROJ_THREADS`: threads per CTA (two warpgroups).
pub const THREADS: usize = 256;
/// `QKV_TMA_THREADS`: threads per CTA of the TMA kernel (a producer and two consumer
/// warpgroups).
pub const TMA_THREADS: usize = 384;
/// `QKV_PROJ_SMEM_BYTES`: dynamic shared memory per CTA.
pub const SMEM_BYTES: usize = 197_632;
/// `ATTENTION_HEAD_DIM`: the weight rows of one tile (one head slot) and the only head size the
/// epilogue handles.
pub const HEAD_DIM: usize = 256;
/// `GEMM_TILE_K`: k per pipeline stage.
pub const TILE_K: usize = 64;

/// Kernel name in the embedded modules.
pub const WGMMA_KERNEL: &str = "qkv_proj_wgmma";
pub const TMA_KERNEL: &str = "qkv_proj_tma";

/// How the engine turns bf16(residual) into attention-ready Q, K and V.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QkvKernel {
    /// cuBLAS writes the projection as bf16, then `qkv_post` reads it back: the default
    /// everywhere; on an H200 the fused kernel was 3-5 % slower end to end (docs/gpu-report.md).
    Cublas,
    /// `qkv_proj_wgmma`: one kernel on Hopper's warpgroup MMA, the projection never reaches
    /// memory (sm_90 devices only).
    Wgmma,
    /// `qkv_proj_tma`: `qkv_proj_wgmma` with its stages filled by TMA from a producer
    /// warpgroup and handed over through mbarriers (sm_90 devices only).
    Tma,
}

/// `GEMMA_EMBED_QKV=wgmma` selects `qkv_proj_wgmma`, `tma` `qkv_proj_tma`, `cublas` (or unset)
/// cuBLAS + `qkv_post`.
impl KernelChoice for QkvKernel {
    const VAR: &'static str = "GEMMA_EMBED_QKV";
    const CHOICES: &'static [(&'static str, Self)] = &[
        ("cublas", Self::Cublas),
        ("wgmma", Self::Wgmma),
        ("tma", Self::Tma),
    ];
    const SM90_DEFAULT: Self = Self::Cublas;
    const SM90_ONLY: &'static [Self] = &[Self::Wgmma, Self::Tma];
}

impl QkvKernel {
    pub fn name(self) -> &'static str {
        match self {
            Self::Cublas => "cublas+qkv_post",
            Self::Wgmma => WGMMA_KERNEL,
            Self::Tma => TMA_KERNEL,
        }
    }
}

/// The fused kernel computes one head of [`HEAD_DIM`] per CTA and tiles k by [`TILE_K`]
/// without edge handling: refuse a model whose shape does not fit.
pub fn check_shape(hidden: usize, head_dim: usize) -> Result<()> {
    if head_dim != HEAD_DIM || !hidden.is_multiple_of(TILE_K) || hidden == 0 {
        return Err(Error::Cuda(format!(
            "{WGMMA_KERNEL} needs head_dim {HEAD_DIM} and hidden a multiple of {TILE_K}; the \
             model has head_dim {head_dim}, hidden {hidden} (unset GEMMA_EMBED_QKV to use \
             cuBLAS + qkv_post)"
        )));
    }
    Ok(())
}

#[cfg(gemma_cuda_kernels)]
pub use device::QkvProj;

#[cfg(gemma_cuda_kernels)]
mod device {
    use cudarc::driver::{CudaFunction, CudaSlice, DevicePtr, LaunchConfig};

    use super::*;
    use crate::backend::cuda::device::{driver_err, Device};
    use crate::backend::cuda::ops::{
        check_fused_buffers, kernel_u32, persistent_grid, ModelDims, QkNorms, QkvBuffers, Tokens,
    };
    use crate::backend::cuda::params::QkvProjParams;
    use crate::backend::cuda::tma::{gemm_tensor_maps, launch_with_maps};

    // SAFETY: bindgen's `#[repr(C)]` copy of `QkvProjParams` from kernels/params.h: device
    // addresses and scalars only, passed to the kernel by value.
    unsafe impl cudarc::driver::DeviceRepr for QkvProjParams {}

    /// `qkv_proj_wgmma` or `qkv_proj_tma`, resolved from the embedded modules and allowed its
    /// shared memory.
    pub struct QkvProj {
        func: CudaFunction,
        kernel: QkvKernel,
    }

    impl QkvProj {
        /// `kernel` is [`QkvKernel::Wgmma`] or [`QkvKernel::Tma`]; both need an sm_90 device:
        /// their SASS is sm_90a, other architectures' code traps.
        pub fn load(dev: &Device, dims: &ModelDims, kernel: QkvKernel) -> Result<Self> {
            check_shape(dims.hidden, dims.head_dim)?;
            if kernel == QkvKernel::Cublas {
                return Err(Error::Cuda(
                    "cuBLAS + qkv_post is not a fused kernel".into(),
                ));
            }
            kernel.require_device(&dev.info, kernel.name())?;
            let func = dev.function_with_shared_memory(
                kernel.name(),
                SMEM_BYTES,
                "unset GEMMA_EMBED_QKV",
            )?;
            Ok(Self { func, kernel })
        }

        pub fn name(&self) -> &'static str {
            self.kernel.name()
        }

        /// Q, K, V for `tokens` from x = bf16(residual) `[num_tokens, hidden]`, its inverse RMS
        /// `[num_tokens]` and the QKV weight `[(num_heads + 2)·head_dim, hidden]` (columns
        /// scaled by `1 + input_layernorm`): what the cuBLAS projection and `qkv_post` compute,
        /// without rounding the projection to bf16 in between.
        pub fn launch(
            &self,
            dev: &Device,
            dims: &ModelDims,
            tokens: &Tokens,
            (x, w, inv_rms): (&CudaSlice<u16>, &CudaSlice<u16>, &CudaSlice<f32>),
            norms: QkNorms<'_>,
            out: &mut QkvBuffers,
        ) -> Result<()> {
            let d = dims;
            check_shape(d.hidden, d.head_dim)?;
            let n = tokens.num_tokens;
            if n == 0 {
                return Ok(());
            }
            let table_len = norms.rope.max_positions * d.head_dim / 2;
            let needs = [
                (x.len(), n * d.hidden, "x"),
                (w.len(), d.qkv_width() * d.hidden, "w"),
                (inv_rms.len(), n, "inv_rms"),
                (tokens.positions.len(), n, "positions"),
                (norms.q_norm.len(), d.head_dim, "q_norm"),
                (norms.k_norm.len(), d.head_dim, "k_norm"),
                (norms.rope.cos.len(), table_len, "rope cos"),
                (norms.rope.sin.len(), table_len, "rope sin"),
                (out.q.len(), n * d.q_width(), "q"),
                (out.k.len(), n * d.head_dim, "k"),
                (out.v.len(), n * d.head_dim, "v"),
            ];
            let name = self.kernel.name();
            check_fused_buffers(name, n, &needs)?;
            let to_u32 = |v: usize, what: &str| kernel_u32(name, v, what);
            let grid = persistent_grid(dev, name, n, BLOCK_M, d.num_heads + 2)?;
            let s = &dev.stream;
            let params = QkvProjParams {
                x: x.device_ptr(s).0 as _,
                w: w.device_ptr(s).0 as _,
                inv_rms: inv_rms.device_ptr(s).0 as _,
                positions: tokens.positions.device_ptr(s).0 as _,
                q_norm: norms.q_norm.device_ptr(s).0 as _,
                k_norm: norms.k_norm.device_ptr(s).0 as _,
                rope_cos: norms.rope.cos.device_ptr(s).0 as _,
                rope_sin: norms.rope.sin.device_ptr(s).0 as _,
                q: out.q.device_ptr(s).0 as _,
                k: out.k.device_ptr(s).0 as _,
                v: out.v.device_ptr(s).0 as _,
                q_scale: d.q_scale,
                eps: d.eps,
                num_tokens: to_u32(n, "num_tokens")?,
                num_heads: to_u32(d.num_heads, "num_heads")?,
                hidden: to_u32(d.hidden, "hidden")?,
            };
            let threads = match self.kernel {
                QkvKernel::Tma => TMA_THREADS,
                QkvKernel::Wgmma | QkvKernel::Cublas => THREADS,
            };
            let cfg = LaunchConfig {
                grid_dim: (grid, 1, 1),
                block_dim: (threads as u32, 1, 1),
                shared_mem_bytes: SMEM_BYTES as u32,
            };
            let maps = (self.kernel == QkvKernel::Tma)
                .then(|| {
                    gemm_tensor_maps(
                        (params.x as u64, n),
                        (params.w as u64, d.qkv_width()),
                        d.hidden,
                        (BLOCK_M, HEAD_DIM),
                    )
                })
                .transpose()?;
            // SAFETY: QkvProjParams matches the kernels' parameter (same header), and
            // GemmTensorMaps the TMA kernel's second one, its maps describing x and w with these
            // shapes; every buffer covers what the kernel touches for these shapes (checked
            // above), the shape fits the kernel's tiles (check_shape), the kernels only run on
            // sm_90 (load), positions come from `embed` and stay below the sequence length,
            // which the caller keeps within the RoPE table (as for qkv_post), and the device
            // pointers stay valid until the launch is enqueued on the stream that owns the
            // buffers.
            unsafe { launch_with_maps(s, &self.func, cfg, &params, maps.as_ref()) }
                .map_err(driver_err(format!("launch {name}")))?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tile_constants_match_params_header() {
        let defines = [
            ("QKV_PROJ_BLOCK_M", BLOCK_M),
            ("QKV_PROJ_STAGES", STAGES),
            ("QKV_PROJ_THREADS", THREADS),
            ("QKV_TMA_THREADS", TMA_THREADS),
            ("QKV_PROJ_SMEM_BYTES", SMEM_BYTES),
            ("ATTENTION_HEAD_DIM", HEAD_DIM),
        ];
        for (name, value) in defines {
            assert_eq!(super::super::params_define(name), value as i64, "{name}");
        }
        assert_eq!(super::super::tile_define("GEMM_TILE_K"), TILE_K as i64);
        assert_eq!(
            SMEM_BYTES,
            STAGES * (BLOCK_M + HEAD_DIM) * TILE_K * 2 + 1024
        );
    }

    #[test]
    fn the_variable_selects_the_kernel_and_only_hopper_runs_it() {
        for cc in [(8, 0), (9, 0)] {
            assert_eq!(QkvKernel::default_on(cc), QkvKernel::Cublas);
        }
        assert_eq!(QkvKernel::parse("wgmma").unwrap(), QkvKernel::Wgmma);
        let err = QkvKernel::parse("fused").unwrap_err().to_string();
        assert!(
            err.contains("GEMMA_EMBED_QKV") && err.contains("`fused`"),
            "{err}"
        );
        for cc in [(8, 0), (8, 6), (8, 9), (9, 0), (10, 0), (12, 0)] {
            assert!(QkvKernel::Cublas.runs_on(cc));
            assert_eq!(QkvKernel::Wgmma.runs_on(cc), cc == (9, 0), "{cc:?}");
        }
    }

    #[test]
    fn shape_check_refuses_what_the_tiles_do_not_fit() {
        assert!(check_shape(768, 256).is_ok());
        assert!(check_shape(768, 128).is_err());
        assert!(check_shape(768 + 32, 256).is_err());
        assert!(check_shape(0, 256).is_err());
    }

    /// The kernel's stage copies, wgmma descriptors, accumulator dealing and epilogue (quad
    /// reduction, RoPE partners, stores) against qkv_post's definition, in the warp emulator
    /// `kernels/tests/qkv_proj_fragments.c`.
    #[test]
    fn fused_epilogue_math_matches_qkv_post() {
        super::super::run_fragment_emulator("qkv_proj_fragments.c");
    }
}
