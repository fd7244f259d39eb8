/* warp_emulator.h: one warp's ldmatrix and mma.sync, emulated in plain C for the fragment checks.
 *
 * No simulator runs mma.sync/ldmatrix on a machine without a GPU, so the fragment checks
 * (kernels/tests/<kernel>_fragments.c) emulate them from the PTX ISA definitions of
 * ldmatrix.sync.aligned.m8n8.x4(.trans).shared.b16 and
 * mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32, and drive them with the kernels' own index
 * functions. Shared memory is an array of floats, one per bf16 element; values are small
 * integers in the checks, so every product and sum is exact.
 */
#ifndef GEMMA_EMBED_WARP_EMULATOR_H
#define GEMMA_EMBED_WARP_EMULATOR_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "tile.cuh"

/* One 32-bit register holding two 16-bit elements: lo = lower index. */
typedef struct {
    float lo, hi;
} Pair;

static int failures = 0;
/* What is being checked, printed with each mismatch. */
static const char *checking = "";

static void expect(int ok, const char *what, int a, int b, int c) {
    if (!ok && failures++ < 10) {
        printf("mismatch: %s%s%s (%d, %d, %d)\n", checking, *checking ? ": " : "", what, a, b, c);
    }
}

/* main's exit status: "ok" and 0 when every expectation held, the count and 1 otherwise (the
 * Rust test that runs the check looks for "ok"). */
static inline int verdict(void) {
    if (failures) {
        printf("%d mismatches\n", failures);
        return 1;
    }
    printf("ok\n");
    return 0;
}

/* The quad sum of thread t (__shfl_xor_sync with 1, then 2): per_thread[] summed over the lanes
 * lane ^ 0..3 of t's warp. */
static inline float quad_sum(const float *per_thread, int t) {
    const int warp = t / 32, lane = t % 32;
    float sum = 0.0f;
    for (int q = 0; q < 4; ++q) sum += per_thread[warp * 32 + (lane ^ q)];
    return sum;
}

/* Bank of a 4-byte word at element offset `elem` (2-byte elements). */
static int bank_of(int elem) { return (elem * 2 / 4) % 32; }

/* One shared-memory phase of eight 16-byte accesses (the eight row addresses of one ldmatrix
 * 8x8 matrix, or eight threads' cp.async.16 stores) at element offsets `offsets`: each must be
 * 16-byte aligned (`aligned`), and together they must cover the 32 banks once
 * (`conflict_free`). */
static void expect_phase_conflict_free(const int offsets[8], const char *aligned,
                                       const char *conflict_free, int phase) {
    int banks[32] = {0};
    for (int i = 0; i < 8; ++i) {
        expect(offsets[i] % 8 == 0, aligned, phase, i, offsets[i]);
        for (int w = 0; w < 4; ++w) {
            banks[bank_of(offsets[i] + 2 * w)]++;
        }
    }
    for (int b = 0; b < 32; ++b) {
        expect(banks[b] == 1, conflict_free, phase, b, banks[b]);
    }
}

/* gemm_load_stage (kernels/gemm_pipeline.cuh) for one tile of a stage, all `threads` threads:
 * rows 0 .. rows - 1 of the tile [rows][GEMM_TILE_K] at `tile` take k slice `k_tile` of
 * source rows first_row .. of `src` ([src_rows][src_stride], row-major); rows past src_rows are
 * zero-filled. Checks that each phase of eight cp.async.16 stores is conflict-free. */
static inline void emulate_stage_tile(float *tile, int rows, int threads, const float *src, int src_rows,
                                      int src_stride, int first_row, int k_tile) {
    const int row_step = threads / (GEMM_TILE_K / 8);
    for (int j = 0; j * row_step < rows; ++j) {
        int phase_offsets[8];
        for (int tid = 0; tid < threads; ++tid) {
            const int r = gemm_chunk_row(tid) + j * row_step;
            const int c = gemm_chunk_col(tid);
            const int dst = tile_swizzle(r, c, GEMM_TILE_K);
            phase_offsets[tid % 8] = dst;
            if (tid % 8 == 7) {
                expect_phase_conflict_free(phase_offsets, "cp.async destination 16-byte aligned",
                                           "cp.async store phase conflict-free", tid / 8);
            }
            const int row = first_row + r;
            for (int e = 0; e < 8; ++e) {
                const int k = k_tile * GEMM_TILE_K + c + e;
                tile[dst + e] = row < src_rows ? src[(size_t)row * src_stride + k] : 0.0f;
            }
        }
    }
}

/* ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16: lane l supplies the address (element
 * offset) of row l % 8 of matrix l / 8; lane t receives in register i, without .trans,
 * elements [t / 4][2 (t % 4)] and [t / 4][2 (t % 4) + 1] of matrix i, with .trans elements
 * [2 (t % 4)][t / 4] and [2 (t % 4) + 1][t / 4]. */
static inline void ldmatrix_x4(const float *smem, const int addr[32], int trans, Pair out[32][4]) {
    for (int m = 0; m < 4; ++m) {
        expect_phase_conflict_free(&addr[8 * m], "ldmatrix row address 16-byte aligned",
                                   "ldmatrix phase conflict-free", m);
    }
    for (int t = 0; t < 32; ++t) {
        for (int m = 0; m < 4; ++m) {
            int r0, c0, r1, c1;
            if (!trans) {
                r0 = r1 = t / 4;
                c0 = 2 * (t % 4);
                c1 = c0 + 1;
            } else {
                r0 = 2 * (t % 4);
                r1 = r0 + 1;
                c0 = c1 = t / 4;
            }
            out[t][m].lo = smem[addr[8 * m + r0] + c0];
            out[t][m].hi = smem[addr[8 * m + r1] + c1];
        }
    }
}

/* mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 with groupID g = t / 4 and
 * threadID_in_group q = t % 4:
 *   A element i of lane t: row g (i in 0,1,4,5) or g + 8 (2,3,6,7); col 2q + (i & 1) (+8 for
 *   i >= 4); register j holds elements 2j, 2j + 1.
 *   B element i: row (k) 2q + (i & 1) (+8 for i >= 2), col (n) g; register j holds 2j, 2j + 1.
 *   C element i: row g (i < 2) or g + 8, col 2q + (i & 1). */
static inline void mma_16816(float c[32][4], Pair a[32][4], Pair b[32][2]) {
    float A[16][16], B[16][8], C[16][8];
    for (int t = 0; t < 32; ++t) {
        const int g = t / 4, q = t % 4;
        for (int i = 0; i < 8; ++i) {
            const int row = (i == 2 || i == 3 || i == 6 || i == 7) ? g + 8 : g;
            const int col = 2 * q + (i & 1) + (i >= 4 ? 8 : 0);
            const Pair reg = a[t][i / 2];
            A[row][col] = (i & 1) ? reg.hi : reg.lo;
        }
        for (int i = 0; i < 4; ++i) {
            const int row = 2 * q + (i & 1) + (i >= 2 ? 8 : 0);
            const Pair reg = b[t][i / 2];
            B[row][g] = (i & 1) ? reg.hi : reg.lo;
        }
        for (int i = 0; i < 4; ++i) {
            C[i < 2 ? g : g + 8][2 * q + (i & 1)] = c[t][i];
        }
    }
    for (int r = 0; r < 16; ++r) {
        for (int n = 0; n < 8; ++n) {
            float acc = C[r][n];
            for (int k = 0; k < 16; ++k) {
                acc += A[r][k] * B[k][n];
            }
            C[r][n] = acc;
        }
    }
    for (int t = 0; t < 32; ++t) {
        const int g = t / 4, q = t % 4;
        for (int i = 0; i < 4; ++i) {
            c[t][i] = C[i < 2 ? g : g + 8][2 * q + (i & 1)];
        }
    }
}

/* The two mma.m16n8k16 the kernels issue per ldmatrix.x4 of a B operand: registers 0, 1 are
 * the B fragment of n8 tile c0, registers 2, 3 that of n8 tile c1. */
static inline void mma_16816_b_x4(float c0[32][4], float c1[32][4], Pair a[32][4], Pair b[32][4]) {
    Pair b0[32][2], b1[32][2];
    for (int l = 0; l < 32; ++l) {
        b0[l][0] = b[l][0];
        b0[l][1] = b[l][1];
        b1[l][0] = b[l][2];
        b1[l][1] = b[l][3];
    }
    mma_16816(c0, a, b0);
    mma_16816(c1, a, b1);
}

/* wgmma.mma_async's shared-memory operands, from the PTX ISA: the element a K-major
 * 128-byte-swizzle descriptor addresses for operand row `row` (M for A, N for B) and k `k` < 16,
 * as an element index into shared memory (byte address 0 = element 0, 1024-byte aligned). The
 * swizzle XORs address bits 4-6 with bits 7-9. */
static inline int wgmma_element(uint64_t desc, int row, int k) {
    const uint32_t start = (uint32_t)(desc & 0x3FFF) << 4;
    const uint32_t stride = (uint32_t)((desc >> 32) & 0x3FFF) << 4;
    expect((desc >> 62) == 1, "descriptor: 128-byte swizzle", row, k, (int)(desc >> 62));
    expect(((desc >> 49) & 7) == 0, "descriptor: base offset 0", row, k, 0);
    const uint32_t linear = start + (uint32_t)(row / 8) * stride + (uint32_t)(row % 8) * 128 + 2 * k;
    const uint32_t swizzled = linear ^ (((linear >> 7) & 7) << 4);
    return (int)(swizzled / 2);
}

/* The same for an MN-major operand (imm-trans-b = 1): element (n, k) of a B operand whose n runs
 * along the 128-byte rows; 64-element n-blocks `LBO` bytes apart (descriptor bits 16-29), 8-row
 * k-groups `SBO` bytes apart (bits 32-45), rows inside a group 128 bytes apart. */
static inline int wgmma_element_mn(uint64_t desc, int n, int k) {
    const uint32_t start = (uint32_t)(desc & 0x3FFF) << 4;
    const uint32_t leading = (uint32_t)((desc >> 16) & 0x3FFF) << 4;
    const uint32_t stride = (uint32_t)((desc >> 32) & 0x3FFF) << 4;
    expect((desc >> 62) == 1, "descriptor: 128-byte swizzle", n, k, (int)(desc >> 62));
    expect(((desc >> 49) & 7) == 0, "descriptor: base offset 0", n, k, 0);
    const uint32_t linear = start + (uint32_t)(n / 64) * leading + (uint32_t)(k / 8) * stride +
                            (uint32_t)(k % 8) * 128 + (uint32_t)(n % 64) * 2;
    const uint32_t swizzled = linear ^ (((linear >> 7) & 7) << 4);
    return (int)(swizzled / 2);
}

/* One CTA's cp.async + wgmma pipeline of kernels/gemm_pipeline.cuh, in its program order:
 * `threads` / 128 warpgroups of WGMMA_ROWS tile rows, `stages` stage buffers that persist from
 * tile to tile (poisoned with NaN at the start), and the wgmmas of the last `in_flight` slices
 * left in flight. A stage copy (emulate_stage_tile: x rows first_row .. of x [x_rows][k_dim],
 * weight rows first_weight_row .. of w [w_rows][k_dim]) lands at once, earlier than any wait
 * could see it; a slice's wgmmas read their stage only when a wait retires them (the
 * wgmma_wait<in_flight> of a later slice, or the k loop's final wait). So a copy that overwrites a
 * stage before the wgmmas reading it have retired, or a slice read from a stage it was never
 * copied to, changes the product, as it would on the GPU. */
typedef struct {
    int threads, block_m, weight_rows, stages, in_flight;
    const float *x, *w;
    int x_rows, w_rows, k_dim;
    float *stage;
    float *d;     /* the CTA's [block_m][weight_rows] product */
    int *dealt;   /* how often each product element went to a register */
} EmuPipeline;

static inline EmuPipeline emu_pipeline(int threads, int weight_rows, int stages, int in_flight,
                                       const float *x, int x_rows, const float *w, int w_rows,
                                       int k_dim) {
    EmuPipeline p = {threads, threads / 128 * WGMMA_ROWS, weight_rows, stages, in_flight,
                     x, w, x_rows, w_rows, k_dim, NULL, NULL, NULL};
    const size_t stage_elems = (size_t)(p.block_m + weight_rows) * GEMM_TILE_K;
    p.stage = malloc(stages * stage_elems * sizeof(float));
    for (size_t i = 0; i < stages * stage_elems; ++i) p.stage[i] = NAN;
    p.d = malloc((size_t)p.block_m * weight_rows * sizeof(float));
    p.dealt = malloc((size_t)p.block_m * weight_rows * sizeof(int));
    return p;
}

static inline void emu_pipeline_free(EmuPipeline *p) {
    free(p->stage);
    free(p->d);
    free(p->dealt);
}

/* gemm_load_stage: k slice `k_tile` of the tile's x rows and weight rows into stage `s`. */
static inline void emu_load_stage(EmuPipeline *p, int s, int first_row, int first_weight_row,
                                  int k_tile) {
    float *st = p->stage + (size_t)s * (p->block_m + p->weight_rows) * GEMM_TILE_K;
    emulate_stage_tile(st, p->block_m, p->threads, p->x, p->x_rows, p->k_dim, first_row, k_tile);
    emulate_stage_tile(st + p->block_m * GEMM_TILE_K, p->weight_rows, p->threads, p->w, p->w_rows,
                       p->k_dim, first_weight_row, k_tile);
}

/* The wgmmas of one slice, retiring: every warpgroup's wgmma.m64nNk16 (N = weight_rows) over
 * stage `s`, both operands read through the descriptors the k loop builds (decoded by
 * wgmma_element), accumulated into the product. */
static inline void emu_retire_slice(EmuPipeline *p, int s) {
    const float *st = p->stage + (size_t)s * (p->block_m + p->weight_rows) * GEMM_TILE_K;
    /* Stage byte address 0: the x tile, then the weight tile. */
    const uint32_t x_tile = 0, w_tile = (uint32_t)(p->block_m * GEMM_TILE_K * 2);
    for (int wg = 0; wg < p->threads / 128; ++wg) {
        for (int ks = 0; ks < GEMM_TILE_K / 16; ++ks) {
            const uint64_t da = wgmma_desc_sw128(x_tile + gemm_wgmma_x_offset(wg, ks));
            const uint64_t db = wgmma_desc_sw128(w_tile + gemm_wgmma_w_offset(ks));
            for (int m = 0; m < WGMMA_ROWS; ++m) {
                for (int n = 0; n < p->weight_rows; ++n) {
                    float sum = 0.0f;
                    for (int k = 0; k < 16; ++k) {
                        sum += st[wgmma_element(da, m, k)] * st[wgmma_element(db, n, k)];
                    }
                    p->d[(size_t)(wg * WGMMA_ROWS + m) * p->weight_rows + n] += sum;
                }
            }
        }
    }
}

/* A wgmma wait: the oldest of the `*pending` slices still in flight (stages in_flight_stages[])
 * retire until `keep` remain. */
static inline void emu_wgmma_wait(EmuPipeline *p, int in_flight_stages[2], int *pending, int keep) {
    while (*pending > keep) {
        emu_retire_slice(p, in_flight_stages[0]);
        in_flight_stages[0] = in_flight_stages[1];
        --*pending;
    }
}

/* wgmma_gemm_prologue: the tile's first GEMM_SLICES_AHEAD slices into stages 0, 1, ... */
static inline void emu_prologue(EmuPipeline *p, int first_row, int first_weight_row) {
    const int ahead = GEMM_SLICES_AHEAD(p->stages, p->in_flight);
    for (int s = 0; s < ahead && s < p->k_dim / GEMM_TILE_K; ++s) {
        emu_load_stage(p, s, first_row, first_weight_row, s);
    }
}

/* wgmma_gemm_k_loop after its prologue; the product dealt to acc [threads][weight_rows / 2] by
 * the accumulator layout (wgmma_acc_row, wgmma_acc_col), each element exactly once. */
static inline void emu_k_loop(EmuPipeline *p, int first_row, int first_weight_row, float *acc) {
    const int ahead = GEMM_SLICES_AHEAD(p->stages, p->in_flight);
    const int k_tiles = p->k_dim / GEMM_TILE_K;
    int in_flight_stages[2], pending = 0;
    expect(ahead >= 1 && p->in_flight >= 0 && p->in_flight <= 1, "pipeline depth", p->stages,
           p->in_flight, ahead);
    for (size_t i = 0; i < (size_t)p->block_m * p->weight_rows; ++i) {
        p->d[i] = 0.0f;
        p->dealt[i] = 0;
    }
    for (int kt = 0; kt < k_tiles; ++kt) {
        /* After the barrier: the load `ahead` slices on, then this slice's wgmmas. */
        const int next = kt + ahead;
        if (next < k_tiles) emu_load_stage(p, next % p->stages, first_row, first_weight_row, next);
        in_flight_stages[pending++] = kt % p->stages;
        emu_wgmma_wait(p, in_flight_stages, &pending, p->in_flight); /* wgmma_wait<in_flight> */
    }
    emu_wgmma_wait(p, in_flight_stages, &pending, 0); /* wgmma_wait<0> */
    const int regs = p->weight_rows / 2;
    for (int t = 0; t < p->threads; ++t) {
        const int warp = t / 32, lane = t % 32;
        for (int reg = 0; reg < regs; ++reg) {
            const int row = gemm_wgmma_acc_row(warp, lane, reg);
            const int col = wgmma_acc_col(lane, reg);
            acc[(size_t)t * regs + reg] = p->d[(size_t)row * p->weight_rows + col];
            p->dealt[(size_t)row * p->weight_rows + col]++;
        }
    }
    for (int r = 0; r < p->block_m; ++r)
        for (int n = 0; n < p->weight_rows; ++n)
            expect(p->dealt[r * p->weight_rows + n] == 1, "wgmma accumulators dealt once", r, n,
                   p->dealt[r * p->weight_rows + n]);
}

/* wgmma_gemm_mainloop for one CTA: a fresh pipeline, its prologue, its k loop. */
static inline void emulate_wgmma_gemm_cta(int threads, int weight_rows, int stages, int in_flight,
                                          const float *x, int x_rows, const float *w, int w_rows,
                                          int k_dim, int first_row, int first_weight_row,
                                          float *acc) {
    EmuPipeline p = emu_pipeline(threads, weight_rows, stages, in_flight, x, x_rows, w, w_rows,
                                 k_dim);
    emu_prologue(&p, first_row, first_weight_row);
    emu_k_loop(&p, first_row, first_weight_row, acc);
    emu_pipeline_free(&p);
}

/* A tile's epilogue, run by the multiplying threads first_thread .. last_thread - 1 (thread t
 * numbered as in the multiplying warpgroups: warp t / 32, lane t % 32) on acc
 * [threads][weight_rows / 2]. */
typedef void (*EmuEpilogue)(const float *acc, int first_row, int col_block, int first_thread,
                            int last_thread);

/* wgmma_gemm_persistent (kernels/gemm_pipeline.cuh) for CTA `cta` of a grid of `grid`: the tiles
 * cta, cta + grid, ... of ceil(num_tokens / block_m) row blocks x col_blocks (tile.cuh's
 * gemm_tile_row_block / gemm_tile_col_block), each tile's k loop, then the next tile's prologue,
 * then the epilogue (every thread), in one pipeline whose stages carry over from tile to tile. */
static inline void emulate_wgmma_persistent_cta(EmuPipeline *p, int cta, int grid, int num_tokens,
                                                int col_blocks, float *acc, EmuEpilogue epilogue) {
    const uint32_t cols = (uint32_t)col_blocks;
    const uint32_t num_tiles = (uint32_t)((num_tokens + p->block_m - 1) / p->block_m) * cols;
    uint32_t tile = (uint32_t)cta;
    if (tile < num_tiles) {
        emu_prologue(p, (int)gemm_tile_row_block(tile, cols) * p->block_m,
                     (int)gemm_tile_col_block(tile, cols) * p->weight_rows);
    }
    for (; tile < num_tiles; tile += (uint32_t)grid) {
        const int first_row = (int)gemm_tile_row_block(tile, cols) * p->block_m;
        const int col_block = (int)gemm_tile_col_block(tile, cols);
        emu_k_loop(p, first_row, col_block * p->weight_rows, acc);
        const uint32_t next = tile + (uint32_t)grid;
        if (next < num_tiles) {
            emu_prologue(p, (int)gemm_tile_row_block(next, cols) * p->block_m,
                         (int)gemm_tile_col_block(next, cols) * p->weight_rows);
        }
        epilogue(acc, first_row, col_block, 0, p->threads);
    }
}

/* An mbarrier (PTX ISA, "Parallel Synchronization and Communication Instructions: mbarrier"): the
 * phase in progress completes once its pending arrivals and its transaction count are both zero,
 * then the next phase starts with `count` pending arrivals; try_wait.parity(P) holds when the
 * phase in progress has the other parity, i.e. the last phase of parity P has completed (on a
 * fresh barrier, P = 1 holds). Only the parity is visible, as on the GPU. */
typedef struct {
    int count, pending, tx;
    unsigned phase;
} EmuMbarrier;

static inline void emu_mbarrier_init(EmuMbarrier *b, int count) {
    b->count = count;
    b->pending = count;
    b->tx = 0;
    b->phase = 0;
}

static inline void emu_mbarrier_settle(EmuMbarrier *b) {
    if (b->pending == 0 && b->tx == 0) {
        b->phase++;
        b->pending = b->count;
    }
}

static inline void emu_mbarrier_arrive(EmuMbarrier *b, int expect_tx) {
    expect(b->pending > 0, "mbarrier: no arrival beyond the count", b->count, b->pending,
           (int)b->phase);
    b->tx += expect_tx;
    b->pending--;
    emu_mbarrier_settle(b);
}

static inline void emu_mbarrier_complete_tx(EmuMbarrier *b, int bytes) {
    b->tx -= bytes;
    emu_mbarrier_settle(b);
}

static inline int emu_mbarrier_try_wait(const EmuMbarrier *b, unsigned parity) {
    return (b->phase & 1) != parity;
}

/* cp.async.bulk.tensor.2d of a bf16 box with CU_TENSOR_MAP_SWIZZLE_128B (CUDA programming guide,
 * "Tensor Memory Access", swizzle modes): box row r (64 elements, 128 bytes) lands at byte
 * r * 128 of the 1024-byte aligned destination, with address bits 4-6 (the 16-byte chunk) XORed
 * with bits 7-9 (r % 8); elements past the tensor's rows read as 0. */
static inline void emu_tma_box(float *dst, int box_rows, const float *src, int src_rows, int k_dim,
                               int row0, int k0) {
    for (int r = 0; r < box_rows; ++r) {
        for (int e = 0; e < GEMM_TILE_K; ++e) {
            const uint32_t linear = (uint32_t)(r * 128 + 2 * e);
            const uint32_t swizzled = linear ^ (((linear >> 7) & 7) << 4);
            const int row = row0 + r;
            dst[swizzled / 2] = row < src_rows ? src[(size_t)row * k_dim + k0 + e] : 0.0f;
        }
    }
}

/* A TMA copy issued and not yet landed. */
typedef struct {
    int stage, is_weight, row0, k0;
} EmuTmaCopy;

/* Deterministic pseudo-random choices for the schedules. */
static inline uint32_t emu_next_random(uint64_t *state) {
    *state = *state * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(*state >> 33);
}

/* wgmma_gemm_tma_persistent (kernels/gemm_pipeline.cuh) for the CTA walking `walk`, as
 * concurrent agents under a schedule drawn from `seed`: the producer thread (waits on a stage's
 * empty barrier, arrive.expect_tx on its full barrier, two copies), every issued copy (lands when
 * the schedule picks it: the box written into the stage, its bytes completing the full
 * barrier's transactions), and each consumer warpgroup (waits on the full barrier, issues the
 * slice's wgmmas, waits until one slice is in flight, the four warps arrive on the empty barrier
 * of the slice that retired; after a tile's last slice, waits for all, arrives, and runs the
 * epilogue for its threads). At each step the schedule picks one agent that can move; a
 * slice's wgmmas read their stage only when a wait retires them, so a stage refilled too early
 * changes the product. No agent able to move before all are done is a deadlock. `p` supplies
 * the problem, the stages (NaN at the start) and the products; its in_flight is 1 and its
 * threads are the consumer warpgroups' (the producer warpgroup is not counted). */
static inline void emulate_tma_persistent_cta(EmuPipeline *p, GemmTileWalk walk, int num_tokens,
                                              float *acc, EmuEpilogue epilogue, uint64_t seed) {
    enum { MAX_STAGES = 8, MAX_CONSUMERS = 4 };
    const int consumers = p->threads / 128, stages = p->stages;
    const int k_tiles = p->k_dim / GEMM_TILE_K;
    const uint32_t cols = walk.col_blocks;
    const uint32_t num_tiles = (uint32_t)((num_tokens + p->block_m - 1) / p->block_m) * cols;
    const int my_tiles =
        walk.first < num_tiles ? (int)((num_tiles - 1 - walk.first) / walk.step) + 1 : 0;
    const int total = my_tiles * k_tiles;
    const int stage_elems = (p->block_m + p->weight_rows) * GEMM_TILE_K;
    const int stage_bytes = stage_elems * 2;
    const int regs = p->weight_rows / 2;
    expect(stages <= MAX_STAGES && consumers <= MAX_CONSUMERS && p->in_flight == 1,
           "tma emulator shape", stages, consumers, p->in_flight);
    EmuMbarrier full[MAX_STAGES], empty[MAX_STAGES];
    for (int s = 0; s < stages; ++s) {
        emu_mbarrier_init(&full[s], 1);
        emu_mbarrier_init(&empty[s], 4 * consumers);
    }
    EmuTmaCopy *copies = malloc(2 * (size_t)(total + 1) * sizeof(EmuTmaCopy));
    int num_copies = 0, produced = 0;
    int consumed[MAX_CONSUMERS] = {0}, retired[MAX_CONSUMERS] = {0};
    uint64_t state = seed;
    /* The slices of consumer c issued and not retired are retired[c] .. consumed[c] - 1. */
    for (;;) {
        int movable[1 + MAX_CONSUMERS + 1], moves = 0;
        if (produced < total) {
            const uint32_t s = gemm_tma_stage((uint32_t)produced, (uint32_t)stages);
            if (emu_mbarrier_try_wait(&empty[s], gemm_tma_empty_parity((uint32_t)produced, (uint32_t)stages)))
                movable[moves++] = 0;
        }
        for (int c = 0; c < consumers; ++c) {
            const uint32_t i = (uint32_t)consumed[c];
            if ((int)i < total &&
                emu_mbarrier_try_wait(&full[gemm_tma_stage(i, (uint32_t)stages)],
                                      gemm_tma_full_parity(i, (uint32_t)stages)))
                movable[moves++] = 1 + c;
        }
        if (num_copies > 0) movable[moves++] = 1 + MAX_CONSUMERS;
        int done = produced == total && num_copies == 0;
        for (int c = 0; c < consumers; ++c) done = done && consumed[c] == total;
        if (done) break;
        if (moves == 0) {
            expect(0, "tma pipeline: no agent can move (deadlock)", produced, consumed[0], num_copies);
            break;
        }
        const int agent = movable[emu_next_random(&state) % (uint32_t)moves];
        if (agent == 0) {
            /* The producer: slice `produced` of its tiles. */
            const int s = (int)gemm_tma_stage((uint32_t)produced, (uint32_t)stages);
            const uint32_t tile = gemm_walk_tile(walk, (uint32_t)(produced / k_tiles));
            const int k0 = (produced % k_tiles) * GEMM_TILE_K;
            emu_mbarrier_arrive(&full[s], stage_bytes);
            copies[num_copies++] = (EmuTmaCopy){s, 0, (int)gemm_tile_row_block(tile, cols) * p->block_m, k0};
            copies[num_copies++] =
                (EmuTmaCopy){s, 1, (int)gemm_walk_weight_row(walk, tile, (uint32_t)p->weight_rows), k0};
            ++produced;
        } else if (agent == 1 + MAX_CONSUMERS) {
            /* One issued copy lands. */
            const int pick = (int)(emu_next_random(&state) % (uint32_t)num_copies);
            const EmuTmaCopy copy = copies[pick];
            copies[pick] = copies[--num_copies];
            float *st = p->stage + (size_t)copy.stage * stage_elems;
            if (copy.is_weight) {
                emu_tma_box(st + p->block_m * GEMM_TILE_K, p->weight_rows, p->w, p->w_rows, p->k_dim,
                            copy.row0, copy.k0);
            } else {
                emu_tma_box(st, p->block_m, p->x, p->x_rows, p->k_dim, copy.row0, copy.k0);
            }
            emu_mbarrier_complete_tx(&full[copy.stage],
                                     (copy.is_weight ? p->weight_rows : p->block_m) * GEMM_TILE_K * 2);
        } else {
            /* Consumer warpgroup c: slice consumed[c] (k slice kt of its tile). */
            const int c = agent - 1, i = consumed[c], kt = i % k_tiles;
            const uint32_t tile = gemm_walk_tile(walk, (uint32_t)(i / k_tiles));
            float *d = p->d + (size_t)c * WGMMA_ROWS * p->weight_rows;
            if (kt == 0) {
                for (int e = 0; e < WGMMA_ROWS * p->weight_rows; ++e) d[e] = 0.0f;
            }
            consumed[c] = i + 1;
            /* wgmma_wait<1>, or <0> after the tile's last slice: retire, then release. */
            const int keep = kt == k_tiles - 1 ? 0 : 1;
            while (consumed[c] - retired[c] > keep) {
                const int r = retired[c]++;
                const int s = (int)gemm_tma_stage((uint32_t)r, (uint32_t)stages);
                const float *st = p->stage + (size_t)s * stage_elems;
                const uint32_t w_tile = (uint32_t)(p->block_m * GEMM_TILE_K * 2);
                for (int ks = 0; ks < GEMM_TILE_K / 16; ++ks) {
                    const uint64_t da = wgmma_desc_sw128(gemm_wgmma_x_offset(c, ks));
                    const uint64_t db = wgmma_desc_sw128(w_tile + gemm_wgmma_w_offset(ks));
                    for (int m = 0; m < WGMMA_ROWS; ++m) {
                        for (int n = 0; n < p->weight_rows; ++n) {
                            float sum = 0.0f;
                            for (int k = 0; k < 16; ++k)
                                sum += st[wgmma_element(da, m, k)] * st[wgmma_element(db, n, k)];
                            d[(size_t)m * p->weight_rows + n] += sum;
                        }
                    }
                }
                for (int warp = 0; warp < 4; ++warp) emu_mbarrier_arrive(&empty[s], 0);
            }
            if (kt == k_tiles - 1) {
                for (int t = 128 * c; t < 128 * (c + 1); ++t) {
                    for (int reg = 0; reg < regs; ++reg) {
                        const int row = gemm_wgmma_acc_row(t / 32, t % 32, reg);
                        expect(row / WGMMA_ROWS == c, "a warpgroup's accumulators are its rows", t,
                               reg, row);
                        acc[(size_t)t * regs + reg] =
                            p->d[(size_t)row * p->weight_rows + wgmma_acc_col(t % 32, reg)];
                    }
                }
                epilogue(acc, (int)gemm_tile_row_block(tile, cols) * p->block_m,
                         (int)gemm_tile_col_block(tile, cols), 128 * c, 128 * (c + 1));
            }
        }
    }
    free(copies);
}

#endif /* GEMMA_EMBED_WARP_EMULATOR_H */
