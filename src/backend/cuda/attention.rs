//! Attention over packed variable-length sequences: the host half of `kernels/attention.cu`.
//!
//! - The compile-time shape of the kernels (mirrors of the `ATTENTION_*` defines in
//!   `kernels/params.h`) and its check against the [`ModelConfig`].
//! - The flash kernels' work list: one tile per `FLASH_BLOCK_M` (`TMA_BLOCK_M` for
//!   `attention_flash_tma`) packed rows of one sequence (packed row `R = position * GROUP +
//!   head`), longest first.
//! - The key-range and masking rules of `kernels/attention.cuh`, mirrored here so the host
//!   tests can model the kernel's tiled loop.
//! - Typed launch wrappers (with the `gemma_cuda_kernels` cfg) and the GPU check entries.

use super::options::KernelChoice;
use super::RegisterHandOver;
use crate::model::ModelConfig;
use crate::{Error, Result};

/// `ATTENTION_HEAD_DIM`: head width the kernels are compiled for.
pub const HEAD_DIM: usize = 256;
/// `ATTENTION_GROUP`: query heads per K/V head (multi-query attention needs one K/V head).
pub const GROUP: usize = 3;
/// `ATTENTION_REFERENCE_WARPS`: warps per block of `attention_reference`, one per packed row.
pub const REFERENCE_WARPS: usize = 4;
/// `ATTENTION_FLASH_BLOCK_M`: packed rows per flash tile.
pub const FLASH_BLOCK_M: usize = 64;
/// `ATTENTION_FLASH_BLOCK_N`: keys per flash key block.
pub const FLASH_BLOCK_N: usize = 64;
/// `ATTENTION_FLASH_THREADS`: threads per flash CTA.
pub const FLASH_THREADS: usize = 128;
/// `ATTENTION_FLASH_SMEM_BYTES`: dynamic shared memory per flash CTA.
pub const FLASH_SMEM_BYTES: usize = 98304;
/// `ATTENTION_FLASH_WGMMA_SMEM_BYTES`: the same plus 1024 bytes to align the wgmma operands.
pub const FLASH_WGMMA_SMEM_BYTES: usize = FLASH_SMEM_BYTES + 1024;
/// `ATTENTION_TMA_BLOCK_M`: packed rows per `attention_flash_tma` tile (two warpgroups of 64).
pub const TMA_BLOCK_M: usize = 128;
/// `ATTENTION_TMA_THREADS`: two consumer warpgroups and a producer warpgroup.
pub const TMA_THREADS: usize = 384;
/// `ATTENTION_TMA_STAGES`: K and V blocks in flight.
pub const TMA_STAGES: usize = 2;
/// `ATTENTION_TMA_SMEM_BYTES`: the Q tile and the K and V stages, plus 1024 bytes to align.
pub const TMA_SMEM_BYTES: usize =
    (TMA_BLOCK_M + 2 * TMA_STAGES * FLASH_BLOCK_N) * HEAD_DIM * 2 + 1024;
/// `ATTENTION_TMA_PRODUCER_REGS` / `ATTENTION_TMA_CONSUMER_REGS`: registers per thread of the
/// producer and the consumer warpgroups after `setmaxnreg`.
pub const TMA_PRODUCER_REGS: usize = 24;
pub const TMA_CONSUMER_REGS: usize = 240;
/// The TMA kernels' register hand-over.
pub const TMA_HAND_OVER: RegisterHandOver = RegisterHandOver {
    threads: TMA_THREADS,
    producer: TMA_PRODUCER_REGS,
    consumer: TMA_CONSUMER_REGS,
};

/// Kernel names in the embedded modules.
pub const REFERENCE_KERNEL: &str = "attention_reference";
pub const FLASH_KERNEL: &str = "attention_flash";
pub const FLASH_WGMMA_KERNEL: &str = "attention_flash_wgmma";
pub const FLASH_TMA_KERNEL: &str = "attention_flash_tma";
pub const FLASH_TMA_FREE_KERNEL: &str = "attention_flash_tma_free";

/// The kernels have the head shape baked in: refuse a model that does not match it.
pub fn check_config(config: &ModelConfig) -> Result<()> {
    let mismatch = |what: String| {
        Err(Error::Cuda(format!(
            "the attention kernels are compiled for head_dim {HEAD_DIM}, 1 key/value head and \
             {GROUP} query heads per key/value head; the model has {what}"
        )))
    };
    if config.head_dim != HEAD_DIM {
        return mismatch(format!("head_dim {}", config.head_dim));
    }
    if config.num_kv_heads != 1 || config.num_heads != GROUP {
        return mismatch(format!(
            "{} query heads and {} key/value heads",
            config.num_heads, config.num_kv_heads
        ));
    }
    Ok(())
}

/// Lengths the kernels must get right, for the host models and the GPU check alike: tile edges
/// at 64 packed rows (21/22, 42/43) and 128 (42/43, 85/86), key block edges, window edges
/// (255..258, 511..514) and the longest sequences (9123 tokens packed in one batch).
#[cfg(any(test, gemma_cuda_kernels))]
const EDGE_LENGTHS: &[u32] = &[
    1, 2, 3, 15, 16, 17, 21, 22, 42, 43, 63, 64, 65, 85, 86, 127, 128, 129, 255, 256, 257, 258,
    511, 512, 513, 514, 1023, 2047, 2048,
];

/// The sequence offsets of sequences of these lengths, packed back to back.
#[cfg(any(test, gemma_cuda_kernels))]
fn offsets(lengths: &[u32]) -> Vec<u32> {
    let mut offsets = vec![0];
    for &len in lengths {
        offsets.push(offsets.last().expect("starts with 0") + len);
    }
    offsets
}

/// Bound on the window radius and on the packed rows (tokens * GROUP) of one launch, so that
/// the kernels' `int` index math (`p_hi + radius + 1`, `len * GROUP`) cannot overflow. Any
/// radius at least the longest sequence is full attention, so clamping it changes nothing.
const KERNEL_INT_LIMIT: usize = 1 << 29;

/// The kernels' `window_radius` parameter: the radius (clamped to an equivalent one that fits
/// the kernels' 32-bit arithmetic), or `ATTENTION_NO_WINDOW` (-1) for full attention.
pub fn window_param(window: Option<usize>) -> i32 {
    match window {
        None => -1,
        Some(r) => r.min(KERNEL_INT_LIMIT) as i32,
    }
}

/// Keys `[begin, end)` of one sequence (positions inside the sequence).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyRange {
    pub begin: usize,
    pub end: usize,
}

/// `attn_key_range`: the keys any query position in `[p_lo, p_hi]` of a sequence of length
/// `len` may attend to, i.e. the union of their windows clipped to the sequence.
pub fn key_range(p_lo: usize, p_hi: usize, len: usize, window: Option<usize>) -> KeyRange {
    match window {
        None => KeyRange { begin: 0, end: len },
        Some(r) => KeyRange {
            begin: p_lo.saturating_sub(r),
            end: (p_hi + r + 1).min(len),
        },
    }
}

/// `attn_key_allowed`: may the query at `pos` attend to `key` (keys at or past `key_end` are
/// outside the sequence or outside every window of the tile)?
pub fn key_allowed(pos: usize, key: usize, key_end: usize, window: Option<usize>) -> bool {
    key < key_end && window.is_none_or(|r| pos.abs_diff(key) <= r)
}

/// `attn_block_needs_mask`: does the key block `[kb, kb + block_n)` hold a (query, key) pair,
/// for queries in `[p_lo, p_hi]`, that [`key_allowed`] rejects?
pub fn block_needs_mask(
    kb: usize,
    block_n: usize,
    key_end: usize,
    p_lo: usize,
    p_hi: usize,
    window: Option<usize>,
) -> bool {
    if kb + block_n > key_end {
        return true;
    }
    match window {
        None => false,
        // Signed as in the kernel: p_hi - r may be negative.
        Some(r) => (kb as i64) < p_hi as i64 - r as i64 || kb + block_n - 1 > p_lo + r,
    }
}

/// One tile of a flash kernel: packed rows `[first_row, first_row + tile_rows)` of sequence
/// `seq`, clipped to the sequence (`tile_rows` the kernel's, [`AttentionKernel::tile_rows`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tile {
    pub seq: u32,
    pub first_row: u32,
}

/// What a tile covers, computed exactly as the kernel does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TileGeometry {
    /// Valid packed rows of the tile (`<= tile_rows`).
    pub rows: usize,
    /// First and last query position of the valid rows.
    pub p_lo: usize,
    pub p_hi: usize,
    pub keys: KeyRange,
    /// Key blocks of `FLASH_BLOCK_N` from `keys.begin` (the last one may be partial).
    pub num_blocks: usize,
}

impl TileGeometry {
    pub fn new(len: usize, first_row: usize, window: Option<usize>, tile_rows: usize) -> Self {
        let rows = tile_rows.min(len * GROUP - first_row);
        let p_lo = first_row / GROUP;
        let p_hi = (first_row + rows - 1) / GROUP;
        let keys = key_range(p_lo, p_hi, len, window);
        TileGeometry {
            rows,
            p_lo,
            p_hi,
            keys,
            num_blocks: (keys.end - keys.begin).div_ceil(FLASH_BLOCK_N),
        }
    }
}

/// A flash kernel's work list for one window kind and tiles of `tile_rows` packed rows: every
/// packed row of every sequence in exactly one tile, tiles ordered by descending number of key
/// blocks (longest first, so the tail of the grid is short tiles), ties in sequence order.
pub fn build_work_list(seq_offsets: &[u32], window: Option<usize>, tile_rows: usize) -> Vec<Tile> {
    let mut tiles: Vec<(usize, Tile)> = Vec::new();
    for (seq, w) in seq_offsets.windows(2).enumerate() {
        let len = w[1].saturating_sub(w[0]) as usize;
        for first_row in (0..len * GROUP).step_by(tile_rows) {
            let cost = TileGeometry::new(len, first_row, window, tile_rows).num_blocks;
            let tile = Tile {
                seq: seq as u32,
                first_row: first_row as u32,
            };
            tiles.push((cost, tile));
        }
    }
    tiles.sort_by_key(|&(cost, _)| std::cmp::Reverse(cost));
    tiles.into_iter().map(|(_, tile)| tile).collect()
}

/// The work list as the kernel reads it: `[num_tiles][2]` = (sequence, first packed row).
pub fn flatten_work_list(tiles: &[Tile]) -> Vec<u32> {
    tiles.iter().flat_map(|t| [t.seq, t.first_row]).collect()
}

/// Number of (query position, key) pairs inside the mask, summed over the sequences; the
/// attention FLOPs are `4 * HEAD_DIM * GROUP * allowed_pairs` (Q K^T and P V, 2 per MAC).
pub fn allowed_pairs(seq_offsets: &[u32], window: Option<usize>) -> u64 {
    seq_offsets
        .windows(2)
        .map(|w| {
            let len = w[1].saturating_sub(w[0]) as usize;
            (0..len)
                .map(|i| {
                    let keys = key_range(i, i, len, window);
                    (keys.end - keys.begin) as u64
                })
                .sum::<u64>()
        })
        .sum()
}

/// Which attention kernel the CUDA backend runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionKernel {
    /// `attention_flash`: tensor cores, windowed key blocks (the default off sm_90).
    Flash,
    /// `attention_reference`: one warp per row, the simple fallback.
    Reference,
    /// `attention_flash_wgmma`: the flash kernel with Q K^T and P V on Hopper's warpgroup MMA
    /// (sm_90 devices only, and their default: 1-8 % faster end to end on an H200).
    FlashWgmma,
    /// `attention_flash_tma`: the wgmma kernel on 128-row tiles, persistent, with TMA copies
    /// and the two warpgroups' products alternating (sm_90 devices only; a candidate).
    FlashTma,
    /// `attention_flash_tma_free`: the same with the two warpgroups running free, without
    /// turns (sm_90 devices only; a candidate).
    FlashTmaFree,
}

/// `GEMMA_EMBED_ATTENTION=flash`, `reference` (the fallback kernel), `flash-wgmma`, `flash-tma`
/// or `flash-tma-free`; unset: `flash-wgmma` on sm_90, `flash` elsewhere.
impl KernelChoice for AttentionKernel {
    const VAR: &'static str = "GEMMA_EMBED_ATTENTION";
    const CHOICES: &'static [(&'static str, Self)] = &[
        ("flash", Self::Flash),
        ("reference", Self::Reference),
        ("flash-wgmma", Self::FlashWgmma),
        ("flash-tma", Self::FlashTma),
        ("flash-tma-free", Self::FlashTmaFree),
    ];
    const SM90_DEFAULT: Self = Self::FlashWgmma;
    const SM90_ONLY: &'static [Self] = &[Self::FlashWgmma, Self::FlashTma, Self::FlashTmaFree];
}

impl AttentionKernel {
    pub fn name(self) -> &'static str {
        match self {
            Self::Flash => FLASH_KERNEL,
            Self::Reference => REFERENCE_KERNEL,
            Self::FlashWgmma => FLASH_WGMMA_KERNEL,
            Self::FlashTma => FLASH_TMA_KERNEL,
            Self::FlashTmaFree => FLASH_TMA_FREE_KERNEL,
        }
    }

    /// The persistent TMA kernels: 128-row tiles, a grid of at most one CTA per multiprocessor,
    /// tensor maps as a second parameter.
    pub fn is_tma(self) -> bool {
        matches!(self, Self::FlashTma | Self::FlashTmaFree)
    }

    /// Packed rows per work-list tile (the reference kernel takes none; it gets the flash
    /// kernels' list).
    pub fn tile_rows(self) -> usize {
        if self.is_tma() {
            TMA_BLOCK_M
        } else {
            FLASH_BLOCK_M
        }
    }
}

#[cfg(gemma_cuda_kernels)]
pub use device::{check_attention, Attention, AttentionPlan};

#[cfg(gemma_cuda_kernels)]
mod device {
    use std::cell::Cell;
    use std::sync::Arc;

    use cudarc::driver::{
        CudaFunction, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, LaunchConfig,
    };

    use super::*;
    use crate::backend::cuda::device::{driver_err, Device};
    use crate::backend::cuda::params::{AttentionParams, AttentionTensorMaps};
    use crate::backend::cuda::tma;

    // SAFETY: bindgen's `#[repr(C)]` copy of `AttentionParams` from kernels/params.h: device
    // addresses and scalars only, passed to the kernels by value.
    unsafe impl cudarc::driver::DeviceRepr for AttentionParams {}

    /// The attention kernels the device runs, resolved from the embedded modules and
    /// configured.
    pub struct Attention {
        reference: CudaFunction,
        flash: CudaFunction,
        /// These three on sm_90 devices only; each TMA kernel, or why it cannot run.
        flash_wgmma: Option<CudaFunction>,
        flash_tma: Option<std::result::Result<CudaFunction, String>>,
        flash_tma_free: Option<std::result::Result<CudaFunction, String>>,
        /// The persistent kernel's grid: one CTA per multiprocessor at most.
        multiprocessors: u32,
    }

    /// A TMA kernel resolved with its shared memory, or why it cannot run (its launch's error,
    /// so that a candidate's problem never stops the other kernels from loading): the driver's
    /// refusal, or a register count its setmaxnreg hand-over would hang on.
    fn tma_function(
        dev: &Device,
        kernel: AttentionKernel,
    ) -> std::result::Result<CudaFunction, String> {
        let name = kernel.name();
        let func = flash_function(dev, name, TMA_SMEM_BYTES).map_err(|e| e.to_string())?;
        tma::check_hand_over(&func, name, TMA_HAND_OVER, "unset GEMMA_EMBED_ATTENTION")?;
        Ok(func)
    }

    /// Why an sm_90 kernel was not resolved on this device.
    fn sm90_only(kernel: AttentionKernel) -> Error {
        Error::Cuda(format!("{} runs on sm_90 devices only", kernel.name()))
    }

    /// A TMA kernel [`Attention::for_device`] resolved: the function, or why `kernel` cannot
    /// run (not an sm_90 device, or [`tma_function`]'s refusal).
    fn loaded_tma(
        slot: &Option<std::result::Result<CudaFunction, String>>,
        kernel: AttentionKernel,
    ) -> Result<&CudaFunction> {
        slot.as_ref()
            .ok_or_else(|| sm90_only(kernel))?
            .as_ref()
            .map_err(|why| Error::Cuda(why.clone()))
    }

    /// `name` resolved and allowed `smem_bytes` of dynamic shared memory.
    fn flash_function(dev: &Device, name: &str, smem_bytes: usize) -> Result<CudaFunction> {
        dev.function_with_shared_memory(name, smem_bytes, "set GEMMA_EMBED_ATTENTION=reference")
    }

    impl Attention {
        /// Resolve and prepare every attention kernel `dev` runs.
        pub fn for_device(dev: &Device) -> Result<Self> {
            let flash_wgmma = AttentionKernel::FlashWgmma
                .runs_on(dev.info.compute_capability)
                .then(|| flash_function(dev, FLASH_WGMMA_KERNEL, FLASH_WGMMA_SMEM_BYTES))
                .transpose()?;
            let tma = |kernel: AttentionKernel| {
                kernel
                    .runs_on(dev.info.compute_capability)
                    .then(|| tma_function(dev, kernel))
            };
            Ok(Self {
                reference: dev.function(REFERENCE_KERNEL)?,
                flash: flash_function(dev, FLASH_KERNEL, FLASH_SMEM_BYTES)?,
                flash_wgmma,
                flash_tma: tma(AttentionKernel::FlashTma),
                flash_tma_free: tma(AttentionKernel::FlashTmaFree),
                multiprocessors: dev.multiprocessors,
            })
        }

        /// Check the model against the compiled head shape and `kernel` against the device,
        /// then resolve and prepare the kernels.
        pub fn load(dev: &Device, config: &ModelConfig, kernel: AttentionKernel) -> Result<Self> {
            check_config(config)?;
            kernel.require_device(&dev.info, kernel.name())?;
            Self::for_device(dev)
        }

        /// `out = attention(q, k, v)` over the batch of `plan`: q and out
        /// `[num_tokens, GROUP, HEAD_DIM]`, k and v `[num_tokens, HEAD_DIM]`, bf16 bits.
        /// `window` is `Some(radius)` (must be the plan's sliding radius) or `None` (full).
        #[allow(clippy::too_many_arguments)]
        pub fn launch(
            &self,
            stream: &CudaStream,
            kernel: AttentionKernel,
            plan: &AttentionPlan,
            window: Option<usize>,
            softmax_scale: f32,
            (q, k, v): (&CudaSlice<u16>, &CudaSlice<u16>, &CudaSlice<u16>),
            out: &mut CudaSlice<u16>,
        ) -> Result<()> {
            let n = plan.num_tokens;
            if n == 0 {
                return Ok(());
            }
            if n * GROUP > KERNEL_INT_LIMIT {
                return Err(Error::Cuda(format!(
                    "attention over {n} tokens exceeds the kernels' {} packed rows",
                    KERNEL_INT_LIMIT
                )));
            }
            if q.len() < n * GROUP * HEAD_DIM
                || k.len() < n * HEAD_DIM
                || v.len() < n * HEAD_DIM
                || out.len() < n * GROUP * HEAD_DIM
            {
                return Err(Error::Cuda(format!(
                    "attention over {n} tokens: buffers too small (q {}, k {}, v {}, out {})",
                    q.len(),
                    k.len(),
                    v.len(),
                    out.len()
                )));
            }
            let tiles = plan.tiles(window, kernel.tile_rows())?;
            let (q_ptr, _q) = q.device_ptr(stream);
            let (k_ptr, _k) = k.device_ptr(stream);
            let (v_ptr, _v) = v.device_ptr(stream);
            let (o_ptr, _o) = out.device_ptr_mut(stream);
            let (offsets_ptr, _offsets) = plan.seq_offsets.device_ptr(stream);
            let (tiles_ptr, _tiles) = tiles.list.device_ptr(stream);
            let params = AttentionParams {
                q: q_ptr as *const u16,
                k: k_ptr as *const u16,
                v: v_ptr as *const u16,
                o: o_ptr as *mut u16,
                seq_offsets: offsets_ptr as *const u32,
                tiles: tiles_ptr as *const u32,
                num_tokens: n as u32,
                num_seqs: plan.num_seqs as u32,
                num_tiles: tiles.count as u32,
                window_radius: window_param(window),
                softmax_scale,
            };
            let flash = |func, smem_bytes: usize, grid: usize, threads: usize| {
                let cfg = LaunchConfig {
                    grid_dim: (grid as u32, 1, 1),
                    block_dim: (threads as u32, 1, 1),
                    shared_mem_bytes: smem_bytes as u32,
                };
                (func, cfg)
            };
            let (func, cfg) = match kernel {
                AttentionKernel::Reference => (
                    &self.reference,
                    LaunchConfig {
                        grid_dim: ((n * GROUP).div_ceil(REFERENCE_WARPS) as u32, 1, 1),
                        block_dim: (REFERENCE_WARPS as u32 * 32, 1, 1),
                        shared_mem_bytes: 0,
                    },
                ),
                AttentionKernel::Flash => {
                    flash(&self.flash, FLASH_SMEM_BYTES, tiles.count, FLASH_THREADS)
                }
                AttentionKernel::FlashWgmma => flash(
                    self.flash_wgmma.as_ref().ok_or_else(|| sm90_only(kernel))?,
                    FLASH_WGMMA_SMEM_BYTES,
                    tiles.count,
                    FLASH_THREADS,
                ),
                AttentionKernel::FlashTma | AttentionKernel::FlashTmaFree => {
                    let slot = if kernel == AttentionKernel::FlashTma {
                        &self.flash_tma
                    } else {
                        &self.flash_tma_free
                    };
                    // Persistent: one CTA per multiprocessor at most.
                    let grid = tiles.count.min(self.multiprocessors as usize);
                    flash(loaded_tma(slot, kernel)?, TMA_SMEM_BYTES, grid, TMA_THREADS)
                }
            };
            let maps = kernel
                .is_tma()
                .then(|| plan.tensor_maps((q_ptr, k_ptr, v_ptr)))
                .transpose()?;
            // SAFETY: AttentionParams matches the kernels' parameter (same header), and
            // AttentionTensorMaps the TMA kernel's second one, its maps describing q, k and v
            // of these num_tokens rows; q, k, v, out hold at least num_tokens rows (checked
            // above), seq_offsets and the tile list (of the kernel's tile height) were built
            // together from one batch by AttentionPlan::new, the sm_90 kernels only run on
            // sm_90 devices (for_device resolves them there only), and the guards keep every
            // buffer alive and ordered on `stream` until the launch is enqueued.
            unsafe { tma::launch_with_maps(stream, func, cfg, &params, maps.as_ref()) }
                .map_err(driver_err(format!("launch {}", kernel.name())))?;
            Ok(())
        }
    }

    /// A work list on the device.
    struct DeviceTiles {
        list: CudaSlice<u32>,
        count: usize,
    }

    /// Device addresses of an attention call's q, k and v.
    type QkvAddresses = (u64, u64, u64);

    /// The work lists of both layer kinds for tiles of `tile_rows` packed rows.
    struct WorkLists {
        tile_rows: usize,
        sliding: DeviceTiles,
        full: DeviceTiles,
    }

    /// Per-batch attention metadata on the device: the sequence offsets and the flash work
    /// lists of both layer kinds for each tile height the kernels use, uploaded once and used
    /// by every layer.
    pub struct AttentionPlan {
        seq_offsets: CudaSlice<u32>,
        work_lists: Vec<WorkLists>,
        /// The TMA kernels' maps of the q, k, v buffers last launched on, with their addresses:
        /// every layer of a batch attends over the same buffers, so they are encoded once.
        tensor_maps: Cell<Option<(QkvAddresses, AttentionTensorMaps)>>,
        window_radius: usize,
        num_tokens: usize,
        num_seqs: usize,
    }

    impl AttentionPlan {
        /// `seq_offsets` as in [`crate::backend::Batch`] (validated: non-decreasing from 0), for
        /// launches of `kernels`.
        pub fn new(
            stream: &Arc<CudaStream>,
            seq_offsets: &[u32],
            window_radius: usize,
            kernels: &[AttentionKernel],
        ) -> Result<Self> {
            let num_tokens = seq_offsets.last().copied().unwrap_or(0) as usize;
            let num_seqs = seq_offsets.len().saturating_sub(1);
            let upload = |data: &[u32], what: &str| {
                // One element at least: an empty batch still gets valid (unused) buffers.
                let data = if data.is_empty() { &[0u32][..] } else { data };
                stream
                    .clone_htod(data)
                    .map_err(driver_err(format!("upload {what}")))
            };
            let tiles = |window: Option<usize>, tile_rows: usize, what: &str| {
                let tiles = build_work_list(seq_offsets, window, tile_rows);
                Ok::<_, Error>(DeviceTiles {
                    list: upload(&flatten_work_list(&tiles), what)?,
                    count: tiles.len(),
                })
            };
            let mut heights: Vec<usize> = kernels.iter().map(|k| k.tile_rows()).collect();
            heights.sort_unstable();
            heights.dedup();
            let work_lists = heights
                .into_iter()
                .map(|tile_rows| {
                    Ok(WorkLists {
                        tile_rows,
                        sliding: tiles(
                            Some(window_radius),
                            tile_rows,
                            "sliding attention work list",
                        )?,
                        full: tiles(None, tile_rows, "full attention work list")?,
                    })
                })
                .collect::<Result<_>>()?;
            Ok(Self {
                seq_offsets: upload(seq_offsets, "attention sequence offsets")?,
                work_lists,
                tensor_maps: Cell::new(None),
                window_radius,
                num_tokens,
                num_seqs,
            })
        }

        /// The TMA kernels' maps of the batch's q, k and v at these device addresses.
        fn tensor_maps(&self, buffers: QkvAddresses) -> Result<AttentionTensorMaps> {
            if let Some((cached, maps)) = self.tensor_maps.get() {
                if cached == buffers {
                    return Ok(maps);
                }
            }
            let maps = tma::attention_tensor_maps(buffers, self.num_tokens)?;
            self.tensor_maps.set(Some((buffers, maps)));
            Ok(maps)
        }

        fn tiles(&self, window: Option<usize>, tile_rows: usize) -> Result<&DeviceTiles> {
            let lists = self
                .work_lists
                .iter()
                .find(|l| l.tile_rows == tile_rows)
                .ok_or_else(|| {
                    Error::Cuda(format!(
                        "attention plan built without work lists of {tile_rows}-row tiles"
                    ))
                })?;
            match window {
                None => Ok(&lists.full),
                Some(r) if r == self.window_radius => Ok(&lists.sliding),
                Some(r) => Err(Error::Cuda(format!(
                    "attention plan built for window radius {}, asked for {r}",
                    self.window_radius
                ))),
            }
        }
    }

    pub use check::check_attention;

    mod check {
        use super::*;
        use crate::backend::cpu::ops::{attention as cpu_attention, AttentionShape};
        use crate::backend::cuda::check::{download, poisoned, time_launches, timing};
        use crate::backend::cuda::KernelCheck;
        use crate::rng::SplitMix64;

        /// Sliding window radius of EmbeddingGemma-300m (config.json 512 -> |i - j| <= 256).
        const CHECK_WINDOW: usize = 256;
        const BF16_POISON: u16 = 0x7fc0;
        /// Q amplitude: with K in [-1, 1] the scores spread with a standard deviation of about
        /// 2.3, so the running maximum moves and the rescaling is exercised.
        const Q_AMPLITUDE: f32 = 0.5;
        /// The output is one bf16 rounding (<= 2^-9 relative) of a convex combination of V
        /// rows, and the flash kernel also rounds P to bf16 for P V (<= 2^-9 relative per
        /// weight, while the row sum uses unrounded weights): at most about 2 * 2^-9 * max|v|
        /// from exact attention. 2^-7 * max|v| (max|v| = 1) leaves a factor 2; the relative L2
        /// error of these random cases is about 2e-3 in the host model of the flash loop.
        const MAX_ABS_TOL: f64 = 1.0 / 128.0;
        const REL_L2_TOL: f64 = 1e-2;

        fn to_f32(bits: &[u16]) -> Vec<f32> {
            bits.iter()
                .map(|&b| half::bf16::from_bits(b).to_f32())
                .collect()
        }

        /// `kernels` against the CPU attention (`cpu::ops::attention`, f32 on the same bf16
        /// inputs) for both layer kinds, on the packed edge-length batch (accuracy only) and on
        /// 32 x 512 and 8 x 2048 tokens (accuracy and timing).
        pub fn check_attention(
            dev: &Device,
            kernels: &[AttentionKernel],
            rng: &mut SplitMix64,
        ) -> Result<Vec<KernelCheck>> {
            let attention = Attention::for_device(dev)?;
            let cases: [(&str, Vec<u32>, bool); 3] = [
                ("edge lengths", EDGE_LENGTHS.to_vec(), false),
                ("32x512", vec![512; 32], true),
                ("8x2048", vec![2048; 8], true),
            ];
            let mut checks = Vec::new();
            for (label, lengths, timed) in cases {
                let seq_offsets = offsets(&lengths);
                let n = *seq_offsets.last().expect("non-empty") as usize;
                let q_bits = rng.bf16s(n * GROUP * HEAD_DIM, -Q_AMPLITUDE, Q_AMPLITUDE);
                let k_bits = rng.bf16s(n * HEAD_DIM, -1.0, 1.0);
                let v_bits = rng.bf16s(n * HEAD_DIM, -1.0, 1.0);
                let (q32, k32, v32) = (to_f32(&q_bits), to_f32(&k_bits), to_f32(&v_bits));
                let q = dev.upload(&q_bits, "attention q")?;
                let k = dev.upload(&k_bits, "attention k")?;
                let v = dev.upload(&v_bits, "attention v")?;
                let plan = AttentionPlan::new(&dev.stream, &seq_offsets, CHECK_WINDOW, kernels)?;
                for window in [Some(CHECK_WINDOW), None] {
                    let mut reference = vec![0.0f32; n * GROUP * HEAD_DIM];
                    let shape = AttentionShape {
                        num_heads: GROUP,
                        num_kv_heads: 1,
                        head_dim: HEAD_DIM,
                        window,
                        scale: 1.0,
                    };
                    cpu_attention(&q32, &k32, &v32, &seq_offsets, shape, &mut reference);
                    let pairs = allowed_pairs(&seq_offsets, window);
                    let flops = 4.0 * (HEAD_DIM * GROUP) as f64 * pairs as f64;
                    let bytes = (n * (2 * GROUP + 2) * HEAD_DIM * 2) as f64;
                    let window_label = window.map_or("full".to_string(), |r| format!("window={r}"));
                    let case = format!("{label} tokens={n} seqs={} {window_label}", lengths.len());
                    for &kernel in kernels {
                        let mut out =
                            poisoned(dev, n * GROUP * HEAD_DIM, BF16_POISON, "attention out")?;
                        let run = |out: &mut CudaSlice<u16>| {
                            attention.launch(
                                &dev.stream,
                                kernel,
                                &plan,
                                window,
                                1.0,
                                (&q, &k, &v),
                                out,
                            )
                        };
                        run(&mut out)?;
                        let got =
                            to_f32(&download(dev, &out, n * GROUP * HEAD_DIM, "attention out")?);
                        let mut check = KernelCheck::compare_matrix(
                            kernel.name(),
                            case.clone(),
                            &got,
                            &reference,
                            HEAD_DIM,
                            (MAX_ABS_TOL, REL_L2_TOL),
                        );
                        if timed {
                            let median_us = time_launches(dev, || run(&mut out))?;
                            check =
                                check.with_timing(timing(case.clone(), median_us, bytes, flops));
                        }
                        checks.push(check);
                    }
                }
            }
            Ok(checks)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;
    use half::bf16;

    /// The tile heights of the flash kernels: attention_flash(_wgmma) and attention_flash_tma.
    const TILE_HEIGHTS: [usize; 2] = [FLASH_BLOCK_M, TMA_BLOCK_M];

    #[test]
    fn attention_kernels_parse_and_know_where_they_run() {
        assert_eq!(AttentionKernel::default_on((8, 0)), AttentionKernel::Flash);
        assert_eq!(
            AttentionKernel::default_on((9, 0)),
            AttentionKernel::FlashWgmma
        );
        for kernel in [
            AttentionKernel::Flash,
            AttentionKernel::Reference,
            AttentionKernel::FlashWgmma,
            AttentionKernel::FlashTma,
            AttentionKernel::FlashTmaFree,
        ] {
            let (name, sm90_only) = match kernel {
                AttentionKernel::Flash => ("flash", false),
                AttentionKernel::Reference => ("reference", false),
                AttentionKernel::FlashWgmma => ("flash-wgmma", true),
                AttentionKernel::FlashTma => ("flash-tma", true),
                AttentionKernel::FlashTmaFree => ("flash-tma-free", true),
            };
            assert_eq!(AttentionKernel::parse(name).unwrap(), kernel);
            assert!(kernel.runs_on((9, 0)));
            assert_eq!(kernel.runs_on((8, 0)), !sm90_only);
        }
        assert_eq!(AttentionKernel::FlashTma.tile_rows(), TMA_BLOCK_M);
        assert_eq!(AttentionKernel::FlashTmaFree.tile_rows(), TMA_BLOCK_M);
        assert!(AttentionKernel::FlashTmaFree.is_tma() && !AttentionKernel::FlashWgmma.is_tma());
        assert_eq!(AttentionKernel::FlashWgmma.tile_rows(), FLASH_BLOCK_M);
        let err = AttentionKernel::parse("wgmma").unwrap_err().to_string();
        assert!(
            err.contains("GEMMA_EMBED_ATTENTION") && err.contains("`wgmma`"),
            "{err}"
        );
        assert!(!AttentionKernel::FlashWgmma.runs_on((10, 0)));
    }

    #[test]
    fn tile_constants_match_params_header() {
        let define = super::super::params_define;
        for (name, value) in [
            ("ATTENTION_HEAD_DIM", HEAD_DIM),
            ("ATTENTION_GROUP", GROUP),
            ("ATTENTION_REFERENCE_WARPS", REFERENCE_WARPS),
            ("ATTENTION_FLASH_BLOCK_M", FLASH_BLOCK_M),
            ("ATTENTION_FLASH_BLOCK_N", FLASH_BLOCK_N),
            ("ATTENTION_FLASH_THREADS", FLASH_THREADS),
            ("ATTENTION_FLASH_SMEM_BYTES", FLASH_SMEM_BYTES),
            ("ATTENTION_FLASH_WGMMA_SMEM_BYTES", FLASH_WGMMA_SMEM_BYTES),
            ("ATTENTION_TMA_BLOCK_M", TMA_BLOCK_M),
            ("ATTENTION_TMA_THREADS", TMA_THREADS),
            ("ATTENTION_TMA_STAGES", TMA_STAGES),
            ("ATTENTION_TMA_SMEM_BYTES", TMA_SMEM_BYTES),
            ("ATTENTION_TMA_PRODUCER_REGS", TMA_PRODUCER_REGS),
            ("ATTENTION_TMA_CONSUMER_REGS", TMA_CONSUMER_REGS),
        ] {
            assert_eq!(define(name), value as i64, "{name}");
        }
        // ptxas gives the kernel 168 registers under __launch_bounds__(384, 1): exactly enough.
        assert!(TMA_HAND_OVER.fits(168));
        assert!(!TMA_HAND_OVER.fits(160));
        assert_eq!(define("ATTENTION_NO_WINDOW"), window_param(None) as i64);
        assert_eq!(
            FLASH_SMEM_BYTES,
            (FLASH_BLOCK_M + 2 * FLASH_BLOCK_N) * HEAD_DIM * 2
        );
    }

    #[test]
    fn work_list_covers_every_packed_row_once() {
        let lengths: Vec<u32> = EDGE_LENGTHS
            .iter()
            .chain(&[5, 1, 700, 3])
            .copied()
            .collect();
        let seq_offsets = offsets(&lengths);
        for (window, tile_rows) in [Some(256), None, Some(0), Some(1), Some(5000)]
            .into_iter()
            .flat_map(|w| TILE_HEIGHTS.map(|h| (w, h)))
        {
            let tiles = build_work_list(&seq_offsets, window, tile_rows);
            let mut hits: Vec<Vec<u8>> = lengths
                .iter()
                .map(|&l| vec![0; l as usize * GROUP])
                .collect();
            for tile in &tiles {
                let len = lengths[tile.seq as usize] as usize;
                assert_eq!(tile.first_row as usize % tile_rows, 0);
                let geometry = TileGeometry::new(len, tile.first_row as usize, window, tile_rows);
                assert!(geometry.rows >= 1 && geometry.rows <= tile_rows);
                for r in 0..geometry.rows {
                    hits[tile.seq as usize][tile.first_row as usize + r] += 1;
                }
            }
            for (seq, rows) in hits.iter().enumerate() {
                assert!(rows.iter().all(|&h| h == 1), "window {window:?}, seq {seq}");
            }
            let costs: Vec<usize> = tiles
                .iter()
                .map(|t| {
                    let len = lengths[t.seq as usize] as usize;
                    TileGeometry::new(len, t.first_row as usize, window, tile_rows).num_blocks
                })
                .collect();
            assert!(
                costs.windows(2).all(|c| c[0] >= c[1]),
                "sorted longest first"
            );
            let flat = flatten_work_list(&tiles);
            assert_eq!(flat.len(), 2 * tiles.len());
            assert_eq!((flat[0], flat[1]), (tiles[0].seq, tiles[0].first_row));
        }
    }

    /// Brute force: the allowed keys of every position equal the key range of that position
    /// alone, and a tile's range is exactly the union of its rows' allowed keys.
    #[test]
    fn key_ranges_match_brute_force_mask() {
        let mask =
            |i: usize, j: usize, window: Option<usize>| window.is_none_or(|r| i.abs_diff(j) <= r);
        for len in [1usize, 2, 3, 21, 22, 64, 65, 257, 300, 600] {
            for (window, tile_rows) in [Some(256), Some(0), Some(3), Some(64), None]
                .into_iter()
                .flat_map(|w| TILE_HEIGHTS.map(|h| (w, h)))
            {
                for first_row in (0..len * GROUP).step_by(tile_rows) {
                    let g = TileGeometry::new(len, first_row, window, tile_rows);
                    let union: Vec<usize> = (0..len)
                        .filter(|&j| (g.p_lo..=g.p_hi).any(|i| mask(i, j, window)))
                        .collect();
                    assert_eq!(
                        g.keys.begin, union[0],
                        "len {len} {window:?} row {first_row}"
                    );
                    assert_eq!(g.keys.end, union.last().unwrap() + 1);
                    assert_eq!(union.len(), g.keys.end - g.keys.begin, "contiguous");
                    for i in g.p_lo..=g.p_hi {
                        for j in 0..len + FLASH_BLOCK_N {
                            let expected = j < len && mask(i, j, window);
                            assert_eq!(key_allowed(i, j, g.keys.end, window), expected);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn allowed_pairs_match_brute_force() {
        let seq_offsets = offsets(&[1, 2, 300, 513, 600]);
        for window in [Some(256), Some(1), None] {
            let brute: u64 = seq_offsets
                .windows(2)
                .map(|w| {
                    let len = (w[1] - w[0]) as usize;
                    let mut n = 0u64;
                    for i in 0..len {
                        for j in 0..len {
                            n += window.is_none_or(|r| i.abs_diff(j) <= r) as u64;
                        }
                    }
                    n
                })
                .sum();
            assert_eq!(allowed_pairs(&seq_offsets, window), brute);
        }
    }

    #[test]
    fn config_shape_is_checked() {
        let base = ModelConfig {
            hidden_size: 768,
            intermediate_size: 1152,
            num_layers: 1,
            num_heads: 3,
            num_kv_heads: 1,
            head_dim: 256,
            vocab_size: 16,
            rms_norm_eps: 1e-6,
            query_pre_attn_scalar: 256.0,
            window_radius: 256,
            rope_theta_sliding: 1e4,
            rope_theta_full: 1e6,
            layer_kinds: vec![crate::model::LayerKind::Sliding],
            max_position_embeddings: 2048,
            max_seq_len: 2048,
            dense_out_features: vec![768],
            embedding_dim: 768,
            prompts: Default::default(),
            default_prompt_name: None,
            weight_dtype: "F32".into(),
        };
        assert!(check_config(&base).is_ok());
        let bad_dim = ModelConfig {
            head_dim: 128,
            ..base.clone()
        };
        assert!(check_config(&bad_dim).is_err());
        let bad_heads = ModelConfig {
            num_heads: 4,
            ..base.clone()
        };
        assert!(check_config(&bad_heads).is_err());
        let two_kv = ModelConfig {
            num_heads: 6,
            num_kv_heads: 2,
            ..base
        };
        assert!(check_config(&two_kv).is_err());
    }

    /// The fragment index math of the flash kernel (ldmatrix lane addresses, swizzle, mma
    /// fragment layouts, P from the S accumulators, epilogue staging) against direct matrix
    /// products, in the warp emulator `kernels/tests/attention_fragments.c`.
    #[test]
    fn flash_fragment_math_matches_direct_products() {
        super::super::run_fragment_emulator("attention_fragments.c");
    }

    /// attention_flash_tma's producer thread, its TMA copies and the two consumer warpgroups,
    /// played under random schedules at emulated mbarriers and turn barriers: no deadlock, no
    /// buffer overwritten while read, no pending barrier arrival
    /// (`kernels/tests/attention_tma_pipeline.c`).
    #[test]
    fn tma_pipeline_protocol_holds_under_random_schedules() {
        super::super::run_fragment_emulator("attention_tma_pipeline.c");
    }

    /// Plain attention in f64 over the bf16 inputs: the straightforward definition.
    fn plain_attention(
        q: &[bf16],
        k: &[bf16],
        v: &[bf16],
        seq_offsets: &[u32],
        window: Option<usize>,
        scale: f64,
    ) -> Vec<f64> {
        let mut out = vec![0.0; q.len()];
        for w in seq_offsets.windows(2) {
            let (start, len) = (w[0] as usize, (w[1] - w[0]) as usize);
            for i in 0..len {
                for h in 0..GROUP {
                    let row = (start + i) * GROUP + h;
                    let qr = &q[row * HEAD_DIM..(row + 1) * HEAD_DIM];
                    let keys: Vec<usize> = (0..len)
                        .filter(|&j| window.is_none_or(|r| i.abs_diff(j) <= r))
                        .collect();
                    let scores: Vec<f64> = keys
                        .iter()
                        .map(|&j| {
                            let kr = &k[(start + j) * HEAD_DIM..(start + j + 1) * HEAD_DIM];
                            scale
                                * qr.iter()
                                    .zip(kr)
                                    .map(|(a, b)| a.to_f64() * b.to_f64())
                                    .sum::<f64>()
                        })
                        .collect();
                    let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                    let total: f64 = weights.iter().sum();
                    let o = &mut out[row * HEAD_DIM..(row + 1) * HEAD_DIM];
                    for (&j, &wgt) in keys.iter().zip(&weights) {
                        let vr = &v[(start + j) * HEAD_DIM..(start + j + 1) * HEAD_DIM];
                        for (od, vd) in o.iter_mut().zip(vr) {
                            *od += wgt / total * vd.to_f64();
                        }
                    }
                }
            }
        }
        out
    }

    /// Walk the key blocks of one row of a tile as the kernel does and check the two claims it
    /// relies on: a block it runs unmasked holds only allowed pairs, and the visited blocks
    /// reach every allowed key of the row exactly once (and nothing else).
    fn assert_row_coverage(g: &TileGeometry, pos: usize, len: usize, window: Option<usize>) {
        let mut visits = vec![0u32; len];
        for block in 0..g.num_blocks {
            let kb = g.keys.begin + block * FLASH_BLOCK_N;
            let masked = block_needs_mask(kb, FLASH_BLOCK_N, g.keys.end, g.p_lo, g.p_hi, window);
            for key in kb..kb + FLASH_BLOCK_N {
                let allowed = key_allowed(pos, key, g.keys.end, window);
                assert!(
                    masked || allowed,
                    "unmasked block at {kb} holds ({pos}, {key})"
                );
                if allowed {
                    *visits
                        .get_mut(key)
                        .expect("allowed keys lie inside the sequence") += 1;
                }
            }
        }
        for (key, &n) in visits.iter().enumerate() {
            let expected = window.is_none_or(|r| pos.abs_diff(key) <= r) as u32;
            assert_eq!(
                n, expected,
                "position {pos} of a {len}-token sequence, key {key}"
            );
        }
    }

    #[test]
    fn key_blocks_reach_exactly_the_allowed_keys() {
        let seq_offsets = offsets(EDGE_LENGTHS);
        for window in [
            Some(256),
            None,
            Some(0),
            Some(1),
            Some(21),
            Some(64),
            Some(2047),
        ] {
            for tile_rows in TILE_HEIGHTS {
                for tile in build_work_list(&seq_offsets, window, tile_rows) {
                    let len = EDGE_LENGTHS[tile.seq as usize] as usize;
                    let g = TileGeometry::new(len, tile.first_row as usize, window, tile_rows);
                    for r in 0..g.rows {
                        let pos = (tile.first_row as usize + r) / GROUP;
                        assert_row_coverage(&g, pos, len, window);
                    }
                }
            }
        }
    }

    /// Scalar model of the flash kernels on tiles of `tile_rows`: the same work list, tile
    /// geometry, key blocks, masking decisions and online-softmax arithmetic (f32 scores in the
    /// log2 domain, running max with the -inf guard, bf16 probabilities into P V, f32 row sums of
    /// the unrounded probabilities, one bf16 rounding of the output). Only the order of the f32
    /// additions inside the dot products differs from the tensor cores.
    fn flash_model(
        q: &[bf16],
        k: &[bf16],
        v: &[bf16],
        seq_offsets: &[u32],
        window: Option<usize>,
        scale: f32,
        tile_rows: usize,
    ) -> Vec<f32> {
        let scale_log2 = scale * std::f32::consts::LOG2_E;
        let mut out = vec![f32::NAN; q.len()];
        for tile in build_work_list(seq_offsets, window, tile_rows) {
            let start = seq_offsets[tile.seq as usize] as usize;
            let len = seq_offsets[tile.seq as usize + 1] as usize - start;
            let g = TileGeometry::new(len, tile.first_row as usize, window, tile_rows);
            for r in 0..g.rows {
                let row_in_seq = tile.first_row as usize + r;
                let pos = row_in_seq / GROUP;
                let row = start * GROUP + row_in_seq;
                let qr = &q[row * HEAD_DIM..(row + 1) * HEAD_DIM];
                let mut row_max = f32::NEG_INFINITY;
                let mut row_sum = 0.0f32;
                let mut acc = vec![0.0f32; HEAD_DIM];
                for block in 0..g.num_blocks {
                    let kb = g.keys.begin + block * FLASH_BLOCK_N;
                    let masked =
                        block_needs_mask(kb, FLASH_BLOCK_N, g.keys.end, g.p_lo, g.p_hi, window);
                    let scores: Vec<f32> = (kb..kb + FLASH_BLOCK_N)
                        .map(|key| {
                            if masked && !key_allowed(pos, key, g.keys.end, window) {
                                return f32::NEG_INFINITY;
                            }
                            let kr = &k[(start + key) * HEAD_DIM..(start + key + 1) * HEAD_DIM];
                            let dot: f32 = qr
                                .iter()
                                .zip(kr)
                                .map(|(a, b)| a.to_f32() * b.to_f32())
                                .sum();
                            dot * scale_log2
                        })
                        .collect();
                    let block_max = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                    let new_max = row_max.max(block_max);
                    let base = if new_max == f32::NEG_INFINITY {
                        0.0
                    } else {
                        new_max
                    };
                    let rescale = (row_max - base).exp2();
                    row_max = new_max;
                    row_sum *= rescale;
                    acc.iter_mut().for_each(|a| *a *= rescale);
                    for (n, s) in scores.iter().enumerate() {
                        let p = (s - base).exp2();
                        row_sum += p;
                        let p_bf16 = bf16::from_f32(p).to_f32();
                        if p_bf16 != 0.0 {
                            let key = kb + n;
                            let vr = &v[(start + key) * HEAD_DIM..(start + key + 1) * HEAD_DIM];
                            for (a, vd) in acc.iter_mut().zip(vr) {
                                *a += p_bf16 * vd.to_f32();
                            }
                        }
                    }
                }
                let inv = if row_sum > 0.0 { 1.0 / row_sum } else { 0.0 };
                for (o, a) in out[row * HEAD_DIM..(row + 1) * HEAD_DIM]
                    .iter_mut()
                    .zip(&acc)
                {
                    *o = bf16::from_f32(a * inv).to_f32();
                }
            }
        }
        out
    }

    /// Error of `got` against the f64 reference: (relative L2, max abs).
    fn errors(got: &[f32], want: &[f64]) -> (f64, f64) {
        let mut diff2 = 0.0;
        let mut ref2 = 0.0;
        let mut max_abs: f64 = 0.0;
        for (&g, &w) in got.iter().zip(want) {
            let d = g as f64 - w;
            assert!(d.is_finite(), "non-finite output {g}");
            diff2 += d * d;
            ref2 += w * w;
            max_abs = max_abs.max(d.abs());
        }
        ((diff2 / ref2).sqrt(), max_abs)
    }

    /// The output is one bf16 rounding (<= 2^-9 relative) of a convex combination of V rows,
    /// and P enters P V rounded to bf16 (<= 2^-9 relative per weight) while the row sum uses
    /// the unrounded weights: at most about 2 * 2^-9 * max|v| apart from exact attention, plus
    /// f32 noise. 2^-7 * max|v| leaves a factor 2 of margin.
    fn max_abs_bound(v_amplitude: f32) -> f64 {
        v_amplitude as f64 / 128.0
    }

    fn check_model(lengths: &[u32], window: Option<usize>, seed: u64, q_amplitude: f32) {
        let seq_offsets = offsets(lengths);
        let tokens = *seq_offsets.last().unwrap() as usize;
        let mut rng = SplitMix64::new(seed);
        let mut bf16s = |n: usize, amplitude: f32| -> Vec<bf16> {
            let bits = rng.bf16s(n, -amplitude, amplitude);
            bits.into_iter().map(bf16::from_bits).collect()
        };
        let q = bf16s(tokens * GROUP * HEAD_DIM, q_amplitude);
        let k = bf16s(tokens * HEAD_DIM, 1.0);
        let v = bf16s(tokens * HEAD_DIM, 1.0);
        let want = plain_attention(&q, &k, &v, &seq_offsets, window, 1.0);
        for tile_rows in TILE_HEIGHTS {
            let got = flash_model(&q, &k, &v, &seq_offsets, window, 1.0, tile_rows);
            let (rel_l2, max_abs) = errors(&got, &want);
            eprintln!(
                "window {window:?}, {tile_rows}-row tiles: rel L2 {rel_l2:.2e}, max abs \
                 {max_abs:.2e}"
            );
            assert!(
                rel_l2 < 1e-2 && max_abs < max_abs_bound(1.0),
                "lengths {lengths:?} window {window:?} {tile_rows}-row tiles: rel L2 \
                 {rel_l2:.2e}, max abs {max_abs:.2e}"
            );
        }
    }

    #[test]
    fn flash_model_matches_plain_attention_on_short_mixes() {
        let mixes: &[&[u32]] = &[
            &[1],
            &[2, 1, 3],
            &[15, 16, 17, 21, 22],
            &[42, 43, 1, 63, 64, 65],
            &[85, 86, 2, 87],
            &[127, 2, 128, 129],
            &[300, 5, 22],
        ];
        for (i, lengths) in mixes.iter().enumerate() {
            for window in [Some(256), Some(7), Some(0), None] {
                check_model(lengths, window, 17 + i as u64, 0.5);
            }
        }
    }

    /// Every edge length packed into one batch on a sliding layer; the full-attention run stops
    /// at 1023 tokens to keep the f64 reference affordable (full layers only mask the tail
    /// block, whose handling does not depend on the length; the coverage test above walks
    /// the 2047/2048 cases). Large score spread: the running max moves a lot.
    #[test]
    fn flash_model_matches_plain_attention_on_edge_lengths() {
        check_model(EDGE_LENGTHS, Some(256), 1, 0.5);
        let up_to_1023: Vec<u32> = EDGE_LENGTHS
            .iter()
            .copied()
            .filter(|&l| l <= 1023)
            .collect();
        check_model(&up_to_1023, None, 2, 2.0);
    }
}
