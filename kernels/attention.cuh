/* attention.cuh: index math of the attention kernels, shared by host and device.
 *
 * Everything here is plain integer arithmetic so that it can be read (and mirrored by the
 * Rust host model in src/backend/cuda/attention.rs) without any CUDA in mind:
 * - the key range a set of query positions may look at,
 * - whether a key block needs per-element masking,
 * - the shared-memory swizzle of a [rows][ATTENTION_HEAD_DIM] bf16 tile,
 * - the lane -> (row, column) addresses of the ldmatrix loads feeding mma.m16n8k16.
 */
#ifndef GEMMA_EMBED_ATTENTION_CUH
#define GEMMA_EMBED_ATTENTION_CUH

#include "params.h"

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

/* Element offset of (row, col) in a [rows][ATTENTION_HEAD_DIM] bf16 shared-memory tile whose
 * 16-byte chunks are XOR-swizzled inside each 128-byte segment: chunk ^ (row & 7). Eight
 * consecutive rows read at the same logical chunk (one ldmatrix 8x8 matrix) then hit eight
 * different chunks of the segment, i.e. all 32 banks, instead of one 4-bank group. */
ATTN_HD int attn_swizzle(int row, int col) {
    const int chunk = col >> 3;
    return row * ATTENTION_HEAD_DIM + ((chunk ^ (row & 7)) << 3) + (col & 7);
}

/* ldmatrix.x4 lane addresses. Lanes 8i..8i+7 give the eight row addresses of matrix i, and
 * matrix i lands in register i of every lane.
 *
 * A operand (16x16 at rows r0.., cols c0.., row-major; also V^T as the B operand of P.V,
 * loaded with .trans): matrices (rows 0-7, cols 0-7), (rows 8-15, cols 0-7),
 * (rows 0-7, cols 8-15), (rows 8-15, cols 8-15) = a0..a3 of mma.m16n8k16, or for V^T
 * (keys k0.., dims n0..) = b0, b1 of dims n0..n0+7 and b0, b1 of dims n0+8..n0+15. */
ATTN_HD int attn_ldsm_a_row(int lane) { return lane & 15; }
ATTN_HD int attn_ldsm_a_col(int lane) { return (lane >> 4) << 3; }

/* B operand from K stored [key][dim] (16 dims x 16 keys = two n8 tiles): matrices
 * (keys 0-7, dims 0-7), (keys 0-7, dims 8-15), (keys 8-15, dims 0-7), (keys 8-15, dims 8-15)
 * = b0, b1 of keys 0..7 and b0, b1 of keys 8..15. */
ATTN_HD int attn_ldsm_k_row(int lane) { return (lane & 7) + ((lane >> 4) << 3); }
ATTN_HD int attn_ldsm_k_col(int lane) { return ((lane >> 3) & 1) << 3; }

#endif /* GEMMA_EMBED_ATTENTION_CUH */
