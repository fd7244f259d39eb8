//! The O and down projections with `residual_norm` in their epilogue: the host half of
//! `kernels/proj_residual_norm.cu` (`GEMMA_EMBED_BRANCH=fused`, [`BranchStorage::Fused`]).
//!
//! - The kernel's compile-time tile and cluster (mirrors of the `PROJ_NORM_*` defines in
//!   `kernels/params.h`) and its check against the model's shape.
//! - The typed launch wrapper (with the `gemma_cuda_kernels` cfg): a persistent grid, as many
//!   clusters as the device runs at once walking the row blocks.
//!
//! [`BranchStorage::Fused`]: super::options::BranchStorage::Fused

use crate::{Error, Result};

/// `PROJ_NORM_BLOCK_M`: token rows per CTA.
pub const BLOCK_M: usize = 128;
/// `PROJ_NORM_CLUSTER`: CTAs per cluster, each computing one 256-wide slice of the outputs.
pub const CLUSTER: usize = 3;
/// `PROJ_NORM_STAGES`: depth of the cp.async pipeline.
pub const STAGES: usize = 4;
/// `PROJ_NORM_THREADS`: threads per CTA (two warpgroups).
pub const THREADS: usize = 256;
/// `PROJ_NORM_SMEM_BYTES`: dynamic shared memory per CTA.
pub const SMEM_BYTES: usize = 197_632;
/// Outputs per CTA (`ATTENTION_HEAD_DIM`, the wgmma.m64n256 width).
pub const SLICE: usize = 256;
/// `GEMM_TILE_K`: k per pipeline stage.
pub const TILE_K: usize = 64;

/// Kernel name in the embedded modules.
pub const KERNEL: &str = "proj_residual_norm_wgmma";

/// One cluster covers a whole row of [`CLUSTER`]·[`SLICE`] outputs, and k is tiled by
/// [`TILE_K`] without edge handling: refuse a projection whose shape does not fit.
pub fn check_shape(hidden: usize, k_dim: usize) -> Result<()> {
    if hidden != CLUSTER * SLICE || k_dim % TILE_K != 0 || k_dim == 0 {
        return Err(Error::Cuda(format!(
            "{KERNEL} needs hidden {} and the projection's input width a multiple of {TILE_K}; \
             got hidden {hidden}, input width {k_dim} (unset GEMMA_EMBED_BRANCH to use cuBLAS + \
             residual_norm)",
            CLUSTER * SLICE
        )));
    }
    Ok(())
}

#[cfg(gemma_cuda_kernels)]
pub use device::ProjResidualNorm;

#[cfg(gemma_cuda_kernels)]
mod device {
    use cudarc::driver::{CudaFunction, CudaSlice, DevicePtr, LaunchConfig};

    use super::*;
    use crate::backend::cuda::device::Device;
    use crate::backend::cuda::ops::{
        check_fused_buffers, grid_row_blocks, kernel_u32, ModelDims, Residual,
    };
    use crate::backend::cuda::options::{BranchStorage, KernelChoice};
    use crate::backend::cuda::params::ProjResidualNormParams;

    // SAFETY: bindgen's `#[repr(C)]` copy of `ProjResidualNormParams` from kernels/params.h:
    // device addresses and scalars only, passed to the kernel by value.
    unsafe impl cudarc::driver::DeviceRepr for ProjResidualNormParams {}

    /// `proj_residual_norm_wgmma`, resolved from the embedded modules and allowed its shared
    /// memory.
    pub struct ProjResidualNorm {
        func: CudaFunction,
        /// Clusters the device runs at once: the most the persistent grid launches.
        clusters: u32,
    }

    /// `clusters` clusters: the grid (CLUSTER, clusters), its block and shared memory.
    fn launch_config(clusters: u32) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (CLUSTER as u32, clusters, 1),
            block_dim: (THREADS as u32, 1, 1),
            shared_mem_bytes: SMEM_BYTES as u32,
        }
    }

    impl ProjResidualNorm {
        /// Needs an sm_90 device: the kernel's SASS is sm_90a (clusters, wgmma), other
        /// architectures' code traps.
        pub fn load(dev: &Device) -> Result<Self> {
            BranchStorage::Fused.require_device(&dev.info, KERNEL)?;
            let func =
                dev.function_with_shared_memory(KERNEL, SMEM_BYTES, "unset GEMMA_EMBED_BRANCH")?;
            let clusters =
                dev.max_active_clusters((&func, KERNEL), launch_config(1), CLUSTER as u32)?;
            Ok(Self { func, clusters })
        }

        /// `residual += RMSNorm(x·wᵀ)·(1 + post_norm)` for `num_tokens` rows, then the new
        /// residual's bf16 copy and inverse RMS: x bf16 `[num_tokens, k_dim]`, w bf16
        /// `[hidden, k_dim]`, post_norm `[hidden]`.
        pub fn launch(
            &self,
            dev: &Device,
            dims: &ModelDims,
            (x, w, post_norm): (&CudaSlice<u16>, &CudaSlice<u16>, &CudaSlice<f32>),
            (num_tokens, k_dim): (usize, usize),
            residual: &mut Residual,
        ) -> Result<()> {
            let hidden = dims.hidden;
            check_shape(hidden, k_dim)?;
            let n = num_tokens;
            if n == 0 {
                return Ok(());
            }
            let needs = [
                (x.len(), n * k_dim, "x"),
                (w.len(), hidden * k_dim, "w"),
                (post_norm.len(), hidden, "post_norm"),
                (residual.x.len(), n * hidden, "residual"),
                (residual.x_bf16.len(), n * hidden, "residual bf16"),
                (residual.inv_rms.len(), n, "inv_rms"),
            ];
            check_fused_buffers(KERNEL, n, &needs)?;
            let to_u32 = |v: usize, what: &str| kernel_u32(KERNEL, v, what);
            let row_blocks = grid_row_blocks(KERNEL, n, BLOCK_M)?;
            let s = &dev.stream;
            let params = ProjResidualNormParams {
                x: x.device_ptr(s).0 as _,
                w: w.device_ptr(s).0 as _,
                post_norm: post_norm.device_ptr(s).0 as _,
                residual: residual.x.device_ptr(s).0 as _,
                residual_bf16: residual.x_bf16.device_ptr(s).0 as _,
                inv_rms: residual.inv_rms.device_ptr(s).0 as _,
                eps: dims.eps,
                num_tokens: to_u32(n, "num_tokens")?,
                k_dim: to_u32(k_dim, "k_dim")?,
                hidden: to_u32(hidden, "hidden")?,
            };
            // The grid's x is exactly one cluster; persistent clusters along y, at most as many
            // as run at once, walk the row blocks.
            let cfg = launch_config(row_blocks.min(self.clusters));
            // SAFETY: ProjResidualNormParams matches the kernel's parameter (same header); every
            // buffer covers what the kernel touches for these shapes (checked above) and lives
            // on the stream that runs it, the shape fits the kernel's tiles and cluster
            // (check_shape), the grid's x is one cluster, its y at most the row blocks (the
            // kernel walks them itself), and the kernel only runs on sm_90 (load).
            unsafe { dev.launch_clustered((&self.func, KERNEL), cfg, CLUSTER as u32, &params) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tile_constants_match_params_header() {
        let defines = [
            ("PROJ_NORM_BLOCK_M", BLOCK_M),
            ("PROJ_NORM_CLUSTER", CLUSTER),
            ("PROJ_NORM_STAGES", STAGES),
            ("PROJ_NORM_THREADS", THREADS),
            ("PROJ_NORM_SMEM_BYTES", SMEM_BYTES),
            ("ATTENTION_HEAD_DIM", SLICE),
        ];
        for (name, value) in defines {
            assert_eq!(super::super::params_define(name), value as i64, "{name}");
        }
        assert_eq!(super::super::tile_define("GEMM_TILE_K"), TILE_K as i64);
        assert_eq!(SMEM_BYTES, STAGES * (BLOCK_M + SLICE) * TILE_K * 2 + 1024);
    }

    #[test]
    fn shape_check_takes_both_projections_of_the_model_only() {
        assert!(check_shape(768, 768).is_ok());
        assert!(check_shape(768, 1152).is_ok());
        assert!(check_shape(1024, 768).is_err());
        assert!(check_shape(768, 1152 + 32).is_err());
        assert!(check_shape(768, 0).is_err());
    }

    /// The main loop, the accumulator layout and the epilogue (quad reductions, the cluster's
    /// partial sums, the residual update and stores) against residual_norm's definition, in
    /// the warp emulator `kernels/tests/proj_residual_norm_fragments.c`.
    #[test]
    fn fused_epilogue_math_matches_residual_norm() {
        super::super::run_fragment_emulator("proj_residual_norm_fragments.c");
    }
}
