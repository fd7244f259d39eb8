/* proj_residual_norm_fragments.c: host check of the proj_residual_norm_wgmma and
 * proj_residual_norm_tma kernels' index math and epilogue.
 *
 * Runs a small problem (two row blocks, the second partial; six k slices, so the four stages
 * wrap; hidden = one cluster of PROJ_NORM_CLUSTER slices of 256 outputs) through the kernel's
 * steps, one persistent cluster walking both row blocks: the main loop of gemm_pipeline.cuh as
 * warp_emulator.h's pipeline model emulates it (stage copies, one slice's wgmmas in flight, the
 * stages carried from row block to row block, wgmma.m64n256k16 through the decoded descriptors,
 * the accumulator layout), then the epilogue of
 * proj_residual_norm.cu CTA by CTA and thread by thread: rows and columns by tile.cuh's
 * gemm_wgmma_row / _reg / _col, each row's sum of squares over its quad (the two xor-shuffles),
 * the per-CTA partials in `row_squares`, their sum over the cluster after each cluster barrier
 * (distributed shared memory), the new residual held in the accumulators until the stores.
 * proj_residual_norm_tma's CTAs then run the same problem on the TMA main loop
 * (warp_emulator.h's emulate_tma_persistent_cta: producer, copies and consumer warpgroups under
 * random schedules, each CTA walking the row blocks with its rank's weight rows, tile.cuh's
 * GemmTileWalk), followed by the same epilogue; its exchange protocol has its own play,
 * proj_norm_exchange.c.
 *
 * x and w are small integers, so the projection is exact; the epilogue runs in float as the
 * kernel does and is compared with a double-precision reference of residual_norm's definition
 * (relative 1e-5 of the row's largest value). Every residual element and its bf16 copy must be
 * written exactly once, every inverse RMS once, and nothing past num_tokens.
 *
 * Build and run (src/backend/cuda/residual.rs does this in a test):
 *   cc -std=c99 -O1 -I kernels -I kernels/tests kernels/tests/proj_residual_norm_fragments.c -lm -o frag && ./frag
 * Exit status 0 and "ok" on success; the first mismatches are printed otherwise.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "params.h"
#include "warp_emulator.h"

#define BM PROJ_NORM_BLOCK_M
#define SLICE ATTENTION_HEAD_DIM
#define CLUSTER PROJ_NORM_CLUSTER
#define HIDDEN (CLUSTER * SLICE)
#define K_DIM (6 * GEMM_TILE_K)
#define THREADS PROJ_NORM_THREADS
#define ACC_REGS (SLICE / 2)
#define TILES (SLICE / 8)
#define TOKENS (BM + 37)
#define EPS 1e-6f

static float x[TOKENS][K_DIM], w[HIDDEN][K_DIM], post_norm[HIDDEN];
static float residual_in[TOKENS][HIDDEN], residual[TOKENS][HIDDEN], residual_copy[TOKENS][HIDDEN];
static float inv_rms[TOKENS];
static int residual_writes[TOKENS][HIDDEN], copy_writes[TOKENS][HIDDEN], inv_rms_writes[TOKENS];
/* Per CTA of the cluster: its accumulators and its shared row_squares[2][BM]. */
static float acc[CLUSTER][THREADS][ACC_REGS];
static float row_squares[CLUSTER][2][BM];

/* cluster_row_sum: the cluster's partials of one tile row, read through DSMEM. */
static float cluster_row_sum(int which, int local_row) {
    float total = 0.0f;
    for (int rank = 0; rank < CLUSTER; ++rank) total += row_squares[rank][which][local_row];
    return total;
}

/* The kernel's epilogue for row block `block_row`, each CTA's tile in acc[c]. */
static void cluster_epilogue(int block_row) {
    const int first_row = block_row * BM;
    /* The branch's squares: quad, then the CTA's row_squares[0]. */
    for (int c = 0; c < CLUSTER; ++c) {
        for (int half = 0; half < 2; ++half) {
            float partial[THREADS];
            for (int t = 0; t < THREADS; ++t) {
                partial[t] = 0.0f;
                for (int tile = 0; tile < TILES; ++tile)
                    for (int e = 0; e < 2; ++e) {
                        const float b = acc[c][t][gemm_wgmma_reg(tile, half, e)];
                        partial[t] += b * b;
                    }
            }
            for (int t = 0; t < THREADS; ++t) {
                const int warp = t / 32, lane = t % 32;
                for (int q = 0; q < 4; ++q)
                    expect(gemm_wgmma_row(warp, lane ^ q, half) == gemm_wgmma_row(warp, lane, half),
                           "the quad shares its rows", t, q, half);
                if (lane % 4 == 0) row_squares[c][0][gemm_wgmma_row(warp, lane, half)] = quad_sum(partial, t);
            }
        }
    }
    /* cluster.sync(); the new residual into the accumulators, and its squares. */
    for (int c = 0; c < CLUSTER; ++c) {
        const int first_col = c * SLICE;
        for (int half = 0; half < 2; ++half) {
            float partial[THREADS];
            for (int t = 0; t < THREADS; ++t) {
                const int warp = t / 32, lane = t % 32;
                const int local_row = gemm_wgmma_row(warp, lane, half);
                const int row = first_row + local_row;
                const float branch_inv_rms =
                    1.0f / sqrtf(cluster_row_sum(0, local_row) / (float)HIDDEN + EPS);
                partial[t] = 0.0f;
                if (row >= TOKENS) continue;
                for (int tile = 0; tile < TILES; ++tile) {
                    const int col = first_col + gemm_wgmma_col(lane, tile);
                    expect(col % 2 == 0, "float2 / bf16 pair aligned", row, col, tile);
                    for (int e = 0; e < 2; ++e) {
                        const int reg = gemm_wgmma_reg(tile, half, e);
                        expect(wgmma_acc_col(lane, reg) == col - first_col + e,
                               "register holds its column", t, tile, e);
                        float *x = &acc[c][t][reg];
                        *x = residual[row][col + e] + *x * branch_inv_rms * (1.0f + post_norm[col + e]);
                        partial[t] += *x * *x;
                    }
                }
            }
            for (int t = 0; t < THREADS; ++t) {
                const int warp = t / 32, lane = t % 32;
                if (lane % 4 == 0) row_squares[c][1][gemm_wgmma_row(warp, lane, half)] = quad_sum(partial, t);
            }
        }
    }
    /* cluster.sync(); rank 0's inverse RMS, then every CTA's stores. */
    for (int c = 0; c < CLUSTER; ++c) {
        const int first_col = c * SLICE;
        for (int t = 0; t < THREADS; ++t) {
            const int warp = t / 32, lane = t % 32;
            for (int half = 0; half < 2; ++half) {
                const int local_row = gemm_wgmma_row(warp, lane, half);
                const int row = first_row + local_row;
                if (row >= TOKENS) continue;
                for (int tile = 0; tile < TILES; ++tile) {
                    const int col = first_col + gemm_wgmma_col(lane, tile);
                    for (int e = 0; e < 2; ++e) {
                        const float x = acc[c][t][gemm_wgmma_reg(tile, half, e)];
                        residual[row][col + e] = x;
                        residual_copy[row][col + e] = x;
                        residual_writes[row][col + e]++;
                        copy_writes[row][col + e]++;
                    }
                }
                if (c == 0 && lane % 4 == 0) {
                    inv_rms[row] = 1.0f / sqrtf(cluster_row_sum(1, local_row) / (float)HIDDEN + EPS);
                    inv_rms_writes[row]++;
                }
            }
        }
    }
}

/* residual_norm's definition in double. */
static void check_outputs(void) {
    for (int row = 0; row < TOKENS; ++row) {
        double b[HIDDEN], ref[HIDDEN], ss = 0.0, ss_new = 0.0, max = 0.0;
        for (int n = 0; n < HIDDEN; ++n) {
            double dot = 0.0;
            for (int k = 0; k < K_DIM; ++k) dot += (double)x[row][k] * w[n][k];
            b[n] = dot;
            ss += dot * dot;
        }
        const double scale = 1.0 / sqrt(ss / HIDDEN + EPS);
        for (int n = 0; n < HIDDEN; ++n) {
            ref[n] = residual_in[row][n] + b[n] * scale * (1.0 + post_norm[n]);
            ss_new += ref[n] * ref[n];
            max = fmax(max, fabs(ref[n]));
        }
        for (int n = 0; n < HIDDEN; ++n) {
            expect(residual_writes[row][n] == 1 && copy_writes[row][n] == 1,
                   "every residual element and copy written once", row, n, residual_writes[row][n]);
            expect(fabs(residual[row][n] - ref[n]) <= 1e-5 * max, "residual += norm(x W^T)", row, n, 0);
            expect(fabs(residual_copy[row][n] - ref[n]) <= 1e-5 * max,
                   "the copy is the new residual (before its bf16 rounding)", row, n, 0);
        }
        const double inv_ref = 1.0 / sqrt(ss_new / HIDDEN + EPS);
        expect(inv_rms_writes[row] == 1, "inverse RMS written once", row, inv_rms_writes[row], 0);
        expect(fabs(inv_rms[row] - inv_ref) <= 1e-5 * inv_ref, "inverse RMS of the new residual", row, 0, 0);
    }
}

/* The outputs back to their state before a kernel ran. */
static void reset_outputs(void) {
    for (int r = 0; r < TOKENS; ++r) {
        for (int n = 0; n < HIDDEN; ++n) {
            residual[r][n] = residual_in[r][n];
            residual_writes[r][n] = copy_writes[r][n] = 0;
        }
        inv_rms_writes[r] = 0;
    }
}

/* proj_residual_norm_tma's main loop leaves each CTA's tile accumulators here, per row block,
 * for the cluster's epilogue: the CTA its emulation runs (tma_cta) and what its consumer
 * warpgroups multiplied. */
#define ROW_BLOCKS ((TOKENS + BM - 1) / BM)
static float tma_acc[CLUSTER][ROW_BLOCKS][THREADS][ACC_REGS];
static float tile_acc[THREADS][ACC_REGS];
static int tma_cta;
static void keep_tile(const float *tile, int first_row, int col_block, int first_thread,
                      int last_thread) {
    expect(col_block == 0, "one column block: the CTA's slice", tma_cta, first_row, col_block);
    for (int t = first_thread; t < last_thread; ++t) {
        for (int reg = 0; reg < ACC_REGS; ++reg) {
            tma_acc[tma_cta][first_row / BM][t][reg] = tile[(size_t)t * ACC_REGS + reg];
        }
    }
}

int main(void) {
    srand(7);
    for (int r = 0; r < TOKENS; ++r) {
        for (int k = 0; k < K_DIM; ++k) x[r][k] = (float)(rand() % 7 - 3);
        for (int n = 0; n < HIDDEN; ++n) residual_in[r][n] = (float)(rand() % 2001 - 1000) / 10.0f;
    }
    for (int n = 0; n < HIDDEN; ++n) {
        for (int k = 0; k < K_DIM; ++k) w[n][k] = (float)(rand() % 7 - 3);
        post_norm[n] = (float)(rand() % 300) / 100.0f - 1.0f;
    }
    checking = "proj_residual_norm_wgmma";
    reset_outputs();
    /* One persistent cluster walks both row blocks, each CTA's stages carried over. */
    const int clusters = 1, row_blocks = ROW_BLOCKS;
    for (int cluster = 0; cluster < clusters; ++cluster) {
        EmuPipeline pipelines[CLUSTER];
        for (int c = 0; c < CLUSTER; ++c) {
            pipelines[c] = emu_pipeline(THREADS, SLICE, PROJ_NORM_STAGES, 1, &x[0][0], TOKENS,
                                        &w[0][0], HIDDEN, K_DIM);
        }
        int block_row = cluster;
        if (block_row < row_blocks) {
            for (int c = 0; c < CLUSTER; ++c) emu_prologue(&pipelines[c], block_row * BM, c * SLICE);
        }
        for (; block_row < row_blocks; block_row += clusters) {
            for (int c = 0; c < CLUSTER; ++c) {
                emu_k_loop(&pipelines[c], block_row * BM, c * SLICE, &acc[c][0][0]);
            }
            /* The kernel issues the next row block's loads after the reductions, before the
             * stores; the epilogue reads only the accumulators, so here they may come first. */
            const int next = block_row + clusters;
            if (next < row_blocks) {
                for (int c = 0; c < CLUSTER; ++c) emu_prologue(&pipelines[c], next * BM, c * SLICE);
            }
            cluster_epilogue(block_row);
        }
        for (int c = 0; c < CLUSTER; ++c) emu_pipeline_free(&pipelines[c]);
    }
    check_outputs();

    /* proj_residual_norm_tma: each CTA of the one cluster on the TMA main loop (its walk: the
     * row blocks from the cluster's index by the number of clusters, weight rows from its
     * rank's slice) under TMA_SCHEDULES schedules; then the epilogue, whose arithmetic is the
     * wgmma kernel's (shared device functions; the exchange adds the partials in rank order as
     * cluster_row_sum does). */
    enum { TMA_SCHEDULES = 2 };
    checking = "proj_residual_norm_tma";
    for (uint64_t seed = 1; seed <= TMA_SCHEDULES; ++seed) {
        reset_outputs();
        for (tma_cta = 0; tma_cta < CLUSTER; ++tma_cta) {
            EmuPipeline pipeline = emu_pipeline(PROJ_NORM_TMA_THREADS - 128, SLICE, PROJ_NORM_STAGES,
                                                1, &x[0][0], TOKENS, &w[0][0], HIDDEN, K_DIM);
            const GemmTileWalk walk = {0, (uint32_t)clusters, 1, (uint32_t)(tma_cta * SLICE)};
            emulate_tma_persistent_cta(&pipeline, walk, TOKENS, &tile_acc[0][0], keep_tile,
                                       seed * CLUSTER + (uint64_t)tma_cta);
            emu_pipeline_free(&pipeline);
        }
        for (int block_row = 0; block_row < row_blocks; ++block_row) {
            for (int c = 0; c < CLUSTER; ++c) {
                for (int t = 0; t < THREADS; ++t) {
                    for (int reg = 0; reg < ACC_REGS; ++reg) acc[c][t][reg] = tma_acc[c][block_row][t][reg];
                }
            }
            cluster_epilogue(block_row);
        }
        check_outputs();
    }
    return verdict();
}
