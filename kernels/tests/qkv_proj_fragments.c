/* qkv_proj_fragments.c: host check of the qkv_proj_wgmma and qkv_proj_tma kernels' index math
 * and epilogue.
 *
 * Runs a small problem (two row blocks, the second partial; six k slices, so the four stages
 * wrap; three q heads, k and v: ten tiles, walked by three persistent CTAs as
 * wgmma_gemm_persistent does, the stages carried from tile to tile) through the kernel's steps
 * as the PTX ISA defines them (warp_emulator.h's emulate_wgmma_persistent_cta, whose pipeline
 * model reads a slice's stage only when its wgmmas retire): the stage copies of gemm_load_stage
 * (bank conflicts included), wgmma.m64n256k16 reading both operands through the descriptors the
 * main loop builds (wgmma_desc_sw128 at gemm_wgmma_x_offset / gemm_wgmma_w_offset, decoded by
 * wgmma_element), the accumulators dealt to threads by wgmma_acc_row / wgmma_acc_col, and then
 * the epilogue of qkv_proj.cu with tile.cuh's row-wise mapping (gemm_wgmma_row/_reg/_col) and
 * qkv_proj.cuh's constants: the per-row sum of squares as two xor-shuffles over the quad, RoPE
 * partners QKV_PROJ_ROPE_REGS registers apart, the bf16 pairs' columns. qkv_proj_tma: the same
 * CTAs on the TMA main loop (warp_emulator.h's emulate_tma_persistent_cta) under three schedules
 * of its producer, copies and consumer warpgroups.
 *
 * x and w are small integers, so the products are exact; the epilogue runs in float as the
 * kernel does and is compared with a double-precision reference of qkv_post's definition
 * (relative 1e-5 of the row's largest value). Every output element must be written exactly
 * once and no row past num_tokens at all.
 *
 * Build and run (src/backend/cuda/qkv.rs does this in a test):
 *   cc -std=c99 -O1 -I kernels -I kernels/tests kernels/tests/qkv_proj_fragments.c -lm -o frag && ./frag
 * Exit status 0 and "ok" on success; the first mismatches are printed otherwise.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "qkv_proj.cuh"
#include "warp_emulator.h"

#define BM QKV_PROJ_BLOCK_M
#define HD ATTENTION_HEAD_DIM
#define HALF (HD / 2)
#define BK GEMM_TILE_K
#define STAGES QKV_PROJ_STAGES
#define THREADS QKV_PROJ_THREADS
#define HEADS 3
#define SLOTS (HEADS + 2)
#define HIDDEN (6 * BK)
#define TOKENS (BM + 37)
#define POSITIONS 300
#define EPS 1e-6f
#define Q_SCALE 0.0625f
#define TMA_SCHEDULES 3

static float x[TOKENS][HIDDEN], w[SLOTS * HD][HIDDEN];
static float inv_rms[TOKENS], q_norm[HD], k_norm[HD];
static float rope_cos[POSITIONS][HALF], rope_sin[POSITIONS][HALF];
static int positions[TOKENS];
static float tile_acc[THREADS][QKV_PROJ_ACC_REGS];
static float out_q[TOKENS][HEADS][HD], out_k[TOKENS][HD], out_v[TOKENS][HD];
static int writes[TOKENS][SLOTS][HD];

static float *out_elem(int row, int slot, int col) {
    if (slot < HEADS) return &out_q[row][slot][col];
    return slot == HEADS ? &out_k[row][col] : &out_v[row][col];
}

/* The bf16 pair store: elements col and col + 1 of (row, slot). */
static void store(int row, int slot, int col, float lo, float hi) {
    expect(row < TOKENS, "no store past num_tokens", row, slot, col);
    expect(col % 2 == 0, "bf16 pair 4-byte aligned", row, slot, col);
    *out_elem(row, slot, col) = lo;
    *out_elem(row, slot, col + 1) = hi;
    writes[row][slot][col]++;
    writes[row][slot][col + 1]++;
}

/* The epilogue of qkv_proj.cu for the tile at first_row and head slot `slot`, thread by thread
 * (threads first_thread .. last_thread - 1, whole warpgroups); the shuffles read the quad's
 * partials. */
static void epilogue(const float *tile, int first_row, int slot, int first_thread,
                     int last_thread) {
    const float(*acc)[QKV_PROJ_ACC_REGS] = (const float(*)[QKV_PROJ_ACC_REGS])tile;
    const int is_value = slot == HEADS + 1, is_key = slot == HEADS;
    const float *norm_weight = is_key ? k_norm : q_norm;
    const float out_scale = is_key ? 1.0f : Q_SCALE;
    for (int half = 0; half < 2; ++half) {
        float partial[THREADS];
        for (int t = first_thread; t < last_thread; ++t) {
            const int row = first_row + gemm_wgmma_row(t / 32, t % 32, half);
            const float r = row < TOKENS ? inv_rms[row] : 0.0f;
            partial[t] = 0.0f;
            for (int tile = 0; tile < 2 * QKV_PROJ_HALF_TILES; ++tile) {
                for (int e = 0; e < 2; ++e) {
                    const float y = r * acc[t][gemm_wgmma_reg(tile, half, e)];
                    partial[t] += y * y;
                }
            }
        }
        for (int t = first_thread; t < last_thread; ++t) {
            const int warp = t / 32, lane = t % 32;
            const int row = first_row + gemm_wgmma_row(warp, lane, half);
            for (int q = 0; q < 4; ++q) {
                expect(gemm_wgmma_row(warp, lane ^ q, half) == gemm_wgmma_row(warp, lane, half),
                       "the quad shares its rows", t, q, half);
            }
            const float sum_squares = quad_sum(partial, t);
            if (row >= TOKENS) continue;
            const float r = inv_rms[row];
            if (is_value) {
                for (int tile = 0; tile < 2 * QKV_PROJ_HALF_TILES; ++tile) {
                    store(row, slot, gemm_wgmma_col(lane, tile), r * acc[t][gemm_wgmma_reg(tile, half, 0)],
                          r * acc[t][gemm_wgmma_reg(tile, half, 1)]);
                }
                continue;
            }
            const float norm_scale = r / sqrtf(sum_squares / (float)HD + EPS);
            const int pos = positions[row];
            for (int tile = 0; tile < QKV_PROJ_HALF_TILES; ++tile) {
                const int col = gemm_wgmma_col(lane, tile);
                float lo[2], hi[2];
                for (int e = 0; e < 2; ++e) {
                    const int reg = gemm_wgmma_reg(tile, half, e);
                    expect(wgmma_acc_col(lane, reg) == col + e, "pair columns adjacent", t, tile, e);
                    expect(wgmma_acc_col(lane, reg + QKV_PROJ_ROPE_REGS) == col + e + HALF,
                           "RoPE partner 128 columns on", t, tile, e);
                    const float a = acc[t][reg] * norm_scale * (1.0f + norm_weight[col + e]);
                    const float b =
                        acc[t][reg + QKV_PROJ_ROPE_REGS] * norm_scale * (1.0f + norm_weight[HALF + col + e]);
                    const float c = rope_cos[pos][col + e], s = rope_sin[pos][col + e];
                    lo[e] = (a * c - b * s) * out_scale;
                    hi[e] = (b * c + a * s) * out_scale;
                }
                store(row, slot, col, lo[0], lo[1]);
                store(row, slot, col + HALF, hi[0], hi[1]);
            }
        }
    }
}

/* Outputs NaN, none written. */
static void reset_outputs(void) {
    for (int row = 0; row < TOKENS; ++row) {
        for (int slot = 0; slot < SLOTS; ++slot) {
            for (int n = 0; n < HD; ++n) {
                *out_elem(row, slot, n) = NAN;
                writes[row][slot][n] = 0;
            }
        }
    }
}

/* qkv_post's definition in double: y = r (x W_s^T); q, k normed, RoPE'd, q scaled; v = y. */
static void check_outputs(void) {
    for (int row = 0; row < TOKENS; ++row) {
        for (int slot = 0; slot < SLOTS; ++slot) {
            double y[HD], ref[HD], ss = 0.0, max = 0.0;
            for (int n = 0; n < HD; ++n) {
                double dot = 0.0;
                for (int k = 0; k < HIDDEN; ++k) dot += (double)x[row][k] * w[slot * HD + n][k];
                y[n] = inv_rms[row] * dot;
                ss += y[n] * y[n];
            }
            if (slot == HEADS + 1) {
                for (int n = 0; n < HD; ++n) ref[n] = y[n];
            } else {
                const float *nw = slot == HEADS ? k_norm : q_norm;
                const double scale = 1.0 / sqrt(ss / HD + EPS);
                const double out = slot == HEADS ? 1.0 : Q_SCALE;
                const int pos = positions[row];
                for (int i = 0; i < HALF; ++i) {
                    const double a = y[i] * scale * (1.0 + nw[i]);
                    const double b = y[HALF + i] * scale * (1.0 + nw[HALF + i]);
                    ref[i] = (a * rope_cos[pos][i] - b * rope_sin[pos][i]) * out;
                    ref[HALF + i] = (b * rope_cos[pos][i] + a * rope_sin[pos][i]) * out;
                }
            }
            for (int n = 0; n < HD; ++n) max = fmax(max, fabs(ref[n]));
            for (int n = 0; n < HD; ++n) {
                expect(writes[row][slot][n] == 1, "every output written once", row, slot, n);
                expect(fabs(*out_elem(row, slot, n) - ref[n]) <= 1e-5 * max + 1e-30,
                       "output = qkv_post(x W^T)", row, slot, n);
            }
        }
    }
}

int main(void) {
    srand(5);
    for (int r = 0; r < TOKENS; ++r) {
        for (int k = 0; k < HIDDEN; ++k) x[r][k] = (float)(rand() % 7 - 3);
        inv_rms[r] = 0.05f + (float)(rand() % 1000) / 500.0f;
        positions[r] = rand() % POSITIONS;
    }
    for (int n = 0; n < SLOTS * HD; ++n)
        for (int k = 0; k < HIDDEN; ++k) w[n][k] = (float)(rand() % 7 - 3);
    for (int i = 0; i < HD; ++i) {
        q_norm[i] = (float)(rand() % 300) / 100.0f - 1.0f;
        k_norm[i] = (float)(rand() % 300) / 100.0f - 1.0f;
    }
    for (int pos = 0; pos < POSITIONS; ++pos) {
        for (int i = 0; i < HALF; ++i) {
            const double angle = pos * pow(10000.0, -2.0 * i / HD);
            rope_cos[pos][i] = (float)cos(angle);
            rope_sin[pos][i] = (float)sin(angle);
        }
    }
    checking = "qkv_proj_wgmma";
    /* Three persistent CTAs over the ten tiles, so each CTA wraps around. */
    reset_outputs();
    for (int cta = 0; cta < 3; ++cta) {
        EmuPipeline pipeline = emu_pipeline(THREADS, HD, STAGES, 1, &x[0][0], TOKENS, &w[0][0],
                                            SLOTS * HD, HIDDEN);
        emulate_wgmma_persistent_cta(&pipeline, cta, 3, TOKENS, SLOTS, &tile_acc[0][0], epilogue);
        emu_pipeline_free(&pipeline);
    }
    check_outputs();
    /* qkv_proj_tma: the same CTAs on the TMA main loop, under TMA_SCHEDULES schedules of the
     * producer, its copies and the two consumer warpgroups. */
    checking = "qkv_proj_tma";
    for (uint64_t seed = 1; seed <= TMA_SCHEDULES; ++seed) {
        reset_outputs();
        for (int cta = 0; cta < 3; ++cta) {
            EmuPipeline pipeline = emu_pipeline(QKV_TMA_THREADS - 128, HD, STAGES, 1, &x[0][0],
                                                TOKENS, &w[0][0], SLOTS * HD, HIDDEN);
            const GemmTileWalk walk = {(uint32_t)cta, 3, SLOTS, 0};
            emulate_tma_persistent_cta(&pipeline, walk, TOKENS, &tile_acc[0][0], epilogue,
                                       seed * 3 + (uint64_t)cta);
            emu_pipeline_free(&pipeline);
        }
        check_outputs();
    }
    return verdict();
}
