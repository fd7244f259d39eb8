//! Float32 reference implementations of every op of the EmbeddingGemma forward pass.
//!
//! Each function works on plain row-major slices with the dimensions passed explicitly, so the
//! CPU engine and the GPU tests (which compare each CUDA kernel with its twin here) share one
//! definition of the numerics. Semantics follow `shared/design/model-semantics.md`, which cites
//! the transformers (`modeling_gemma3.py`) and sentence-transformers sources.
//!
//! The functions are sequential unless stated otherwise, so callers can split rows across
//! threads. Slice lengths that do not match the given dimensions are programming errors and
//! panic.

use gemm::Parallelism;
use rayon::prelude::*;

/// `out[t] = table[ids[t]] * scale` for every token (Gemma's scaled word embedding).
///
/// `table` is `[vocab, hidden]`; `out` is `[ids.len(), hidden]`. `scale` is the float32
/// `sqrt(hidden)` (`Gemma3TextScaledWordEmbedding`).
pub fn embed_scaled(table: &[f32], hidden: usize, ids: &[u32], scale: f32, out: &mut [f32]) {
    assert_eq!(out.len(), ids.len() * hidden);
    for (row, &id) in out.chunks_exact_mut(hidden).zip(ids) {
        let start = id as usize * hidden;
        for (o, &e) in row.iter_mut().zip(&table[start..start + hidden]) {
            *o = e * scale;
        }
    }
}

/// `sum(x^2)` in f64, over 8 independent lanes so the loop vectorizes.
fn sum_of_squares(row: &[f32]) -> f64 {
    let mut lanes = [0.0f64; 8];
    let chunks = row.chunks_exact(8);
    let tail: f64 = chunks
        .remainder()
        .iter()
        .map(|&v| f64::from(v) * f64::from(v))
        .sum();
    for chunk in chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane += f64::from(v) * f64::from(v);
        }
    }
    lanes.iter().sum::<f64>() + tail
}

/// Inverse root mean square of a row, `1 / sqrt(mean(x^2) + eps)`, accumulated in f64.
fn inv_rms(row: &[f32], eps: f32) -> f32 {
    let mean_sq = (sum_of_squares(row) / row.len() as f64) as f32;
    1.0 / (mean_sq + eps).sqrt()
}

/// The f64 inverse RMS per row, `1 / sqrt(mean(x^2) + eps)` over rows of `width` elements,
/// summed and rounded once in f64: a reference statistic for tests and kernel checks.
pub fn inverse_rms_rows_f64(x: &[f32], width: usize, eps: f32) -> Vec<f32> {
    x.chunks_exact(width)
        .map(|row| {
            let mean = row
                .iter()
                .map(|&v| f64::from(v) * f64::from(v))
                .sum::<f64>()
                / width as f64;
            (1.0 / (mean + f64::from(eps)).sqrt()) as f32
        })
        .collect()
}

/// Gemma RMSNorm over rows of `weight.len()` elements:
/// `out = x * rsqrt(mean(x^2) + eps) * (1 + weight)`, all in f32 (`Gemma3RMSNorm`).
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    assert_eq!(x.len(), out.len());
    assert_eq!(x.len() % weight.len(), 0);
    let width = weight.len();
    for (row, out_row) in x.chunks_exact(width).zip(out.chunks_exact_mut(width)) {
        let r = inv_rms(row, eps);
        for ((o, &v), &w) in out_row.iter_mut().zip(row).zip(weight) {
            *o = v * r * (1.0 + w);
        }
    }
}

/// [`rms_norm`] in place; used for the per-head q/k norms with rows of `head_dim`.
pub fn rms_norm_in_place(x: &mut [f32], weight: &[f32], eps: f32) {
    assert_eq!(x.len() % weight.len(), 0);
    for row in x.chunks_exact_mut(weight.len()) {
        let r = inv_rms(row, eps);
        for (v, &w) in row.iter_mut().zip(weight) {
            *v = *v * r * (1.0 + w);
        }
    }
}

/// The sandwich-norm residual update of a Gemma3 decoder layer:
/// `residual += RMSNorm_weight(branch)` over rows of `weight.len()` elements.
pub fn residual_add_rms_norm(residual: &mut [f32], branch: &[f32], weight: &[f32], eps: f32) {
    assert_eq!(residual.len(), branch.len());
    assert_eq!(branch.len() % weight.len(), 0);
    let width = weight.len();
    for (res_row, row) in residual
        .chunks_exact_mut(width)
        .zip(branch.chunks_exact(width))
    {
        let r = inv_rms(row, eps);
        for ((x, &v), &w) in res_row.iter_mut().zip(row).zip(weight) {
            *x += v * r * (1.0 + w);
        }
    }
}

/// RoPE inverse frequencies `1 / base^(2i / head_dim)` for `i < head_dim / 2`, with the
/// exponent and the power computed in f32 as transformers does
/// (`base ** (arange(0, d, 2).float() / d)`).
pub fn rope_inv_freq(head_dim: usize, base: f32) -> Vec<f32> {
    (0..head_dim / 2)
        .map(|i| 1.0 / base.powf((2 * i) as f32 / head_dim as f32))
        .collect()
}

/// Cosine and sine tables `[num_positions, head_dim / 2]` for positions `0..num_positions`.
/// The angle is the f32 product `pos * inv_freq[i]`; cos and sin are taken in f32.
pub fn rope_tables(num_positions: usize, inv_freq: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let half = inv_freq.len();
    let mut cos = vec![0.0; num_positions * half];
    let mut sin = vec![0.0; num_positions * half];
    for pos in 0..num_positions {
        for (i, &f) in inv_freq.iter().enumerate() {
            let angle = pos as f32 * f;
            cos[pos * half + i] = angle.cos();
            sin[pos * half + i] = angle.sin();
        }
    }
    (cos, sin)
}

/// Rotary embedding, NeoX half-split pairing `(i, i + head_dim/2)`, in place on
/// `x = [positions.len(), num_heads * head_dim]`, with tables from [`rope_tables`]:
/// `out_i = x_i cos - x_{i+h} sin`, `out_{i+h} = x_{i+h} cos + x_i sin`.
pub fn rope(
    x: &mut [f32],
    positions: &[u32],
    num_heads: usize,
    head_dim: usize,
    cos: &[f32],
    sin: &[f32],
) {
    let half = head_dim / 2;
    assert_eq!(x.len(), positions.len() * num_heads * head_dim);
    for (row, &pos) in x.chunks_exact_mut(num_heads * head_dim).zip(positions) {
        let cos = &cos[pos as usize * half..][..half];
        let sin = &sin[pos as usize * half..][..half];
        for head in row.chunks_exact_mut(head_dim) {
            let (lo, hi) = head.split_at_mut(half);
            for i in 0..half {
                let (a, b) = (lo[i], hi[i]);
                lo[i] = a * cos[i] - b * sin[i];
                hi[i] = b * cos[i] + a * sin[i];
            }
        }
    }
}

/// `e^x` in f32 without libm calls, so loops over it vectorize: Cody-Waite reduction by ln 2 and
/// the Cephes `expf` polynomial (about 1 ulp). Inputs are clamped to [-87, 88], so the result
/// stays finite and normal (`exp(-87)` = 1.6e-38 stands in for anything smaller).
#[inline]
pub fn exp_f32(x: f32) -> f32 {
    // Adding 1.5 * 2^23 rounds x / ln 2 to the nearest integer n and leaves n in the low
    // mantissa bits, so neither `floor` nor a saturating float-to-int cast is needed.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let shifted = x * std::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    // ln 2 split into 355/512 (exact, so n * it is exact) and a small correction.
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let p = ((((1.987_569_1e-4 * r + 1.398_2e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 0.166_666_65)
        * r
        + 0.5;
    let e = p * r * r + r + 1.0;
    let biased_exponent = shifted
        .to_bits()
        .wrapping_sub(ROUND.to_bits())
        .wrapping_add(127);
    e * f32::from_bits(biased_exponent << 23)
}

/// GELU, tanh approximation (`gelu_pytorch_tanh`):
/// `0.5 x (1 + tanh(u))` with `u = sqrt(2/pi) (x + 0.044715 x^3)`, evaluated as the identical
/// `x / (1 + e^(-2u))` through [`exp_f32`] (one exp instead of a libm `tanh`).
#[inline]
pub fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    let u = SQRT_2_OVER_PI * (x + 0.044715 * x * x * x);
    x / (1.0 + exp_f32(-2.0 * u))
}

/// The MLP's gate: `out = gelu_tanh(gate) * up`, elementwise.
pub fn gelu_tanh_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    assert_eq!(gate.len(), up.len());
    assert_eq!(gate.len(), out.len());
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = gelu_tanh(g) * u;
    }
}

/// `out[rows, out_features] = x[rows, in_features] · w^T` for a PyTorch Linear weight
/// `w = [out_features, in_features]`, through the `gemm` crate; threads on the rayon pool.
pub fn linear(x: &[f32], w: &[f32], in_features: usize, out_features: usize, out: &mut [f32]) {
    linear_with(x, w, in_features, out_features, out, Parallelism::Rayon(0));
}

/// [`linear`] with an explicit gemm parallelism (`None` inside already-parallel code).
pub(crate) fn linear_with(
    x: &[f32],
    w: &[f32],
    in_features: usize,
    out_features: usize,
    out: &mut [f32],
    parallelism: Parallelism,
) {
    let weight = WeightLayout::OutputMajor;
    project(x, w, weight, in_features, out_features, out, parallelism);
}

/// [`linear`] for the weight held input-major, `w_t = [in_features, out_features]` (the
/// transpose of PyTorch's layout): the same sums in the same order, so the same bits. gemm swaps
/// the operands for a row-major output, so the weight is its left-hand side. An `[out, in]` weight
/// it packs whole at every call, through strided reads, on the calling thread alone before its
/// threads start; an input-major one it packs inside its threads from contiguous columns, or reads
/// as it is when a call has at most 96 rows on several threads. For a short batch the serial pack
/// was most of the time (128 rows of EmbeddingGemma's shapes: 86-150 GFLOP/s against 189-205,
/// `cargo bench --bench cpu_ops -- linear` on a 2-vCPU VM).
pub fn linear_input_major(
    x: &[f32],
    w_t: &[f32],
    in_features: usize,
    out_features: usize,
    out: &mut [f32],
) {
    let weight = WeightLayout::InputMajor;
    let parallelism = Parallelism::Rayon(0);
    project(x, w_t, weight, in_features, out_features, out, parallelism);
}

/// How a Linear weight's `out_features x in_features` values lie in memory.
#[derive(Clone, Copy)]
enum WeightLayout {
    /// `[out_features, in_features]`, PyTorch's.
    OutputMajor,
    /// `[in_features, out_features]`.
    InputMajor,
}

fn project(
    x: &[f32],
    w: &[f32],
    weight: WeightLayout,
    in_features: usize,
    out_features: usize,
    out: &mut [f32],
    parallelism: Parallelism,
) {
    assert_eq!(x.len() % in_features, 0);
    let rows = x.len() / in_features;
    assert_eq!(w.len(), in_features * out_features);
    assert_eq!(out.len(), rows * out_features);
    // gemm 0.19 picks its algorithm by shape (gemm-common `gemm_basic_generic`): a gemv for one
    // row, a "horizontal" kernel when rows * out <= 256, and a different k-blocking when rows
    // and out are both <= 64. Those paths sum in another order, so a row's result would depend
    // on how many rows share the call, i.e. on the batch it is in. Short calls are padded with
    // zero rows up to the row count where the blocked kernel (whose k-blocking does not depend
    // on the row count) always runs; every row then gets the same bits whatever the batch.
    let min_rows = if out_features <= 64 && in_features > 512 {
        65
    } else {
        (256 / out_features + 1).max(2)
    };
    if rows < min_rows {
        let mut padded_x = vec![0.0; min_rows * in_features];
        padded_x[..x.len()].copy_from_slice(x);
        let mut padded_out = vec![0.0; min_rows * out_features];
        project(
            &padded_x,
            w,
            weight,
            in_features,
            out_features,
            &mut padded_out,
            parallelism,
        );
        out.copy_from_slice(&padded_out[..out.len()]);
        return;
    }
    // Element (k, n) of the right-hand side w^T: at n * in + k output-major, k * out + n
    // input-major.
    let (rhs_cs, rhs_rs) = match weight {
        WeightLayout::OutputMajor => (in_features as isize, 1),
        WeightLayout::InputMajor => (1, out_features as isize),
    };
    // SAFETY: the asserts above bound every access: lhs is [rows, in] with row stride `in`,
    // rhs is w^T with the strides of its layout above (both cover exactly in * out elements),
    // dst is [rows, out] with row stride `out`.
    unsafe {
        gemm::gemm(
            rows,
            out_features,
            in_features,
            out.as_mut_ptr(),
            1,
            out_features as isize,
            false,
            x.as_ptr(),
            1,
            in_features as isize,
            w.as_ptr(),
            rhs_cs,
            rhs_rs,
            0.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// Gemma's gated MLP: `out = (gelu_tanh(h Wg^T) * (h Wu^T)) Wd^T`, with `gate_w`, `up_w`
/// `[intermediate, hidden]` and `down_w` `[hidden, intermediate]`.
pub fn gated_mlp(
    h: &[f32],
    gate_w: &[f32],
    up_w: &[f32],
    down_w: &[f32],
    hidden: usize,
    intermediate: usize,
    out: &mut [f32],
) {
    let rows = h.len() / hidden;
    let mut gate = vec![0.0; rows * intermediate];
    let mut up = vec![0.0; rows * intermediate];
    linear(h, gate_w, hidden, intermediate, &mut gate);
    linear(h, up_w, hidden, intermediate, &mut up);
    let mut act = vec![0.0; rows * intermediate];
    gelu_tanh_mul(&gate, &up, &mut act);
    linear(&act, down_w, intermediate, hidden, out);
}

/// Shape of one attention call; see [`attention`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionShape {
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    /// `Some(r)`: token i sees token j of its own sequence iff `|i - j| <= r` (sliding
    /// layers); `None`: it sees all of them (full layers).
    pub window: Option<usize>,
    /// Multiplies the raw scores `q · k` (`query_pre_attn_scalar^-0.5`).
    pub scale: f32,
}

/// Query rows per attention task: one GEMM-shaped block of scores per task.
const ATTENTION_QUERY_BLOCK: usize = 64;

/// Bidirectional attention over a packed variable-length batch, threaded on the rayon pool.
///
/// `q`, `out` are `[tokens, num_heads * head_dim]`, `k`, `v` are
/// `[tokens, num_kv_heads * head_dim]`; `seq_offsets` (`n_seq + 1` cumulative offsets) splits
/// the tokens into sequences that never see each other. Query head `h` uses KV head
/// `h / (num_heads / num_kv_heads)` (grouped/multi-query attention). For each query,
/// `softmax(scale · q kᵀ)` (f32, max-subtracted) over the allowed keys, times `v`.
///
/// Work is split into blocks of up to 64 queries of one sequence; a block computes its scores
/// with GEMMs against exactly the keys its window can reach, so the cost grows with the window,
/// not with the sequence length.
pub fn attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    seq_offsets: &[u32],
    shape: AttentionShape,
    out: &mut [f32],
) {
    let AttentionShape {
        num_heads,
        num_kv_heads,
        head_dim,
        ..
    } = shape;
    let q_width = num_heads * head_dim;
    let kv_width = num_kv_heads * head_dim;
    let tokens = *seq_offsets.last().unwrap_or(&0) as usize;
    assert!(num_kv_heads > 0 && num_heads % num_kv_heads == 0);
    assert_eq!(q.len(), tokens * q_width);
    assert_eq!(k.len(), tokens * kv_width);
    assert_eq!(v.len(), tokens * kv_width);
    assert_eq!(out.len(), tokens * q_width);

    // (sequence start, sequence end, block start) for every query block, in token order, so
    // `out` can be handed out as disjoint row ranges.
    let blocks: Vec<(usize, usize, usize)> = seq_offsets
        .windows(2)
        .flat_map(|w| {
            let (start, end) = (w[0] as usize, w[1] as usize);
            (start..end)
                .step_by(ATTENTION_QUERY_BLOCK)
                .map(move |b| (start, end, b))
        })
        .collect();
    let mut out_blocks = Vec::with_capacity(blocks.len());
    let mut rest = out;
    for &(_, end, b) in &blocks {
        let rows = ATTENTION_QUERY_BLOCK.min(end - b);
        let (head, tail) = rest.split_at_mut(rows * q_width);
        out_blocks.push(head);
        rest = tail;
    }

    blocks.into_par_iter().zip(out_blocks).for_each_init(
        AttentionScratch::default,
        |scratch, ((start, end, b), out_block)| {
            attention_block(q, k, v, shape, start, end, b, out_block, scratch);
        },
    );
}

/// One attention task's buffers, kept from block to block.
#[derive(Default)]
struct AttentionScratch {
    /// The block's query rows of one KV head's group: `[rows * group, head_dim]`, row
    /// `i * group + j` for query `b + i` and the group's head `j`.
    queries: Vec<f32>,
    /// Their scores, then probabilities: `[rows * group, keys]`.
    scores: Vec<f32>,
    /// Their outputs, in the layout of `queries`.
    outputs: Vec<f32>,
}

/// One query block `[b, b + rows)` of the sequence `[start, end)`; see [`attention`]. The query
/// heads that share a KV head go through one pair of GEMMs, as rows of their own: the keys and
/// values are then read once for the group, not once per head.
#[allow(clippy::too_many_arguments)]
fn attention_block(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    shape: AttentionShape,
    start: usize,
    end: usize,
    b: usize,
    out: &mut [f32],
    scratch: &mut AttentionScratch,
) {
    let AttentionShape {
        num_heads,
        num_kv_heads,
        head_dim,
        window,
        scale,
    } = shape;
    let q_width = num_heads * head_dim;
    let kv_width = num_kv_heads * head_dim;
    let group = num_heads / num_kv_heads;
    let group_width = group * head_dim;
    let rows = out.len() / q_width;
    let stacked = rows * group;
    // Keys any query of the block may see, as absolute token indices [k0, k1).
    let (k0, k1) = match window {
        Some(r) => (b.saturating_sub(r).max(start), (b + rows + r).min(end)),
        None => (start, end),
    };
    let keys = k1 - k0;
    let AttentionScratch {
        queries,
        scores,
        outputs,
    } = scratch;
    queries.resize(stacked * head_dim, 0.0);
    scores.resize(stacked * keys, 0.0);
    outputs.resize(stacked * head_dim, 0.0);

    for kv_head in 0..num_kv_heads {
        // Query i's heads of this group are one contiguous span of its row.
        let first_column = kv_head * group_width;
        for (i, stacked_rows) in queries.chunks_exact_mut(group_width).enumerate() {
            let row = (b + i) * q_width + first_column;
            stacked_rows.copy_from_slice(&q[row..row + group_width]);
        }
        let k_head = &k[k0 * kv_width + kv_head * head_dim..];
        let v_head = &v[k0 * kv_width + kv_head * head_dim..];
        // SAFETY: lhs is the [stacked, head_dim] query buffer resized above; rhs element (d, j)
        // is key j's component d at j * kv_width + d in k_head, j < keys; dst is the
        // [stacked, keys] scores buffer resized above. All rows lie inside the slices.
        unsafe {
            gemm::gemm(
                stacked,
                keys,
                head_dim,
                scores.as_mut_ptr(),
                1,
                keys as isize,
                false,
                queries.as_ptr(),
                1,
                head_dim as isize,
                k_head.as_ptr(),
                kv_width as isize,
                1,
                0.0,
                scale,
                false,
                false,
                false,
                Parallelism::None,
            );
        }
        for (stacked_row, row) in scores.chunks_exact_mut(keys).enumerate() {
            let query = b + stacked_row / group;
            let (lo, hi) = match window {
                Some(r) => (
                    query.saturating_sub(r).max(k0) - k0,
                    (query + r + 1).min(k1) - k0,
                ),
                None => (0, keys),
            };
            softmax_in_window(row, lo, hi);
        }
        // SAFETY: lhs is the [stacked, keys] probability buffer; rhs element (j, d) is value j's
        // component d at j * kv_width + d in v_head, j < keys; dst is the [stacked, head_dim]
        // output buffer resized above.
        unsafe {
            gemm::gemm(
                stacked,
                head_dim,
                keys,
                outputs.as_mut_ptr(),
                1,
                head_dim as isize,
                false,
                scores.as_ptr(),
                1,
                keys as isize,
                v_head.as_ptr(),
                1,
                kv_width as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                Parallelism::None,
            );
        }
        for (out_row, stacked_rows) in out
            .chunks_exact_mut(q_width)
            .zip(outputs.chunks_exact(group_width))
        {
            out_row[first_column..first_column + group_width].copy_from_slice(stacked_rows);
        }
    }
}

/// Softmax of `row[lo..hi]` in place (max-subtracted, f32); every other entry becomes 0.
fn softmax_in_window(row: &mut [f32], lo: usize, hi: usize) {
    let window = &mut row[lo..hi];
    let max = window.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    window.iter_mut().for_each(|s| *s = exp_f32(*s - max));
    let mut lanes = [0.0f32; 8];
    let chunks = window.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().sum();
    for chunk in chunks {
        for (lane, &e) in lanes.iter_mut().zip(chunk) {
            *lane += e;
        }
    }
    let inv = 1.0 / (lanes.iter().sum::<f32>() + tail);
    window.iter_mut().for_each(|s| *s *= inv);
    row[..lo].fill(0.0);
    row[hi..].fill(0.0);
}

/// Mean of the rows of each sequence: `out[s] = mean(x[seq_offsets[s]..seq_offsets[s+1]])`,
/// accumulated in f64 (sentence-transformers mean pooling with every token counted).
pub fn mean_pool(x: &[f32], hidden: usize, seq_offsets: &[u32], out: &mut [f32]) {
    assert_eq!(out.len(), seq_offsets.len().saturating_sub(1) * hidden);
    let mut acc = vec![0.0f64; hidden];
    for (w, out_row) in seq_offsets.windows(2).zip(out.chunks_exact_mut(hidden)) {
        let (start, end) = (w[0] as usize, w[1] as usize);
        acc.fill(0.0);
        for row in x[start * hidden..end * hidden].chunks_exact(hidden) {
            for (a, &v) in acc.iter_mut().zip(row) {
                *a += f64::from(v);
            }
        }
        let count = (end - start).max(1) as f64;
        for (o, &a) in out_row.iter_mut().zip(&acc) {
            *o = (a / count) as f32;
        }
    }
}

/// L2-normalize every row of `dim` elements in place: `y / max(||y||, 1e-12)`
/// (`torch.nn.functional.normalize`). Returns each row's `max(||y||, 1e-12)`.
pub fn l2_normalize(x: &mut [f32], dim: usize) -> Vec<f32> {
    x.chunks_exact_mut(dim)
        .map(|row| {
            let norm = (sum_of_squares(row).sqrt() as f32).max(1e-12);
            let inv = 1.0 / norm;
            row.iter_mut().for_each(|v| *v *= inv);
            norm
        })
        .collect()
}

/// Matryoshka truncation: the first `dimensions` components of every `dim`-wide row,
/// renormalized to unit length. Returns `[rows, dimensions]` and each row's divisor.
pub fn truncate_normalize(x: &[f32], dim: usize, dimensions: usize) -> (Vec<f32>, Vec<f32>) {
    assert!(dimensions <= dim);
    let mut out: Vec<f32> = x
        .chunks_exact(dim)
        .flat_map(|row| row[..dimensions].iter().copied())
        .collect();
    let norms = l2_normalize(&mut out, dimensions);
    (out, norms)
}
