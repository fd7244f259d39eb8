// gemm_pipeline.cuh: the main loop shared by the GEMM kernels with fused epilogues
// (gate_up_geglu.cu, qkv_proj.cu): out-tile = x[rows] . w[weight rows]^T over k, both operands
// bf16 [.., k_dim] row-major (K-major), accumulated in f32.
//
// - gemm_load_stage: one k slice of the CTA's x rows and weight rows into a pipeline stage,
//   [BlockM][GEMM_TILE_K] then [WeightRows][GEMM_TILE_K], 16-byte cp.async chunks placed by
//   tile_swizzle; x rows past num_tokens are zero-filled.
// - wgmma_gemm_mainloop (sm_90a): a Stages-deep cp.async pipeline whose stages two or more
//   warpgroups read through 128-byte-swizzle descriptors with wgmma.m64nNk16, N = WeightRows,
//   optionally one k slice's wgmmas left in flight across the next barrier; warpgroup g owns rows
//   WGMMA_ROWS g .. of the tile. The stages start at a 1024-byte boundary. It is
//   wgmma_gemm_prologue (the first loads) then wgmma_gemm_k_loop.
// - wgmma_gemm_persistent (sm_90a): the same over a persistent CTA's tiles, each tile's epilogue
//   overlapping the next tile's first loads.
// - wgmma_gemm_tma_persistent (sm_90a): a persistent CTA whose stages are filled by TMA from a
//   producer warpgroup, released by the consumer warpgroups through mbarriers: no CTA-wide
//   barrier in the k loop, and the producer runs up to Stages - 1 slices ahead of the slice being
//   multiplied, across tiles (GemmTileWalk: a 1-D grid's tiles, or a cluster's row blocks).
//
// Index math lives in tile.cuh, where the host warp emulators (kernels/tests/) drive it.
#pragma once

#include "mma.cuh"
#include "params.h"
#include "tile.cuh"

namespace {

/* Start copying k slice `k_tile` of x rows first_row .. + BlockM and weight rows
 * first_weight_row .. + WeightRows into `stage`. Thread i of Threads copies chunks i,
 * i + Threads, ... of each tile: one column, every kRowStep-th row. */
template <int Threads, int BlockM, int WeightRows>
__device__ __forceinline__ void gemm_load_stage(bf16_t *stage, const bf16_t *x, const bf16_t *w,
                                                uint32_t num_tokens, uint32_t k_dim,
                                                uint32_t first_row, uint32_t first_weight_row,
                                                uint32_t k_tile) {
    constexpr int kChunksPerRow = GEMM_TILE_K / 8;
    static_assert(Threads % kChunksPerRow == 0 && BlockM % (Threads / kChunksPerRow) == 0 &&
                      WeightRows % (Threads / kChunksPerRow) == 0,
                  "every thread copies whole columns of both tiles");
    constexpr int kRowStep = Threads / kChunksPerRow;
    const int r0 = gemm_chunk_row(threadIdx.x), c = gemm_chunk_col(threadIdx.x);
    const size_t k0 = static_cast<size_t>(k_tile) * GEMM_TILE_K + c;
    bf16_t *x_tile = stage;
    bf16_t *w_tile = stage + BlockM * GEMM_TILE_K;
#pragma unroll
    for (int r = r0; r < BlockM; r += kRowStep) {
        const uint32_t row = first_row + r;
        const bool valid = row < num_tokens;
        const bf16_t *src = x + static_cast<size_t>(valid ? row : 0) * k_dim + k0;
        cp_async_16(x_tile + tile_swizzle(r, c, GEMM_TILE_K), src, valid);
    }
#pragma unroll
    for (int r = r0; r < WeightRows; r += kRowStep) {
        const bf16_t *src = w + static_cast<size_t>(first_weight_row + r) * k_dim + k0;
        cp_async_16(w_tile + tile_swizzle(r, c, GEMM_TILE_K), src, true);
    }
}

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
/* Loads run kAhead = GEMM_SLICES_AHEAD (tile.cuh) slices ahead of the wgmmas. */
template <int Stages, int InFlight> __device__ __forceinline__ constexpr int gemm_slices_ahead() {
    static_assert(InFlight == 0 || InFlight == 1, "wgmma groups left in flight per slice");
    static_assert(GEMM_SLICES_AHEAD(Stages, InFlight) >= 1,
                  "one slice loads while another is multiplied");
    return GEMM_SLICES_AHEAD(Stages, InFlight);
}

/* The first kAhead k slices of a tile into stages 0 .. kAhead - 1, one cp.async commit group
 * each (empty groups past k_dim keep the count in step). The stages must be free: no wgmma may
 * still read them. */
template <int Threads, int BlockM, int WeightRows, int Stages, int InFlight>
__device__ __forceinline__ void wgmma_gemm_prologue(bf16_t *smem, const bf16_t *x, const bf16_t *w,
                                                    uint32_t num_tokens, uint32_t k_dim,
                                                    uint32_t first_row, uint32_t first_weight_row) {
    constexpr int kAhead = gemm_slices_ahead<Stages, InFlight>();
    constexpr int kStageElems = (BlockM + WeightRows) * GEMM_TILE_K;
    const uint32_t k_tiles = k_dim / GEMM_TILE_K;
#pragma unroll
    for (int s = 0; s < kAhead; ++s) {
        if (s < k_tiles) {
            gemm_load_stage<Threads, BlockM, WeightRows>(smem + s * kStageElems, x, w, num_tokens,
                                                         k_dim, first_row, first_weight_row, s);
        }
        cp_async_commit();
    }
}

/* acc (the m64nN accumulators of this thread's warpgroup, N = WeightRows, zeroed by the caller)
 * += x[first_row + 64 g ..][:k_dim] . w[first_weight_row ..][:k_dim]^T, for a tile whose
 * prologue (wgmma_gemm_prologue, same arguments) is the newest kAhead cp.async commit groups.
 * `smem` is 1024-byte aligned and holds Stages * (BlockM + WeightRows) * GEMM_TILE_K bf16.
 *
 * The wgmmas of the last InFlight k slices (0 or 1) stay in flight across the next slice's
 * barrier, so with one CTA per SM the tensor cores are not idle while the warpgroups meet; a
 * load may therefore only overwrite the stage read InFlight + 1 slices ago, and loads run
 * kAhead = Stages - 1 - InFlight slices ahead. Slice j is the tile's cp.async commit group j
 * (empty groups keep the count in step; older groups are empty or complete). Each thread
 * fences its cp.async writes into the async proxy before the barrier that precedes the wgmmas
 * reading them. On return every wgmma of this thread's warpgroup has completed; the stages may
 * still be read by other warpgroups' last wgmmas until a barrier. */
template <int Threads, int BlockM, int WeightRows, int Stages, int InFlight, int AccRegs>
__device__ __forceinline__ void wgmma_gemm_k_loop(float (&acc)[AccRegs], bf16_t *smem,
                                                  const bf16_t *x, const bf16_t *w,
                                                  uint32_t num_tokens, uint32_t k_dim,
                                                  uint32_t first_row, uint32_t first_weight_row) {
    static_assert(Threads == (BlockM / WGMMA_ROWS) * 128, "one warpgroup per 64 tile rows");
    static_assert(AccRegs == WeightRows / 2, "an m64nN accumulator takes N / 2 f32 per thread");
    static_assert(WeightRows == 128 || WeightRows == 256, "wgmma.m64n128k16 or m64n256k16");
    constexpr int kAhead = gemm_slices_ahead<Stages, InFlight>();
    constexpr int kStageElems = (BlockM + WeightRows) * GEMM_TILE_K;
    const int warpgroup = threadIdx.x / 128;
    const uint32_t k_tiles = k_dim / GEMM_TILE_K;

    for (uint32_t kt = 0; kt < k_tiles; ++kt) {
        /* kAhead + kt groups committed: at most kAhead - 1 pending means slice kt has landed.
         * After the barrier it is visible to every warpgroup's wgmmas, and every warpgroup has
         * waited (end of slice kt - 1) for its wgmmas of slice kt - 1 - InFlight, whose stage
         * the next load overwrites. */
        cp_async_wait<kAhead - 1>();
        fence_proxy_async_shared();
        __syncthreads();
        const uint32_t next = kt + kAhead;
        if (next < k_tiles) {
            gemm_load_stage<Threads, BlockM, WeightRows>(smem + (next % Stages) * kStageElems, x,
                                                         w, num_tokens, k_dim, first_row,
                                                         first_weight_row, next);
        }
        cp_async_commit();

        const uint32_t x_tile = smem_addr(smem + (kt % Stages) * kStageElems);
        const uint32_t w_tile = x_tile + BlockM * GEMM_TILE_K * 2;
        /* wgmmas of one shape chain on the same accumulators while earlier ones are in flight
         * (PTX ISA: their accumulator accesses are ordered); the fence orders this slice's
         * wgmmas after the thread's other register accesses. */
        wgmma_fence_operands(acc);
        wgmma_fence();
#pragma unroll
        for (int ks = 0; ks < GEMM_TILE_K / 16; ++ks) {
            const uint64_t a = wgmma_desc_sw128(x_tile + gemm_wgmma_x_offset(warpgroup, ks));
            const uint64_t b = wgmma_desc_sw128(w_tile + gemm_wgmma_w_offset(ks));
            if constexpr (WeightRows == 128) {
                wgmma_m64n128k16_bf16(acc, a, b);
            } else {
                wgmma_m64n256k16_bf16(acc, a, b);
            }
        }
        wgmma_commit();
        wgmma_wait<InFlight>();
        wgmma_fence_operands(acc);
    }
    wgmma_wait<0>();
    wgmma_fence_operands(acc);
}

/* A persistent CTA's tiles (tile.cuh's gemm_tile_row_block / gemm_tile_col_block over
 * ceil(num_tokens / BlockM) row blocks and `col_blocks` blocks of WeightRows weight rows): for
 * each, the k loop, then `epilogue(acc, first_row, col_block)`. The next tile's prologue is
 * issued before the epilogue, once a barrier has seen every warpgroup's wgmmas complete, so its
 * first loads are in flight while the epilogue computes and stores. The epilogue may not touch
 * the stages or synchronize the CTA. */
template <int Threads, int BlockM, int WeightRows, int Stages, int InFlight, int AccRegs,
          class Epilogue>
__device__ __forceinline__ void wgmma_gemm_persistent(float (&acc)[AccRegs], bf16_t *smem,
                                                      const bf16_t *x, const bf16_t *w,
                                                      uint32_t num_tokens, uint32_t k_dim,
                                                      uint32_t col_blocks, Epilogue epilogue) {
    const uint32_t num_tiles = (num_tokens + BlockM - 1) / BlockM * col_blocks;
    uint32_t tile = blockIdx.x;
    if (tile < num_tiles) {
        wgmma_gemm_prologue<Threads, BlockM, WeightRows, Stages, InFlight>(
            smem, x, w, num_tokens, k_dim, gemm_tile_row_block(tile, col_blocks) * BlockM,
            gemm_tile_col_block(tile, col_blocks) * WeightRows);
    }
    for (; tile < num_tiles; tile += gridDim.x) {
        const uint32_t first_row = gemm_tile_row_block(tile, col_blocks) * BlockM;
        const uint32_t col_block = gemm_tile_col_block(tile, col_blocks);
#pragma unroll
        for (int r = 0; r < AccRegs; ++r) acc[r] = 0.0f;
        wgmma_gemm_k_loop<Threads, BlockM, WeightRows, Stages, InFlight>(
            acc, smem, x, w, num_tokens, k_dim, first_row, col_block * WeightRows);
        const uint32_t next = tile + gridDim.x;
        __syncthreads(); /* every warpgroup's wgmmas of this tile have completed */
        if (next < num_tiles) {
            wgmma_gemm_prologue<Threads, BlockM, WeightRows, Stages, InFlight>(
                smem, x, w, num_tokens, k_dim, gemm_tile_row_block(next, col_blocks) * BlockM,
                gemm_tile_col_block(next, col_blocks) * WeightRows);
        }
        epilogue(acc, first_row, col_block);
    }
}

/* The walk of a 1-D persistent grid over ceil(num_tokens / BlockM) x col_blocks tiles, each CTA
 * starting at its blockIdx.x. */
__device__ __forceinline__ GemmTileWalk gemm_grid_walk(uint32_t col_blocks) {
    return GemmTileWalk{blockIdx.x, gridDim.x, col_blocks, 0};
}

/* A persistent CTA of one producer warpgroup (warpgroup 0) and BlockM / WGMMA_ROWS consumer
 * warpgroups, walking the tiles of `walk` (tile.cuh's GemmTileWalk). Thread 0 fills the stages:
 * per k slice one TMA copy of the x box (GEMM_TILE_K x BlockM at k, first_row; rows past
 * num_tokens read as 0) and one of the weight box (GEMM_TILE_K x WeightRows), both landing in the
 * 128-byte swizzle that wgmma_desc_sw128 addresses, and completing the stage's `full` mbarrier.
 * Consumer warpgroup c multiplies tile rows WGMMA_ROWS c .. by every weight row, one slice's
 * wgmmas left in flight; when a slice's wgmmas have completed, lane 0 of each consumer warp
 * arrives on the stage's `empty` mbarrier, and the producer refills a stage only once all of
 * them have. Slice i of the
 * CTA (counted across its tiles) uses stage i % Stages; which phases it waits for: tile.cuh's
 * gemm_tma_stage / gemm_tma_full_parity / gemm_tma_empty_parity. After each tile,
 * `epilogue(acc, first_row, col_block, warp)` with `warp` the consumer warp (0 ..), while the
 * producer already fills the next tile's stages. With ProducerRegs and ConsumerRegs non-zero the
 * producer warpgroup first lowers its registers to ProducerRegs (setmaxnreg) and the consumers
 * raise theirs to ConsumerRegs; the launch must have given every thread enough for that
 * (ProducerRegs * 128 + ConsumerRegs * consumer threads). `smem` is 1024-byte aligned and holds
 * Stages * (BlockM + WeightRows) * GEMM_TILE_K bf16; k_dim is a positive multiple of GEMM_TILE_K
 * (the hosts check it). The producer's threads return early: the caller may not synchronize
 * the CTA after this. */
template <int BlockM, int WeightRows, int Stages, int ProducerRegs, int ConsumerRegs, int AccRegs,
          class Epilogue>
__device__ __forceinline__ void wgmma_gemm_tma_persistent(float (&acc)[AccRegs],
                                                          unsigned char *smem,
                                                          const GemmTensorMaps &maps,
                                                          uint32_t num_tokens, uint32_t k_dim,
                                                          const GemmTileWalk walk,
                                                          Epilogue epilogue) {
    static_assert(AccRegs == WeightRows / 2, "an m64nN accumulator takes N / 2 f32 per thread");
    static_assert(WeightRows == 256, "wgmma.m64n256k16; a TMA box has at most 256 rows");
    static_assert(BlockM % WGMMA_ROWS == 0 && BlockM <= 256, "whole consumer warpgroups");
    static_assert(Stages >= 2, "a consumer holds a slice's stage until the next slice is issued");
    static_assert((ProducerRegs == 0) == (ConsumerRegs == 0), "both counts or neither");
    constexpr int kConsumerWarps = BlockM / WGMMA_ROWS * 4;
    constexpr uint32_t kXBytes = BlockM * GEMM_TILE_K * 2;
    constexpr uint32_t kStageBytes = (BlockM + WeightRows) * GEMM_TILE_K * 2;
    __shared__ uint64_t full[Stages], empty[Stages];
    const uint32_t num_tiles = (num_tokens + BlockM - 1) / BlockM * walk.col_blocks;
    const uint32_t k_tiles = k_dim / GEMM_TILE_K;
    if (threadIdx.x == 0) {
#pragma unroll
        for (int s = 0; s < Stages; ++s) {
            mbarrier_init(&full[s], 1);
            mbarrier_init(&empty[s], kConsumerWarps);
        }
        fence_mbarrier_init();
    }
    __syncthreads();

    if (threadIdx.x < 128) {
        if constexpr (ProducerRegs != 0) setmaxnreg_dec<ProducerRegs>();
        if (threadIdx.x == 0) {
            uint32_t slice = 0;
            for (uint32_t i = 0, tile = walk.first; tile < num_tiles;
                 tile = gemm_walk_tile(walk, ++i)) {
                const int32_t first_row = gemm_tile_row_block(tile, walk.col_blocks) * BlockM;
                const int32_t first_weight_row = gemm_walk_weight_row(walk, tile, WeightRows);
                for (uint32_t kt = 0; kt < k_tiles; ++kt, ++slice) {
                    const uint32_t s = gemm_tma_stage(slice, Stages);
                    mbarrier_wait(&empty[s], gemm_tma_empty_parity(slice, Stages));
                    unsigned char *stage = smem + s * kStageBytes;
                    const int32_t k0 = kt * GEMM_TILE_K;
                    mbarrier_arrive_expect_tx(&full[s], kStageBytes);
                    tma_load_2d(stage, &maps.x, &full[s], k0, first_row);
                    tma_load_2d(stage + kXBytes, &maps.w, &full[s], k0, first_weight_row);
                }
            }
        }
        return;
    }

    if constexpr (ConsumerRegs != 0) setmaxnreg_inc<ConsumerRegs>();
    const int consumer = threadIdx.x / 128 - 1;
    const int warp = threadIdx.x / 32 - 4;
    const bool releases = (threadIdx.x & 31) == 0;
    uint32_t slice = 0;
    for (uint32_t i = 0, tile = walk.first; tile < num_tiles; tile = gemm_walk_tile(walk, ++i)) {
#pragma unroll
        for (int r = 0; r < AccRegs; ++r) acc[r] = 0.0f;
        for (uint32_t kt = 0; kt < k_tiles; ++kt, ++slice) {
            const uint32_t s = gemm_tma_stage(slice, Stages);
            mbarrier_wait(&full[s], gemm_tma_full_parity(slice, Stages));
            const uint32_t x_tile = smem_addr(smem + s * kStageBytes);
            const uint32_t w_tile = x_tile + kXBytes;
            wgmma_fence_operands(acc);
            wgmma_fence();
#pragma unroll
            for (int ks = 0; ks < GEMM_TILE_K / 16; ++ks) {
                wgmma_m64n256k16_bf16(acc,
                                      wgmma_desc_sw128(x_tile + gemm_wgmma_x_offset(consumer, ks)),
                                      wgmma_desc_sw128(w_tile + gemm_wgmma_w_offset(ks)));
            }
            wgmma_commit();
            /* The previous slice's wgmmas have completed: its stage may be refilled. */
            wgmma_wait<1>();
            wgmma_fence_operands(acc);
            if (kt > 0 && releases) mbarrier_arrive(&empty[gemm_tma_stage(slice - 1, Stages)]);
        }
        wgmma_wait<0>();
        wgmma_fence_operands(acc);
        if (releases) mbarrier_arrive(&empty[gemm_tma_stage(slice - 1, Stages)]);
        epilogue(acc, gemm_tile_row_block(tile, walk.col_blocks) * BlockM,
                 gemm_tile_col_block(tile, walk.col_blocks), warp);
    }
}

/* One tile: wgmma_gemm_prologue, then wgmma_gemm_k_loop. */
template <int Threads, int BlockM, int WeightRows, int Stages, int InFlight, int AccRegs>
__device__ __forceinline__ void wgmma_gemm_mainloop(float (&acc)[AccRegs], bf16_t *smem,
                                                    const bf16_t *x, const bf16_t *w,
                                                    uint32_t num_tokens, uint32_t k_dim,
                                                    uint32_t first_row, uint32_t first_weight_row) {
    wgmma_gemm_prologue<Threads, BlockM, WeightRows, Stages, InFlight>(
        smem, x, w, num_tokens, k_dim, first_row, first_weight_row);
    wgmma_gemm_k_loop<Threads, BlockM, WeightRows, Stages, InFlight>(
        acc, smem, x, w, num_tokens, k_dim, first_row, first_weight_row);
}
#endif

} // namespace
