/* gate_up_geglu_fragments.c: host check of the gate_up_geglu kernels' index math.
 *
 * gate_up_geglu: drives the warp emulator of warp_emulator.h (ldmatrix.x4 and mma.m16n8k16 from
 * the PTX ISA definitions) with the warp and tile functions of gate_up_geglu.cuh, the stage
 * copy (emulate_stage_tile) and the swizzle, chunk and lane addresses of tile.cuh, in the loop
 * order of the kernel: every CTA of a problem with two row blocks (the second one partial) and
 * four output blocks (two of the wide kernel), six k slices rotating through the stage
 * buffers, the weight rows interleaved in blocks as the host uploads them.
 * gate_up_geglu_wgmma and gate_up_geglu_wgmma_wide: the same problem through wgmma.m64n128k16
 * and m64n256k16 (two interleave blocks per CTA) as the PTX ISA defines their shared-memory
 * operands (warp_emulator.h's emulate_wgmma_gemm_cta): the descriptors the kernels build
 * (wgmma_desc_sw128) are decoded, and operand element (row, k) is read at start + (row / 8) *
 * stride_offset + (row % 8) * 128 + 2 k with the 128-byte swizzle (address bits 4-6 ^= bits
 * 7-9) applied; the accumulators are dealt to threads and registers by gemm_wgmma_acc_row and
 * wgmma_acc_col and combined as the epilogue does (geglu_wgmma_gate_reg, geglu_wgmma_out).
 * gate_up_geglu_tma: the wide kernel's problem on the TMA main loop (warp_emulator.h's
 * emulate_tma_persistent_cta): the producer, each copy (landing in the 128-byte swizzle as the
 * TMA unit writes it) and each consumer warpgroup as agents meeting at mbarriers, under six
 * schedules; a deadlock, a read before a copy landed or a stage refilled before its wgmmas
 * retired all show up as wrong or missing outputs.
 * For every kernel: the epilogue mapping is followed to the output element, writing the gate and the up value
 * it would combine into two arrays, which must equal the direct products x W_gate^T and
 * x W_up^T bit for bit (small integers: exact), with every output written exactly once and
 * no row past num_tokens written. It also checks that the cp.async stores and every ldmatrix
 * phase are free of shared-memory bank conflicts.
 *
 * Build and run (src/backend/cuda/mlp.rs does this in a test):
 *   cc -std=c99 -O1 -I kernels -I kernels/tests kernels/tests/gate_up_geglu_fragments.c -o frag && ./frag
 * Exit status 0 and "ok" on success; the first mismatches are printed otherwise.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "gate_up_geglu.cuh"
#include "warp_emulator.h"

#define BM GEGLU_GEMM_BLOCK_M
#define BO GEGLU_GEMM_BLOCK_OUT
#define BK GEGLU_GEMM_BLOCK_K
#define WR (2 * BO)
#define STAGES GEGLU_GEMM_STAGES
#define THREADS GEGLU_GEMM_THREADS
#define WGMMA_THREADS GEGLU_WGMMA_THREADS
#define WARPS (THREADS / 32)
#define M_TILES GEGLU_M_TILES
#define N_TILES (2 * GEGLU_OUT_TILES)

#define HIDDEN (6 * BK)
#define INTER (2 * GEGLU_WIDE_BLOCK_OUT)
#define TOKENS (BM + 37)

static float x[TOKENS][HIDDEN], gate_w[INTER][HIDDEN], up_w[INTER][HIDDEN];
static float w_interleaved[2 * INTER][HIDDEN];
/* One stage: the x tile, then the weight tile (as in the kernels' shared memory). */
static float stage[STAGES][(BM + WR) * BK];
static float out_gate[TOKENS][INTER], out_up[TOKENS][INTER];
static int writes[TOKENS][INTER];
static float acc[WARPS][M_TILES][N_TILES][32][4];

/* load_stage<threads> of the kernels for one thread-block, all threads. */
static void load_stage(int threads, int s, int first_row, int first_weight_row, int k_tile) {
    emulate_stage_tile(stage[s], BM, threads, &x[0][0], TOKENS, HIDDEN, first_row, k_tile);
    emulate_stage_tile(stage[s] + BM * BK, WR, threads, &w_interleaved[0][0], 2 * INTER, HIDDEN,
                       first_weight_row, k_tile);
}

static void run_cta(int block_out, int block_row) {
    const int first_row = block_row * BM;
    const int first_out = block_out * BO;
    const int first_weight_row = block_out * WR;
    for (int w = 0; w < WARPS; ++w)
        for (int mt = 0; mt < M_TILES; ++mt)
            for (int t = 0; t < N_TILES; ++t)
                for (int l = 0; l < 32; ++l)
                    for (int e = 0; e < 4; ++e) acc[w][mt][t][l][e] = 0.0f;

    for (int kt = 0; kt < HIDDEN / BK; ++kt) {
        load_stage(THREADS, kt % STAGES, first_row, first_weight_row, kt);
        const float *xs = stage[kt % STAGES];
        const float *ws = stage[kt % STAGES] + BM * BK;
        for (int warp = 0; warp < WARPS; ++warp) {
            const int warp_row = geglu_warp_row(warp);
            for (int ks = 0; ks < BK / 16; ++ks) {
                Pair a[M_TILES][32][4];
                int addr[32];
                for (int mt = 0; mt < M_TILES; ++mt) {
                    for (int l = 0; l < 32; ++l) {
                        addr[l] = tile_swizzle(warp_row + mt * 16 + ldsm_a_row(l),
                                               ks * 16 + ldsm_a_col(l), BK);
                    }
                    ldmatrix_x4(xs, addr, 0, a[mt]);
                }
                for (int t = 0; t < N_TILES; t += 2) {
                    Pair b[32][4];
                    for (int l = 0; l < 32; ++l) {
                        addr[l] = tile_swizzle(geglu_tile_weight_row(warp, t) + ldsm_b_row(l),
                                               ks * 16 + ldsm_b_col(l), BK);
                    }
                    ldmatrix_x4(ws, addr, 0, b);
                    for (int mt = 0; mt < M_TILES; ++mt) {
                        mma_16816_b_x4(acc[warp][mt][t], acc[warp][mt][t + 1], a[mt], b);
                    }
                }
            }
        }
    }

    /* Epilogue mapping of the kernel. */
    for (int warp = 0; warp < WARPS; ++warp) {
        for (int mt = 0; mt < M_TILES; ++mt) {
            for (int half = 0; half < 2; ++half) {
                for (int l = 0; l < 32; ++l) {
                    const int row = first_row + geglu_acc_row(warp, mt, l, half);
                    if (row >= TOKENS) {
                        continue;
                    }
                    for (int t = 0; t < GEGLU_OUT_TILES; ++t) {
                        const int col = geglu_acc_out(warp, t, l);
                        for (int e = 0; e < 2; ++e) {
                            const int j = first_out + col + e;
                            out_gate[row][j] = acc[warp][mt][t][l][2 * half + e];
                            out_up[row][j] = acc[warp][mt][t + GEGLU_OUT_TILES][l][2 * half + e];
                            writes[row][j]++;
                        }
                    }
                }
            }
        }
    }
}

static float wg_acc[WGMMA_THREADS][GEGLU_WIDE_ACC_REGS];
/* Outputs per tile of the wgmma kernel being checked (weight rows 2 * outputs, accumulator
 * registers `outputs` per thread). */
static int wgmma_outputs;

/* The wgmma kernels' epilogue mapping for the tile at first_row and output block `block_out`,
 * threads first_thread .. last_thread - 1 of the multiplying warpgroups. */
static void wgmma_epilogue(const float *acc, int first_row, int block_out, int first_thread,
                           int last_thread) {
    const int first_out = block_out * wgmma_outputs;
    const int regs = wgmma_outputs;
    const int up = BO / 2;
    for (int t = first_thread; t < last_thread; ++t) {
        const float *acc_t = acc + (size_t)t * regs;
        for (int block = 0; block < wgmma_outputs / BO; ++block) {
            for (int reg = 0; reg < up; reg += 2) {
                const int row = first_row + gemm_wgmma_acc_row(t / 32, t % 32, reg);
                if (row >= TOKENS) {
                    continue;
                }
                const int g = geglu_wgmma_gate_reg(block, reg);
                const int col = geglu_wgmma_out(block, t % 32, reg);
                for (int e = 0; e < 2; ++e) {
                    const int j = first_out + col + e;
                    out_gate[row][j] = acc_t[g + e];
                    out_up[row][j] = acc_t[g + e + up];
                    writes[row][j]++;
                }
            }
        }
    }
}

/* gate_up_geglu_wgmma: one CTA per tile, 3 stages, every slice's wgmmas retired in its step. */
static void run_cta_wgmma(int block_out, int block_row) {
    wgmma_outputs = BO;
    emulate_wgmma_gemm_cta(WGMMA_THREADS, WR, STAGES, 0, &x[0][0], TOKENS, &w_interleaved[0][0],
                           2 * INTER, HIDDEN, block_row * BM, block_out * WR, &wg_acc[0][0]);
    wgmma_epilogue(&wg_acc[0][0], block_row * BM, block_out, 0, WGMMA_THREADS);
}

/* One CTA per tile (grid x = output blocks, y = row blocks), as the non-persistent kernels. */
static void run_grid_of(void (*cta)(int, int)) {
    for (int block_row = 0; block_row * BM < TOKENS; ++block_row) {
        for (int block_out = 0; block_out < INTER / BO; ++block_out) {
            cta(block_out, block_row);
        }
    }
}
static void run_grid(void) { run_grid_of(run_cta); }
static void run_grid_wgmma(void) { run_grid_of(run_cta_wgmma); }

/* gate_up_geglu_wgmma_wide is persistent: three CTAs over its four tiles, so one CTA wraps
 * around with its stages carried over; 4 stages, one slice's wgmmas in flight. */
static void run_grid_wgmma_wide(void) {
    wgmma_outputs = GEGLU_WIDE_BLOCK_OUT;
    for (int cta = 0; cta < 3; ++cta) {
        EmuPipeline pipeline =
            emu_pipeline(WGMMA_THREADS, 2 * GEGLU_WIDE_BLOCK_OUT, GEGLU_WIDE_STAGES, 1, &x[0][0],
                         TOKENS, &w_interleaved[0][0], 2 * INTER, HIDDEN);
        emulate_wgmma_persistent_cta(&pipeline, cta, 3, TOKENS, INTER / GEGLU_WIDE_BLOCK_OUT,
                                     &wg_acc[0][0], wgmma_epilogue);
        emu_pipeline_free(&pipeline);
    }
}

/* gate_up_geglu_tma: the wide kernel's three persistent CTAs on the TMA main loop, each under
 * TMA_SCHEDULES schedules of its producer, copies and consumer warpgroups. */
#define TMA_SCHEDULES 6
static uint64_t tma_seed;
static void run_grid_tma(void) {
    wgmma_outputs = GEGLU_WIDE_BLOCK_OUT;
    for (int cta = 0; cta < 3; ++cta) {
        EmuPipeline pipeline =
            emu_pipeline(GEGLU_TMA_THREADS - 128, 2 * GEGLU_WIDE_BLOCK_OUT, GEGLU_TMA_STAGES, 1,
                         &x[0][0], TOKENS, &w_interleaved[0][0], 2 * INTER, HIDDEN);
        const GemmTileWalk walk = {(uint32_t)cta, 3, INTER / GEGLU_WIDE_BLOCK_OUT, 0};
        emulate_tma_persistent_cta(&pipeline, walk, TOKENS, &wg_acc[0][0], wgmma_epilogue,
                                   tma_seed * 3 + (uint64_t)cta);
        emu_pipeline_free(&pipeline);
    }
}

/* Reset the outputs, run `grid` (every CTA), compare with the direct products. */
static void check_kernel(const char *name, void (*grid)(void)) {
    checking = name;
    for (int r = 0; r < TOKENS; ++r) {
        for (int j = 0; j < INTER; ++j) {
            out_gate[r][j] = out_up[r][j] = NAN;
            writes[r][j] = 0;
        }
    }
    grid();
    for (int r = 0; r < TOKENS; ++r) {
        for (int j = 0; j < INTER; ++j) {
            float g = 0.0f, u = 0.0f;
            for (int k = 0; k < HIDDEN; ++k) {
                g += x[r][k] * gate_w[j][k];
                u += x[r][k] * up_w[j][k];
            }
            expect(writes[r][j] == 1, "every output written once", r, j, writes[r][j]);
            expect(out_gate[r][j] == g, "gate = x W_gate^T", r, j, (int)g);
            expect(out_up[r][j] == u, "up = x W_up^T", r, j, (int)u);
        }
    }
}

int main(void) {
    srand(11);
    for (int r = 0; r < TOKENS; ++r)
        for (int k = 0; k < HIDDEN; ++k) x[r][k] = (float)(rand() % 7 - 3);
    for (int j = 0; j < INTER; ++j) {
        for (int k = 0; k < HIDDEN; ++k) {
            gate_w[j][k] = (float)(rand() % 7 - 3);
            up_w[j][k] = (float)(rand() % 7 - 3);
        }
    }
    /* The upload order: gate block b, then up block b. */
    for (int b = 0; b < INTER / BO; ++b) {
        for (int i = 0; i < BO; ++i) {
            for (int k = 0; k < HIDDEN; ++k) {
                w_interleaved[b * WR + i][k] = gate_w[b * BO + i][k];
                w_interleaved[b * WR + BO + i][k] = up_w[b * BO + i][k];
            }
        }
    }
    check_kernel("gate_up_geglu", run_grid);
    check_kernel("gate_up_geglu_wgmma", run_grid_wgmma);
    check_kernel("gate_up_geglu_wgmma_wide", run_grid_wgmma_wide);
    for (tma_seed = 1; tma_seed <= TMA_SCHEDULES; ++tma_seed) {
        check_kernel("gate_up_geglu_tma", run_grid_tma);
    }
    return verdict();
}
