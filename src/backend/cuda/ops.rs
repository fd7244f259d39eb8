//! Typed launchers for the custom kernels (everything but GEMMs and attention). Each wrapper
//! checks buffer sizes against the shapes, fills the kernel's `params.h` struct and launches.

use cudarc::driver::{CudaFunction, CudaSlice, CudaStream, DevicePtr, LaunchConfig, PushKernelArg};

use super::device::{driver_err, Device};
use super::gemm::GemmOut;
use super::options::BranchStorage;
use super::params::{
    EmbedParams, GegluParams, PoolParams, QkvPostParams, ResidualNormParams, POOL_BLOCK,
};
use crate::model::ModelConfig;
use crate::{Error, Result};

/// Threads per block of the one-warp-per-row kernels.
const ROW_BLOCK: u32 = 256;
const ROWS_PER_BLOCK: usize = (ROW_BLOCK / 32) as usize;
/// `QKV_POST_LANES`: `qkv_post`'s lanes per (token, slot) row.
const QKV_POST_LANES: usize = 16;
/// `QKV_POST_MAX_HEAD_DIM`: 16 lanes of 8 elements per half of a head.
const QKV_POST_MAX_HEAD_DIM: usize = 256;
/// `RESIDUAL_NORM_MAX_HIDDEN`: the hidden row a warp of `residual_norm` holds in registers.
const RESIDUAL_NORM_MAX_HIDDEN: usize = 1024;
/// `GEGLU_OUTPUTS_PER_THREAD`: `geglu`'s outputs per thread (one 16-byte store).
const GEGLU_OUTPUTS_PER_THREAD: usize = 8;

/// The model numbers the kernels take at runtime.
#[derive(Clone, Copy, Debug)]
pub struct ModelDims {
    pub hidden: usize,
    pub num_heads: usize,
    pub head_dim: usize,
    pub intermediate: usize,
    pub embed_dim: usize,
    pub eps: f32,
    /// bf16(sqrt(hidden)): transformers casts the scale to the (bf16) weight dtype.
    pub embed_scale: f32,
    /// query_pre_attn_scalar^-0.5, folded into Q.
    pub q_scale: f32,
}

impl ModelDims {
    pub fn new(config: &ModelConfig) -> Result<Self> {
        let dims = Self {
            hidden: config.hidden_size,
            num_heads: config.num_heads,
            head_dim: config.head_dim,
            intermediate: config.intermediate_size,
            embed_dim: config.embedding_dim,
            eps: config.rms_norm_eps,
            embed_scale: half::bf16::from_f32(config.embed_scale()).to_f32(),
            q_scale: config.attention_scale(),
        };
        let unsupported =
            |what: String| Err(Error::Cuda(format!("unsupported model shape: {what}")));
        if config.num_kv_heads != 1 {
            return unsupported(format!(
                "{} KV heads (the kernels do MQA)",
                config.num_kv_heads
            ));
        }
        if let Err(what) = check_row_shapes(dims.hidden, dims.intermediate, dims.head_dim) {
            return unsupported(what);
        }
        Ok(dims)
    }

    /// Width of the fused QKV projection output: q heads, k, v.
    pub fn qkv_width(&self) -> usize {
        (self.num_heads + 2) * self.head_dim
    }

    pub fn q_width(&self) -> usize {
        self.num_heads * self.head_dim
    }
}

/// Token metadata on the device for one batch.
pub struct Tokens {
    pub ids: CudaSlice<u32>,
    pub seq_offsets: CudaSlice<u32>,
    /// Written by [`Kernels::embed`].
    pub positions: CudaSlice<u32>,
    pub num_tokens: usize,
    pub num_seqs: usize,
}

/// The f32 residual stream with what the next projection needs: its bf16 copy and the
/// per-row inverse RMS (the norm weight lives in the projection's weight columns).
pub struct Residual {
    pub x: CudaSlice<f32>,
    pub x_bf16: CudaSlice<u16>,
    pub inv_rms: CudaSlice<f32>,
}

/// The pooling epilogue's output: `[num_seqs, out_dim]` L2-normalized embeddings, and per
/// sequence what its row was divided by (row * norm is the un-normalized embedding).
pub struct Pooled {
    pub embeddings: CudaSlice<f32>,
    pub norms: CudaSlice<f32>,
}

/// The O or down projection's output, stored as [`BranchStorage`] chose: what
/// [`Kernels::residual_norm`] adds to the residual stream.
pub enum Branch {
    F32(CudaSlice<f32>),
    Bf16(CudaSlice<u16>),
}

impl Branch {
    /// [`BranchStorage::Fused`] and [`BranchStorage::Tma`] store no branch: they get one unused
    /// f32 element, like the QKV and gate|up buffers with their fused kernels.
    pub fn alloc(dev: &Device, storage: BranchStorage, len: usize) -> Result<Self> {
        Ok(match storage {
            BranchStorage::F32 => Self::F32(dev.alloc(len, "projection output")?),
            BranchStorage::Bf16 => Self::Bf16(dev.alloc(len, "projection output (bf16)")?),
            BranchStorage::Fused | BranchStorage::Tma => {
                Self::F32(dev.alloc(1, "projection output (unused)")?)
            }
        })
    }

    pub fn storage(&self) -> BranchStorage {
        match self {
            Self::F32(_) => BranchStorage::F32,
            Self::Bf16(_) => BranchStorage::Bf16,
        }
    }

    /// Where the projection GEMM writes it.
    pub fn gemm_out(&mut self) -> GemmOut<'_> {
        match self {
            Self::F32(b) => GemmOut::F32(b),
            Self::Bf16(b) => GemmOut::Bf16(b),
        }
    }

    fn len(&self) -> usize {
        match self {
            Self::F32(b) => b.len(),
            Self::Bf16(b) => b.len(),
        }
    }

    fn device_address(&self, stream: &CudaStream) -> u64 {
        match self {
            Self::F32(b) => b.device_ptr(stream).0,
            Self::Bf16(b) => b.device_ptr(stream).0,
        }
    }
}

/// Attention inputs: Q `[tokens, heads, head_dim]`, K and V `[tokens, head_dim]`, bf16.
pub struct QkvBuffers {
    pub q: CudaSlice<u16>,
    pub k: CudaSlice<u16>,
    pub v: CudaSlice<u16>,
}

/// Per-layer weights of the q/k post-processing.
pub struct QkNorms<'a> {
    pub q_norm: &'a CudaSlice<f32>,
    pub k_norm: &'a CudaSlice<f32>,
    pub rope: &'a RopeTable,
}

/// cos and sin of `position · inv_freq[i]`, `[max_positions, head_dim / 2]` f32.
pub struct RopeTable {
    pub cos: CudaSlice<f32>,
    pub sin: CudaSlice<f32>,
    pub max_positions: usize,
}

/// Host side of [`RopeTable`]: `inv_freq[i] = 1 / theta^(2i / head_dim)` evaluated in f32 as
/// transformers does, the angle `position · inv_freq` rounded to f32 as transformers' f32
/// product, then cos/sin in f64 rounded once to f32.
pub fn rope_tables(theta: f32, head_dim: usize, max_positions: usize) -> (Vec<f32>, Vec<f32>) {
    let half = head_dim / 2;
    let inv_freq: Vec<f32> = (0..half)
        .map(|i| 1.0f32 / theta.powf((2 * i) as f32 / head_dim as f32))
        .collect();
    let mut cos = Vec::with_capacity(max_positions * half);
    let mut sin = Vec::with_capacity(max_positions * half);
    for pos in 0..max_positions {
        for &f in &inv_freq {
            let angle = f64::from(pos as f32 * f);
            cos.push(angle.cos() as f32);
            sin.push(angle.sin() as f32);
        }
    }
    (cos, sin)
}

pub fn to_bf16_bits(values: &[f32]) -> Vec<u16> {
    values
        .iter()
        .map(|&v| half::bf16::from_f32(v).to_bits())
        .collect()
}

/// The custom kernels, resolved once from the embedded modules.
pub struct Kernels {
    pub dims: ModelDims,
    embed: CudaFunction,
    residual_norm: CudaFunction,
    residual_norm_bf16_branch: CudaFunction,
    qkv_post: CudaFunction,
    geglu: CudaFunction,
    pool: CudaFunction,
}

/// The row lengths the elementwise kernels' 16-byte accesses and register-held rows allow (the
/// 4-wide accesses of `embed_tokens` and `pool_embeddings` follow): a warp of `residual_norm`
/// holds a hidden row in 8-element pieces, `geglu` reads 8 gate and 8 up values per thread,
/// `qkv_post` gives each of 16 lanes 8 elements of each half of a head. Returns what is wrong.
fn check_row_shapes(
    hidden: usize,
    intermediate: usize,
    head_dim: usize,
) -> std::result::Result<(), String> {
    let (max_hidden, max_head_dim) = (RESIDUAL_NORM_MAX_HIDDEN, QKV_POST_MAX_HEAD_DIM);
    if !hidden.is_multiple_of(8) || hidden == 0 || hidden > max_hidden {
        return Err(format!(
            "hidden {hidden}: residual_norm needs a positive multiple of 8, at most {max_hidden}"
        ));
    }
    if !intermediate.is_multiple_of(8) || intermediate == 0 {
        return Err(format!(
            "intermediate {intermediate}: geglu needs a positive multiple of 8"
        ));
    }
    if !head_dim.is_multiple_of(16) || head_dim == 0 || head_dim > max_head_dim {
        return Err(format!(
            "head_dim {head_dim}: qkv_post needs a positive multiple of 16, at most {max_head_dim}"
        ));
    }
    Ok(())
}

fn check_len<T>(buffer: &CudaSlice<T>, needed: usize, what: &str) -> Result<()> {
    check_count(buffer.len(), needed, what)
}

fn check_count(held: usize, needed: usize, what: &str) -> Result<()> {
    if held < needed {
        return Err(Error::Cuda(format!(
            "{what}: device buffer holds {held} elements, the launch needs {needed}"
        )));
    }
    Ok(())
}

fn u32_of(x: usize, what: &str) -> Result<u32> {
    u32::try_from(x).map_err(|_| Error::Cuda(format!("{what} = {x} does not fit in u32")))
}

fn blocks_for_rows(rows: usize) -> Result<u32> {
    u32_of(rows.div_ceil(ROWS_PER_BLOCK), "grid size")
}

/// Blocks of [`ROW_BLOCK`] threads for `threads` threads, for the kernels that index their
/// threads with one u32 (`blockIdx.x * blockDim.x + threadIdx.x`): the whole grid must fit.
fn blocks_for_threads(threads: usize, kernel: &str) -> Result<u32> {
    let blocks = threads.div_ceil(ROW_BLOCK as usize);
    u32_of(blocks * ROW_BLOCK as usize, &format!("{kernel} threads"))?;
    u32_of(blocks, &format!("{kernel} blocks"))
}

/// For the fused GEMM kernels' launch wrappers: an error naming `kernel` for the first of
/// `needs` (elements held, elements needed, buffer) that is too small.
pub(super) fn check_fused_buffers(
    kernel: &str,
    num_tokens: usize,
    needs: &[(usize, usize, &str)],
) -> Result<()> {
    match needs.iter().find(|(held, needed, _)| held < needed) {
        Some((held, needed, what)) => Err(Error::Cuda(format!(
            "{kernel} over {num_tokens} tokens: {what} holds {held} elements, the launch needs \
             {needed}"
        ))),
        None => Ok(()),
    }
}

/// `v` as a parameter of `kernel`'s launch.
pub(super) fn kernel_u32(kernel: &str, v: usize, what: &str) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::Cuda(format!("{kernel}: {what} {v} exceeds u32")))
}

/// The grid's y extent (at most 65,535) for `num_tokens` rows in blocks of `block_m`.
pub(super) fn grid_row_blocks(kernel: &str, num_tokens: usize, block_m: usize) -> Result<u32> {
    let row_blocks = kernel_u32(kernel, num_tokens.div_ceil(block_m), "row blocks")?;
    if row_blocks > 65_535 {
        return Err(Error::Cuda(format!(
            "{kernel}: {num_tokens} tokens exceed the grid's {} rows",
            65_535 * block_m
        )));
    }
    Ok(row_blocks)
}

/// Grid of a persistent GEMM kernel (gemm_pipeline.cuh's `wgmma_gemm_persistent`, one CTA per
/// SM): its tiles, `ceil(num_tokens / block_m)` row blocks times `col_blocks`, but at most one
/// CTA per multiprocessor.
pub(super) fn persistent_grid(
    dev: &Device,
    kernel: &str,
    num_tokens: usize,
    block_m: usize,
    col_blocks: usize,
) -> Result<u32> {
    let row_blocks = grid_row_blocks(kernel, num_tokens, block_m)? as usize;
    let tiles = kernel_u32(kernel, row_blocks * col_blocks, "tiles")?;
    Ok(tiles.min(dev.multiprocessors))
}

impl Kernels {
    pub fn load(dev: &Device, dims: ModelDims) -> Result<Self> {
        Ok(Self {
            dims,
            embed: dev.function("embed_tokens")?,
            residual_norm: dev.function(BranchStorage::F32.residual_norm_kernel())?,
            residual_norm_bf16_branch: dev.function(BranchStorage::Bf16.residual_norm_kernel())?,
            qkv_post: dev.function("qkv_post")?,
            geglu: dev.function("geglu")?,
            pool: dev.function("pool_embeddings")?,
        })
    }

    /// Launch `f` with `params` as its single by-value argument.
    ///
    /// # Safety
    /// Every pointer in `params` must be a live device buffer covering what the kernel
    /// accesses for the shapes in `params`.
    unsafe fn launch<P: cudarc::driver::DeviceRepr>(
        dev: &Device,
        f: &CudaFunction,
        name: &str,
        params: P,
        (grid, block, shared_mem_bytes): (u32, u32, u32),
    ) -> Result<()> {
        if grid == 0 {
            return Ok(());
        }
        let mut builder = dev.stream.launch_builder(f);
        builder.arg(&params);
        let cfg = LaunchConfig {
            grid_dim: (grid, 1, 1),
            block_dim: (block, 1, 1),
            shared_mem_bytes,
        };
        builder
            .launch(cfg)
            .map(|_| ())
            .map_err(driver_err(format!("launch {name}")))
    }

    /// residual = table[ids] · embed_scale; bf16 copy, inverse RMS and positions.
    pub fn embed(
        &self,
        dev: &Device,
        tokens: &mut Tokens,
        table: &CudaSlice<u16>,
        out: &mut Residual,
    ) -> Result<()> {
        let (n, h) = (tokens.num_tokens, self.dims.hidden);
        check_len(&tokens.ids, n, "embed ids")?;
        check_len(
            &tokens.seq_offsets,
            tokens.num_seqs + 1,
            "embed seq_offsets",
        )?;
        check_len(&tokens.positions, n, "embed positions")?;
        check_len(&out.x, n * h, "embed residual")?;
        check_len(&out.x_bf16, n * h, "embed residual bf16")?;
        check_len(&out.inv_rms, n, "embed inv_rms")?;
        let s = &dev.stream;
        let params = EmbedParams {
            ids: tokens.ids.device_ptr(s).0 as _,
            seq_offsets: tokens.seq_offsets.device_ptr(s).0 as _,
            table: table.device_ptr(s).0 as _,
            residual: out.x.device_ptr(s).0 as _,
            residual_bf16: out.x_bf16.device_ptr(s).0 as _,
            inv_rms: out.inv_rms.device_ptr(s).0 as _,
            positions: tokens.positions.device_ptr(s).0 as _,
            scale: self.dims.embed_scale,
            eps: self.dims.eps,
            num_tokens: u32_of(n, "num_tokens")?,
            num_seqs: u32_of(tokens.num_seqs, "num_seqs")?,
            hidden: u32_of(h, "hidden")?,
        };
        // SAFETY: sizes checked above; ids were validated against the vocabulary (the table
        // rows) by the caller.
        unsafe {
            Self::launch(
                dev,
                &self.embed,
                "embed_tokens",
                params,
                (blocks_for_rows(n)?, ROW_BLOCK, 0),
            )
        }
    }

    /// residual += RMSNorm(branch)·(1 + post_norm); bf16 copy and inverse RMS of the result.
    pub fn residual_norm(
        &self,
        dev: &Device,
        num_tokens: usize,
        branch: &Branch,
        post_norm: &CudaSlice<f32>,
        residual: &mut Residual,
    ) -> Result<()> {
        let (n, h) = (num_tokens, self.dims.hidden);
        check_count(branch.len(), n * h, "residual_norm branch")?;
        check_len(post_norm, h, "residual_norm weight")?;
        check_len(&residual.x, n * h, "residual_norm residual")?;
        check_len(&residual.x_bf16, n * h, "residual_norm residual bf16")?;
        check_len(&residual.inv_rms, n, "residual_norm inv_rms")?;
        let s = &dev.stream;
        let params = ResidualNormParams {
            branch: branch.device_address(s) as _,
            post_norm: post_norm.device_ptr(s).0 as _,
            residual: residual.x.device_ptr(s).0 as _,
            residual_bf16: residual.x_bf16.device_ptr(s).0 as _,
            inv_rms: residual.inv_rms.device_ptr(s).0 as _,
            eps: self.dims.eps,
            num_tokens: u32_of(n, "num_tokens")?,
            hidden: u32_of(h, "hidden")?,
        };
        let storage = branch.storage();
        let function = match branch {
            Branch::F32(_) => &self.residual_norm,
            Branch::Bf16(_) => &self.residual_norm_bf16_branch,
        };
        // SAFETY: sizes checked above; the kernel reads the branch in the element type of
        // `storage`, the type of the buffer it came from.
        unsafe {
            Self::launch(
                dev,
                function,
                storage.residual_norm_kernel(),
                params,
                (blocks_for_rows(n)?, ROW_BLOCK, 0),
            )
        }
    }

    /// Split the QKV projection into attention-ready Q, K, V (norms, RoPE, query scale).
    pub fn qkv_post(
        &self,
        dev: &Device,
        tokens: &Tokens,
        qkv: &CudaSlice<u16>,
        inv_rms: &CudaSlice<f32>,
        norms: QkNorms<'_>,
        out: &mut QkvBuffers,
    ) -> Result<()> {
        let d = &self.dims;
        let n = tokens.num_tokens;
        check_len(qkv, n * d.qkv_width(), "qkv_post qkv")?;
        check_len(inv_rms, n, "qkv_post inv_rms")?;
        check_len(&tokens.positions, n, "qkv_post positions")?;
        check_len(norms.q_norm, d.head_dim, "qkv_post q_norm")?;
        check_len(norms.k_norm, d.head_dim, "qkv_post k_norm")?;
        let table_len = norms.rope.max_positions * d.head_dim / 2;
        check_len(&norms.rope.cos, table_len, "qkv_post rope cos")?;
        check_len(&norms.rope.sin, table_len, "qkv_post rope sin")?;
        check_len(&out.q, n * d.q_width(), "qkv_post q")?;
        check_len(&out.k, n * d.head_dim, "qkv_post k")?;
        check_len(&out.v, n * d.head_dim, "qkv_post v")?;
        let s = &dev.stream;
        let params = QkvPostParams {
            qkv: qkv.device_ptr(s).0 as _,
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
            num_tokens: u32_of(n, "num_tokens")?,
            num_heads: u32_of(d.num_heads, "num_heads")?,
            head_dim: u32_of(d.head_dim, "head_dim")?,
            max_positions: u32_of(norms.rope.max_positions, "max_positions")?,
        };
        let grid = blocks_for_threads(n * (d.num_heads + 2) * QKV_POST_LANES, "qkv_post")?;
        // SAFETY: sizes checked above; positions come from `embed` and are below the
        // sequence length, which the caller keeps within the RoPE table.
        unsafe {
            Self::launch(
                dev,
                &self.qkv_post,
                "qkv_post",
                params,
                (grid, ROW_BLOCK, 0),
            )
        }
    }

    /// out = gelu_tanh(r·gate)·(r·up) from the fused gate|up projection.
    pub fn geglu(
        &self,
        dev: &Device,
        num_tokens: usize,
        gate_up: &CudaSlice<u16>,
        inv_rms: &CudaSlice<f32>,
        out: &mut CudaSlice<u16>,
    ) -> Result<()> {
        let (n, i) = (num_tokens, self.dims.intermediate);
        check_len(gate_up, n * 2 * i, "geglu gate_up")?;
        check_len(inv_rms, n, "geglu inv_rms")?;
        check_len(out, n * i, "geglu out")?;
        let s = &dev.stream;
        let params = GegluParams {
            gate_up: gate_up.device_ptr(s).0 as _,
            inv_rms: inv_rms.device_ptr(s).0 as _,
            out: out.device_ptr(s).0 as _,
            num_tokens: u32_of(n, "num_tokens")?,
            intermediate: u32_of(i, "intermediate")?,
        };
        let grid = blocks_for_threads(n * i / GEGLU_OUTPUTS_PER_THREAD, "geglu")?;
        // SAFETY: sizes checked above.
        unsafe { Self::launch(dev, &self.geglu, "geglu", params, (grid, ROW_BLOCK, 0)) }
    }

    /// Final norm, mean pooling, folded Dense, L2 normalization and truncation to `out_dim`.
    pub fn pool(
        &self,
        dev: &Device,
        tokens: &Tokens,
        residual: &Residual,
        weights: (&CudaSlice<f32>, &CudaSlice<f32>),
        out_dim: usize,
        out: &mut Pooled,
    ) -> Result<()> {
        let (final_norm, dense) = weights;
        let d = &self.dims;
        let (n, b) = (tokens.num_tokens, tokens.num_seqs);
        crate::model::check_dimensions(out_dim, d.embed_dim)?;
        check_len(&residual.x, n * d.hidden, "pool residual")?;
        check_len(&residual.inv_rms, n, "pool inv_rms")?;
        check_len(final_norm, d.hidden, "pool final_norm")?;
        check_len(dense, d.embed_dim * d.hidden, "pool dense")?;
        check_len(&tokens.seq_offsets, b + 1, "pool seq_offsets")?;
        check_len(&out.embeddings, b * out_dim, "pool embeddings")?;
        check_len(&out.norms, b, "pool norms")?;
        let s = &dev.stream;
        let params = PoolParams {
            residual: residual.x.device_ptr(s).0 as _,
            inv_rms: residual.inv_rms.device_ptr(s).0 as _,
            final_norm: final_norm.device_ptr(s).0 as _,
            seq_offsets: tokens.seq_offsets.device_ptr(s).0 as _,
            dense: dense.device_ptr(s).0 as _,
            out: out.embeddings.device_ptr(s).0 as _,
            norms: out.norms.device_ptr(s).0 as _,
            num_seqs: u32_of(b, "num_seqs")?,
            hidden: u32_of(d.hidden, "hidden")?,
            embed_dim: u32_of(d.embed_dim, "embed_dim")?,
            out_dim: u32_of(out_dim, "out_dim")?,
        };
        let quads = d.hidden / 4;
        if !d.hidden.is_multiple_of(4) || quads > POOL_BLOCK as usize {
            return Err(Error::Cuda(format!(
                "pool_embeddings needs hidden % 4 == 0 and hidden / 4 <= {POOL_BLOCK}, got hidden {}",
                d.hidden
            )));
        }
        let token_groups = POOL_BLOCK as usize / quads;
        let smem = u32_of(
            ((token_groups + 1) * d.hidden + d.embed_dim) * std::mem::size_of::<f32>(),
            "pool smem",
        )?;
        // SAFETY: sizes checked above; every sequence is non-empty (validated batch).
        unsafe {
            Self::launch(
                dev,
                &self.pool,
                "pool_embeddings",
                params,
                (u32_of(b, "num_seqs")?, POOL_BLOCK, smem),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_tables_follow_transformers_f32_angles() {
        let (head_dim, positions) = (256, 2048);
        let (cos, sin) = rope_tables(10_000.0, head_dim, positions);
        let half = head_dim / 2;
        assert_eq!(cos.len(), positions * half);
        assert!(cos[..half].iter().all(|&c| c == 1.0) && sin[..half].iter().all(|&s| s == 0.0));
        // inv_freq[i] = 1 / 10000^(2i/256) in f32, angle rounded to f32 before cos/sin.
        for (pos, i) in [(1usize, 0usize), (1, 1), (7, 64), (2047, 127), (2047, 3)] {
            let inv_freq = 1.0f32 / 10_000f32.powf((2 * i) as f32 / 256.0);
            let angle = (pos as f32 * inv_freq) as f64;
            assert_eq!(cos[pos * half + i], angle.cos() as f32, "pos {pos} i {i}");
            assert_eq!(sin[pos * half + i], angle.sin() as f32, "pos {pos} i {i}");
            let exact = pos as f64 / 10_000f64.powf((2 * i) as f64 / 256.0);
            assert!((angle - exact).abs() <= 1e-6 * exact.max(1.0) * 8.0);
        }
    }

    #[test]
    fn row_limits_match_params_header() {
        let defines = [
            ("QKV_POST_LANES", QKV_POST_LANES),
            ("QKV_POST_MAX_HEAD_DIM", QKV_POST_MAX_HEAD_DIM),
            ("RESIDUAL_NORM_MAX_HIDDEN", RESIDUAL_NORM_MAX_HIDDEN),
            ("GEGLU_OUTPUTS_PER_THREAD", GEGLU_OUTPUTS_PER_THREAD),
        ];
        for (name, value) in defines {
            assert_eq!(super::super::params_define(name), value as i64, "{name}");
        }
    }

    #[test]
    fn flat_thread_grids_round_up_and_stay_within_u32() {
        assert_eq!(blocks_for_threads(3 * 256 + 1, "k").ok(), Some(4));
        assert_eq!(blocks_for_threads(0, "k").ok(), Some(0));
        let last_full = u32::MAX as usize / 256 * 256;
        assert_eq!(
            blocks_for_threads(last_full, "k").ok(),
            Some((last_full / 256) as u32)
        );
        assert!(blocks_for_threads(last_full + 1, "k").is_err());
    }

    #[test]
    fn row_shapes_take_the_model_and_refuse_what_the_kernels_cannot_hold() {
        assert!(check_row_shapes(768, 1152, 256).is_ok());
        assert!(check_row_shapes(1024, 8, 16).is_ok());
        for (hidden, intermediate, head_dim) in [
            (764, 1152, 256),
            (1032, 1152, 256),
            (0, 1152, 256),
            (768, 1148, 256),
            (768, 0, 256),
            (768, 1152, 248),
            (768, 1152, 272),
            (768, 1152, 0),
        ] {
            assert!(
                check_row_shapes(hidden, intermediate, head_dim).is_err(),
                "{hidden} {intermediate} {head_dim}"
            );
        }
    }

    /// qkv_post's, geglu's and residual_norm's lane-to-element maps on the grids launched
    /// here: 16-byte aligned, every element read and written once, values as defined.
    #[test]
    fn elementwise_lane_maps_cover_every_element_once() {
        super::super::run_fragment_emulator("elementwise_fragments.c");
    }

    #[test]
    fn bf16_bits_round_to_nearest_even() {
        assert_eq!(
            to_bf16_bits(&[1.0, -2.0, 27.712_812]),
            vec![0x3f80, 0xc000, 0x41de]
        );
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to even (1.0).
        assert_eq!(to_bf16_bits(&[1.0 + 1.0 / 256.0]), vec![0x3f80]);
    }
}
