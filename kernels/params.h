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
/* attention_flash_wgmma (sm_90a): the same tiles, 1024-byte aligned for the 128-byte swizzle. */
#define ATTENTION_FLASH_WGMMA_SMEM_BYTES 99328
/* attention_flash_tma (sm_90a): persistent CTAs of TMA_BLOCK_M packed rows (two consumer
 * warpgroups of 64) and a producer warpgroup; the Q tile and TMA_STAGES stages of one K block
 * and one V block each, bf16, plus 1024 bytes to align: (128 + 2 * 2 * 64) * 256 * 2 + 1024. */
#define ATTENTION_TMA_BLOCK_M 128
#define ATTENTION_TMA_THREADS 384
#define ATTENTION_TMA_STAGES 2
#define ATTENTION_TMA_SMEM_BYTES 197632
/* Registers per thread after setmaxnreg: the producer warpgroup's and the consumers'. The CTA's
 * pool is its launch allocation (threads x the kernel's register count), so that count must be
 * at least (128 x 24 + 256 x 240) / 384 = 168, or the consumers' increase never completes; the
 * host checks it when it loads the kernel. */
#define ATTENTION_TMA_PRODUCER_REGS 24
#define ATTENTION_TMA_CONSUMER_REGS 240
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

/* embed.cu: residual = table[id] * scale, plus what the first pre-attention norm needs. */
typedef struct {
    const uint32_t *ids;         /* [num_tokens] */
    const uint32_t *seq_offsets; /* [num_seqs + 1] */
    const bf16_t *table;         /* [vocab, hidden] */
    float *residual;             /* [num_tokens, hidden] out */
    bf16_t *residual_bf16;       /* [num_tokens, hidden] out: bf16(residual) */
    float *inv_rms;              /* [num_tokens] out: 1/sqrt(mean(residual^2) + eps) */
    uint32_t *positions;         /* [num_tokens] out: index of the token inside its sequence */
    float scale;
    float eps;
    uint32_t num_tokens;
    uint32_t num_seqs;
    uint32_t hidden;
} EmbedParams;

/* residual_norm.cu: residual += RMSNorm_post(branch), then the inverse RMS of the new residual.
 * One warp per token holds its row in registers, 8 consecutive elements per lane in each
 * 256-wide chunk: hidden a multiple of 8 and at most this. */
#define RESIDUAL_NORM_MAX_HIDDEN 1024
typedef struct {
    const void *branch;       /* [num_tokens, hidden] GEMM output of the attention or MLP block:
                                 f32 for residual_norm, bf16 for residual_norm_bf16_branch */
    const float *post_norm;   /* [hidden] post-norm weight w (the kernel multiplies by 1 + w) */
    float *residual;          /* [num_tokens, hidden] in/out */
    bf16_t *residual_bf16;    /* [num_tokens, hidden] out: bf16(new residual) */
    float *inv_rms;           /* [num_tokens] out: inverse RMS of the new residual */
    float eps;
    uint32_t num_tokens;
    uint32_t hidden;
} ResidualNormParams;

/* qkv_post.cu: inverse-RMS scale, q/k RMSNorm, RoPE, query scale; splits Q, K, V.
 * QKV_POST_LANES lanes per (token, slot) row, each holding 8 elements of each half of the head:
 * head_dim a multiple of 16 and at most QKV_POST_MAX_HEAD_DIM. */
#define QKV_POST_LANES 16
#define QKV_POST_MAX_HEAD_DIM 256
typedef struct {
    const bf16_t *qkv;        /* [num_tokens, (num_heads + 2) * head_dim]: q heads | k | v */
    const float *inv_rms;     /* [num_tokens] inverse RMS of the GEMM's input rows */
    const uint32_t *positions;/* [num_tokens] */
    const float *q_norm;      /* [head_dim] weight w (1 + w applied) */
    const float *k_norm;      /* [head_dim] */
    const float *rope_cos;    /* [max_positions, head_dim / 2] */
    const float *rope_sin;    /* [max_positions, head_dim / 2] */
    bf16_t *q;                /* [num_tokens, num_heads, head_dim] out, times q_scale */
    bf16_t *k;                /* [num_tokens, head_dim] out */
    bf16_t *v;                /* [num_tokens, head_dim] out */
    float q_scale;
    float eps;
    uint32_t num_tokens;
    uint32_t num_heads;
    uint32_t head_dim;
    uint32_t max_positions;
} QkvPostParams;

/* qkv_proj.cu (sm_90a): the QKV projection with qkv_post's arithmetic in its epilogue. CTA
 * tile: QKV_PROJ_BLOCK_M token rows x one head slot (ATTENTION_HEAD_DIM weight rows: a q head,
 * k or v), k in GEMM_TILE_K slices through a QKV_PROJ_STAGES-deep pipeline, two warpgroups. */
#define QKV_PROJ_BLOCK_M 128
#define QKV_PROJ_STAGES 4
#define QKV_PROJ_THREADS 256
/* qkv_proj_tma: the same tile and stages, filled by TMA: a producer and two consumer warpgroups. */
#define QKV_TMA_THREADS 384
/* STAGES * (BLOCK_M + HEAD_DIM) * 64 bf16, plus 1024 bytes to align the stages. */
#define QKV_PROJ_SMEM_BYTES 197632
typedef struct {
    const bf16_t *x;          /* [num_tokens, hidden] bf16(residual) */
    const bf16_t *w;          /* [(num_heads + 2) * head_dim, hidden]: q heads, k, v rows,
                                 columns scaled by 1 + input_layernorm */
    const float *inv_rms;     /* [num_tokens] inverse RMS of the residual rows */
    const uint32_t *positions;/* [num_tokens] */
    const float *q_norm;      /* [head_dim] weight w (1 + w applied) */
    const float *k_norm;      /* [head_dim] */
    const float *rope_cos;    /* [max_positions, head_dim / 2] */
    const float *rope_sin;    /* [max_positions, head_dim / 2] */
    bf16_t *q;                /* [num_tokens, num_heads, head_dim] out, times q_scale */
    bf16_t *k;                /* [num_tokens, head_dim] out */
    bf16_t *v;                /* [num_tokens, head_dim] out */
    float q_scale;
    float eps;
    uint32_t num_tokens;
    uint32_t num_heads;
    uint32_t hidden;          /* a multiple of GEMM_TILE_K (64) */
} QkvProjParams;

/* proj_residual_norm.cu (sm_90a): the O or down projection with residual_norm's arithmetic in
 * its epilogue. A cluster of PROJ_NORM_CLUSTER CTAs covers BLOCK_M token rows x all hidden
 * (= PROJ_NORM_CLUSTER * 256) outputs, one 256-wide slice per CTA; k in GEMM_TILE_K slices through a
 * PROJ_NORM_STAGES-deep pipeline, two warpgroups per CTA. */
#define PROJ_NORM_BLOCK_M 128
#define PROJ_NORM_CLUSTER 3
#define PROJ_NORM_STAGES 4
#define PROJ_NORM_THREADS 256
/* STAGES * (BLOCK_M + 256) * 64 bf16, plus 1024 bytes to align the stages. */
#define PROJ_NORM_SMEM_BYTES 197632
/* proj_residual_norm_tma: the same tiles, cluster, stages and shared memory, with a producer
 * warpgroup issuing TMA copies ahead of two consumer warpgroups; the producer hands registers
 * to the consumers (setmaxnreg), so every thread must be launched with at least
 * (PRODUCER_REGS * 128 + CONSUMER_REGS * 256) / THREADS registers. */
#define PROJ_NORM_TMA_THREADS 384
#define PROJ_NORM_TMA_PRODUCER_REGS 24
#define PROJ_NORM_TMA_CONSUMER_REGS 240
typedef struct {
    const bf16_t *x;          /* [num_tokens, k_dim] the projection's input (attention or GEGLU
                                 output) */
    const bf16_t *w;          /* [hidden, k_dim] the projection's weight */
    const float *post_norm;   /* [hidden] post-norm weight w (the kernel multiplies by 1 + w) */
    float *residual;          /* [num_tokens, hidden] in/out */
    bf16_t *residual_bf16;    /* [num_tokens, hidden] out: bf16(new residual) */
    float *inv_rms;           /* [num_tokens] out: inverse RMS of the new residual */
    float eps;
    uint32_t num_tokens;
    uint32_t k_dim;           /* a multiple of GEMM_TILE_K (64) */
    uint32_t hidden;          /* PROJ_NORM_CLUSTER * 256 */
} ProjResidualNormParams;

/* geglu.cu: out = gelu_tanh(r * gate) * (r * up). One thread per this many consecutive outputs
 * of a row (one 16-byte store): intermediate a multiple of it. */
#define GEGLU_OUTPUTS_PER_THREAD 8
typedef struct {
    const bf16_t *gate_up;    /* [num_tokens, 2 * intermediate]: gate | up */
    const float *inv_rms;     /* [num_tokens] */
    bf16_t *out;              /* [num_tokens, intermediate] */
    uint32_t num_tokens;
    uint32_t intermediate;
} GegluParams;

/* gate_up_geglu.cu: the gate|up GEMM with geglu's arithmetic in its epilogue. CTA tile:
 * BLOCK_M token rows x BLOCK_OUT outputs, i.e. 2 * BLOCK_OUT weight rows (gate, then up),
 * through a STAGES-deep pipeline of BLOCK_K-wide k slices. */
#define GEGLU_GEMM_BLOCK_M 128
#define GEGLU_GEMM_BLOCK_OUT 64
#define GEGLU_GEMM_BLOCK_K 64
#define GEGLU_GEMM_STAGES 3
#define GEGLU_GEMM_THREADS 128
/* STAGES * (BLOCK_M + 2 * BLOCK_OUT) * BLOCK_K bf16. */
#define GEGLU_GEMM_SMEM_BYTES 98304
/* gate_up_geglu_wgmma (sm_90a): the same CTA tile and stages, two warpgroups of 64 rows each;
 * 1024 bytes of slack to align the stages to the 128-byte swizzle's 1024-byte atoms. */
#define GEGLU_WGMMA_THREADS 256
#define GEGLU_WGMMA_SMEM_BYTES 99328
/* gate_up_geglu_wgmma_wide (sm_90a): twice the outputs per CTA (GEGLU_WIDE_BLOCK_OUT, two
 * blocks of the weight interleave: 256 weight rows), so each x slice loaded from L2 feeds twice
 * the products; GEGLU_WIDE_STAGES stages, one CTA per SM. STAGES * (BLOCK_M + 2 * WIDE_BLOCK_OUT)
 * * BLOCK_K bf16, plus 1024 bytes to align the stages. */
#define GEGLU_WIDE_BLOCK_OUT 128
#define GEGLU_WIDE_STAGES 4
#define GEGLU_WIDE_SMEM_BYTES 197632
typedef struct {
    const bf16_t *x;          /* [num_tokens, hidden] bf16(residual) */
    const bf16_t *w;          /* [2 * intermediate, hidden]: gate and up rows interleaved in
                                 blocks of GEGLU_GEMM_BLOCK_OUT rows (gate block b, up block b,
                                 ...), columns scaled by 1 + pre_feedforward_layernorm */
    const float *inv_rms;     /* [num_tokens] */
    bf16_t *out;              /* [num_tokens, intermediate] */
    uint32_t num_tokens;
    uint32_t hidden;          /* a multiple of GEGLU_GEMM_BLOCK_K */
    uint32_t intermediate;    /* a multiple of GEGLU_GEMM_BLOCK_OUT */
} GateUpGegluParams;

/* A TMA tensor map (the driver's CUtensorMap: 128 opaque bytes), encoded on the host by
 * cuTensorMapEncodeTiled and read by cp.async.bulk.tensor from a __grid_constant__ kernel
 * parameter, which must keep its alignment. */
typedef struct __attribute__((aligned(128))) {
    uint64_t opaque[16];
} TensorMap;

/* The TMA GEMM kernels' second parameter: the maps of both operands, each a 2D bf16 tensor
 * [rows, k] (k contiguous) read in boxes of GEMM_TILE_K x (the kernel's tile rows), 128-byte
 * swizzle (tile.cuh's tile_swizzle on 1024-byte aligned stages), rows past the end read as 0. */
typedef struct {
    TensorMap x;              /* the activations, box rows = the CTA's token rows */
    TensorMap w;              /* the weights, box rows = the CTA's weight rows */
} GemmTensorMaps;

/* attention_flash_tma's second parameter: Q as [num_tokens * GROUP, HEAD_DIM] and K and V as
 * [num_tokens, HEAD_DIM], each read in boxes of 64 rows x 64 dims (one attn_wgmma_swizzle
 * segment), 128-byte swizzle, rows past num_tokens read as 0. */
typedef struct {
    TensorMap q;
    TensorMap k;
    TensorMap v;
} AttentionTensorMaps;

/* gate_up_geglu_tma (sm_90a): gate_up_geglu_wgmma_wide's tile (BLOCK_M token rows x
 * GEGLU_WIDE_BLOCK_OUT outputs) with its stages filled by TMA: a producer warpgroup (one thread
 * issuing the copies) and two consumer warpgroups, GEGLU_TMA_STAGES stages with full and empty
 * mbarriers. STAGES * (BLOCK_M + 2 * WIDE_BLOCK_OUT) * BLOCK_K bf16, plus 1024 bytes to align. */
#define GEGLU_TMA_THREADS 384
#define GEGLU_TMA_STAGES 4
#define GEGLU_TMA_SMEM_BYTES 197632

/* pool.cu: final norm, mean per sequence, folded Dense, L2 normalize, truncate, renormalize.
 * One POOL_BLOCK-thread block per sequence; its tokens are split over
 * POOL_BLOCK / (hidden / 4) token groups, whose partial sums take group*hidden floats of the
 * dynamic shared memory, followed by hidden + embed_dim floats. */
#define POOL_BLOCK 768
typedef struct {
    const float *residual;    /* [num_tokens, hidden] */
    const float *inv_rms;     /* [num_tokens] inverse RMS for the final norm */
    const float *final_norm;  /* [hidden] weight w (1 + w applied) */
    const uint32_t *seq_offsets; /* [num_seqs + 1] */
    const float *dense;       /* [embed_dim, hidden] the Dense chain folded into one matrix */
    float *out;               /* [num_seqs, out_dim] */
    float *norms;             /* [num_seqs] what each out row was divided by: out * norm is the
                                 Dense output's first out_dim components, un-normalized */
    uint32_t num_seqs;
    uint32_t hidden;
    uint32_t embed_dim;
    uint32_t out_dim;
} PoolParams;

/* probe.cu: the card's L2-to-SM read rate, the ceiling of the GEMM kernels' operand loads.
 * Launch: blocks of L2_PROBE_THREADS threads, as many as the device keeps resident at once. */
#define L2_PROBE_THREADS 256
typedef struct {
    const uint32_t *buffer;   /* [num_words], num_words a multiple of 4, small enough to stay
                                 in L2 */
    uint32_t *sum;            /* [1] in/out: += reps * (wrapping sum of buffer) */
    uint32_t num_words;
    uint32_t reps;            /* passes over the buffer */
} L2ProbeParams;

#endif /* GEMMA_EMBED_PARAMS_H */
