// qkv_post.cu: from the fused QKV projection to attention-ready Q, K, V.
//
// Layout: qkv bf16 [num_tokens, (num_heads + 2) * head_dim] (q heads, then k, then v; the
// GEMM ran on bf16(residual) with the input norm's (1 + w) folded into its weight columns);
// inv_rms f32 [num_tokens] of the GEMM input; rope_cos/rope_sin f32 [max_positions,
// head_dim / 2] for this layer's theta. Out: q bf16 [num_tokens, num_heads, head_dim],
// k and v bf16 [num_tokens, head_dim].
// Launch: QKV_POST_LANES (16) lanes per row, row = token * (num_heads + 2) + slot (slot = q
// head 0..num_heads-1, k, v: the row of qkv seen as [num_tokens * (num_heads + 2), head_dim]),
// two rows per warp, 16 rows per 256-thread block, ceil(rows / 16) blocks. Lane l of a row owns
// elements [8l, 8l + 8) of each half, so the RoPE pairs (i, i + head_dim/2) stay in one lane and
// every access is 16 bytes (8 bf16 or 2 x 4 f32); lanes with 8l >= head_dim/2 idle.
// head_dim % 16 == 0 and head_dim <= QKV_POST_MAX_HEAD_DIM (256), and the grid's threads
// < 2^32 (u32 index), checked by the host. A lane issues its qkv, inv_rms, position and (q, k)
// RoPE loads before the row's sum of squares is reduced, the L1-resident norm weight after;
// __launch_bounds__(256, 4): 64 registers, four blocks per SM.
// Numerics, all f32, one bf16 rounding at the store: x = qkv * inv_rms (completes the input
// RMSNorm); q and k: x * rsqrt(mean(x^2) + eps) * (1 + w), then NeoX RoPE
// (out_i = a cos - b sin, out_{i+h} = b cos + a sin); q also times q_scale (1/16, exact).
// v: x only (v is not normed).
#include "common.cuh"

static_assert(QKV_POST_MAX_HEAD_DIM == 2 * QKV_POST_LANES * 8,
              "each of a row's 16 lanes holds 8 elements of each half");

extern "C" __global__ void __launch_bounds__(256, 4) qkv_post(QkvPostParams p) {
    const uint32_t slots = p.num_heads + 2;
    const uint32_t row = (blockIdx.x * blockDim.x + threadIdx.x) / QKV_POST_LANES;
    const uint32_t d = p.head_dim;
    const uint32_t half = d / 2;
    const uint32_t i = (threadIdx.x % QKV_POST_LANES) * 8;
    // Idle lanes (past the last row, or past half) load and store nothing but still take part
    // in the shuffles of half_warp_sum.
    const bool active = row < p.num_tokens * slots && i < half;
    const uint32_t token = row / slots;
    const uint32_t slot = row - token * slots;
    const bool is_value = slot == p.num_heads + 1;
    const bool is_key = slot == p.num_heads;

    f32x8 a = {}, b = {}, rope_cos = {}, rope_sin = {};
    float row_scale = 0.0f;
    if (active) {
        const bf16_t* src = p.qkv + static_cast<size_t>(row) * d;
        a = load_bf16x8(src + i);
        b = load_bf16x8(src + half + i);
        row_scale = p.inv_rms[token];
        if (!is_value) {
            const size_t table_row = static_cast<size_t>(p.positions[token]) * half;
            rope_cos = load_f32x8(p.rope_cos + table_row + i);
            rope_sin = load_f32x8(p.rope_sin + table_row + i);
        }
    }

    float sum_squares = 0.0f;
    for (int j = 0; j < 8; ++j) {
        const float x1 = a.v[j] * row_scale;
        const float x2 = b.v[j] * row_scale;
        sum_squares += x1 * x1;
        sum_squares += x2 * x2;
    }
    sum_squares = half_warp_sum(sum_squares);
    if (!active) return;

    if (is_value) {
        bf16_t* dst = p.v + static_cast<size_t>(token) * d;
        for (int j = 0; j < 8; ++j) {
            a.v[j] *= row_scale;
            b.v[j] *= row_scale;
        }
        store_bf16x8(dst + i, a);
        store_bf16x8(dst + half + i, b);
        return;
    }

    const float out_scale = is_key ? 1.0f : p.q_scale;
    bf16_t* dst = is_key ? p.k + static_cast<size_t>(token) * d
                         : p.q + (static_cast<size_t>(token) * p.num_heads + slot) * d;
    const float* weight = is_key ? p.k_norm : p.q_norm;
    const f32x8 wa = load_f32x8(weight + i);
    const f32x8 wb = load_f32x8(weight + half + i);
    const float norm_scale = row_scale * inverse_rms(sum_squares, d, p.eps);
    f32x8 lo, hi;
    for (int j = 0; j < 8; ++j) {
        const float x1 = a.v[j] * norm_scale * (1.0f + wa.v[j]);
        const float x2 = b.v[j] * norm_scale * (1.0f + wb.v[j]);
        lo.v[j] = (x1 * rope_cos.v[j] - x2 * rope_sin.v[j]) * out_scale;
        hi.v[j] = (x2 * rope_cos.v[j] + x1 * rope_sin.v[j]) * out_scale;
    }
    store_bf16x8(dst + i, lo);
    store_bf16x8(dst + half + i, hi);
}
