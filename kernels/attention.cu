/* attention.cu: bidirectional multi-query attention over packed variable-length sequences.
 *
 * Layout (see AttentionParams in params.h): Q [num_tokens, GROUP, HEAD_DIM],
 * K and V [num_tokens, HEAD_DIM] (one K/V head shared by the GROUP query heads),
 * O [num_tokens, GROUP * HEAD_DIM]. All bf16. Both Q and O are therefore
 * [num_tokens * GROUP, HEAD_DIM] matrices whose row R = token * GROUP + head ("packed row").
 * Sequence s owns tokens [seq_offsets[s], seq_offsets[s+1]); positions restart at 0 in each.
 * A query at position i sees the keys j of its own sequence with |i - j| <= window_radius,
 * or all of them when window_radius < 0.
 *
 * Numerics: scores in f32 (tensor-core or FMA accumulation of bf16 products), multiplied by
 * softmax_scale * log2(e) and exponentiated with exp2 (online softmax, running max and sum in
 * f32), O accumulated in f32, one bf16 rounding of the normalized output. The flash kernels
 * feed the probabilities to the P.V product as bf16 (as FlashAttention-2 does); the row sum
 * uses the unrounded f32 values.
 *
 * attention_reference: one warp per packed row, ATTENTION_REFERENCE_WARPS warps per block,
 *   grid = ceil(num_tokens * GROUP / ATTENTION_REFERENCE_WARPS). Each lane owns 8 of the 256
 *   dimensions; one key per step, dot product reduced with warp shuffles. Simple on purpose:
 *   it is the fallback and the on-device cross-check of the flash kernel.
 *
 * attention_flash: one CTA of ATTENTION_FLASH_THREADS (4 warps) per work-list tile, grid =
 *   num_tiles, ATTENTION_FLASH_SMEM_BYTES of dynamic shared memory. A tile is BLOCK_M = 64
 *   consecutive packed rows of one sequence (about 21 positions x 3 heads), so every K/V block
 *   loaded serves all three heads. The tile visits only the keys in the union of its rows'
 *   windows, BLOCK_N = 64 keys at a time; blocks wholly inside every row's window skip the
 *   masking. Warp w owns packed rows 16w..16w+15 of the tile: S = Q K^T and O += P V with
 *   mma.sync.m16n8k16 (bf16 in, f32 accumulate), operands from XOR-swizzled shared memory via
 *   ldmatrix (.trans for V). K and V blocks are single-buffered and fetched with cp.async so
 *   that the next K block streams in during softmax and P.V and the next V block during Q K^T.
 *   Rows past the sequence end are zero-filled and never stored; keys past the key range are
 *   zero-filled and masked. The epilogue stages O through the warp's own Q rows in shared
 *   memory for 16-byte coalesced stores.
 *
 * attention_flash_wgmma (sm_90a): attention_flash with Q K^T and P V on warpgroup MMA; same
 *   grid and threads, ATTENTION_FLASH_WGMMA_SMEM_BYTES; its tile layout is described at the
 *   kernel below.
 */
#include <cuda_bf16.h>
#include <stdint.h>

#include <type_traits>

#include "attention.cuh"
#include "common.cuh"
#include "mma.cuh"
#include "params.h"

namespace {

constexpr int kHeadDim = ATTENTION_HEAD_DIM;
constexpr int kGroup = ATTENTION_GROUP;
constexpr int kChunks = kHeadDim / 8; /* 16-byte chunks per row */
constexpr float kLog2e = 1.4426950408889634f;

/* 2^x; -inf gives +0. */
__device__ __forceinline__ float fast_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

} // namespace

/* ---- reference kernel ------------------------------------------------------------------ */

extern "C" __global__ void __launch_bounds__(ATTENTION_REFERENCE_WARPS * 32)
    attention_reference(const AttentionParams p) {
    static_assert(kHeadDim == 32 * 8, "one 16-byte vector of 8 dims per lane");
    const int lane = threadIdx.x & 31;
    const size_t row = static_cast<size_t>(blockIdx.x) * ATTENTION_REFERENCE_WARPS + threadIdx.x / 32;
    if (row >= static_cast<size_t>(p.num_tokens) * kGroup) {
        return;
    }
    const uint32_t token = static_cast<uint32_t>(row / kGroup);

    /* The sequence holding `token`: seq_offsets[lo] <= token < seq_offsets[hi]. */
    uint32_t lo = 0;
    uint32_t hi = p.num_seqs;
    while (hi - lo > 1) {
        const uint32_t mid = (lo + hi) / 2;
        if (p.seq_offsets[mid] <= token) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    const uint32_t seq_start = p.seq_offsets[lo];
    const int len = static_cast<int>(p.seq_offsets[lo + 1] - seq_start);
    const int pos = static_cast<int>(token - seq_start);
    const AttnKeyRange keys = attn_key_range(pos, pos, len, p.window_radius);

    float q[8];
    {
        const uint4 raw = *reinterpret_cast<const uint4 *>(p.q + row * kHeadDim + lane * 8);
        const __nv_bfloat162 *pairs = reinterpret_cast<const __nv_bfloat162 *>(&raw);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const float2 f = __bfloat1622float2(pairs[i]);
            q[2 * i] = f.x;
            q[2 * i + 1] = f.y;
        }
    }

    const float scale_log2 = p.softmax_scale * kLog2e;
    float running_max = -INFINITY;
    float running_sum = 0.0f;
    float acc[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
    for (int j = keys.begin; j < keys.end; ++j) {
        const size_t key_row = static_cast<size_t>(seq_start) + j;
        const uint4 k_raw = *reinterpret_cast<const uint4 *>(p.k + key_row * kHeadDim + lane * 8);
        const __nv_bfloat162 *k_pairs = reinterpret_cast<const __nv_bfloat162 *>(&k_raw);
        float dot = 0.0f;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const float2 f = __bfloat1622float2(k_pairs[i]);
            dot = fmaf(q[2 * i], f.x, dot);
            dot = fmaf(q[2 * i + 1], f.y, dot);
        }
        const float score = warp_sum(dot) * scale_log2;
        const float new_max = fmaxf(running_max, score);
        const float rescale = exp2f(running_max - new_max); /* 0 on the first key */
        const float weight = exp2f(score - new_max);
        running_sum = running_sum * rescale + weight;

        const uint4 v_raw = *reinterpret_cast<const uint4 *>(p.v + key_row * kHeadDim + lane * 8);
        const __nv_bfloat162 *v_pairs = reinterpret_cast<const __nv_bfloat162 *>(&v_raw);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const float2 f = __bfloat1622float2(v_pairs[i]);
            acc[2 * i] = fmaf(weight, f.x, acc[2 * i] * rescale);
            acc[2 * i + 1] = fmaf(weight, f.y, acc[2 * i + 1] * rescale);
        }
        running_max = new_max;
    }

    /* Every query sees at least its own key, so running_sum >= 1. */
    const float inv_sum = 1.0f / running_sum;
    uint4 out;
    uint32_t *out_words = reinterpret_cast<uint32_t *>(&out);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        out_words[i] = pack_bf16x2(acc[2 * i] * inv_sum, acc[2 * i + 1] * inv_sum);
    }
    *reinterpret_cast<uint4 *>(p.o + row * kHeadDim + lane * 8) = out;
}

/* ---- flash kernel ---------------------------------------------------------------------- */

namespace {

constexpr int kBlockM = ATTENTION_FLASH_BLOCK_M;
constexpr int kBlockN = ATTENTION_FLASH_BLOCK_N;
constexpr int kThreads = ATTENTION_FLASH_THREADS;
constexpr int kWarps = kThreads / 32;
constexpr int kScoreTiles = kBlockN / 8; /* n8 tiles of S per warp */
constexpr int kOutTiles = kHeadDim / 8;  /* n8 tiles of O per warp */

static_assert(kBlockM == kWarps * 16, "each warp owns 16 packed rows");
static_assert(kBlockN % 16 == 0 && kHeadDim % 16 == 0, "mma k-steps of 16");
static_assert((kBlockM + 2 * kBlockN) * kHeadDim * 2 == ATTENTION_FLASH_SMEM_BYTES,
              "shared memory = Q tile + K block + V block");
static_assert((kBlockM * kChunks) % kThreads == 0 && (kBlockN * kChunks) % kThreads == 0,
              "whole copy rounds");

/* Rows [0, rows) of a [rows][kHeadDim] tile from `src` (row stride kHeadDim) into shared
 * memory, at attn_wgmma_swizzle offsets for a wgmma operand (Wgmma) or attn_swizzle ones
 * otherwise; row r is copied only if r < valid_rows, else zero-filled (reading row 0). */
template <int Rows, bool Wgmma = false>
__device__ __forceinline__ void load_tile(__nv_bfloat16 *dst, const __nv_bfloat16 *src,
                                          int valid_rows, int tid) {
    /* Not unrolled: unrolled copy addresses take registers the accumulators need (spills). */
#pragma unroll 1
    for (int i = 0; i < Rows * kChunks / kThreads; ++i) {
        const int chunk_index = tid + i * kThreads;
        const int r = chunk_index / kChunks;
        const int c = (chunk_index % kChunks) * 8;
        const bool valid = r < valid_rows;
        const __nv_bfloat16 *from = src + static_cast<size_t>(valid ? r : 0) * kHeadDim + c;
        cp_async_16(dst + (Wgmma ? attn_wgmma_swizzle(r, c) : attn_swizzle(r, c)), from, valid);
    }
}

/* A work-list tile: packed rows [row0, row0 + rows_valid) of sequence `seq`, positions p_lo ..
 * p_hi, the keys of their windows and how many BLOCK_N key blocks cover them. */
struct FlashTile {
    uint32_t seq_start;
    int len;
    int row0;
    int rows_valid;
    int p_lo;
    int p_hi;
    AttnKeyRange keys;
    int num_blocks;
};

/* Work-list entry `tile` of p.tiles, for tiles of `block_m` packed rows. */
__device__ __forceinline__ FlashTile flash_tile(const AttentionParams &p, uint32_t tile,
                                                int block_m) {
    FlashTile t;
    const uint32_t seq = p.tiles[2 * tile];
    t.row0 = static_cast<int>(p.tiles[2 * tile + 1]);
    t.seq_start = p.seq_offsets[seq];
    t.len = static_cast<int>(p.seq_offsets[seq + 1] - t.seq_start);
    t.rows_valid = min(block_m, t.len * kGroup - t.row0);
    t.p_lo = t.row0 / kGroup;
    t.p_hi = (t.row0 + t.rows_valid - 1) / kGroup;
    t.keys = attn_key_range(t.p_lo, t.p_hi, t.len, p.window_radius);
    t.num_blocks = (t.keys.end - t.keys.begin + kBlockN - 1) / kBlockN;
    return t;
}

/* The softmax state of a thread's two rows (group_row and group_row + 8 of its warp's 16): the
 * O accumulators in the mma.sync C layout, running maximum and this thread's partial row sums
 * (quad-reduced at the end). */
struct FlashRows {
    float o_acc[kOutTiles][4];
    float row_max[2];
    float row_sum[2];

    __device__ __forceinline__ void reset() {
#pragma unroll
        for (int j = 0; j < kOutTiles; ++j) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                o_acc[j][e] = 0.0f;
            }
        }
        row_max[0] = row_max[1] = -INFINITY;
        row_sum[0] = row_sum[1] = 0.0f;
    }
};

/* Scores of key block kb (S accumulators, mma.sync C layout) into the log2 domain, masked only
 * where the block crosses a window edge or the key range's end; then the online softmax: the
 * running maximum, the rescaled row sums, S turned into unnormalized probabilities, and the
 * factor by which O must be rescaled (flash_rescale_o; O itself is not touched, so a P V product
 * may still be accumulating into it). */
__device__ __forceinline__ void flash_softmax_scores(float (&s)[kScoreTiles][4], FlashRows &rows,
                                                     const FlashTile &t, int kb,
                                                     const int (&pos)[2], int radius,
                                                     float scale_log2, int group_lane,
                                                     float (&o_rescale)[2]) {
    const bool needs_mask = attn_block_needs_mask(kb, kBlockN, t.keys.end, t.p_lo, t.p_hi, radius);
#pragma unroll
    for (int i = 0; i < kScoreTiles; ++i) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int key = kb + i * 8 + 2 * group_lane + (e & 1);
            const bool allowed = !needs_mask || attn_key_allowed(pos[e >> 1], key, t.keys.end, radius);
            s[i][e] = allowed ? s[i][e] * scale_log2 : -INFINITY;
        }
    }

    /* Online softmax, per row half h (h = 0: row g, h = 1: row g + 8). */
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        float block_max = -INFINITY;
#pragma unroll
        for (int i = 0; i < kScoreTiles; ++i) {
            block_max = fmaxf(block_max, fmaxf(s[i][2 * h], s[i][2 * h + 1]));
        }
        block_max = fmaxf(block_max, __shfl_xor_sync(0xffffffffu, block_max, 1));
        block_max = fmaxf(block_max, __shfl_xor_sync(0xffffffffu, block_max, 2));
        const float new_max = fmaxf(rows.row_max[h], block_max);
        /* A row with no allowed key so far keeps max -inf; subtract 0 so that every
         * exponent stays -inf (weight 0) instead of NaN. */
        const float base = new_max == -INFINITY ? 0.0f : new_max;
        const float rescale = fast_exp2(rows.row_max[h] - base);
        rows.row_max[h] = new_max;
        rows.row_sum[h] *= rescale;
        o_rescale[h] = rescale;
#pragma unroll
        for (int i = 0; i < kScoreTiles; ++i) {
            s[i][2 * h] = fast_exp2(s[i][2 * h] - base);
            s[i][2 * h + 1] = fast_exp2(s[i][2 * h + 1] - base);
            rows.row_sum[h] += s[i][2 * h] + s[i][2 * h + 1];
        }
    }
}

/* O *= the factor flash_softmax_scores returned, per row half. */
__device__ __forceinline__ void flash_rescale_o(FlashRows &rows, const float (&o_rescale)[2]) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
#pragma unroll
        for (int j = 0; j < kOutTiles; ++j) {
            rows.o_acc[j][2 * h] *= o_rescale[h];
            rows.o_acc[j][2 * h + 1] *= o_rescale[h];
        }
    }
}

/* The probabilities as bf16 A fragments of P V: the S accumulators of key tiles 2kk, 2kk+1 are
 * the A fragment of k-step kk (for mma.sync and, in the same layout, for wgmma's register A
 * operand). */
__device__ __forceinline__ void flash_pack_p(const float (&s)[kScoreTiles][4],
                                             uint32_t (&p_frag)[kBlockN / 16][4]) {
#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk) {
        p_frag[kk][0] = pack_bf16x2(s[2 * kk][0], s[2 * kk][1]);
        p_frag[kk][1] = pack_bf16x2(s[2 * kk][2], s[2 * kk][3]);
        p_frag[kk][2] = pack_bf16x2(s[2 * kk + 1][0], s[2 * kk + 1][1]);
        p_frag[kk][3] = pack_bf16x2(s[2 * kk + 1][2], s[2 * kk + 1][3]);
    }
}

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
/* S = Q K^T on wgmma: the warpgroup's 64 Q rows (at shared address q_base) against the 64 keys
 * (k_base), both in the attn_wgmma_swizzle layout; warp w gets rows 16 w .. 16 w + 15 in the
 * mma.sync C layout (register 4 t + e = s[t][e]). Issued, not waited for. */
__device__ __forceinline__ void flash_issue_s_wgmma(float (&s)[kScoreTiles][4], uint32_t q_base,
                                                    uint32_t k_base) {
    float(&acc)[kScoreTiles * 4] = reinterpret_cast<float(&)[kScoreTiles * 4]>(s);
#pragma unroll
    for (int t = 0; t < kScoreTiles; ++t) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            s[t][e] = 0.0f;
        }
    }
    wgmma_fence_operands(acc);
    wgmma_fence();
#pragma unroll
    for (int ks = 0; ks < kHeadDim / 16; ++ks) {
        wgmma_m64n64k16_bf16(acc, wgmma_desc_sw128(q_base + attn_wgmma_k_offset(ks)),
                             wgmma_desc_sw128(k_base + attn_wgmma_k_offset(ks)));
    }
    wgmma_commit();
}

/* Wait for flash_issue_s_wgmma's products, leaving the Pending wgmma groups committed after them
 * in flight. */
template <int Pending> __device__ __forceinline__ void flash_wait_s_wgmma(float (&s)[kScoreTiles][4]) {
    float(&acc)[kScoreTiles * 4] = reinterpret_cast<float(&)[kScoreTiles * 4]>(s);
    wgmma_wait<Pending>();
    wgmma_fence_operands(acc);
}

/* O += P V on wgmma: the warpgroup's 64 rows times the 64 x 256 V block (at shared address
 * v_base, attn_wgmma_swizzle layout): 4 wgmma.m64n256k16 with P from registers and V as the
 * MN-major B operand; o_acc keeps the mma.sync layout (register 4 j + e = o_acc[j][e]). Issued,
 * not waited for: neither O nor P may be touched until flash_wait_pv_wgmma. */
__device__ __forceinline__ void flash_issue_pv_wgmma(float (&o_acc)[kOutTiles][4],
                                                     uint32_t (&p_frag)[kBlockN / 16][4],
                                                     uint32_t v_base) {
    float(&acc)[kOutTiles * 4] = reinterpret_cast<float(&)[kOutTiles * 4]>(o_acc);
    wgmma_fence_operands(acc);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk) {
        wgmma_fence_operands(p_frag[kk]);
        wgmma_m64n256k16_bf16_rs_tb(
            acc, p_frag[kk],
            wgmma_desc_sw128_mn(v_base + attn_wgmma_v_offset(kk), ATTN_WGMMA_SEGMENT_BYTES));
    }
    wgmma_commit();
}

/* Wait until every wgmma group, flash_issue_pv_wgmma's last, has completed. */
__device__ __forceinline__ void flash_wait_pv_wgmma(float (&o_acc)[kOutTiles][4],
                                                    uint32_t (&p_frag)[kBlockN / 16][4]) {
    float(&acc)[kOutTiles * 4] = reinterpret_cast<float(&)[kOutTiles * 4]>(o_acc);
    wgmma_wait<0>();
    wgmma_fence_operands(acc);
#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk) {
        /* The P registers stay untouched until the wgmmas that read them are done. */
        wgmma_fence_operands(p_frag[kk]);
    }
}
#endif

/* 1 / (the row's sum of weights) for the thread's two rows (0 for a row without weights): the
 * quad's partial sums added up. */
__device__ __forceinline__ void flash_inverse_sums(const FlashRows &rows, float (&inv_sum)[2]) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const float total = quad_sum(rows.row_sum[h]);
        inv_sum[h] = total > 0.0f ? 1.0f / total : 0.0f;
    }
}

/* Epilogue of warp `warp`'s 16 rows: normalize, round to bf16 into rows 16 warp .. 16 warp + 15
 * of the [rows][kHeadDim] staging tile `s_stage` (attn_swizzle layout; no other warp uses those
 * rows, and nothing may still read them), then 16-byte coalesced stores of the rows below
 * rows_valid to `o_tile` (the tile's first packed row of O). */
__device__ __forceinline__ void flash_store_o(const FlashRows &rows, __nv_bfloat16 *s_stage,
                                              __nv_bfloat16 *o_tile, int rows_valid, int warp,
                                              int lane) {
    const int group_row = lane >> 2;
    const int group_lane = lane & 3;
    float inv_sum[2];
    flash_inverse_sums(rows, inv_sum);
    __syncwarp();
#pragma unroll
    for (int j = 0; j < kOutTiles; ++j) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int r = warp * 16 + group_row + 8 * h;
            const int c = j * 8 + 2 * group_lane;
            const uint32_t bits = pack_bf16x2(rows.o_acc[j][2 * h] * inv_sum[h],
                                              rows.o_acc[j][2 * h + 1] * inv_sum[h]);
            *reinterpret_cast<uint32_t *>(s_stage + attn_swizzle(r, c)) = bits;
        }
    }
    __syncwarp();
#pragma unroll
    for (int i = 0; i < 16 * kChunks / 32; ++i) {
        const int chunk_index = lane + i * 32;
        const int r = warp * 16 + chunk_index / kChunks;
        const int c = (chunk_index % kChunks) * 8;
        if (r < rows_valid) {
            *reinterpret_cast<uint4 *>(o_tile + static_cast<size_t>(r) * kHeadDim + c) =
                *reinterpret_cast<const uint4 *>(s_stage + attn_swizzle(r, c));
        }
    }
}

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
/* Epilogue of warp `warp`'s 16 rows straight from the accumulators: normalize and store each
 * thread's bf16 pairs of the rows below rows_valid to `o_tile` (a quad writes 16 contiguous bytes
 * of a row per n8 tile, so a warp's store covers 8 rows x 16 bytes); no shared memory. */
__device__ __forceinline__ void flash_store_o_direct(const FlashRows &rows, __nv_bfloat16 *o_tile,
                                                     int rows_valid, int warp, int lane) {
    const int group_row = lane >> 2;
    const int group_lane = lane & 3;
    float inv_sum[2];
    flash_inverse_sums(rows, inv_sum);
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int r = warp * 16 + group_row + 8 * h;
        if (r >= rows_valid) continue;
        __nv_bfloat16 *o_row = o_tile + static_cast<size_t>(r) * kHeadDim + 2 * group_lane;
#pragma unroll
        for (int j = 0; j < kOutTiles; ++j) {
            *reinterpret_cast<uint32_t *>(o_row + j * 8) = pack_bf16x2(
                rows.o_acc[j][2 * h] * inv_sum[h], rows.o_acc[j][2 * h + 1] * inv_sum[h]);
        }
    }
}
#endif

/* The flash kernel's body; Wgmma computes S = Q K^T and P V with wgmma (sm_90a) instead of
 * per-warp ldmatrix + mma.sync, everything else is shared. `smem` is the dynamic shared memory,
 * 1024-byte aligned for Wgmma. */
template <bool Wgmma>
__device__ __forceinline__ void attention_flash_body(const AttentionParams &p, unsigned char *smem) {
    if (blockIdx.x >= p.num_tiles) {
        return;
    }
    __nv_bfloat16 *s_q = reinterpret_cast<__nv_bfloat16 *>(smem);
    __nv_bfloat16 *s_k = s_q + kBlockM * kHeadDim;
    __nv_bfloat16 *s_v = s_k + kBlockN * kHeadDim;

    const int tid = threadIdx.x;
    const int warp = tid / 32;
    const int lane = tid % 32;
    const int group_row = lane >> 2;  /* mma "groupID" */
    const int group_lane = lane & 3;  /* mma "threadID_in_group" */

    const FlashTile t = flash_tile(p, blockIdx.x, kBlockM);
    const int radius = p.window_radius;
    const size_t tile_row = static_cast<size_t>(t.seq_start) * kGroup + t.row0;
    const __nv_bfloat16 *q_tile = p.q + tile_row * kHeadDim;
    const __nv_bfloat16 *k_seq = p.k + static_cast<size_t>(t.seq_start) * kHeadDim;
    const __nv_bfloat16 *v_seq = p.v + static_cast<size_t>(t.seq_start) * kHeadDim;

    /* Prologue: group {Q, K block 0}, then group {V block 0}. */
    load_tile<kBlockM, Wgmma>(s_q, q_tile, t.rows_valid, tid);
    load_tile<kBlockN, Wgmma>(s_k, k_seq + static_cast<size_t>(t.keys.begin) * kHeadDim,
                              t.keys.end - t.keys.begin, tid);
    cp_async_commit();
    load_tile<kBlockN, Wgmma>(s_v, v_seq + static_cast<size_t>(t.keys.begin) * kHeadDim,
                              t.keys.end - t.keys.begin, tid);
    cp_async_commit();

    /* This thread's two rows of the warp's 16: packed rows (in the sequence) and positions. */
    const int row_a = t.row0 + warp * 16 + group_row;
    const int pos[2] = {row_a / kGroup, (row_a + 8) / kGroup};
    const float scale_log2 = p.softmax_scale * kLog2e;

    FlashRows rows;
    rows.reset();

    for (int block = 0; block < t.num_blocks; ++block) {
        const int kb = t.keys.begin + block * kBlockN;

        /* Q and K block ready (only the V group of this block may still be in flight); for
         * wgmma, each thread's cp.async writes are made visible to the async proxy first. */
        cp_async_wait<1>();
        if constexpr (Wgmma) {
            fence_proxy_async_shared();
        }
        __syncthreads();

        float s[kScoreTiles][4];
        if constexpr (Wgmma) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
            flash_issue_s_wgmma(s, smem_addr(s_q), smem_addr(s_k));
            flash_wait_s_wgmma<0>(s);
#endif
        } else {
#pragma unroll
            for (int i = 0; i < kScoreTiles; ++i) {
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    s[i][e] = 0.0f;
                }
            }
#pragma unroll
            for (int ks = 0; ks < kHeadDim / 16; ++ks) {
                uint32_t a[4];
                ldmatrix_x4(a, s_q + attn_swizzle(warp * 16 + ldsm_a_row(lane),
                                                   ks * 16 + ldsm_a_col(lane)));
#pragma unroll
                for (int i = 0; i < kScoreTiles; i += 2) {
                    uint32_t b[4];
                    ldmatrix_x4(b, s_k + attn_swizzle(i * 8 + ldsm_b_row(lane),
                                                       ks * 16 + ldsm_b_col(lane)));
                    mma_bf16_16816(s[i], a, b[0], b[1]);
                    mma_bf16_16816(s[i + 1], a, b[2], b[3]);
                }
            }
        }

        /* Every warp is done with this K block: stream in the next one (or an empty group). */
        __syncthreads();
        if (block + 1 < t.num_blocks) {
            load_tile<kBlockN, Wgmma>(s_k, k_seq + static_cast<size_t>(kb + kBlockN) * kHeadDim,
                                      t.keys.end - kb - kBlockN, tid);
        }
        cp_async_commit();

        float o_rescale[2];
        flash_softmax_scores(s, rows, t, kb, pos, radius, scale_log2, group_lane, o_rescale);
        flash_rescale_o(rows, o_rescale);

        /* V block ready (only the next K block may still be in flight). */
        cp_async_wait<1>();
        if constexpr (Wgmma) {
            fence_proxy_async_shared();
        }
        __syncthreads();

        uint32_t p_frag[kBlockN / 16][4];
        flash_pack_p(s, p_frag);
        if constexpr (Wgmma) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
            flash_issue_pv_wgmma(rows.o_acc, p_frag, smem_addr(s_v));
            flash_wait_pv_wgmma(rows.o_acc, p_frag);
#endif
        } else {
#pragma unroll
            for (int kk = 0; kk < kBlockN / 16; ++kk) {
#pragma unroll
                for (int j = 0; j < kOutTiles; j += 2) {
                    uint32_t b[4];
                    ldmatrix_x4_trans(b, s_v + attn_swizzle(kk * 16 + ldsm_a_row(lane),
                                                             j * 8 + ldsm_a_col(lane)));
                    mma_bf16_16816(rows.o_acc[j], p_frag[kk], b[0], b[1]);
                    mma_bf16_16816(rows.o_acc[j + 1], p_frag[kk], b[2], b[3]);
                }
            }
        }

        /* Every warp is done with this V block: stream in the next one (or an empty group). */
        __syncthreads();
        if (block + 1 < t.num_blocks) {
            load_tile<kBlockN, Wgmma>(s_v, v_seq + static_cast<size_t>(kb + kBlockN) * kHeadDim,
                                      t.keys.end - kb - kBlockN, tid);
        }
        cp_async_commit();
    }
    cp_async_wait<0>();

    /* The epilogue stages O through this warp's own Q rows. With wgmma, other warps' Q rows sit
     * in this warp's staging rows: every warp passed its last Q read (wgmma_wait) before the
     * loop's last barrier. */
    flash_store_o(rows, s_q, p.o + tile_row * kHeadDim, t.rows_valid, warp, lane);
}

} // namespace

extern "C" __global__ void __launch_bounds__(ATTENTION_FLASH_THREADS)
    attention_flash(const AttentionParams p) {
    extern __shared__ __align__(128) unsigned char smem[];
    attention_flash_body<false>(p, smem);
}

/* attention_flash_wgmma (sm_90a): attention_flash with both products on Hopper's warpgroup MMA.
 * The CTA's four warps are one warpgroup; the Q tile, each K block and each V block are stored
 * as wgmma operands in the 128-byte swizzle (attn_wgmma_swizzle: four 8 KB segments of 64 dims).
 * S = Q K^T: 16 wgmma.m64n64k16 per key block, Q and K K-major through wgmma_desc_sw128 at
 * attn_wgmma_k_offset, instead of 64 ldmatrix.x4 of K per warp. O += P V: 4 wgmma.m64n256k16,
 * P from registers (packed exactly as for mma.sync) and V as the MN-major B operand
 * (wgmma_desc_sw128_mn at attn_wgmma_v_offset, imm-trans-b), instead of 64 ldmatrix.x4.trans of
 * V per warp. Each product waits for its wgmmas before the registers are read and the buffer is
 * refilled. The softmax and the epilogue are attention_flash's. Launch: as attention_flash with
 * ATTENTION_FLASH_WGMMA_SMEM_BYTES (1024 bytes of slack to align the tiles). On other
 * architectures the kernel traps; the host launches it only on sm_90 devices. */
extern "C" __global__ void __launch_bounds__(ATTENTION_FLASH_THREADS)
    attention_flash_wgmma(const AttentionParams p) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    static_assert(kBlockM == ATTN_WGMMA_ROWS && kBlockN == ATTN_WGMMA_ROWS && kThreads == 128,
                  "one warpgroup, 64-row Q tiles and K blocks");
    static_assert(ATTENTION_FLASH_SMEM_BYTES + 1024 == ATTENTION_FLASH_WGMMA_SMEM_BYTES,
                  "params.h smem size");
    extern __shared__ __align__(128) unsigned char smem[];
    attention_flash_body<true>(p, smem_align_1024<unsigned char>(smem));
#else
    __trap();
#endif
}

/* ---- TMA flash kernel (sm_90a) ------------------------------------------------------- */

namespace {

constexpr int kTmaBlockM = ATTENTION_TMA_BLOCK_M;
constexpr int kTmaStages = ATTENTION_TMA_STAGES;
constexpr int kTmaConsumerWarps = kTmaBlockM / 16;
constexpr int kTmaProducerRegs = ATTENTION_TMA_PRODUCER_REGS;
constexpr int kTmaConsumerRegs = ATTENTION_TMA_CONSUMER_REGS;
constexpr uint32_t kTmaBlockBytes = kBlockN * kHeadDim * 2;
constexpr uint32_t kTmaQBytes = kTmaBlockM * kHeadDim * 2;

static_assert(kTmaConsumerWarps * 32 + 128 == ATTENTION_TMA_THREADS,
              "two consumer warpgroups and a producer warpgroup");
static_assert(128 * kTmaProducerRegs + kTmaConsumerWarps * 32 * kTmaConsumerRegs <= 65536,
              "the register file");
static_assert(kTmaQBytes + 2 * kTmaStages * kTmaBlockBytes + 1024 == ATTENTION_TMA_SMEM_BYTES,
              "params.h smem size");
static_assert(ATTN_TMA_WARPGROUPS == 2 && kBlockN == ATTN_WGMMA_ROWS,
              "the turn barriers alternate two warpgroups of 64 rows; 64-key blocks");
static_assert(kTmaStages >= 2, "the next block's copies land during this block's products");

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
constexpr uint32_t kTmaQHalfBytes = kTmaQBytes / ATTN_TMA_WARPGROUPS; /* a warpgroup's 64 rows */

/* 64 rows from row0 of `map`'s matrix, all kHeadDim dims, into the attn_wgmma_swizzle tile at
 * `dst`: one 64 x 64 box per segment, completing bytes of `bar`. */
__device__ __forceinline__ void tma_load_rows(unsigned char *dst, const TensorMap *map,
                                              uint64_t *bar, int32_t row0) {
#pragma unroll
    for (int seg = 0; seg < kHeadDim / 64; ++seg) {
        tma_load_2d(dst + seg * ATTN_WGMMA_SEGMENT_BYTES, map, bar, seg * 64, row0);
    }
}
#endif

} // namespace

/* attention_flash_tma (sm_90a): attention_flash_wgmma on 128-row tiles, persistent, with the
 * copies made by the TMA unit (FlashAttention-3's producer/consumer split). Each K and V block
 * loaded from L2 serves 128 packed rows (about 43 positions) instead of 64, halving the K/V
 * traffic per row.
 * Launch: grid = min(num_tiles, multiprocessors), ATTENTION_TMA_THREADS (two consumer
 * warpgroups, then a producer warpgroup that hands its registers to them with setmaxnreg: 24
 * per thread left, 240 for the consumers), ATTENTION_TMA_SMEM_BYTES, the work list built for
 * ATTENTION_TMA_BLOCK_M rows; CTA c takes tiles c, c + gridDim.x, ... The second parameter
 * holds the TMA maps of Q, K and V (params.h AttentionTensorMaps).
 * Shared memory (1024-byte aligned): the Q tile (warpgroup w's 64 rows at w * 32 KB, each in the
 * attn_wgmma_swizzle layout of attention_flash_wgmma), then ATTENTION_TMA_STAGES K blocks, then
 * as many V blocks. The producer's first thread issues, per key block, the K copies (4 boxes of
 * 64 keys x 64 dims) and the V copies, and after the first block's each warpgroup's Q half (4
 * boxes) once that warpgroup has released it, each set completing a `full` mbarrier. Rows past
 * the sequence read the next sequence (or zeros past the batch): their keys are masked and their
 * query rows never stored.
 * Consumer warpgroup w (warps 4 w .. 4 w + 3, packed rows 64 w .. 64 w + 63 of the tile), per
 * key block: wait for K, take its turn (attention.cuh), issue S = Q K^T, pass the turn, wait for
 * the products, release K (one `empty` arrival per warp), mask and softmax exactly as the other
 * flash kernels, O += P V, release V. The P V of a block is issued together with the next
 * block's Q K^T (FlashAttention-3's intra-warpgroup overlap) and runs during that block's
 * softmax, which leaves O alone; O is rescaled to the block's scale just before its P V is
 * issued, while the Q K^T issued before it runs (as FlashAttention-3 does for head dims above
 * 128). The tile's last P V follows its last softmax. After its last Q K^T of a tile a warpgroup
 * also releases its Q half, so the next tile's lands during the last softmax, P V and the
 * epilogue, which stores O straight from the accumulators. Numerics are attention_flash_wgmma's;
 * only the key blocks start elsewhere (at the 128-row tile's first key). */
namespace {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
/* attention_flash_tma's body; Turns: the warpgroups take turns at their products (else they
 * run free, attention_flash_tma_free). */
template <bool Turns>
__device__ __forceinline__ void attention_flash_tma_body(const AttentionParams &p,
                                                         const AttentionTensorMaps &maps,
                                                         unsigned char *tma_smem_bytes) {
    unsigned char *smem = smem_align_1024<unsigned char>(tma_smem_bytes);
    unsigned char *s_q = smem;
    unsigned char *s_k = s_q + kTmaQBytes;
    unsigned char *s_v = s_k + kTmaStages * kTmaBlockBytes;
    __shared__ uint64_t full_q[ATTN_TMA_WARPGROUPS], empty_q[ATTN_TMA_WARPGROUPS],
        full_k[kTmaStages], full_v[kTmaStages], empty_k[kTmaStages], empty_v[kTmaStages];
    if (threadIdx.x == 0) {
#pragma unroll
        for (int w = 0; w < ATTN_TMA_WARPGROUPS; ++w) {
            mbarrier_init(&full_q[w], 1);
            mbarrier_init(&empty_q[w], 4);
        }
#pragma unroll
        for (int st = 0; st < kTmaStages; ++st) {
            mbarrier_init(&full_k[st], 1);
            mbarrier_init(&full_v[st], 1);
            mbarrier_init(&empty_k[st], kTmaConsumerWarps);
            mbarrier_init(&empty_v[st], kTmaConsumerWarps);
        }
        fence_mbarrier_init();
    }
    __syncthreads();

    const int warp = threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (warp >= kTmaConsumerWarps) {
        /* The producer warpgroup: its first thread issues every copy. */
        setmaxnreg_dec<kTmaProducerRegs>();
        if (warp == kTmaConsumerWarps && lane == 0) {
            uint32_t tile_count = 0, block_count = 0;
            for (uint32_t tile = blockIdx.x; tile < p.num_tiles; tile += gridDim.x, ++tile_count) {
                const FlashTile t = flash_tile(p, tile, kTmaBlockM);
                const int32_t q_row = static_cast<int32_t>(t.seq_start) * kGroup + t.row0;
                for (int block = 0; block < t.num_blocks; ++block, ++block_count) {
                    const uint32_t st = gemm_tma_stage(block_count, kTmaStages);
                    const int32_t key_row =
                        static_cast<int32_t>(t.seq_start) + t.keys.begin + block * kBlockN;
                    const uint32_t empty_parity = gemm_tma_empty_parity(block_count, kTmaStages);
                    mbarrier_wait(&empty_k[st], empty_parity);
                    mbarrier_arrive_expect_tx(&full_k[st], kTmaBlockBytes);
                    tma_load_rows(s_k + st * kTmaBlockBytes, &maps.k, &full_k[st], key_row);
                    mbarrier_wait(&empty_v[st], empty_parity);
                    mbarrier_arrive_expect_tx(&full_v[st], kTmaBlockBytes);
                    tma_load_rows(s_v + st * kTmaBlockBytes, &maps.v, &full_v[st], key_row);
                    if (block == 0) {
                        /* After the first K and V; each warpgroup's Q half once it has released
                         * it (after its last Q K^T of the previous tile). */
                        for (int w = 0; w < ATTN_TMA_WARPGROUPS; ++w) {
                            mbarrier_wait(&empty_q[w], gemm_tma_empty_parity(tile_count, 1));
                            mbarrier_arrive_expect_tx(&full_q[w], kTmaQHalfBytes);
                            tma_load_rows(s_q + w * kTmaQHalfBytes, &maps.q, &full_q[w],
                                          q_row + w * ATTN_WGMMA_ROWS);
                        }
                    }
                }
            }
        }
        return;
    }

    setmaxnreg_inc<kTmaConsumerRegs>();
    const int warpgroup = warp / 4;
    const int group_row = lane >> 2;
    const int group_lane = lane & 3;
    const bool releases = lane == 0;
    const int radius = p.window_radius;
    const float scale_log2 = p.softmax_scale * kLog2e;
    const uint32_t q_base = smem_addr(s_q) + warpgroup * kTmaQHalfBytes;
    if (Turns && warpgroup == 1 && blockIdx.x < p.num_tiles) {
        named_barrier_arrive(attn_tma_turn_barrier(0), 2 * 128);
    }
    uint32_t tile_count = 0, block_count = 0;
    for (uint32_t tile = blockIdx.x; tile < p.num_tiles; tile += gridDim.x, ++tile_count) {
        const FlashTile t = flash_tile(p, tile, kTmaBlockM);
        const bool last_tile = tile + gridDim.x >= p.num_tiles;
        const int row_a = t.row0 + warp * 16 + group_row;
        const int pos[2] = {row_a / kGroup, (row_a + 8) / kGroup};
        FlashRows rows;
        rows.reset();
        mbarrier_wait(&full_q[warpgroup], gemm_tma_full_parity(tile_count, 1));
        /* The previous block's P, its V stage and that stage's phase: its P V is issued with the
         * next block's Q K^T and runs during that block's softmax. */
        uint32_t p_frag[kBlockN / 16][4];
        uint32_t v_stage = 0, v_parity = 0;
        /* The factor that brings O to the scale of the previous block's P (flash_softmax_scores
         * of that block), applied just before that block's P V is issued. */
        float o_rescale[2];
        /* Key block `block`: its Q K^T (with the previous block's P V when with_pv holds, which
         * is every block but the first: peeled, so that ptxas sees one shape of wgmma stage and
         * need not serialize them), its softmax and its P. */
        auto key_block = [&](int block, auto with_pv) {
            constexpr bool kWithPv = decltype(with_pv)::value;
            const uint32_t st = gemm_tma_stage(block_count, kTmaStages);
            const uint32_t full_parity = gemm_tma_full_parity(block_count, kTmaStages);
            const int kb = t.keys.begin + block * kBlockN;

            float s[kScoreTiles][4];
            mbarrier_wait(&full_k[st], full_parity);
            if constexpr (kWithPv) mbarrier_wait(&full_v[v_stage], v_parity);
            if constexpr (Turns) named_barrier_sync(attn_tma_turn_barrier(warpgroup), 2 * 128);
            flash_issue_s_wgmma(s, q_base, smem_addr(s_k + st * kTmaBlockBytes));
            if constexpr (kWithPv) {
                /* While Q K^T runs (no product uses O until the P V below is issued). */
                flash_rescale_o(rows, o_rescale);
                flash_issue_pv_wgmma(rows.o_acc, p_frag, smem_addr(s_v + v_stage * kTmaBlockBytes));
            }
            if (Turns && attn_tma_passes_turn(warpgroup, last_tile && block + 1 == t.num_blocks)) {
                named_barrier_arrive(attn_tma_turn_barrier(1 - warpgroup), 2 * 128);
            }
            /* Q K^T was committed first: its group completes while P V may still run. */
            flash_wait_s_wgmma<kWithPv ? 1 : 0>(s);
            __syncwarp();
            if (releases) {
                mbarrier_arrive(&empty_k[st]);
                /* The tile's last read of this warpgroup's Q half: the next tile's may land. */
                if (block + 1 == t.num_blocks) mbarrier_arrive(&empty_q[warpgroup]);
            }

            flash_softmax_scores(s, rows, t, kb, pos, radius, scale_log2, group_lane, o_rescale);
            if constexpr (kWithPv) {
                /* Without a branch between them ptxas hoists the wait above the softmax, and the
                 * P V would overlap only its first instructions. This one depends on the row
                 * sums, the softmax's last results; its condition never holds. */
                if (rows.row_sum[0] < 0.0f || rows.row_sum[1] < 0.0f) __trap();
                flash_wait_pv_wgmma(rows.o_acc, p_frag);
                __syncwarp();
                if (releases) mbarrier_arrive(&empty_v[v_stage]);
            }
            flash_pack_p(s, p_frag);
            v_stage = st;
            v_parity = full_parity;
            ++block_count;
        };
        key_block(0, std::false_type{});
        for (int block = 1; block < t.num_blocks; ++block) key_block(block, std::true_type{});
        /* The last block's P V. */
        mbarrier_wait(&full_v[v_stage], v_parity);
        flash_rescale_o(rows, o_rescale);
        flash_issue_pv_wgmma(rows.o_acc, p_frag, smem_addr(s_v + v_stage * kTmaBlockBytes));
        flash_wait_pv_wgmma(rows.o_acc, p_frag);
        __syncwarp();
        if (releases) mbarrier_arrive(&empty_v[v_stage]);

        const size_t tile_row = static_cast<size_t>(t.seq_start) * kGroup + t.row0;
        flash_store_o_direct(rows, p.o + tile_row * kHeadDim, t.rows_valid, warp, lane);
    }
}
#endif
} // namespace

extern "C" __global__ void __launch_bounds__(ATTENTION_TMA_THREADS, 1)
    attention_flash_tma(const AttentionParams p, const __grid_constant__ AttentionTensorMaps maps) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    extern __shared__ __align__(128) unsigned char tma_smem_bytes[];
    attention_flash_tma_body<true>(p, maps, tma_smem_bytes);
#else
    __trap();
#endif
}

/* attention_flash_tma_free (sm_90a): attention_flash_tma without the turn barriers, the two
 * warpgroups' products and softmaxes interleaving as the hardware schedules them
 * (FlashAttention-3 drops its scheduler barrier for bf16 at head dims above 128 once the P V
 * overlaps the softmax inside each warpgroup). Launch: as attention_flash_tma. */
extern "C" __global__ void __launch_bounds__(ATTENTION_TMA_THREADS, 1)
    attention_flash_tma_free(const AttentionParams p,
                             const __grid_constant__ AttentionTensorMaps maps) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    extern __shared__ __align__(128) unsigned char tma_smem_bytes[];
    attention_flash_tma_body<false>(p, maps, tma_smem_bytes);
#else
    __trap();
#endif
}
