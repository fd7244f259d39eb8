/* gate_up_geglu.cuh: index math of the gate_up_geglu kernel, shared by host and device.
 *
 * Plain integer arithmetic, driven by the kernel and by its host-side warp emulator
 * (kernels/tests/gate_up_geglu_fragments.c):
 * - which rows and outputs each warp owns,
 * - which weight rows of the CTA's tile feed each of a warp's n8 accumulator tiles.
 */
#ifndef GEMMA_EMBED_GATE_UP_GEGLU_CUH
#define GEMMA_EMBED_GATE_UP_GEGLU_CUH

#include "params.h"
#include "tile.cuh"

/* Each warp owns GEGLU_WARP_ROWS token rows x GEGLU_WARP_OUT outputs: 4 m16 tiles times
 * 4 gate and 4 up n8 tiles. */
#define GEGLU_WARP_ROWS 64
#define GEGLU_WARP_OUT 32
#define GEGLU_WARPS_M (GEGLU_GEMM_BLOCK_M / GEGLU_WARP_ROWS)
#define GEGLU_M_TILES (GEGLU_WARP_ROWS / 16)
#define GEGLU_OUT_TILES (GEGLU_WARP_OUT / 8)
/* The warp's first token row inside the CTA tile, and the first of its outputs inside the
 * CTA's BLOCK_OUT outputs. */
TILE_HD int geglu_warp_row(int warp) { return (warp % GEGLU_WARPS_M) * GEGLU_WARP_ROWS; }
TILE_HD int geglu_warp_out(int warp) { return (warp / GEGLU_WARPS_M) * GEGLU_WARP_OUT; }

/* First weight row (inside the CTA's 2 * BLOCK_OUT rows: gate rows, then up rows) of the
 * warp's n8 tile `tile`: tiles 0..OUT_TILES-1 are gate, OUT_TILES..2*OUT_TILES-1 the up rows
 * of the same outputs, so gate tile t and up tile t + OUT_TILES share lane and register. */
TILE_HD int geglu_tile_weight_row(int warp, int tile) {
    const int half = tile / GEGLU_OUT_TILES;
    return half * GEGLU_GEMM_BLOCK_OUT + geglu_warp_out(warp) + (tile % GEGLU_OUT_TILES) * 8;
}

/* Where accumulator elements 2 * half and 2 * half + 1 of lane `lane` in m16 tile `m_tile`
 * and gate tile `tile` (< OUT_TILES) land: the token row inside the CTA tile and the first of
 * the two adjacent outputs inside the CTA's BLOCK_OUT (mma.m16n8k16's C layout: row lane / 4
 * (+ 8), columns 2 (lane % 4) + 0, 1). */
TILE_HD int geglu_acc_row(int warp, int m_tile, int lane, int half) {
    return geglu_warp_row(warp) + m_tile * 16 + lane / 4 + 8 * half;
}
TILE_HD int geglu_acc_out(int warp, int tile, int lane) {
    return geglu_warp_out(warp) + tile * 8 + 2 * (lane % 4);
}

/* gate_up_geglu_wgmma and gate_up_geglu_wgmma_wide: warpgroup g (warps 4g..4g+3) computes token
 * rows 64 g .. 64 g + 63 of the CTA tile against all of the CTA's weight rows with one
 * wgmma.m64nNk16 per k16 step, N = 2 * outputs per CTA: GEGLU_GEMM_BLOCK_OUT outputs (N = 128)
 * or GEGLU_WIDE_BLOCK_OUT (N = 256, two blocks of the weight interleave: gate, up, gate, up).
 * tile.cuh's gemm_wgmma_x_offset and gemm_wgmma_w_offset address the operands. Where the
 * accumulators land (tile.cuh's gemm_wgmma_acc_row and wgmma_acc_col):
 * register `reg` of lane `lane` in warp `warp` of the CTA holds token row gemm_wgmma_acc_row
 * (inside the CTA tile) and weight row wgmma_acc_col (inside the CTA's weight rows). An m64nN
 * accumulator takes N / 2 f32 per thread, GEGLU_GEMM_BLOCK_OUT per interleave block: the
 * output of register `reg` (< GEGLU_GEMM_BLOCK_OUT / 2, the gate half of block 0's frame) in
 * interleave block `block` has its gate in register geglu_wgmma_gate_reg and its up
 * GEGLU_GEMM_BLOCK_OUT / 2 registers later, and is output geglu_wgmma_out of the CTA's. */
#define GEGLU_WGMMA_ACC_REGS (2 * GEGLU_GEMM_BLOCK_OUT / 2)
#define GEGLU_WIDE_ACC_REGS (2 * GEGLU_WIDE_BLOCK_OUT / 2)
TILE_HD int geglu_wgmma_gate_reg(int block, int reg) { return block * GEGLU_GEMM_BLOCK_OUT + reg; }
TILE_HD int geglu_wgmma_out(int block, int lane, int reg) {
    return block * GEGLU_GEMM_BLOCK_OUT + wgmma_acc_col(lane, reg);
}

#endif /* GEMMA_EMBED_GATE_UP_GEGLU_CUH */
