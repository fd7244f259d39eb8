/* elementwise_fragments.c: host check of the lane-to-element maps of qkv_post, geglu and
 * residual_norm (16-byte accesses).
 *
 * Each kernel runs here thread by thread on the grid its host wrapper (src/backend/cuda/ops.rs)
 * launches, with the kernel's index math: every thread's accesses must be 16-byte aligned
 * (buffers start 256-byte aligned, as cuMemAlloc returns them), every input element read
 * exactly once, every output element written exactly once and nothing else touched; the
 * shuffle reductions are emulated lane by lane (xor butterflies), so a group that mixes two
 * rows fails. Values run in float as in the kernels and are compared with a double-precision
 * reference of each kernel's definition (relative 1e-5 of the row's largest value).
 *
 * Shapes: the model's (hidden 768, intermediate 1152, 3 q heads of 256) with odd token counts
 * (the last warp of qkv_post has one row), and the other edges the host accepts (head_dim 64:
 * idle lanes; hidden 1024, the register-held maximum; hidden 8 and intermediate 8).
 *
 * Build and run (src/backend/cuda/ops.rs does this in a test):
 *   cc -std=c99 -O1 -I kernels -I kernels/tests kernels/tests/elementwise_fragments.c -lm -o frag && ./frag
 * Exit status 0 and "ok" on success; the first mismatches are printed otherwise.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "params.h"
#include "warp_emulator.h"

#define BLOCK 256
#define RN_CHUNKS (RESIDUAL_NORM_MAX_HIDDEN / 256)
#define EPS 1e-6f

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

/* Uniform in [lo, hi). */
static float uniform(float lo, float hi) {
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return lo + (hi - lo) * (float)((rng_state >> 40) * (1.0 / 16777216.0));
}

static float *random_floats(size_t n, float lo, float hi) {
    float *x = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; ++i) x[i] = uniform(lo, hi);
    return x;
}

static int *zero_counts(size_t n) { return calloc(n, sizeof(int)); }

/* A 16-byte access at element `index` of a buffer of `elem_bytes`-byte elements. */
static void expect_aligned(const char *what, size_t index, int elem_bytes) {
    expect(index * elem_bytes % 16 == 0, what, (int)index, elem_bytes, 0);
}

static void expect_each_once(const char *what, const int *counts, size_t n) {
    for (size_t i = 0; i < n; ++i) expect(counts[i] == 1, what, (int)i, counts[i], 0);
}

static void expect_close(const char *what, const float *got, const double *want, size_t n,
                         size_t row_len) {
    for (size_t r = 0; r < n / row_len; ++r) {
        double scale = 0.0;
        for (size_t c = 0; c < row_len; ++c) scale = fmax(scale, fabs(want[r * row_len + c]));
        for (size_t c = 0; c < row_len; ++c) {
            const size_t i = r * row_len + c;
            expect(fabs(got[i] - want[i]) <= 1e-5 * scale + 1e-30, what, (int)r, (int)c, 0);
        }
    }
}

/* __shfl_xor_sync butterflies over one warp's values with offsets first_offset .. 1. */
static void butterfly(float v[32], int first_offset) {
    for (int offset = first_offset; offset > 0; offset /= 2) {
        float next[32];
        for (int lane = 0; lane < 32; ++lane) next[lane] = v[lane] + v[lane ^ offset];
        memcpy(v, next, sizeof(next));
    }
}

static float gelu_tanh(float x) {
    return 0.5f * x * (1.0f + tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x)));
}

/* ---- qkv_post ------------------------------------------------------------------------ */

static void check_qkv_post(int n, int heads, int d) {
    const int slots = heads + 2, half = d / 2, rows = n * slots;
    const size_t qkv_len = (size_t)rows * d;
    float *qkv = random_floats(qkv_len, -4.0f, 4.0f);
    float *inv_rms = random_floats(n, 0.05f, 2.0f);
    float *q_norm = random_floats(d, -1.0f, 2.0f), *k_norm = random_floats(d, -1.0f, 2.0f);
    const int max_positions = 64;
    float *cos_t = malloc((size_t)max_positions * half * sizeof(float));
    float *sin_t = malloc((size_t)max_positions * half * sizeof(float));
    for (int pos = 0; pos < max_positions; ++pos)
        for (int i = 0; i < half; ++i) {
            const double angle = pos * pow(10000.0, -2.0 * i / d);
            cos_t[pos * half + i] = (float)cos(angle);
            sin_t[pos * half + i] = (float)sin(angle);
        }
    uint32_t *positions = malloc(n * sizeof(uint32_t));
    for (int t = 0; t < n; ++t) positions[t] = (uint32_t)((t * 7) % max_positions);
    float *q = calloc((size_t)n * heads * d, sizeof(float));
    float *k = calloc((size_t)n * d, sizeof(float)), *v = calloc((size_t)n * d, sizeof(float));
    int *qkv_reads = zero_counts(qkv_len), *q_writes = zero_counts((size_t)n * heads * d);
    int *k_writes = zero_counts((size_t)n * d), *v_writes = zero_counts((size_t)n * d);
    const float q_scale = 0.0625f;

    /* ops.rs: rows.div_ceil(ROW_BLOCK / QKV_POST_LANES) blocks of ROW_BLOCK threads. */
    const int grid = (rows + BLOCK / QKV_POST_LANES - 1) / (BLOCK / QKV_POST_LANES);
    for (int block = 0; block < grid; ++block)
        for (int warp = 0; warp < BLOCK / 32; ++warp) {
            int active[32], token[32], slot[32], col[32];
            float a[32][8], b[32][8], cs[32][8], sn[32][8], row_scale[32], sums[32];
            for (int lane = 0; lane < 32; ++lane) {
                const int tid = warp * 32 + lane;
                const uint32_t row = (uint32_t)(block * BLOCK + tid) / QKV_POST_LANES;
                const int i = (tid % QKV_POST_LANES) * 8;
                active[lane] = row < (uint32_t)rows && i < half;
                token[lane] = (int)(row / slots);
                slot[lane] = (int)(row - token[lane] * slots);
                col[lane] = i;
                row_scale[lane] = 0.0f;
                for (int j = 0; j < 8; ++j) a[lane][j] = b[lane][j] = cs[lane][j] = sn[lane][j] = 0.0f;
                if (active[lane]) {
                    const size_t src = (size_t)row * d;
                    expect_aligned("qkv_post a", src + i, 2);
                    expect_aligned("qkv_post b", src + half + i, 2);
                    for (int j = 0; j < 8; ++j) {
                        a[lane][j] = qkv[src + i + j];
                        b[lane][j] = qkv[src + half + i + j];
                        qkv_reads[src + i + j]++;
                        qkv_reads[src + half + i + j]++;
                    }
                    row_scale[lane] = inv_rms[token[lane]];
                    if (slot[lane] != heads + 1) {
                        const size_t table_row = (size_t)positions[token[lane]] * half;
                        expect_aligned("qkv_post rope", table_row + i, 4);
                        for (int j = 0; j < 8; ++j) {
                            cs[lane][j] = cos_t[table_row + i + j];
                            sn[lane][j] = sin_t[table_row + i + j];
                        }
                    }
                }
                sums[lane] = 0.0f;
                for (int j = 0; j < 8; ++j) {
                    const float x1 = a[lane][j] * row_scale[lane], x2 = b[lane][j] * row_scale[lane];
                    sums[lane] += x1 * x1;
                    sums[lane] += x2 * x2;
                }
            }
            butterfly(sums, 8); /* half_warp_sum */
            for (int lane = 0; lane < 32; ++lane) {
                if (!active[lane]) continue;
                const int t = token[lane], s = slot[lane], i = col[lane];
                if (s == heads + 1) {
                    const size_t dst = (size_t)t * d;
                    expect_aligned("qkv_post v", dst + i, 2);
                    expect_aligned("qkv_post v", dst + half + i, 2);
                    for (int j = 0; j < 8; ++j) {
                        v[dst + i + j] = a[lane][j] * row_scale[lane];
                        v[dst + half + i + j] = b[lane][j] * row_scale[lane];
                        v_writes[dst + i + j]++;
                        v_writes[dst + half + i + j]++;
                    }
                    continue;
                }
                const int is_key = s == heads;
                const float *weight = is_key ? k_norm : q_norm;
                expect_aligned("qkv_post weight", (size_t)i, 4);
                expect_aligned("qkv_post weight", (size_t)half + i, 4);
                const float out_scale = is_key ? 1.0f : q_scale;
                float *out = is_key ? k : q;
                int *writes = is_key ? k_writes : q_writes;
                const size_t dst = is_key ? (size_t)t * d : ((size_t)t * heads + s) * d;
                expect_aligned("qkv_post out", dst + i, 2);
                expect_aligned("qkv_post out", dst + half + i, 2);
                const float norm_scale =
                    row_scale[lane] * (1.0f / sqrtf(sums[lane] / (float)d + EPS));
                for (int j = 0; j < 8; ++j) {
                    const float x1 = a[lane][j] * norm_scale * (1.0f + weight[i + j]);
                    const float x2 = b[lane][j] * norm_scale * (1.0f + weight[half + i + j]);
                    out[dst + i + j] = (x1 * cs[lane][j] - x2 * sn[lane][j]) * out_scale;
                    out[dst + half + i + j] = (x2 * cs[lane][j] + x1 * sn[lane][j]) * out_scale;
                    writes[dst + i + j]++;
                    writes[dst + half + i + j]++;
                }
            }
        }

    expect_each_once("qkv_post qkv read", qkv_reads, qkv_len);
    expect_each_once("qkv_post q written", q_writes, (size_t)n * heads * d);
    expect_each_once("qkv_post k written", k_writes, (size_t)n * d);
    expect_each_once("qkv_post v written", v_writes, (size_t)n * d);

    double *want_q = malloc((size_t)n * heads * d * sizeof(double));
    double *want_k = malloc((size_t)n * d * sizeof(double));
    double *want_v = malloc((size_t)n * d * sizeof(double));
    double *x = malloc(d * sizeof(double));
    for (int t = 0; t < n; ++t)
        for (int s = 0; s < slots; ++s) {
            const float *src = qkv + ((size_t)t * slots + s) * d;
            double ms = 0.0;
            for (int c = 0; c < d; ++c) {
                x[c] = (double)src[c] * inv_rms[t];
                ms += x[c] * x[c] / d;
            }
            if (s == heads + 1) {
                for (int c = 0; c < d; ++c) want_v[(size_t)t * d + c] = x[c];
                continue;
            }
            const int is_key = s == heads;
            const float *w = is_key ? k_norm : q_norm;
            for (int c = 0; c < d; ++c) x[c] = x[c] / sqrt(ms + EPS) * (1.0 + w[c]);
            double *out = is_key ? want_k + (size_t)t * d : want_q + ((size_t)t * heads + s) * d;
            const double scale = is_key ? 1.0 : q_scale;
            const size_t table_row = (size_t)positions[t] * half;
            for (int c = 0; c < half; ++c) {
                const double cc = cos_t[table_row + c], ss = sin_t[table_row + c];
                out[c] = (x[c] * cc - x[c + half] * ss) * scale;
                out[c + half] = (x[c + half] * cc + x[c] * ss) * scale;
            }
        }
    expect_close("qkv_post q", q, want_q, (size_t)n * heads * d, d);
    expect_close("qkv_post k", k, want_k, (size_t)n * d, d);
    expect_close("qkv_post v", v, want_v, (size_t)n * d, d);

    free(qkv), free(inv_rms), free(q_norm), free(k_norm), free(cos_t), free(sin_t);
    free(positions), free(q), free(k), free(v), free(qkv_reads), free(q_writes);
    free(k_writes), free(v_writes), free(want_q), free(want_k), free(want_v), free(x);
}

/* ---- geglu --------------------------------------------------------------------------- */

static void check_geglu(int n, int inter) {
    const size_t in_len = (size_t)n * 2 * inter, out_len = (size_t)n * inter;
    float *gate_up = random_floats(in_len, -6.0f, 6.0f);
    float *inv_rms = random_floats(n, 0.05f, 2.0f);
    float *out = calloc(out_len, sizeof(float));
    int *reads = zero_counts(in_len), *writes = zero_counts(out_len);

    /* ops.rs: one thread per GEGLU_OUTPUTS_PER_THREAD outputs, groups.div_ceil(ROW_BLOCK)
     * blocks. */
    const uint32_t groups = (uint32_t)(out_len / GEGLU_OUTPUTS_PER_THREAD);
    const int grid = (int)((groups + BLOCK - 1) / BLOCK);
    for (int block = 0; block < grid; ++block)
        for (int tid = 0; tid < BLOCK; ++tid) {
            const uint32_t groups_per_row = (uint32_t)inter / GEGLU_OUTPUTS_PER_THREAD;
            const uint32_t group = (uint32_t)(block * BLOCK + tid);
            if (group >= (uint32_t)n * groups_per_row) continue;
            const uint32_t token = group / groups_per_row;
            const uint32_t c = (group - token * groups_per_row) * GEGLU_OUTPUTS_PER_THREAD;
            const size_t row = (size_t)token * 2 * inter;
            const size_t dst = (size_t)token * inter + c;
            expect_aligned("geglu gate", row + c, 2);
            expect_aligned("geglu up", row + inter + c, 2);
            expect_aligned("geglu out", dst, 2);
            const float r = inv_rms[token];
            for (int j = 0; j < GEGLU_OUTPUTS_PER_THREAD; ++j) {
                reads[row + c + j]++;
                reads[row + inter + c + j]++;
                out[dst + j] =
                    gelu_tanh(r * gate_up[row + c + j]) * (r * gate_up[row + inter + c + j]);
                writes[dst + j]++;
            }
        }
    expect_each_once("geglu read", reads, in_len);
    expect_each_once("geglu written", writes, out_len);

    double *want = malloc(out_len * sizeof(double));
    for (int t = 0; t < n; ++t)
        for (int c = 0; c < inter; ++c) {
            const double g = (double)gate_up[(size_t)t * 2 * inter + c] * inv_rms[t];
            const double u = (double)gate_up[(size_t)t * 2 * inter + inter + c] * inv_rms[t];
            const double inner = sqrt(2.0 / 3.14159265358979323846) * (g + 0.044715 * g * g * g);
            want[(size_t)t * inter + c] = 0.5 * g * (1.0 + tanh(inner)) * u;
        }
    expect_close("geglu out", out, want, out_len, inter);
    free(gate_up), free(inv_rms), free(out), free(reads), free(writes), free(want);
}

/* ---- residual_norm ------------------------------------------------------------------- */

/* `bf16_branch`: the branch's 16-byte loads hold 8 bf16 instead of 4 f32. */
static void check_residual_norm(int n, int hidden, int bf16_branch) {
    const size_t len = (size_t)n * hidden;
    const int branch_bytes = bf16_branch ? 2 : 4;
    float *branch = random_floats(len, -30.0f, 30.0f);
    float *residual_in = random_floats(len, -500.0f, 500.0f);
    float *post_norm = random_floats(hidden, -1.0f, 8.0f);
    float *residual = malloc(len * sizeof(float)), *inv_rms = calloc(n, sizeof(float));
    memcpy(residual, residual_in, len * sizeof(float));
    int *branch_reads = zero_counts(len), *residual_reads = zero_counts(len);
    int *residual_writes = zero_counts(len), *copy_writes = zero_counts(len);
    int *inv_rms_writes = zero_counts(n);

    /* ops.rs: one warp per token, blocks_for_rows(n) blocks of ROW_BLOCK threads. */
    const int grid = (n + BLOCK / 32 - 1) / (BLOCK / 32);
    for (int block = 0; block < grid; ++block)
        for (int warp = 0; warp < BLOCK / 32; ++warp) {
            const uint32_t token = (uint32_t)(block * BLOCK + warp * 32) / 32;
            if (token >= (uint32_t)n) continue; /* whole warp: uniform */
            const size_t base = (size_t)token * hidden;
            float b[32][RN_CHUNKS][8], x[32][RN_CHUNKS][8], sums[32];
            for (int lane = 0; lane < 32; ++lane) {
                sums[lane] = 0.0f;
                for (int k = 0; k < RN_CHUNKS; ++k) {
                    const uint32_t c = (uint32_t)(k * 32 + lane) * 8;
                    for (int j = 0; j < 8; ++j) b[lane][k][j] = x[lane][k][j] = 0.0f;
                    if (c >= (uint32_t)hidden) continue;
                    expect_aligned("residual_norm branch", base + c, branch_bytes);
                    expect_aligned("residual_norm residual", base + c, 4);
                    for (int j = 0; j < 8; ++j) {
                        b[lane][k][j] = branch[base + c + j];
                        x[lane][k][j] = residual[base + c + j];
                        branch_reads[base + c + j]++;
                        residual_reads[base + c + j]++;
                    }
                }
                for (int k = 0; k < RN_CHUNKS; ++k)
                    for (int j = 0; j < 8; ++j) sums[lane] += b[lane][k][j] * b[lane][k][j];
            }
            butterfly(sums, 16); /* warp_sum */
            float squares[32];
            for (int lane = 0; lane < 32; ++lane) {
                const float branch_inv_rms = 1.0f / sqrtf(sums[lane] / (float)hidden + EPS);
                squares[lane] = 0.0f;
                for (int k = 0; k < RN_CHUNKS; ++k) {
                    const uint32_t c = (uint32_t)(k * 32 + lane) * 8;
                    if (c >= (uint32_t)hidden) break;
                    expect_aligned("residual_norm post_norm", c, 4);
                    expect_aligned("residual_norm bf16 copy", base + c, 2);
                    for (int j = 0; j < 8; ++j) {
                        x[lane][k][j] += b[lane][k][j] * branch_inv_rms * (1.0f + post_norm[c + j]);
                        squares[lane] += x[lane][k][j] * x[lane][k][j];
                        residual[base + c + j] = x[lane][k][j];
                        residual_writes[base + c + j]++;
                        copy_writes[base + c + j]++;
                    }
                }
            }
            butterfly(squares, 16);
            inv_rms[token] = 1.0f / sqrtf(squares[0] / (float)hidden + EPS);
            inv_rms_writes[token]++;
        }
    expect_each_once("residual_norm branch read", branch_reads, len);
    expect_each_once("residual_norm residual read", residual_reads, len);
    expect_each_once("residual_norm residual written", residual_writes, len);
    expect_each_once("residual_norm bf16 copy written", copy_writes, len);
    expect_each_once("residual_norm inv_rms written", inv_rms_writes, n);

    double *want = malloc(len * sizeof(double)), *want_inv = malloc(n * sizeof(double));
    for (int t = 0; t < n; ++t) {
        const size_t base = (size_t)t * hidden;
        double ms = 0.0, ms_out = 0.0;
        for (int c = 0; c < hidden; ++c) ms += (double)branch[base + c] * branch[base + c] / hidden;
        for (int c = 0; c < hidden; ++c) {
            want[base + c] =
                residual_in[base + c] + branch[base + c] / sqrt(ms + EPS) * (1.0 + post_norm[c]);
            ms_out += want[base + c] * want[base + c] / hidden;
        }
        want_inv[t] = 1.0 / sqrt(ms_out + EPS);
    }
    expect_close("residual_norm residual", residual, want, len, hidden);
    expect_close("residual_norm inv_rms", inv_rms, want_inv, n, 1);
    free(branch), free(residual_in), free(post_norm), free(residual), free(inv_rms);
    free(branch_reads), free(residual_reads), free(residual_writes), free(copy_writes);
    free(inv_rms_writes), free(want), free(want_inv);
}

int main(void) {
    checking = "qkv_post 37 tokens, 3 heads of 256";
    check_qkv_post(37, 3, 256);
    checking = "qkv_post 13 tokens, 2 heads of 64";
    check_qkv_post(13, 2, 64);
    checking = "geglu 37 tokens, intermediate 1152";
    check_geglu(37, 1152);
    checking = "geglu 5 tokens, intermediate 8";
    check_geglu(5, 8);
    for (int bf16_branch = 0; bf16_branch < 2; ++bf16_branch) {
        checking = bf16_branch ? "residual_norm_bf16_branch 13 x 768" : "residual_norm 13 x 768";
        check_residual_norm(13, 768, bf16_branch);
        checking = bf16_branch ? "residual_norm_bf16_branch 9 x 1024" : "residual_norm 9 x 1024";
        check_residual_norm(9, 1024, bf16_branch);
        checking = bf16_branch ? "residual_norm_bf16_branch 3 x 8" : "residual_norm 3 x 8";
        check_residual_norm(3, 8, bf16_branch);
    }
    return verdict();
}
