//! The MLP's gate|up projection and gated GELU: the host half of `kernels/gate_up_geglu.cu`.
//!
//! - The ways to compute it: the cuBLAS gate|up GEMM followed by `geglu`, or one fused kernel
//!   with the GELU-tanh·up product in its epilogue: `gate_up_geglu` (mma.sync, sm_80+),
//!   `gate_up_geglu_wgmma`, `gate_up_geglu_wgmma_wide` or `gate_up_geglu_tma` (wgmma, sm_90 only)
//!   ([`MlpKernel`]).
//! - The fused kernel's compile-time tile (mirrors of the `GEGLU_GEMM_*` defines in
//!   `kernels/params.h`) and its check against the model's shape.
//! - The weight order the fused kernel reads ([`interleave_gate_up`]).
//! - The typed launch wrapper (with the `gemma_cuda_kernels` cfg).

use super::options::KernelChoice;
use crate::{Error, Result};

/// `GEGLU_GEMM_BLOCK_M`: token rows per CTA.
pub const BLOCK_M: usize = 128;
/// `GEGLU_GEMM_BLOCK_OUT`: outputs per CTA (twice as many weight rows: gate, then up).
pub const BLOCK_OUT: usize = 64;
/// `GEGLU_GEMM_BLOCK_K`: k per pipeline stage.
pub const BLOCK_K: usize = 64;
/// `GEGLU_GEMM_STAGES`: depth of the cp.async pipeline.
pub const STAGES: usize = 3;
/// `GEGLU_GEMM_THREADS`: threads per CTA.
pub const THREADS: usize = 128;
/// `GEGLU_GEMM_SMEM_BYTES`: dynamic shared memory per CTA.
pub const SMEM_BYTES: usize = 98304;

/// `GEGLU_WGMMA_THREADS`: threads per CTA of the wgmma kernel (two warpgroups).
pub const WGMMA_THREADS: usize = 256;
/// `GEGLU_WGMMA_SMEM_BYTES`: the same stages plus 1024 bytes to align them.
pub const WGMMA_SMEM_BYTES: usize = SMEM_BYTES + 1024;

/// `GEGLU_WIDE_BLOCK_OUT`: outputs per CTA of the wide wgmma kernel (two interleave blocks).
pub const WIDE_BLOCK_OUT: usize = 128;
/// `GEGLU_WIDE_STAGES`: its pipeline depth.
pub const WIDE_STAGES: usize = 4;
/// `GEGLU_WIDE_SMEM_BYTES`: its stages plus 1024 bytes to align them.
pub const WIDE_SMEM_BYTES: usize = 197_632;

/// `GEGLU_TMA_THREADS`: threads per CTA of the TMA kernel (a producer warpgroup and two
/// consumer warpgroups).
pub const TMA_THREADS: usize = 384;
/// `GEGLU_TMA_STAGES`: its pipeline depth.
pub const TMA_STAGES: usize = 4;
/// `GEGLU_TMA_SMEM_BYTES`: its stages plus 1024 bytes to align them.
pub const TMA_SMEM_BYTES: usize = 197_632;

/// Kernel names in the embedded modules.
pub const FUSED_KERNEL: &str = "gate_up_geglu";
pub const WGMMA_KERNEL: &str = "gate_up_geglu_wgmma";
pub const WIDE_KERNEL: &str = "gate_up_geglu_wgmma_wide";
pub const TMA_KERNEL: &str = "gate_up_geglu_tma";

/// How the engine computes `gelu_tanh(r·gate)·(r·up)` from the residual stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MlpKernel {
    /// cuBLAS writes gate|up as bf16, then `geglu` reads it back: the default everywhere; on an
    /// H200 each fused kernel was 3-13 % slower end to end (docs/gpu-report.md).
    Cublas,
    /// `gate_up_geglu`: one kernel, the gate|up activations never reach memory.
    Fused,
    /// `gate_up_geglu_wgmma`: the same on Hopper's warpgroup MMA (sm_90 devices only).
    Wgmma,
    /// `gate_up_geglu_wgmma_wide`: the wgmma kernel with twice the outputs per CTA, so each
    /// activation tile it loads feeds twice the products (sm_90 devices only).
    WgmmaWide,
    /// `gate_up_geglu_tma`: the wide kernel's tiles with its stages filled by TMA from a
    /// producer warpgroup and handed over through mbarriers (sm_90 devices only).
    Tma,
}

/// `GEMMA_EMBED_MLP=fused` selects `gate_up_geglu`, `wgmma` `gate_up_geglu_wgmma`, `wgmma-wide`
/// `gate_up_geglu_wgmma_wide`, `tma` `gate_up_geglu_tma`, `cublas` (or unset) cuBLAS + `geglu`.
impl KernelChoice for MlpKernel {
    const VAR: &'static str = "GEMMA_EMBED_MLP";
    const CHOICES: &'static [(&'static str, Self)] = &[
        ("cublas", Self::Cublas),
        ("fused", Self::Fused),
        ("wgmma", Self::Wgmma),
        ("wgmma-wide", Self::WgmmaWide),
        ("tma", Self::Tma),
    ];
    const SM90_DEFAULT: Self = Self::Cublas;
    const SM90_ONLY: &'static [Self] = &[Self::Wgmma, Self::WgmmaWide, Self::Tma];
}

impl MlpKernel {
    pub fn name(self) -> &'static str {
        match self {
            Self::Cublas => "cublas+geglu",
            Self::Fused => FUSED_KERNEL,
            Self::Wgmma => WGMMA_KERNEL,
            Self::WgmmaWide => WIDE_KERNEL,
            Self::Tma => TMA_KERNEL,
        }
    }

    /// Outputs per CTA of the fused kernel (whole blocks of [`interleave_gate_up`]'s order).
    pub fn block_out(self) -> usize {
        match self {
            Self::WgmmaWide | Self::Tma => WIDE_BLOCK_OUT,
            Self::Cublas | Self::Fused | Self::Wgmma => BLOCK_OUT,
        }
    }

    /// The fused kernels tile k by [`BLOCK_K`] and the outputs by [`MlpKernel::block_out`],
    /// without edge handling in either: refuse a model whose shape does not divide.
    pub fn check_shape(self, hidden: usize, intermediate: usize) -> Result<()> {
        let block_out = self.block_out();
        if !hidden.is_multiple_of(BLOCK_K)
            || !intermediate.is_multiple_of(block_out)
            || hidden == 0
            || intermediate == 0
        {
            return Err(Error::Cuda(format!(
                "{} needs hidden a multiple of {BLOCK_K} and intermediate a multiple of \
                 {block_out}; the model has hidden {hidden}, intermediate {intermediate} (unset \
                 GEMMA_EMBED_MLP to use cuBLAS + geglu)",
                self.name()
            )));
        }
        Ok(())
    }
}

/// The fused kernel's weight order, from `[gate rows; up rows]` (`[2·intermediate, hidden]`):
/// gate rows `BLOCK_OUT·b ..` then the up rows of the same outputs, for b = 0, 1, ...
pub fn interleave_gate_up<T: Copy>(gate_up: &[T], intermediate: usize, hidden: usize) -> Vec<T> {
    let block = BLOCK_OUT * hidden;
    let (gate, up) = gate_up.split_at(intermediate * hidden);
    gate.chunks(block)
        .zip(up.chunks(block))
        .flat_map(|(g, u)| g.iter().chain(u).copied())
        .collect()
}

#[cfg(gemma_cuda_kernels)]
pub use device::GateUpGeglu;

#[cfg(gemma_cuda_kernels)]
mod device {
    use cudarc::driver::{CudaFunction, CudaSlice, DevicePtr, DevicePtrMut, LaunchConfig};

    use super::*;
    use crate::backend::cuda::device::{driver_err, Device};
    use crate::backend::cuda::ops::{grid_row_blocks, kernel_u32, persistent_grid};
    use crate::backend::cuda::params::GateUpGegluParams;
    use crate::backend::cuda::tma::{gemm_tensor_maps, launch_with_maps};

    // SAFETY: bindgen's `#[repr(C)]` copy of `GateUpGegluParams` from kernels/params.h: device
    // addresses and scalars only, passed to the kernel by value.
    unsafe impl cudarc::driver::DeviceRepr for GateUpGegluParams {}

    /// One of the fused kernels, resolved from the embedded modules and allowed its shared
    /// memory.
    pub struct GateUpGeglu {
        func: CudaFunction,
        kernel: MlpKernel,
        threads: usize,
        smem_bytes: usize,
    }

    impl GateUpGeglu {
        /// `kernel` is [`MlpKernel::Fused`], [`MlpKernel::Wgmma`], [`MlpKernel::WgmmaWide`] or
        /// [`MlpKernel::Tma`] (the last three need an sm_90 device: their SASS is sm_90a, and
        /// other architectures' code only traps).
        pub fn load(dev: &Device, kernel: MlpKernel) -> Result<Self> {
            let (threads, smem_bytes) = match kernel {
                MlpKernel::Fused => (THREADS, SMEM_BYTES),
                MlpKernel::Wgmma => (WGMMA_THREADS, WGMMA_SMEM_BYTES),
                MlpKernel::WgmmaWide => (WGMMA_THREADS, WIDE_SMEM_BYTES),
                MlpKernel::Tma => (TMA_THREADS, TMA_SMEM_BYTES),
                MlpKernel::Cublas => {
                    return Err(Error::Cuda("cuBLAS + geglu is not a fused kernel".into()))
                }
            };
            let name = kernel.name();
            kernel.require_device(&dev.info, name)?;
            let func =
                dev.function_with_shared_memory(name, smem_bytes, "unset GEMMA_EMBED_MLP")?;
            Ok(Self {
                func,
                kernel,
                threads,
                smem_bytes,
            })
        }

        pub fn name(&self) -> &'static str {
            self.kernel.name()
        }

        /// `out[t, j] = gelu_tanh(r_t·g[t, j])·(r_t·u[t, j])`, `g, u = x · w_gateᵀ, x · w_upᵀ`:
        /// x bf16 `[num_tokens, hidden]`, w bf16 `[2·intermediate, hidden]` in the order of
        /// [`interleave_gate_up`], inv_rms `[num_tokens]`, out bf16 `[num_tokens, intermediate]`.
        pub fn launch(
            &self,
            dev: &Device,
            (x, w, inv_rms): (&CudaSlice<u16>, &CudaSlice<u16>, &CudaSlice<f32>),
            out: &mut CudaSlice<u16>,
            (num_tokens, hidden, intermediate): (usize, usize, usize),
        ) -> Result<()> {
            self.kernel.check_shape(hidden, intermediate)?;
            if num_tokens == 0 {
                return Ok(());
            }
            if x.len() < num_tokens * hidden
                || w.len() < 2 * intermediate * hidden
                || inv_rms.len() < num_tokens
                || out.len() < num_tokens * intermediate
            {
                return Err(Error::Cuda(format!(
                    "{} over {num_tokens} tokens (hidden {hidden}, intermediate {intermediate}): \
                     buffers too small (x {}, w {}, inv_rms {}, out {})",
                    self.name(),
                    x.len(),
                    w.len(),
                    inv_rms.len(),
                    out.len()
                )));
            }
            let name = self.name();
            let to_u32 = |v: usize, what: &str| kernel_u32(name, v, what);
            let col_blocks = intermediate / self.kernel.block_out();
            // The wide and TMA kernels are persistent (one CTA per SM walking the tiles), the
            // others one CTA per tile.
            let grid_dim = match self.kernel {
                MlpKernel::WgmmaWide | MlpKernel::Tma => (
                    persistent_grid(dev, name, num_tokens, BLOCK_M, col_blocks)?,
                    1,
                    1,
                ),
                _ => (
                    to_u32(col_blocks, "grid x")?,
                    grid_row_blocks(name, num_tokens, BLOCK_M)?,
                    1,
                ),
            };
            let s = &dev.stream;
            let (x_ptr, _x) = x.device_ptr(s);
            let (w_ptr, _w) = w.device_ptr(s);
            let (r_ptr, _r) = inv_rms.device_ptr(s);
            let (o_ptr, _o) = out.device_ptr_mut(s);
            let params = GateUpGegluParams {
                x: x_ptr as *const u16,
                w: w_ptr as *const u16,
                inv_rms: r_ptr as *const f32,
                out: o_ptr as *mut u16,
                num_tokens: to_u32(num_tokens, "num_tokens")?,
                hidden: to_u32(hidden, "hidden")?,
                intermediate: to_u32(intermediate, "intermediate")?,
            };
            let cfg = LaunchConfig {
                grid_dim,
                block_dim: (self.threads as u32, 1, 1),
                shared_mem_bytes: self.smem_bytes as u32,
            };
            let maps = (self.kernel == MlpKernel::Tma)
                .then(|| {
                    gemm_tensor_maps(
                        (x_ptr, num_tokens),
                        (w_ptr, 2 * intermediate),
                        hidden,
                        (BLOCK_M, 2 * WIDE_BLOCK_OUT),
                    )
                })
                .transpose()?;
            // SAFETY: GateUpGegluParams matches the kernels' parameter (same header), and
            // GemmTensorMaps the TMA kernel's second one, its maps describing x and w with these
            // shapes; every buffer covers what the kernel touches for these shapes (checked
            // above), the shape divides the kernel's tiles (check_shape), the wgmma kernels only
            // run on sm_90 (load), and the guards keep the buffers alive and ordered on the
            // stream until the launch is enqueued.
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
        let define = |name: &str| super::super::params_define(name) as usize;
        assert_eq!(define("GEGLU_GEMM_BLOCK_M"), BLOCK_M);
        assert_eq!(define("GEGLU_GEMM_BLOCK_OUT"), BLOCK_OUT);
        assert_eq!(define("GEGLU_GEMM_BLOCK_K"), BLOCK_K);
        assert_eq!(define("GEGLU_GEMM_STAGES"), STAGES);
        assert_eq!(define("GEGLU_GEMM_THREADS"), THREADS);
        assert_eq!(define("GEGLU_GEMM_SMEM_BYTES"), SMEM_BYTES);
        assert_eq!(SMEM_BYTES, STAGES * (BLOCK_M + 2 * BLOCK_OUT) * BLOCK_K * 2);
        assert_eq!(define("GEGLU_WGMMA_THREADS"), WGMMA_THREADS);
        assert_eq!(define("GEGLU_WGMMA_SMEM_BYTES"), WGMMA_SMEM_BYTES);
        assert_eq!(define("GEGLU_WIDE_BLOCK_OUT"), WIDE_BLOCK_OUT);
        assert_eq!(define("GEGLU_WIDE_STAGES"), WIDE_STAGES);
        assert_eq!(define("GEGLU_WIDE_SMEM_BYTES"), WIDE_SMEM_BYTES);
        assert_eq!(
            WIDE_SMEM_BYTES,
            WIDE_STAGES * (BLOCK_M + 2 * WIDE_BLOCK_OUT) * BLOCK_K * 2 + 1024
        );
        assert_eq!(WIDE_BLOCK_OUT % BLOCK_OUT, 0, "whole interleave blocks");
        assert_eq!(define("GEGLU_TMA_THREADS"), TMA_THREADS);
        assert_eq!(define("GEGLU_TMA_STAGES"), TMA_STAGES);
        assert_eq!(define("GEGLU_TMA_SMEM_BYTES"), TMA_SMEM_BYTES);
        assert_eq!(
            TMA_SMEM_BYTES,
            TMA_STAGES * (BLOCK_M + 2 * WIDE_BLOCK_OUT) * BLOCK_K * 2 + 1024
        );
    }

    #[test]
    fn interleaving_alternates_gate_and_up_blocks() {
        // intermediate 2 blocks of BLOCK_OUT rows, hidden 2: row i of gate is (i, -1),
        // row i of up is (i, 1).
        let (inter, hidden) = (2 * BLOCK_OUT, 2);
        let mut gate_up = Vec::new();
        for sign in [-1i32, 1] {
            for i in 0..inter as i32 {
                gate_up.extend([i, sign]);
            }
        }
        let out = interleave_gate_up(&gate_up, inter, hidden);
        assert_eq!(out.len(), gate_up.len());
        for (r, row) in out.chunks(hidden).enumerate() {
            let block = r / (2 * BLOCK_OUT);
            let within = r % (2 * BLOCK_OUT);
            let (output, sign) = if within < BLOCK_OUT {
                (block * BLOCK_OUT + within, -1)
            } else {
                (block * BLOCK_OUT + within - BLOCK_OUT, 1)
            };
            assert_eq!(row, [output as i32, sign], "interleaved row {r}");
        }
    }

    #[test]
    fn shape_check_refuses_what_the_tiles_do_not_divide() {
        for kernel in [
            MlpKernel::Fused,
            MlpKernel::Wgmma,
            MlpKernel::WgmmaWide,
            MlpKernel::Tma,
        ] {
            assert!(kernel.check_shape(768, 1152).is_ok());
            assert!(kernel.check_shape(768 + 32, 1152).is_err());
            assert!(kernel.check_shape(768, 1152 + 32).is_err());
            assert!(kernel.check_shape(0, 1152).is_err());
        }
        assert!(MlpKernel::Wgmma.check_shape(768, 1152 + 64).is_ok());
        let err = MlpKernel::WgmmaWide
            .check_shape(768, 1152 + 64)
            .unwrap_err()
            .to_string();
        assert!(err.contains(WIDE_KERNEL) && err.contains("128"), "{err}");
    }

    #[test]
    fn the_variable_selects_the_kernel() {
        for cc in [(8, 0), (9, 0)] {
            assert_eq!(MlpKernel::default_on(cc), MlpKernel::Cublas);
        }
        assert_eq!(MlpKernel::parse("cublas").unwrap(), MlpKernel::Cublas);
        assert_eq!(MlpKernel::parse("fused").unwrap(), MlpKernel::Fused);
        assert_eq!(MlpKernel::parse("wgmma").unwrap(), MlpKernel::Wgmma);
        assert_eq!(
            MlpKernel::parse("wgmma-wide").unwrap(),
            MlpKernel::WgmmaWide
        );
    }

    #[test]
    fn only_hopper_runs_the_wgmma_kernel() {
        for cc in [(8, 0), (8, 6), (8, 9), (9, 0), (10, 0), (12, 0)] {
            assert!(MlpKernel::Cublas.runs_on(cc) && MlpKernel::Fused.runs_on(cc));
            assert_eq!(MlpKernel::Wgmma.runs_on(cc), cc == (9, 0), "{cc:?}");
            assert_eq!(MlpKernel::WgmmaWide.runs_on(cc), cc == (9, 0), "{cc:?}");
        }
        let err = MlpKernel::parse("fast").unwrap_err().to_string();
        assert!(
            err.contains("GEMMA_EMBED_MLP") && err.contains("fast"),
            "{err}"
        );
    }

    /// Both fused kernels' index math (stage copies, swizzle, ldmatrix lanes, mma fragments,
    /// wgmma descriptors and accumulator layout, gate/up pairing in the epilogues) against
    /// direct products, in the warp emulator `kernels/tests/gate_up_geglu_fragments.c`.
    #[test]
    fn fused_fragment_math_matches_direct_products() {
        super::super::run_fragment_emulator("gate_up_geglu_fragments.c");
    }
}
