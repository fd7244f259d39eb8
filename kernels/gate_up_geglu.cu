/* gate_up_geglu.cu: the MLP's gate|up projection with the gated GELU in its epilogue.
 *
 * out[t, j] = gelu_tanh(r_t g[t, j]) * (r_t u[t, j]) with g = x W_gate^T, u = x W_up^T, where
 * x = bf16(residual) and r_t = inv_rms[t] completes the folded pre-feedforward RMSNorm (its
 * 1 + w scales the weight columns): the cuBLAS gate|up GEMM followed by geglu.cu, in one
 * kernel, so the [num_tokens, 2 * intermediate] gate|up activations never reach memory.
 *
 * Layout (GateUpGegluParams in params.h): x bf16 [num_tokens, hidden]; w bf16
 * [2 * intermediate, hidden] with gate and up rows interleaved in blocks of BLOCK_OUT rows
 * (rows 2 * BLOCK_OUT * b .. + BLOCK_OUT are gate rows BLOCK_OUT * b .., the next BLOCK_OUT the
 * up rows of the same outputs; the host reorders them at upload); inv_rms f32 [num_tokens];
 * out bf16 [num_tokens, intermediate].
 *
 * Launch: grid (intermediate / BLOCK_OUT, ceil(num_tokens / BLOCK_M)), GEGLU_GEMM_THREADS (4
 * warps), GEGLU_GEMM_SMEM_BYTES of dynamic shared memory; registers budgeted for two CTAs per SM
 * (shared memory holds two on sm_90, one on sm_80..sm_89). A CTA computes
 * BLOCK_M = 128 token rows x 128 weight rows (64 outputs), k in BLOCK_K = 64 slices through a
 * 3-stage cp.async pipeline; each stage holds the x slice [128][64] and the weight slice
 * [128][64], 16-byte chunks XOR-swizzled (tile_swizzle) so cp.async stores and ldmatrix loads
 * are conflict-free. The warps form a 2 x 2 grid; warp w owns 64 token rows x 32 outputs
 * (gate_up_geglu.cuh), i.e. a 64 x 64 product: 4 m16 tiles x (4 gate + 4 up) n8 tiles of
 * mma.sync.m16n8k16, 8 ldmatrix.x4 per 32 mma. The gate and up values of one output sit in
 * the same lane and register of their tiles, so the epilogue needs no data exchange. Rows past
 * num_tokens are zero-filled on load and never stored.
 *
 * Numerics: bf16 products accumulated in f32 by the tensor cores; r, GELU-tanh (accurate
 * tanhf) and the product in f32; one bf16 rounding of the output. The cuBLAS path rounds gate
 * and up to bf16 before geglu; this kernel does not.
 */
#include "common.cuh"
#include "gate_up_geglu.cuh"
#include "gemm_pipeline.cuh"
#include "mma.cuh"

namespace {

constexpr int kBlockM = GEGLU_GEMM_BLOCK_M;
constexpr int kWeightRows = 2 * GEGLU_GEMM_BLOCK_OUT;
constexpr int kBlockK = GEGLU_GEMM_BLOCK_K;
constexpr int kStages = GEGLU_GEMM_STAGES;
constexpr int kThreads = GEGLU_GEMM_THREADS;
constexpr int kStageElems = (kBlockM + kWeightRows) * kBlockK;

static_assert(kStages * kStageElems * 2 == GEGLU_GEMM_SMEM_BYTES, "params.h smem size");
static_assert(GEGLU_WARPS_M * (GEGLU_GEMM_BLOCK_OUT / GEGLU_WARP_OUT) * 32 == kThreads,
              "the warps tile the CTA");
static_assert(kBlockK == GEMM_TILE_K, "gemm_pipeline.cuh's k slices");

/* One k slice of the CTA's x rows and weight rows (gemm_pipeline.cuh). */
template <int Threads>
__device__ __forceinline__ void load_stage(bf16_t *stage, const GateUpGegluParams &p,
                                           uint32_t first_row, uint32_t first_weight_row,
                                           uint32_t k_tile) {
    gemm_load_stage<Threads, kBlockM, kWeightRows>(stage, p.x, p.w, p.num_tokens, p.hidden,
                                                   first_row, first_weight_row, k_tile);
}

} // namespace

extern "C" __global__ void __launch_bounds__(GEGLU_GEMM_THREADS, 2)
    gate_up_geglu(const GateUpGegluParams p) {
    extern __shared__ __align__(128) unsigned char smem_bytes[];
    bf16_t *smem = reinterpret_cast<bf16_t *>(smem_bytes);
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int warp_row = geglu_warp_row(warp);
    const uint32_t first_row = blockIdx.y * kBlockM;
    const uint32_t first_out = blockIdx.x * GEGLU_GEMM_BLOCK_OUT;
    const uint32_t first_weight_row = blockIdx.x * kWeightRows;
    const uint32_t k_tiles = p.hidden / kBlockK;

    float acc[GEGLU_M_TILES][2 * GEGLU_OUT_TILES][4];
#pragma unroll
    for (int mt = 0; mt < GEGLU_M_TILES; ++mt) {
#pragma unroll
        for (int t = 0; t < 2 * GEGLU_OUT_TILES; ++t) {
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[mt][t][e] = 0.0f;
        }
    }

    /* Prologue: the first STAGES - 1 slices in flight, one commit group each. */
#pragma unroll
    for (int s = 0; s < kStages - 1; ++s) {
        if (s < k_tiles) load_stage<kThreads>(smem + s * kStageElems, p, first_row, first_weight_row, s);
        cp_async_commit();
    }
    for (uint32_t kt = 0; kt < k_tiles; ++kt) {
        /* Slice kt has landed (at most STAGES - 2 younger groups pending) for every thread, and
         * every warp is done with slice kt - 1, whose stage the next load overwrites. */
        cp_async_wait<kStages - 2>();
        __syncthreads();
        const uint32_t next = kt + kStages - 1;
        if (next < k_tiles) {
            load_stage<kThreads>(smem + (next % kStages) * kStageElems, p, first_row, first_weight_row,
                                 next);
        }
        cp_async_commit(); /* possibly empty, so the group count stays in step */

        const bf16_t *x_tile = smem + (kt % kStages) * kStageElems;
        const bf16_t *w_tile = x_tile + kBlockM * kBlockK;
#pragma unroll
        for (int ks = 0; ks < kBlockK / 16; ++ks) {
            uint32_t a[GEGLU_M_TILES][4];
#pragma unroll
            for (int mt = 0; mt < GEGLU_M_TILES; ++mt) {
                ldmatrix_x4(a[mt], x_tile + tile_swizzle(warp_row + mt * 16 + ldsm_a_row(lane),
                                                         ks * 16 + ldsm_a_col(lane), kBlockK));
            }
#pragma unroll
            for (int t = 0; t < 2 * GEGLU_OUT_TILES; t += 2) {
                uint32_t b[4];
                ldmatrix_x4(b, w_tile + tile_swizzle(geglu_tile_weight_row(warp, t) + ldsm_b_row(lane),
                                                     ks * 16 + ldsm_b_col(lane), kBlockK));
#pragma unroll
                for (int mt = 0; mt < GEGLU_M_TILES; ++mt) {
                    mma_bf16_16816(acc[mt][t], a[mt], b[0], b[1]);
                    mma_bf16_16816(acc[mt][t + 1], a[mt], b[2], b[3]);
                }
            }
        }
    }

    /* Epilogue: gate tile t and up tile t + OUT_TILES hold the same outputs. */
#pragma unroll
    for (int mt = 0; mt < GEGLU_M_TILES; ++mt) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const uint32_t row = first_row + geglu_acc_row(warp, mt, lane, half);
            if (row >= p.num_tokens) continue;
            const float r = p.inv_rms[row];
            bf16_t *out_row = p.out + static_cast<size_t>(row) * p.intermediate + first_out;
#pragma unroll
            for (int t = 0; t < GEGLU_OUT_TILES; ++t) {
                const float *gate = &acc[mt][t][2 * half];
                const float *up = &acc[mt][t + GEGLU_OUT_TILES][2 * half];
                const int col = geglu_acc_out(warp, t, lane);
                *reinterpret_cast<uint32_t *>(out_row + col) =
                    pack_bf16x2(gelu_tanh(r * gate[0]) * (r * up[0]),
                                gelu_tanh(r * gate[1]) * (r * up[1]));
            }
        }
    }
}

/* ---- gate_up_geglu_wgmma, gate_up_geglu_wgmma_wide (sm_90a) -------------------------------------
 *
 * The same product, weight order and epilogue arithmetic on Hopper's warpgroup MMA, two
 * warpgroups (GEGLU_WGMMA_THREADS). The stages start at the first 1024-byte boundary of the
 * dynamic shared memory, so each x and weight tile is a run of the 128-byte swizzle's 1024-byte
 * atoms, and wgmma reads them through descriptors (wgmma_desc_sw128) instead of ldmatrix. Warpgroup
 * g multiplies token rows 64 g .. 64 g + 63 by all of the CTA's weight rows; the main loop is
 * gemm_pipeline.cuh's. Where gate and up land: gate_up_geglu.cuh. On other architectures the
 * kernels trap; the host launches them only on sm_90.
 *
 * gate_up_geglu_wgmma: the tiles and stages of gate_up_geglu (same grid), GEGLU_WGMMA_SMEM_BYTES;
 * four wgmma.m64n128k16 per k slice, 64 f32 accumulators per thread; every slice's wgmmas
 * completed before the next barrier (the other CTA on the SM covers that wait), loads two slices
 * ahead.
 *
 * gate_up_geglu_wgmma_wide: GEGLU_WIDE_BLOCK_OUT outputs per tile (two interleave blocks, 256
 * weight rows), GEGLU_WIDE_SMEM_BYTES; four wgmma.m64n256k16 per k slice, 128 f32 accumulators
 * per thread, one CTA per SM, GEGLU_WIDE_STAGES stages with one slice's wgmmas in flight across
 * each barrier. Persistent: grid (min(tiles, SMs)), each CTA walking the tiles of
 * intermediate / GEGLU_WIDE_BLOCK_OUT column blocks x ceil(num_tokens / BLOCK_M) row blocks, the
 * next tile's first loads in flight during each epilogue. Per flop it reads 3/4 of the narrow
 * kernel's bytes from L2: each 128 x 64 x slice feeds 256 weight rows instead of 128.
 *
 * gate_up_geglu_tma: the wide kernel's tiles, stages and epilogue, GEGLU_TMA_THREADS (three
 * warpgroups), GEGLU_TMA_SMEM_BYTES, persistent with the same grid; a second, __grid_constant__
 * parameter carries the TMA maps of x and w. One thread of warpgroup 0 fills the stages with
 * two TMA copies per k slice instead of every thread issuing 12 cp.async, and the two
 * multiplying warpgroups meet no CTA-wide barrier: each waits on the stage's `full` mbarrier and
 * releases it through its `empty` one, so the copies run up to three slices ahead, across tiles
 * and through the epilogues.
 */
/* The wgmma kernels' epilogue for the CTA tile at token row first_row and outputs first_out ..
 * + Outputs, run by the warp that is warp `warp` of the warpgroups that multiplied (warpgroup
 * warp / 4 holding rows WGMMA_ROWS (warp / 4) ..): per interleave block, register
 * geglu_wgmma_gate_reg (gate) and the one GEGLU_GEMM_BLOCK_OUT / 2 later (up) hold one output. */
template <int Outputs>
__device__ __forceinline__ void gate_up_geglu_wgmma_epilogue(const float (&acc)[Outputs],
                                                             const GateUpGegluParams &p,
                                                             uint32_t first_row,
                                                             uint32_t first_out, int warp) {
    constexpr int kBlocks = Outputs / GEGLU_GEMM_BLOCK_OUT;
    static_assert(kBlocks * GEGLU_GEMM_BLOCK_OUT == Outputs, "whole interleave blocks");
    constexpr int kUp = GEGLU_GEMM_BLOCK_OUT / 2;
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int block = 0; block < kBlocks; ++block) {
#pragma unroll
        for (int r = 0; r < kUp; r += 2) {
            const uint32_t row = first_row + gemm_wgmma_acc_row(warp, lane, r);
            if (row >= p.num_tokens) continue;
            const float inv = p.inv_rms[row];
            const int g = geglu_wgmma_gate_reg(block, r);
            const int col = geglu_wgmma_out(block, lane, r);
            *reinterpret_cast<uint32_t *>(p.out + static_cast<size_t>(row) * p.intermediate +
                                          first_out + col) =
                pack_bf16x2(gelu_tanh(inv * acc[g]) * (inv * acc[g + kUp]),
                            gelu_tanh(inv * acc[g + 1]) * (inv * acc[g + 1 + kUp]));
        }
    }
}

extern "C" __global__ void __launch_bounds__(GEGLU_WGMMA_THREADS, 2)
    gate_up_geglu_wgmma(const GateUpGegluParams p) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    constexpr int kOutputs = GEGLU_GEMM_BLOCK_OUT;
    static_assert(kStages * kStageElems * 2 + 1024 == GEGLU_WGMMA_SMEM_BYTES, "params.h smem size");
    static_assert(2 * WGMMA_ROWS == kBlockM && GEGLU_WGMMA_THREADS == 2 * 128, "two warpgroups");
    static_assert(GEGLU_WGMMA_ACC_REGS == kOutputs, "wgmma.m64n128");
    extern __shared__ __align__(128) unsigned char wgmma_smem_bytes[];
    bf16_t *smem = smem_align_1024<bf16_t>(wgmma_smem_bytes);
    const uint32_t first_row = blockIdx.y * kBlockM;

    float acc[kOutputs];
#pragma unroll
    for (int r = 0; r < kOutputs; ++r) acc[r] = 0.0f;
    wgmma_gemm_mainloop<GEGLU_WGMMA_THREADS, kBlockM, 2 * kOutputs, kStages, 0>(
        acc, smem, p.x, p.w, p.num_tokens, p.hidden, first_row, blockIdx.x * 2 * kOutputs);
    gate_up_geglu_wgmma_epilogue<kOutputs>(acc, p, first_row, blockIdx.x * kOutputs,
                                           threadIdx.x / 32);
#else
    __trap();
#endif
}

/* Persistent: grid (min(tiles, SMs)), tiles as tile.cuh's gemm_tile_row_block/col_block with
 * intermediate / GEGLU_WIDE_BLOCK_OUT column blocks; each tile's epilogue overlaps the next
 * tile's first loads (gemm_pipeline.cuh's wgmma_gemm_persistent). */
extern "C" __global__ void __launch_bounds__(GEGLU_WGMMA_THREADS, 1)
    gate_up_geglu_wgmma_wide(const GateUpGegluParams p) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    constexpr int kOutputs = GEGLU_WIDE_BLOCK_OUT;
    static_assert(GEGLU_WIDE_STAGES * (kBlockM + 2 * kOutputs) * kBlockK * 2 + 1024 ==
                      GEGLU_WIDE_SMEM_BYTES,
                  "params.h smem size");
    static_assert(GEGLU_WIDE_ACC_REGS == kOutputs, "wgmma.m64n256");
    extern __shared__ __align__(128) unsigned char wgmma_smem_bytes[];
    bf16_t *smem = smem_align_1024<bf16_t>(wgmma_smem_bytes);
    float acc[kOutputs];
    wgmma_gemm_persistent<GEGLU_WGMMA_THREADS, kBlockM, 2 * kOutputs, GEGLU_WIDE_STAGES, 1>(
        acc, smem, p.x, p.w, p.num_tokens, p.hidden, p.intermediate / kOutputs,
        [&](const float (&tile_acc)[kOutputs], uint32_t first_row, uint32_t col_block) {
            gate_up_geglu_wgmma_epilogue<kOutputs>(tile_acc, p, first_row, col_block * kOutputs,
                                                   threadIdx.x / 32);
        });
#else
    __trap();
#endif
}

/* gate_up_geglu_wgmma_wide's tiles with TMA-filled stages (gemm_pipeline.cuh's
 * wgmma_gemm_tma_persistent): warpgroup 0 produces, warpgroups 1 and 2 multiply token rows
 * 0..63 and 64..127 of each tile and run the epilogue. `maps` (host: cuTensorMapEncodeTiled) has
 * x [num_tokens, hidden] in boxes of GEGLU_GEMM_BLOCK_K x BLOCK_M and w [2 intermediate, hidden]
 * in boxes of GEGLU_GEMM_BLOCK_K x 2 GEGLU_WIDE_BLOCK_OUT, both bf16 with the 128-byte swizzle. */
extern "C" __global__ void __launch_bounds__(GEGLU_TMA_THREADS, 1)
    gate_up_geglu_tma(const GateUpGegluParams p, const __grid_constant__ GemmTensorMaps maps) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    constexpr int kOutputs = GEGLU_WIDE_BLOCK_OUT;
    static_assert(GEGLU_TMA_STAGES * (kBlockM + 2 * kOutputs) * kBlockK * 2 + 1024 ==
                      GEGLU_TMA_SMEM_BYTES,
                  "params.h smem size");
    static_assert(GEGLU_TMA_THREADS == 128 + kBlockM / WGMMA_ROWS * 128,
                  "a producer warpgroup and a consumer warpgroup per 64 rows");
    static_assert(GEGLU_WIDE_ACC_REGS == kOutputs, "wgmma.m64n256");
    extern __shared__ __align__(128) unsigned char tma_smem_bytes[];
    float acc[kOutputs];
    wgmma_gemm_tma_persistent<kBlockM, 2 * kOutputs, GEGLU_TMA_STAGES, 0, 0>(
        acc, smem_align_1024<unsigned char>(tma_smem_bytes), maps, p.num_tokens, p.hidden,
        gemm_grid_walk(p.intermediate / kOutputs),
        [&](const float (&tile_acc)[kOutputs], uint32_t first_row, uint32_t col_block, int warp) {
            gate_up_geglu_wgmma_epilogue<kOutputs>(tile_acc, p, first_row, col_block * kOutputs,
                                                   warp);
        });
#else
    __trap();
#endif
}
