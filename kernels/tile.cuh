/* tile.cuh: shared-memory tile index math of the tensor-core kernels, shared by host and device.
 *
 * Plain integer arithmetic, so the host-side warp emulators in kernels/tests/ drive the very
 * functions the kernels use:
 * - the XOR swizzle of a [rows][row_elems] bf16 tile,
 * - the lane -> (row, column) addresses of the ldmatrix.x4 loads feeding mma.m16n8k16,
 * - the wgmma shared-memory descriptor and accumulator layout (sm_90a).
 */
#ifndef GEMMA_EMBED_TILE_CUH
#define GEMMA_EMBED_TILE_CUH

#include <stdint.h>

#ifdef __CUDACC__
#define TILE_HD __host__ __device__ __forceinline__
#else
#define TILE_HD static inline
#endif

/* Element offset of (row, col) in a [rows][row_elems] bf16 shared-memory tile (row_elems a
 * multiple of 64) whose 16-byte chunks are XOR-swizzled inside each 128-byte segment:
 * chunk ^ (row & 7). Eight consecutive rows read at the same logical chunk (one ldmatrix 8x8
 * matrix) then hit eight different chunks of the segment, i.e. all 32 banks, instead of one
 * 4-bank group; eight threads storing one row's eight chunks of a segment do too. */
TILE_HD int tile_swizzle(int row, int col, int row_elems) {
    const int chunk = col >> 3;
    return row * row_elems + ((chunk ^ (row & 7)) << 3) + (col & 7);
}

/* The GEMM kernels with fused epilogues (gate_up_geglu, qkv_proj) stream k in slices of
 * GEMM_TILE_K bf16: one 128-byte swizzle row per tile row, the width tile_swizzle and
 * wgmma_desc_sw128 address. Chunk `i` of a stage tile [rows][GEMM_TILE_K]: its row and first
 * column. Consecutive threads take consecutive chunks, so eight threads copy one 128-byte row. */
#define GEMM_TILE_K 64
/* The wgmma main loop (gemm_pipeline.cuh) with `stages` stage buffers and the wgmmas of
 * `in_flight` (0 or 1) slices left in flight across each barrier: a load may only overwrite the
 * stage read in_flight + 1 slices ago, so loads run this many slices ahead. */
#define GEMM_SLICES_AHEAD(stages, in_flight) ((stages) - 1 - (in_flight))
TILE_HD int gemm_chunk_row(int i) { return i / (GEMM_TILE_K / 8); }
TILE_HD int gemm_chunk_col(int i) { return (i % (GEMM_TILE_K / 8)) * 8; }

/* ldmatrix.x4 lane addresses. Lanes 8i..8i+7 give the eight row addresses of matrix i, and
 * matrix i lands in register i of every lane.
 *
 * A operand (16x16 at rows r0.., cols c0.., row-major; also V^T as the B operand of P.V,
 * loaded with .trans): matrices (rows 0-7, cols 0-7), (rows 8-15, cols 0-7),
 * (rows 0-7, cols 8-15), (rows 8-15, cols 8-15) = a0..a3 of mma.m16n8k16, or for V^T
 * (keys k0.., dims n0..) = b0, b1 of dims n0..n0+7 and b0, b1 of dims n0+8..n0+15. */
TILE_HD int ldsm_a_row(int lane) { return lane & 15; }
TILE_HD int ldsm_a_col(int lane) { return (lane >> 4) << 3; }

/* B operand from a matrix stored [n][k] (a weight [out][in], or K [key][dim]): 16 k x 16 n
 * = two n8 tiles. Matrices (n 0-7, k 0-7), (n 0-7, k 8-15), (n 8-15, k 0-7), (n 8-15, k 8-15)
 * = b0, b1 of n 0..7 and b0, b1 of n 8..15. */
TILE_HD int ldsm_b_row(int lane) { return (lane & 7) + ((lane >> 4) << 3); }
TILE_HD int ldsm_b_col(int lane) { return ((lane >> 3) & 1) << 3; }

/* wgmma (sm_90a) shared-memory matrix descriptor of a K-major operand stored as tile_swizzle
 * lays out [rows][64] bf16 tiles, at shared-memory byte address `addr` (PTX ISA, "Matrix
 * Descriptor Format"): bits 0-13 start address >> 4, bits 16-29 leading byte offset >> 4 (unused
 * by swizzled K-major layouts, 1 by convention), bits 32-45 stride byte offset >> 4 (1024: from
 * one group of 8 rows to the next), bits 49-51 base offset (0: tiles are 1024-byte aligned),
 * bits 62-63 swizzle mode (1 = 128-byte). The 128-byte swizzle XORs address bits 4-6 (the
 * 16-byte chunk) with bits 7-9 (the row within its group of 8), which is tile_swizzle's
 * chunk ^ (row & 7) on a 1024-byte aligned tile; the k16 step s of a 64-wide tile starts at
 * addr + 32 s. */
TILE_HD uint64_t wgmma_desc_sw128(uint32_t addr) {
    return (uint64_t)((addr & 0x3FFFF) >> 4) | ((uint64_t)1 << 16) | ((uint64_t)(1024 >> 4) << 32) |
           ((uint64_t)1 << 62);
}

/* The same for an MN-major operand (a B operand stored [k][n], n contiguous, read with
 * imm-trans-b = 1) in the 128-byte swizzle: atoms of 64 n-elements (128 bytes) x 8 k-rows at a
 * 128-byte row stride, swizzled as tile_swizzle; `n_block_stride` bytes from one 64-element
 * n-block to the next (the leading byte offset) and 1024 bytes from one 8-row k-group to the next
 * (the stride byte offset). */
TILE_HD uint64_t wgmma_desc_sw128_mn(uint32_t addr, uint32_t n_block_stride) {
    return (uint64_t)((addr & 0x3FFFF) >> 4) | ((uint64_t)((n_block_stride & 0x3FFFF) >> 4) << 16) |
           ((uint64_t)(1024 >> 4) << 32) | ((uint64_t)1 << 62);
}

/* wgmma GEMMs over such stages: warpgroup g multiplies tile rows WGMMA_ROWS g .. + 63 by every
 * weight row. Byte offsets, inside a stage's x tile and weight tile, of the operands of k16 step
 * `ks` (the next 16 k of each 128-byte row, before the swizzle). */
#define WGMMA_ROWS 64
TILE_HD uint32_t gemm_wgmma_x_offset(int warpgroup, int ks) {
    return (uint32_t)(warpgroup * WGMMA_ROWS * GEMM_TILE_K * 2 + ks * 32);
}
TILE_HD uint32_t gemm_wgmma_w_offset(int ks) { return (uint32_t)(ks * 32); }

/* Persistent GEMM kernels (one CTA per SM, grid <= number of tiles) walk the tiles blockIdx.x,
 * blockIdx.x + gridDim.x, ...: tile `tile` is column block gemm_tile_col_block (a block of the
 * CTA's weight rows) of row block gemm_tile_row_block, so the CTAs running at the same time
 * share x rows. */
TILE_HD uint32_t gemm_tile_row_block(uint32_t tile, uint32_t col_blocks) { return tile / col_blocks; }
TILE_HD uint32_t gemm_tile_col_block(uint32_t tile, uint32_t col_blocks) { return tile % col_blocks; }

/* The tiles a persistent TMA CTA walks (gemm_pipeline.cuh's wgmma_gemm_tma_persistent): its
 * i-th is gemm_walk_tile, while below the number of tiles; the weight rows of tile `tile` (its
 * column block's) start at gemm_walk_weight_row. A 1-D grid's CTA starts at blockIdx.x and steps
 * by gridDim.x from weight row 0; a cluster's CTA walks the row blocks (one column block) from
 * its cluster's index by the number of clusters, its weight rows offset by its rank's slice. */
typedef struct {
    uint32_t first, step, col_blocks, first_weight_row;
} GemmTileWalk;
TILE_HD uint32_t gemm_walk_tile(GemmTileWalk walk, uint32_t i) { return walk.first + i * walk.step; }
TILE_HD uint32_t gemm_walk_weight_row(GemmTileWalk walk, uint32_t tile, uint32_t weight_rows) {
    return walk.first_weight_row + gemm_tile_col_block(tile, walk.col_blocks) * weight_rows;
}

/* The TMA main loop (gemm_pipeline.cuh's wgmma_gemm_tma_persistent) counts a CTA's k slices
 * across its tiles: slice i uses stage gemm_tma_stage; the consumers wait for the phase of its
 * full mbarrier of parity gemm_tma_full_parity (the producer's (i / stages)-th fill), the producer
 * for the phase of its empty mbarrier of parity gemm_tma_empty_parity (the consumers' release of
 * slice i - stages; on a fresh barrier, parity 1 passes at once). */
TILE_HD uint32_t gemm_tma_stage(uint32_t slice, uint32_t stages) { return slice % stages; }
TILE_HD uint32_t gemm_tma_full_parity(uint32_t slice, uint32_t stages) {
    return (slice / stages) & 1;
}
TILE_HD uint32_t gemm_tma_empty_parity(uint32_t slice, uint32_t stages) {
    return ((slice / stages) & 1) ^ 1;
}

/* proj_residual_norm_tma's exchange of row sums across its cluster: in each CTA, lane 0 of
 * every quad of the consumer warps (proj_norm_exchange_writer) publishes its quad's two rows'
 * partial sums to every CTA of the cluster and arrives on every CTA's full mbarrier of the
 * exchange, so a phase takes PROJ_NORM_EXCHANGE_ARRIVALS arrivals (those lanes of every CTA).
 * The CTA's n-th tile is use n of each exchange, the n-th fill of a one-stage barrier: it waits
 * for the phase of parity gemm_tma_full_parity(n, 1). */
#define PROJ_NORM_EXCHANGE_ARRIVALS (PROJ_NORM_CLUSTER * (PROJ_NORM_BLOCK_M / WGMMA_ROWS) * 128 / 4)
TILE_HD int proj_norm_exchange_writer(int lane) { return lane % 4 == 0; }

/* The wgmma accumulator layout (m64nN, f32; PTX ISA, "Matrix fragments for wgmma.mma_async"):
 * register `reg` of lane `lane` in warp `warp` (0..3 inside its warpgroup) holds row
 * wgmma_acc_row and column wgmma_acc_col of the warpgroup's 64 x N product. Each warp owns 16
 * rows, and registers 4 j .. 4 j + 3 form the n8 tile j exactly as mma.m16n8k16's C fragment
 * (row lane / 4 (+ 8), columns 2 (lane % 4) + 0, 1). */
TILE_HD int wgmma_acc_row(int warp, int lane, int reg) {
    return warp * 16 + lane / 4 + 8 * ((reg >> 1) & 1);
}
TILE_HD int wgmma_acc_col(int lane, int reg) { return 8 * (reg >> 2) + 2 * (lane % 4) + (reg & 1); }

/* The same for two or more warpgroups, warpgroup g (warps 4 g .. 4 g + 3 of the CTA) owning
 * tile rows WGMMA_ROWS g ..: the tile row of register `reg` of lane `lane` in warp `warp`. */
TILE_HD int gemm_wgmma_acc_row(int warp, int lane, int reg) {
    return (warp / 4) * WGMMA_ROWS + wgmma_acc_row(warp % 4, lane, reg);
}

/* The epilogues of the wgmma GEMMs (two or more warpgroups, warpgroup g owning tile rows
 * WGMMA_ROWS g ..) read a thread's accumulators row by row: row `half` (0, 1) of lane `lane` in
 * warp `warp` of the CTA is tile row gemm_wgmma_row, and n8 tile `tile` of that row holds the
 * adjacent columns gemm_wgmma_col + 0, 1 in registers gemm_wgmma_reg(tile, half, 0 / 1). The four
 * lanes of a quad (lane / 4 equal) hold every column of the same two rows. */
TILE_HD int gemm_wgmma_row(int warp, int lane, int half) {
    return gemm_wgmma_acc_row(warp, lane, 2 * half);
}
TILE_HD int gemm_wgmma_reg(int tile, int half, int e) { return 4 * tile + 2 * half + e; }
TILE_HD int gemm_wgmma_col(int lane, int tile) { return wgmma_acc_col(lane, 4 * tile); }

/* A operand from registers (wgmma ... d, {a0, a1, a2, a3}, b-desc, ...; m64nNk16, 16-bit types):
 * register `reg` (0..3) of lane `lane` in warp `warp` (0..3 inside its warpgroup) holds the two
 * elements (row, k), (row, k + 1) with row = wgmma_a_row and k = wgmma_a_k, the layout of
 * mma.m16n8k16's A fragment for rows 16 warp .. 16 warp + 15. */
TILE_HD int wgmma_a_row(int warp, int lane, int reg) { return warp * 16 + lane / 4 + 8 * (reg & 1); }
TILE_HD int wgmma_a_k(int lane, int reg) { return 2 * (lane % 4) + 8 * (reg >> 1); }

#endif /* GEMMA_EMBED_TILE_CUH */
