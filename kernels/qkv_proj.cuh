/* qkv_proj.cuh: constants of the qkv_proj_wgmma epilogue, shared by host and device.
 *
 * Each warpgroup holds a 64 x 256 accumulator (wgmma.m64n256k16), read row by row through
 * tile.cuh's gemm_wgmma_row / gemm_wgmma_reg / gemm_wgmma_col: every thread has 64 columns of two
 * token rows, and the four lanes of a quad hold all 256 columns of the same two rows, so a row's
 * sum of squares is a quad reduction. Column c and its RoPE partner c + 128 sit in the same
 * thread, QKV_PROJ_ROPE_REGS registers apart. The host warp emulator
 * (kernels/tests/qkv_proj_fragments.c) checks all of it.
 */
#ifndef GEMMA_EMBED_QKV_PROJ_CUH
#define GEMMA_EMBED_QKV_PROJ_CUH

#include "params.h"
#include "tile.cuh"

/* n8 tiles in the first half of a head (the RoPE pairs' first members), and how many registers
 * separate a column from its partner 128 columns on. */
#define QKV_PROJ_HALF_TILES (ATTENTION_HEAD_DIM / 2 / 8)
#define QKV_PROJ_ROPE_REGS (4 * QKV_PROJ_HALF_TILES)
/* f32 accumulators per thread: m64n256. */
#define QKV_PROJ_ACC_REGS (ATTENTION_HEAD_DIM / 2)

#endif /* GEMMA_EMBED_QKV_PROJ_CUH */
