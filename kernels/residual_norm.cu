// residual_norm.cu: residual += RMSNorm_post(branch), fused with the next norm's statistics.
//
// Layout: branch [num_tokens, hidden] (the O or down projection output): f32 for
// `residual_norm`, bf16 for `residual_norm_bf16_branch`; residual f32 in/out and
// residual_bf16 out [num_tokens, hidden], post_norm f32 [hidden], inv_rms f32 [num_tokens].
// Launch: one warp per token, 8 tokens per 256-thread block; hidden % 4 == 0.
// Numerics (Gemma RMSNorm, all f32 once the branch is loaded):
// y = branch * rsqrt(mean(branch^2) + eps) * (1 + w); residual += y (the residual stream stays
// f32). Then the new residual's inverse RMS and its bf16 copy feed the next GEMM, whose weight
// columns carry the next norm's (1 + w). The bf16 branch halves the GEMM's output and this
// kernel's branch read; its rounding is modelled in tests/cuda_numerics.rs.
#include "common.cuh"

__device__ __forceinline__ f32x4 load_branch(const float* p) { return load_f32x4(p); }
__device__ __forceinline__ f32x4 load_branch(const bf16_t* p) { return load_bf16x4(p); }

template <typename Branch>
__device__ __forceinline__ void residual_norm_rows(const ResidualNormParams& p) {
    const uint32_t token = (blockIdx.x * blockDim.x + threadIdx.x) / 32;
    const uint32_t lane = threadIdx.x % 32;
    if (token >= p.num_tokens) return;

    const size_t base = static_cast<size_t>(token) * p.hidden;
    const Branch* branch = static_cast<const Branch*>(p.branch) + base;
    float* residual = p.residual + base;

    float branch_squares = 0.0f;
    for (uint32_t c = lane * 4; c < p.hidden; c += 32 * 4) {
        const f32x4 b = load_branch(branch + c);
        for (int j = 0; j < 4; ++j) branch_squares += b.v[j] * b.v[j];
    }
    const float branch_inv_rms = inverse_rms(warp_sum(branch_squares), p.hidden, p.eps);

    float residual_squares = 0.0f;
    for (uint32_t c = lane * 4; c < p.hidden; c += 32 * 4) {
        const f32x4 b = load_branch(branch + c);
        const f32x4 w = load_f32x4(p.post_norm + c);
        f32x4 x = load_f32x4(residual + c);
        for (int j = 0; j < 4; ++j) {
            x.v[j] += b.v[j] * branch_inv_rms * (1.0f + w.v[j]);
            residual_squares += x.v[j] * x.v[j];
        }
        store_f32x4(residual + c, x);
        store_bf16x4(p.residual_bf16 + base + c, x);
    }
    residual_squares = warp_sum(residual_squares);
    if (lane == 0) p.inv_rms[token] = inverse_rms(residual_squares, p.hidden, p.eps);
}

extern "C" __global__ void __launch_bounds__(256) residual_norm(ResidualNormParams p) {
    residual_norm_rows<float>(p);
}

extern "C" __global__ void __launch_bounds__(256) residual_norm_bf16_branch(ResidualNormParams p) {
    residual_norm_rows<bf16_t>(p);
}
