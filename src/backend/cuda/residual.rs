//! The O and down projections with `residual_norm` in their epilogue: the host half of
//! `kernels/proj_residual_norm.cu` (`GEMMA_EMBED_BRANCH=fused` and `tma`,
//! [`BranchStorage::Fused`] and [`BranchStorage::Tma`]).
//!
//! - The kernels' compile-time tile and cluster (mirrors of the `PROJ_NORM_*` defines in
//!   `kernels/params.h`) and their check against the model's shape.
//! - The typed launch wrapper (with the `gemma_cuda_kernels` cfg): a persistent grid, as many
//!   clusters as the device runs at once walking the row blocks.
//!
//! [`BranchStorage::Fused`]: super::options::BranchStorage::Fused
//! [`BranchStorage::Tma`]: super::options::BranchStorage::Tma

use super::RegisterHandOver;
use crate::{Error, Result};

/// `PROJ_NORM_BLOCK_M`: token rows per CTA.
pub const BLOCK_M: usize = 128;
/// `PROJ_NORM_CLUSTER`: CTAs per cluster, each computing one 256-wide slice of the outputs.
pub const CLUSTER: usize = 3;
/// `PROJ_NORM_STAGES`: depth of the cp.async pipeline.
pub const STAGES: usize = 4;
/// `PROJ_NORM_THREADS`: threads per CTA (two warpgroups).
pub const THREADS: usize = 256;
/// `PROJ_NORM_SMEM_BYTES`: dynamic shared memory per CTA (both kernels).
pub const SMEM_BYTES: usize = 197_632;
/// Outputs per CTA (`ATTENTION_HEAD_DIM`, the wgmma.m64n256 width).
pub const SLICE: usize = 256;
/// `GEMM_TILE_K`: k per pipeline stage.
pub const TILE_K: usize = 64;
/// `PROJ_NORM_TMA_THREADS`: a producer warpgroup and two consumer warpgroups.
pub const TMA_THREADS: usize = 384;
/// `PROJ_NORM_TMA_PRODUCER_REGS` / `_CONSUMER_REGS`: the TMA kernel's register hand-over.
pub const TMA_HAND_OVER: RegisterHandOver = RegisterHandOver {
    threads: TMA_THREADS,
    producer: 24,
    consumer: 240,
};

/// Kernel names in the embedded modules.
pub const KERNEL: &str = "proj_residual_norm_wgmma";
pub const TMA_KERNEL: &str = "proj_residual_norm_tma";

/// One cluster covers a whole row of [`CLUSTER`]·[`SLICE`] outputs, and k is tiled by
/// [`TILE_K`] without edge handling: refuse a projection whose shape does not fit.
pub fn check_shape(hidden: usize, k_dim: usize) -> Result<()> {
    if hidden != CLUSTER * SLICE || !k_dim.is_multiple_of(TILE_K) || k_dim == 0 {
        return Err(Error::Cuda(format!(
            "{KERNEL} and {TMA_KERNEL} need hidden {} and the projection's input width a multiple \
             of {TILE_K}; got hidden {hidden}, input width {k_dim} (unset GEMMA_EMBED_BRANCH to \
             use cuBLAS + residual_norm)",
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
    use crate::backend::cuda::tma::{self, gemm_tensor_maps};

    // SAFETY: bindgen's `#[repr(C)]` copy of `ProjResidualNormParams` from kernels/params.h:
    // device addresses and scalars only, passed to the kernel by value.
    unsafe impl cudarc::driver::DeviceRepr for ProjResidualNormParams {}

    /// `proj_residual_norm_wgmma` or `proj_residual_norm_tma`, resolved from the embedded
    /// modules and allowed its shared memory.
    pub struct ProjResidualNorm {
        func: CudaFunction,
        /// [`BranchStorage::Fused`] or [`BranchStorage::Tma`].
        storage: BranchStorage,
        /// Clusters the device runs at once: the most the persistent grid launches.
        clusters: u32,
    }

    /// Threads per CTA of the kernel that adds a `storage` branch in the projection's epilogue.
    fn threads(storage: BranchStorage) -> Result<usize> {
        match storage {
            BranchStorage::Fused => Ok(THREADS),
            BranchStorage::Tma => Ok(TMA_THREADS),
            BranchStorage::F32 | BranchStorage::Bf16 => Err(Error::Cuda(format!(
                "the {} branch is added by residual_norm, not by a fused projection",
                storage.choice_name()
            ))),
        }
    }

    /// `clusters` clusters of the `storage` kernel's CTAs: the grid (CLUSTER, clusters), its
    /// block and shared memory.
    fn launch_config(storage: BranchStorage, clusters: u32) -> Result<LaunchConfig> {
        Ok(LaunchConfig {
            grid_dim: (CLUSTER as u32, clusters, 1),
            block_dim: (threads(storage)? as u32, 1, 1),
            shared_mem_bytes: SMEM_BYTES as u32,
        })
    }

    impl ProjResidualNorm {
        /// The kernel of `storage`, [`BranchStorage::Fused`] or [`BranchStorage::Tma`]; both
        /// need an sm_90 device: their SASS is sm_90a (clusters, wgmma), other architectures'
        /// code traps.
        pub fn load(dev: &Device, storage: BranchStorage) -> Result<Self> {
            let one_cluster = launch_config(storage, 1)?;
            let name = storage.residual_norm_kernel();
            storage.require_device(&dev.info, name)?;
            let way_out = "unset GEMMA_EMBED_BRANCH";
            let func = dev.function_with_shared_memory(name, SMEM_BYTES, way_out)?;
            if storage == BranchStorage::Tma {
                tma::check_hand_over(&func, name, TMA_HAND_OVER, way_out).map_err(Error::Cuda)?;
            }
            let clusters = dev.max_active_clusters((&func, name), one_cluster, CLUSTER as u32)?;
            Ok(Self {
                func,
                storage,
                clusters,
            })
        }

        pub fn name(&self) -> &'static str {
            self.storage.residual_norm_kernel()
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
            let name = self.name();
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
            check_fused_buffers(name, n, &needs)?;
            let to_u32 = |v: usize, what: &str| kernel_u32(name, v, what);
            let row_blocks = grid_row_blocks(name, n, BLOCK_M)?;
            let s = &dev.stream;
            let (x_ptr, _x) = x.device_ptr(s);
            let (w_ptr, _w) = w.device_ptr(s);
            let params = ProjResidualNormParams {
                x: x_ptr as _,
                w: w_ptr as _,
                post_norm: post_norm.device_ptr(s).0 as _,
                residual: residual.x.device_ptr(s).0 as _,
                residual_bf16: residual.x_bf16.device_ptr(s).0 as _,
                inv_rms: residual.inv_rms.device_ptr(s).0 as _,
                eps: dims.eps,
                num_tokens: to_u32(n, "num_tokens")?,
                k_dim: to_u32(k_dim, "k_dim")?,
                hidden: to_u32(hidden, "hidden")?,
            };
            // x in boxes of a CTA's rows, w in boxes of one CTA's 256 output rows (the kernel
            // offsets them by its rank).
            let maps = (self.storage == BranchStorage::Tma)
                .then(|| gemm_tensor_maps((x_ptr, n), (w_ptr, hidden), k_dim, (BLOCK_M, SLICE)))
                .transpose()?;
            // The grid's x is exactly one cluster; persistent clusters along y, at most as many
            // as run at once, walk the row blocks.
            let cfg = launch_config(self.storage, row_blocks.min(self.clusters))?;
            // SAFETY: ProjResidualNormParams matches the kernels' first parameter (same header),
            // and GemmTensorMaps the TMA kernel's second one, its maps describing x and w with
            // these shapes; every buffer covers what the kernel touches for these shapes
            // (checked above) and lives on the stream that runs it, the shape fits the kernels'
            // tiles and cluster (check_shape), the grid's x is one cluster, its y at most the
            // row blocks (the kernel walks them itself), and the kernels only run on sm_90
            // (load), the TMA kernel with registers for its hand-over (load).
            unsafe {
                dev.launch_clustered(
                    (&self.func, name),
                    cfg,
                    CLUSTER as u32,
                    &params,
                    maps.as_ref(),
                )
            }
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
            ("PROJ_NORM_TMA_THREADS", TMA_THREADS),
            ("PROJ_NORM_TMA_PRODUCER_REGS", TMA_HAND_OVER.producer),
            ("PROJ_NORM_TMA_CONSUMER_REGS", TMA_HAND_OVER.consumer),
        ];
        for (name, value) in defines {
            assert_eq!(super::super::params_define(name), value as i64, "{name}");
        }
        assert_eq!(super::super::tile_define("GEMM_TILE_K"), TILE_K as i64);
        assert_eq!(SMEM_BYTES, STAGES * (BLOCK_M + SLICE) * TILE_K * 2 + 1024);
        assert!(TMA_HAND_OVER.fits(168) && !TMA_HAND_OVER.fits(160));
    }

    #[test]
    fn shape_check_takes_both_projections_of_the_model_only() {
        assert!(check_shape(768, 768).is_ok());
        assert!(check_shape(768, 1152).is_ok());
        assert!(check_shape(1024, 768).is_err());
        assert!(check_shape(768, 1152 + 32).is_err());
        assert!(check_shape(768, 0).is_err());
    }

    /// The TMA kernel's exchange of row sums between the cluster's CTAs (full mbarriers
    /// arrived on remotely, no empty ones) under random schedules, in
    /// `kernels/tests/proj_norm_exchange.c`.
    #[test]
    fn tma_row_sum_exchange_holds_under_random_schedules() {
        super::super::run_fragment_emulator("proj_norm_exchange.c");
    }

    /// The main loop, the accumulator layout and the epilogue (quad reductions, the cluster's
    /// partial sums, the residual update and stores) against residual_norm's definition, in
    /// the warp emulator `kernels/tests/proj_residual_norm_fragments.c`.
    #[test]
    fn fused_epilogue_math_matches_residual_norm() {
        super::super::run_fragment_emulator("proj_residual_norm_fragments.c");
    }
}
