/* attention.cuh: index math of the attention kernels, shared by host and device.
 *
 * Everything here is plain integer arithmetic so that it can be read (and mirrored by the
 * Rust host model in src/backend/cuda/attention.rs) without any CUDA in mind:
 * - the key range a set of query positions may look at,
 * - whether a key block needs per-element masking,
 * - the shared-memory swizzle of a [rows][ATTENTION_HEAD_DIM] bf16 tile (tile.cuh holds the
 *   swizzle and the ldmatrix lane addresses shared with the other tensor-core kernels).
 */
#ifndef GEMMA_EMBED_ATTENTION_CUH
#define GEMMA_EMBED_ATTENTION_CUH

#include "params.h"
#include "tile.cuh"

#if !defined(__cplusplus)
#include <stdbool.h>
#endif

#ifdef __CUDACC__
#define ATTN_HD __host__ __device__ __forceinline__
#else
#define ATTN_HD static inline
#endif

/* Keys [begin, end) of a sequence of length `len` that any query position in [p_lo, p_hi]
 * may attend to: the union of their windows, clipped to the sequence. */
typedef struct AttnKeyRange {
    int begin;
    int end;
} AttnKeyRange;

ATTN_HD AttnKeyRange attn_key_range(int p_lo, int p_hi, int len, int radius) {
    AttnKeyRange range;
    if (radius < 0) {
        range.begin = 0;
        range.end = len;
        return range;
    }
    range.begin = p_lo - radius > 0 ? p_lo - radius : 0;
    range.end = p_hi + radius + 1 < len ? p_hi + radius + 1 : len;
    return range;
}

/* May query position `pos` attend to key `key`? Keys at or past `key_end` are outside the
 * sequence (or outside every window of the tile, which is the same for a valid query). */
ATTN_HD bool attn_key_allowed(int pos, int key, int key_end, int radius) {
    if (key >= key_end) {
        return false;
    }
    if (radius < 0) {
        return true;
    }
    const int distance = pos > key ? pos - key : key - pos;
    return distance <= radius;
}

/* Does the key block [kb, kb + block_n) hold any (query, key) pair, for query positions in
 * [p_lo, p_hi], that attn_key_allowed rejects? If not, the block runs without masking. */
ATTN_HD bool attn_block_needs_mask(int kb, int block_n, int key_end, int p_lo, int p_hi,
                                   int radius) {
    if (kb + block_n > key_end) {
        return true;
    }
    if (radius < 0) {
        return false;
    }
    return kb < p_hi - radius || kb + block_n - 1 > p_lo + radius;
}

/* Element offset of (row, col) in a [rows][ATTENTION_HEAD_DIM] bf16 shared-memory tile, swizzled
 * as tile_swizzle (tile.cuh) describes. */
ATTN_HD int attn_swizzle(int row, int col) { return tile_swizzle(row, col, ATTENTION_HEAD_DIM); }

/* attention_flash_wgmma (sm_90a) keeps the Q tile, the K block and the V block as wgmma's
 * 128-byte-swizzle operands (Q and K K-major for Q K^T, V MN-major for P V): the
 * ATTENTION_HEAD_DIM dims in segments of 64, segment s a [64 rows][64] tile laid out by
 * tile_swizzle, 8 KB each, the tile 1024-byte aligned. The element offset of (row, col), for
 * tiles of ATTN_WGMMA_ROWS rows: */
#define ATTN_WGMMA_ROWS 64
#define ATTN_WGMMA_SEGMENT_BYTES (ATTN_WGMMA_ROWS * 64 * 2)
ATTN_HD int attn_wgmma_swizzle(int row, int col) {
    return (col >> 6) * (ATTN_WGMMA_ROWS * 64) + tile_swizzle(row, col & 63, 64);
}

/* Byte offset, inside such a tile, of the operand of k16 step ks (dims 16 ks .. 16 ks + 15):
 * its segment, then 32 bytes per k16 step inside the 128-byte rows. */
ATTN_HD uint32_t attn_wgmma_k_offset(int ks) {
    return (uint32_t)((ks >> 2) * ATTN_WGMMA_SEGMENT_BYTES + (ks & 3) * 32);
}

/* The V block in the same layout is the MN-major B operand of P V (n = dim, k = key): its
 * 64-dim n-blocks sit ATTN_WGMMA_SEGMENT_BYTES apart, and the k16 step kk (keys 16 kk ..
 * 16 kk + 15, two 8-row groups of 1024 bytes) starts at this byte offset. */
ATTN_HD uint32_t attn_wgmma_v_offset(int kk) { return (uint32_t)(kk * 2 * 1024); }

/* attention_flash_tma's pipeline (kernels/attention.cu; played by kernels/tests/
 * attention_tma_pipeline.c). A persistent CTA counts its tiles and the key blocks of all its
 * tiles: key block i's K and V use stage gemm_tma_stage(i, ATTENTION_TMA_STAGES) and tile j's Q
 * one buffer per warpgroup (one stage each), each waited for with tile.cuh's
 * gemm_tma_full_parity / gemm_tma_empty_parity. The two consumer warpgroups take turns issuing
 * their Q K^T wgmmas: warpgroup w syncs on named barrier attn_tma_turn_barrier(w) (both
 * warpgroups' 256 threads) before it issues and then arrives on the other's, so that one
 * warpgroup's softmax runs while the other's products do. Warpgroup 1 first arrives once on warpgroup 0's barrier (0 goes
 * first), and does not pass the turn after its CTA's last key block, so every barrier sees as
 * many arrivals as syncs. */
#define ATTN_TMA_WARPGROUPS (ATTENTION_TMA_BLOCK_M / ATTN_WGMMA_ROWS)
ATTN_HD uint32_t attn_tma_turn_barrier(int warpgroup) { return 1u + (uint32_t)warpgroup; }
ATTN_HD bool attn_tma_passes_turn(int warpgroup, bool cta_last_block) {
    return !(warpgroup == ATTN_TMA_WARPGROUPS - 1 && cta_last_block);
}

#endif /* GEMMA_EMBED_ATTENTION_CUH */
