// residual_norm.cu: residual += RMSNorm_post(branch), fused with the next norm's statistics.
//
// Layout: branch [num_tokens, hidden] (the O or down projection output): f32 for
// `residual_norm`, bf16 for `residual_norm_bf16_branch`; residual f32 in/out and
// residual_bf16 out [num_tokens, hidden], post_norm f32 [hidden], inv_rms f32 [num_tokens].
// Launch: one warp per token, 8 tokens per 256-thread block. Lane l owns elements
// [8 (32 k + l), 8 (32 k + l) + 8) of chunk k = 0..RESIDUAL_NORM_MAX_HIDDEN / 256 - 1 (those
// below hidden): every access is 16 bytes wide (8 bf16, or 2 x 4 f32) and a warp's chunk is one
// contiguous run. The lane loads its branch and residual elements all at once and holds them in
// registers through both reductions, so each row is read from memory once; the L1-resident
// post_norm weight is loaded chunk by chunk after the first reduction. The bf16 branch is held
// as its bits (80 registers under __launch_bounds__(256, 3) on sm_90a, three blocks per SM);
// the f32 branch takes 87 (two blocks).
// hidden % 8 == 0 and hidden <= RESIDUAL_NORM_MAX_HIDDEN (1024), checked by the host.
// Numerics (Gemma RMSNorm, all f32 once the branch is loaded):
// y = branch * rsqrt(mean(branch^2) + eps) * (1 + w); residual += y (the residual stream stays
// f32). Then the new residual's inverse RMS and its bf16 copy feed the next GEMM, whose weight
// columns carry the next norm's (1 + w). The bf16 branch halves the GEMM's output and this
// kernel's branch read; its rounding is modelled in tests/cuda_numerics.rs.
#include "common.cuh"

// 256-element chunks of a row per warp (8 elements per lane each).
constexpr uint32_t RESIDUAL_NORM_CHUNKS = RESIDUAL_NORM_MAX_HIDDEN / 256;
static_assert(RESIDUAL_NORM_CHUNKS * 256 == RESIDUAL_NORM_MAX_HIDDEN,
              "rows are held in whole 256-element chunks");

// A lane's 8 branch elements as loaded: 8 floats, or 8 bf16 in 4 registers until used.
struct BranchF32 {
    f32x8 x;
    __device__ __forceinline__ f32x8 get() const { return x; }
};
struct BranchBf16 {
    uint4 bits;
    __device__ __forceinline__ f32x8 get() const { return bf16x8_to_f32(bits); }
};
__device__ __forceinline__ BranchF32 load_branch(const float* p) { return {load_f32x8(p)}; }
__device__ __forceinline__ BranchBf16 load_branch(const bf16_t* p) {
    return {load_bf16x8_bits(p)};
}

template <typename Branch, typename Held>
__device__ __forceinline__ void residual_norm_rows(const ResidualNormParams& p) {
    const uint32_t token = (blockIdx.x * blockDim.x + threadIdx.x) / 32;
    const uint32_t lane = threadIdx.x % 32;
    if (token >= p.num_tokens) return;

    const size_t base = static_cast<size_t>(token) * p.hidden;
    const Branch* branch = static_cast<const Branch*>(p.branch) + base;
    float* residual = p.residual + base;

    Held b[RESIDUAL_NORM_CHUNKS];
    f32x8 x[RESIDUAL_NORM_CHUNKS];
    for (uint32_t k = 0; k < RESIDUAL_NORM_CHUNKS; ++k) {
        const uint32_t c = (k * 32 + lane) * 8;
        b[k] = c < p.hidden ? load_branch(branch + c) : Held{};
        x[k] = c < p.hidden ? load_f32x8(residual + c) : f32x8{};
    }

    float branch_squares = 0.0f;
    for (uint32_t k = 0; k < RESIDUAL_NORM_CHUNKS; ++k) {
        const f32x8 bk = b[k].get();
        for (int j = 0; j < 8; ++j) branch_squares += bk.v[j] * bk.v[j];
    }
    const float branch_inv_rms = inverse_rms(warp_sum(branch_squares), p.hidden, p.eps);

    float residual_squares = 0.0f;
    for (uint32_t k = 0; k < RESIDUAL_NORM_CHUNKS; ++k) {
        const uint32_t c = (k * 32 + lane) * 8;
        if (c >= p.hidden) break;
        const f32x8 w = load_f32x8(p.post_norm + c);
        const f32x8 bk = b[k].get();
        for (int j = 0; j < 8; ++j) {
            x[k].v[j] += bk.v[j] * branch_inv_rms * (1.0f + w.v[j]);
            residual_squares += x[k].v[j] * x[k].v[j];
        }
        store_f32x8(residual + c, x[k]);
        store_bf16x8(p.residual_bf16 + base + c, x[k]);
    }
    residual_squares = warp_sum(residual_squares);
    if (lane == 0) p.inv_rms[token] = inverse_rms(residual_squares, p.hidden, p.eps);
}

extern "C" __global__ void __launch_bounds__(256) residual_norm(ResidualNormParams p) {
    residual_norm_rows<float, BranchF32>(p);
}

extern "C" __global__ void __launch_bounds__(256, 3) residual_norm_bf16_branch(ResidualNormParams p) {
    residual_norm_rows<bf16_t, BranchBf16>(p);
}
