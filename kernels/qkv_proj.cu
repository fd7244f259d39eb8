/* qkv_proj.cu: the QKV projection with qkv_post's arithmetic in its epilogue (sm_90a).
 *
 * For head slot s (q heads 0 .. num_heads - 1, then k, then v) and token t, with
 * y = r_t (x_t . W_s^T) where x = bf16(residual), W_s the slot's 256 weight rows (the input
 * norm's 1 + w scales their columns) and r_t = inv_rms[t] completing that norm:
 *   q and k: y * rsqrt(mean(y^2) + eps) * (1 + w_norm), NeoX RoPE at the token's position
 *            (out_i = a cos - b sin, out_{i+128} = b cos + a sin), q also times q_scale;
 *   v: y.
 * The cuBLAS QKV GEMM followed by qkv_post.cu, in one kernel: the [num_tokens, 1280] bf16 qkv
 * activations never reach memory.
 *
 * Layout (QkvProjParams in params.h): x bf16 [num_tokens, hidden]; w bf16
 * [(num_heads + 2) * 256, hidden] (the engine's uploaded QKV weight, unchanged); inv_rms f32
 * [num_tokens]; positions u32 [num_tokens]; q_norm, k_norm f32 [256]; rope_cos/rope_sin f32
 * [max_positions, 128]. Out: q bf16 [num_tokens, num_heads, 256], k and v bf16 [num_tokens, 256].
 *
 * Launch: persistent, grid (min(tiles, SMs)), QKV_PROJ_THREADS (two warpgroups),
 * QKV_PROJ_SMEM_BYTES of dynamic shared memory (one CTA per SM). A tile is BLOCK_M = 128 token
 * rows x one slot's 256 weight rows, (num_heads + 2) x ceil(num_tokens / BLOCK_M) of them; each
 * CTA walks the tiles blockIdx.x, + gridDim.x, ... (gemm_pipeline.cuh's wgmma_gemm_persistent:
 * the next tile's first loads are in flight during each epilogue), through the wgmma main loop:
 * QKV_PROJ_STAGES stages of 64-wide k slices (x [128][64], w [256][64]), one slice's wgmmas in
 * flight across each barrier and loads two slices ahead, warpgroup g multiplying
 * rows 64 g .. 64 g + 63 with wgmma.m64n256k16, 128 f32 accumulators per thread. The slot index
 * runs fastest, so the tiles sharing x rows run together. Epilogue (qkv_proj.cuh): each thread
 * holds 64 columns of two rows; the row's sum of squares is reduced over its quad with two
 * shuffles, and RoPE pairs (c, c + 128) are registers r and r + 64 of the same thread. Rows past
 * num_tokens compute zeros (zero-filled x) and are not stored. On other architectures the
 * kernel traps; the host launches it only on sm_90.
 *
 * qkv_proj_tma: the same tiles and epilogue, the stages filled by TMA from a producer warpgroup
 * and handed over through mbarriers (gemm_pipeline.cuh's wgmma_gemm_tma_persistent),
 * QKV_TMA_THREADS (three warpgroups); a second, __grid_constant__ parameter carries the maps.
 *
 * Numerics: bf16 products accumulated in f32 by the tensor cores; inverse RMS, the q/k RMSNorm,
 * RoPE (f32 tables) and the query scale in f32; one bf16 rounding at the store. The cuBLAS path
 * rounds the projection to bf16 before qkv_post; this kernel does not.
 */
#include "common.cuh"
#include "gemm_pipeline.cuh"
#include "qkv_proj.cuh"

namespace {

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
/* The epilogue of the tile at token row first_row and head slot `slot` (see the header), run by
 * the warp that is warp `warp` of the warpgroups that multiplied. */
__device__ __forceinline__ void qkv_proj_epilogue(const float (&acc)[QKV_PROJ_ACC_REGS],
                                                  const QkvProjParams &p, uint32_t first_row,
                                                  uint32_t slot, int warp) {
    const int lane = threadIdx.x & 31;
    constexpr uint32_t kHeadDim = ATTENTION_HEAD_DIM;
    constexpr uint32_t kHalf = kHeadDim / 2;
    const bool is_value = slot == p.num_heads + 1;
    const bool is_key = slot == p.num_heads;
    const float *norm_weight = is_key ? p.k_norm : p.q_norm;
    const float out_scale = is_key ? 1.0f : p.q_scale;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
        const uint32_t row = first_row + gemm_wgmma_row(warp, lane, half);
        const bool valid = row < p.num_tokens;
        /* Every lane of the quad shares `row`, and every lane reaches the shuffles. */
        const float r = valid ? p.inv_rms[row] : 0.0f;
        if (is_value) {
            if (!valid) continue;
            bf16_t *dst = p.v + static_cast<size_t>(row) * kHeadDim;
#pragma unroll
            for (int tile = 0; tile < 2 * QKV_PROJ_HALF_TILES; ++tile) {
                *reinterpret_cast<uint32_t *>(dst + gemm_wgmma_col(lane, tile)) =
                    pack_bf16x2(r * acc[gemm_wgmma_reg(tile, half, 0)],
                                r * acc[gemm_wgmma_reg(tile, half, 1)]);
            }
            continue;
        }
        float sum_squares = 0.0f;
#pragma unroll
        for (int tile = 0; tile < 2 * QKV_PROJ_HALF_TILES; ++tile) {
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const float y = r * acc[gemm_wgmma_reg(tile, half, e)];
                sum_squares += y * y;
            }
        }
        sum_squares = quad_sum(sum_squares);
        if (!valid) continue;
        const float norm_scale = r * inverse_rms(sum_squares, kHeadDim, p.eps);
        bf16_t *dst = is_key ? p.k + static_cast<size_t>(row) * kHeadDim
                             : p.q + (static_cast<size_t>(row) * p.num_heads + slot) * kHeadDim;
        const size_t table_row = static_cast<size_t>(p.positions[row]) * kHalf;
#pragma unroll
        for (int tile = 0; tile < QKV_PROJ_HALF_TILES; ++tile) {
            const int col = gemm_wgmma_col(lane, tile);
            const float2 wa = *reinterpret_cast<const float2 *>(norm_weight + col);
            const float2 wb = *reinterpret_cast<const float2 *>(norm_weight + kHalf + col);
            const float2 cos = *reinterpret_cast<const float2 *>(p.rope_cos + table_row + col);
            const float2 sin = *reinterpret_cast<const float2 *>(p.rope_sin + table_row + col);
            const float a0 = acc[gemm_wgmma_reg(tile, half, 0)] * norm_scale * (1.0f + wa.x);
            const float a1 = acc[gemm_wgmma_reg(tile, half, 1)] * norm_scale * (1.0f + wa.y);
            const float b0 =
                acc[gemm_wgmma_reg(tile, half, 0) + QKV_PROJ_ROPE_REGS] * norm_scale * (1.0f + wb.x);
            const float b1 =
                acc[gemm_wgmma_reg(tile, half, 1) + QKV_PROJ_ROPE_REGS] * norm_scale * (1.0f + wb.y);
            *reinterpret_cast<uint32_t *>(dst + col) =
                pack_bf16x2((a0 * cos.x - b0 * sin.x) * out_scale,
                            (a1 * cos.y - b1 * sin.y) * out_scale);
            *reinterpret_cast<uint32_t *>(dst + kHalf + col) =
                pack_bf16x2((b0 * cos.x + a0 * sin.x) * out_scale,
                            (b1 * cos.y + a1 * sin.y) * out_scale);
        }
    }
}
#endif

} // namespace

extern "C" __global__ void __launch_bounds__(QKV_PROJ_THREADS, 1)
    qkv_proj_wgmma(const QkvProjParams p) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    constexpr int kBlockM = QKV_PROJ_BLOCK_M;
    constexpr int kWeightRows = ATTENTION_HEAD_DIM;
    constexpr int kStages = QKV_PROJ_STAGES;
    static_assert(kStages * (kBlockM + kWeightRows) * GEMM_TILE_K * 2 + 1024 == QKV_PROJ_SMEM_BYTES,
                  "params.h smem size");
    static_assert(QKV_PROJ_THREADS == 2 * 128 && kBlockM == 2 * WGMMA_ROWS, "two warpgroups");
    static_assert(QKV_PROJ_ROPE_REGS == QKV_PROJ_ACC_REGS / 2, "RoPE partners in one thread");
    extern __shared__ __align__(128) unsigned char qkv_smem_bytes[];
    bf16_t *smem = smem_align_1024<bf16_t>(qkv_smem_bytes);
    float acc[QKV_PROJ_ACC_REGS];
    wgmma_gemm_persistent<QKV_PROJ_THREADS, kBlockM, kWeightRows, kStages, 1>(
        acc, smem, p.x, p.w, p.num_tokens, p.hidden, p.num_heads + 2,
        [&](const float (&tile_acc)[QKV_PROJ_ACC_REGS], uint32_t first_row, uint32_t slot) {
            qkv_proj_epilogue(tile_acc, p, first_row, slot, threadIdx.x / 32);
        });
#else
    __trap();
#endif
}

/* qkv_proj_wgmma's tiles and epilogue with TMA-filled stages (gemm_pipeline.cuh's
 * wgmma_gemm_tma_persistent): QKV_TMA_THREADS, warpgroup 0 producing, warpgroups 1 and 2
 * multiplying token rows 0..63 and 64..127 of each tile and running the epilogue; same grid and
 * shared memory. `maps` (host: cuTensorMapEncodeTiled) has x [num_tokens, hidden] in boxes of
 * GEMM_TILE_K x BLOCK_M and w [(num_heads + 2) 256, hidden] in boxes of GEMM_TILE_K x 256, both
 * bf16 with the 128-byte swizzle. */
extern "C" __global__ void __launch_bounds__(QKV_TMA_THREADS, 1)
    qkv_proj_tma(const QkvProjParams p, const __grid_constant__ GemmTensorMaps maps) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    constexpr int kBlockM = QKV_PROJ_BLOCK_M;
    static_assert(QKV_TMA_THREADS == 128 + kBlockM / WGMMA_ROWS * 128,
                  "a producer warpgroup and a consumer warpgroup per 64 rows");
    extern __shared__ __align__(128) unsigned char qkv_tma_smem_bytes[];
    float acc[QKV_PROJ_ACC_REGS];
    wgmma_gemm_tma_persistent<kBlockM, ATTENTION_HEAD_DIM, QKV_PROJ_STAGES, 0, 0>(
        acc, smem_align_1024<unsigned char>(qkv_tma_smem_bytes), maps, p.num_tokens, p.hidden,
        gemm_grid_walk(p.num_heads + 2),
        [&](const float (&tile_acc)[QKV_PROJ_ACC_REGS], uint32_t first_row, uint32_t slot,
            int warp) { qkv_proj_epilogue(tile_acc, p, first_row, slot, warp); });
#else
    __trap();
#endif
}
