// qkv_post.cu: from the fused QKV projection to attention-ready Q, K, V.
//
// Layout: qkv bf16 [num_tokens, (num_heads + 2) * head_dim] (q heads, then k, then v; the
// GEMM ran on bf16(residual) with the input norm's (1 + w) folded into its weight columns);
// inv_rms f32 [num_tokens] of the GEMM input; rope_cos/rope_sin f32 [max_positions,
// head_dim / 2] for this layer's theta. Out: q bf16 [num_tokens, num_heads, head_dim],
// k and v bf16 [num_tokens, head_dim].
// Launch: one warp per (token, slot), slot = q head 0..num_heads-1, k, v; 8 warps per
// 256-thread block. Each lane owns 4 consecutive elements of each half, so the RoPE pairs
// (i, i + head_dim/2) stay in one lane. head_dim % 8 == 0.
// Numerics, all f32, one bf16 rounding at the store: x = qkv * inv_rms (completes the input
// RMSNorm); q and k: x * rsqrt(mean(x^2) + eps) * (1 + w), then NeoX RoPE
// (out_i = a cos - b sin, out_{i+h} = b cos + a sin); q also times q_scale (1/16, exact).
// v: x only (v is not normed).
#include "common.cuh"

extern "C" __global__ void __launch_bounds__(256) qkv_post(QkvPostParams p) {
    const uint32_t slots = p.num_heads + 2;
    const uint32_t warp = (blockIdx.x * blockDim.x + threadIdx.x) / 32;
    const uint32_t lane = threadIdx.x % 32;
    if (warp >= p.num_tokens * slots) return;
    const uint32_t token = warp / slots;
    const uint32_t slot = warp % slots;
    const uint32_t d = p.head_dim;
    const bf16_t* src = p.qkv + (static_cast<size_t>(token) * slots + slot) * d;
    const float row_scale = p.inv_rms[token];

    if (slot == p.num_heads + 1) {
        bf16_t* dst = p.v + static_cast<size_t>(token) * d;
        for (uint32_t c = lane * 4; c < d; c += 32 * 4) {
            f32x4 x = load_bf16x4(src + c);
            for (int j = 0; j < 4; ++j) x.v[j] *= row_scale;
            store_bf16x4(dst + c, x);
        }
        return;
    }

    const bool is_key = slot == p.num_heads;
    const float* weight = is_key ? p.k_norm : p.q_norm;
    const float out_scale = is_key ? 1.0f : p.q_scale;
    bf16_t* dst = is_key ? p.k + static_cast<size_t>(token) * d
                         : p.q + (static_cast<size_t>(token) * p.num_heads + slot) * d;

    float sum_squares = 0.0f;
    for (uint32_t c = lane * 4; c < d; c += 32 * 4) {
        const f32x4 x = load_bf16x4(src + c);
        for (int j = 0; j < 4; ++j) {
            const float v = x.v[j] * row_scale;
            sum_squares += v * v;
        }
    }
    const float norm_scale = row_scale * inverse_rms(warp_sum(sum_squares), d, p.eps);

    const uint32_t half = d / 2;
    const size_t table_row = static_cast<size_t>(p.positions[token]) * half;
    for (uint32_t i = lane * 4; i < half; i += 32 * 4) {
        const f32x4 a = load_bf16x4(src + i);
        const f32x4 b = load_bf16x4(src + half + i);
        const f32x4 wa = load_f32x4(weight + i);
        const f32x4 wb = load_f32x4(weight + half + i);
        const f32x4 cos = load_f32x4(p.rope_cos + table_row + i);
        const f32x4 sin = load_f32x4(p.rope_sin + table_row + i);
        f32x4 lo, hi;
        for (int j = 0; j < 4; ++j) {
            const float x1 = a.v[j] * norm_scale * (1.0f + wa.v[j]);
            const float x2 = b.v[j] * norm_scale * (1.0f + wb.v[j]);
            lo.v[j] = (x1 * cos.v[j] - x2 * sin.v[j]) * out_scale;
            hi.v[j] = (x2 * cos.v[j] + x1 * sin.v[j]) * out_scale;
        }
        store_bf16x4(dst + i, lo);
        store_bf16x4(dst + half + i, hi);
    }
}
