/* params.h: the one definition of every kernel's parameter struct.
 *
 * Included by the kernels (nvcc) and turned into Rust by bindgen in build.rs, so host and
 * device cannot disagree on layout. Each struct is passed to its kernel by value.
 * Pointers are device addresses; bf16 data is typed `bf16_t` (uint16_t on the host side).
 */
#ifndef GEMMA_EMBED_PARAMS_H
#define GEMMA_EMBED_PARAMS_H

#include <stdint.h>

#ifdef __CUDACC__
#include <cuda_bf16.h>
typedef __nv_bfloat16 bf16_t;
#else
typedef uint16_t bf16_t;
#endif

/* ---- attention (kernels/attention.cu) ---------------------------------------------- */

/* Compile-time shape of the attention kernels; the host checks them against the ModelConfig
 * (head_dim, num_heads / num_kv_heads) before it launches anything. */
#define ATTENTION_HEAD_DIM 256
/* Query heads sharing one K/V head (MQA group); packed row R = position * GROUP + head. */
#define ATTENTION_GROUP 3
/* attention_reference: one warp per (token, head), this many warps per block. */
#define ATTENTION_REFERENCE_WARPS 4
/* attention_flash: one CTA per work-list tile of BLOCK_M packed rows; keys in blocks of BLOCK_N. */
#define ATTENTION_FLASH_BLOCK_M 64
#define ATTENTION_FLASH_BLOCK_N 64
#define ATTENTION_FLASH_THREADS 128
/* Q tile + one K block + one V block, bf16: (64 + 64 + 64) * 256 * 2 bytes. */
#define ATTENTION_FLASH_SMEM_BYTES 98304
/* window_radius value meaning "full attention inside the sequence". */
#define ATTENTION_NO_WINDOW (-1)

/* One attention call over packed variable-length sequences (MQA, one K/V head).
 * Token t of sequence s (t in [seq_offsets[s], seq_offsets[s+1])) attends to the keys of the
 * same sequence whose position differs by at most window_radius (all of them when
 * window_radius < 0). */
typedef struct AttentionParams {
    const bf16_t *q;              /* [num_tokens, GROUP, HEAD_DIM], RoPE'd, already scaled    */
    const bf16_t *k;              /* [num_tokens, HEAD_DIM]                                   */
    const bf16_t *v;              /* [num_tokens, HEAD_DIM]                                   */
    bf16_t *o;                    /* [num_tokens, GROUP * HEAD_DIM], heads concatenated       */
    const uint32_t *seq_offsets;  /* [num_seqs + 1], 0 .. num_tokens                          */
    const uint32_t *tiles;        /* flash only: [num_tiles][2] = (sequence, first packed row
                                     inside that sequence, a multiple of BLOCK_M)             */
    uint32_t num_tokens;
    uint32_t num_seqs;
    uint32_t num_tiles;           /* flash only: grid size; CTAs at or past it exit           */
    int32_t window_radius;        /* ATTENTION_NO_WINDOW (or any negative) = full attention   */
    float softmax_scale;          /* multiplies q.k before the softmax (1.0: already folded)  */
} AttentionParams;

/* ---- other kernels ------------------------------------------------------------------ */

#endif /* GEMMA_EMBED_PARAMS_H */
