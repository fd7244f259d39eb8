/* attention_fragments.c: host check of the flash kernel's fragment index math.
 *
 * No simulator runs mma.sync/ldmatrix, so this emulates one warp in plain C from the PTX ISA
 * definitions of ldmatrix.m8n8.x4(.trans).b16 and mma.m16n8k16 (bf16, f32 accumulate) and
 * drives it with the lane -> (row, column) functions and the swizzle of attention.cuh, in the
 * same loop order as attention_flash:
 *   S = Q K^T for one warp's 16 rows and a 64-key block, O = P V with P taken from the S
 *   accumulators exactly as the kernel packs them, and the epilogue staging of O through the
 *   swizzled Q tile. Values are small integers, so every product is exact and the results
 *   must equal the direct matrix products bit for bit. It also checks that each 8-row phase
 *   of every ldmatrix touches all 32 shared-memory banks once (no bank conflicts).
 *
 * Build and run (src/backend/cuda/attention.rs does this in a test):
 *   cc -std=c99 -O1 -I kernels kernels/tests/attention_fragments.c -o frag && ./frag
 * Exit status 0 and "ok" on success; the first mismatch is printed otherwise.
 */
#include <stdio.h>
#include <stdlib.h>

#include "attention.cuh"

#define D ATTENTION_HEAD_DIM
#define BM ATTENTION_FLASH_BLOCK_M
#define BN ATTENTION_FLASH_BLOCK_N
#define WARPS (ATTENTION_FLASH_THREADS / 32)

/* One 32-bit register holding two 16-bit elements: lo = lower index. */
typedef struct {
    float lo, hi;
} Pair;

static int failures = 0;

static void expect(int ok, const char *what, int a, int b, int c) {
    if (!ok && failures++ < 10) {
        printf("mismatch: %s (%d, %d, %d)\n", what, a, b, c);
    }
}

/* Bank of a 4-byte word at element offset `elem` (2-byte elements). */
static int bank_of(int elem) { return (elem * 2 / 4) % 32; }

/* ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16: lane l supplies the address (element
 * offset) of row l % 8 of matrix l / 8; lane t receives in register i, without .trans,
 * elements [t / 4][2 (t % 4)] and [t / 4][2 (t % 4) + 1] of matrix i, with .trans elements
 * [2 (t % 4)][t / 4] and [2 (t % 4) + 1][t / 4]. */
static void ldmatrix_x4(const float *smem, const int addr[32], int trans, Pair out[32][4]) {
    for (int m = 0; m < 4; ++m) {
        int banks[32] = {0};
        for (int r = 0; r < 8; ++r) {
            const int a = addr[8 * m + r];
            expect(a % 8 == 0, "ldmatrix row address 16-byte aligned", m, r, a);
            for (int w = 0; w < 4; ++w) {
                banks[bank_of(a + 2 * w)]++;
            }
        }
        for (int b = 0; b < 32; ++b) {
            expect(banks[b] == 1, "ldmatrix phase conflict-free", m, b, banks[b]);
        }
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
static void mma_16816(float c[32][4], Pair a[32][4], Pair b[32][2]) {
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

static float sq[BM * D], sk[BN * D], sv[BN * D];
static float q_log[BM][D], k_log[BN][D], v_log[BN][D];

int main(void) {
    srand(7);
    /* Logical tiles with small integer entries, stored swizzled as load_tile stores them. */
    for (int r = 0; r < BM; ++r) {
        for (int c = 0; c < D; ++c) {
            q_log[r][c] = (float)(rand() % 7 - 3);
            sq[attn_swizzle(r, c)] = q_log[r][c];
        }
    }
    for (int r = 0; r < BN; ++r) {
        for (int c = 0; c < D; ++c) {
            k_log[r][c] = (float)(rand() % 7 - 3);
            v_log[r][c] = (float)(rand() % 7 - 3);
            sk[attn_swizzle(r, c)] = k_log[r][c];
            sv[attn_swizzle(r, c)] = v_log[r][c];
        }
    }
    /* The swizzle is a permutation of each row's elements. */
    for (int r = 0; r < 8; ++r) {
        int seen[D] = {0};
        for (int c = 0; c < D; ++c) {
            const int off = attn_swizzle(r, c) - r * D;
            expect(off >= 0 && off < D && !seen[off]++, "swizzle is a permutation", r, c, off);
        }
    }

    static float s[WARPS][BN / 8][32][4];
    static float o[WARPS][D / 8][32][4];
    for (int warp = 0; warp < WARPS; ++warp) {
        /* S = Q K^T, loop order of attention_flash. */
        for (int t = 0; t < BN / 8; ++t) {
            for (int l = 0; l < 32; ++l) {
                for (int e = 0; e < 4; ++e) {
                    s[warp][t][l][e] = 0.0f;
                }
            }
        }
        for (int ks = 0; ks < D / 16; ++ks) {
            int addr[32];
            Pair a[32][4];
            for (int l = 0; l < 32; ++l) {
                addr[l] = attn_swizzle(warp * 16 + attn_ldsm_a_row(l), ks * 16 + attn_ldsm_a_col(l));
            }
            ldmatrix_x4(sq, addr, 0, a);
            for (int t = 0; t < BN / 8; t += 2) {
                Pair b[32][4], b_lo[32][2], b_hi[32][2];
                for (int l = 0; l < 32; ++l) {
                    addr[l] = attn_swizzle(t * 8 + attn_ldsm_k_row(l), ks * 16 + attn_ldsm_k_col(l));
                }
                ldmatrix_x4(sk, addr, 0, b);
                for (int l = 0; l < 32; ++l) {
                    b_lo[l][0] = b[l][0];
                    b_lo[l][1] = b[l][1];
                    b_hi[l][0] = b[l][2];
                    b_hi[l][1] = b[l][3];
                }
                mma_16816(s[warp][t], a, b_lo);
                mma_16816(s[warp][t + 1], a, b_hi);
            }
        }
        for (int t = 0; t < BN / 8; ++t) {
            for (int l = 0; l < 32; ++l) {
                for (int e = 0; e < 4; ++e) {
                    const int row = warp * 16 + l / 4 + 8 * (e >> 1);
                    const int key = t * 8 + 2 * (l % 4) + (e & 1);
                    float want = 0.0f;
                    for (int c = 0; c < D; ++c) {
                        want += q_log[row][c] * k_log[key][c];
                    }
                    expect(s[warp][t][l][e] == want, "S = Q K^T", row, key, (int)want);
                }
            }
        }

        /* Use S itself as P (small integers; the kernel would have exponentiated it). */
        for (int j = 0; j < D / 8; ++j) {
            for (int l = 0; l < 32; ++l) {
                for (int e = 0; e < 4; ++e) {
                    o[warp][j][l][e] = 0.0f;
                }
            }
        }
        for (int kk = 0; kk < BN / 16; ++kk) {
            Pair a[32][4];
            for (int l = 0; l < 32; ++l) {
                float(*s0)[4] = s[warp][2 * kk];
                float(*s1)[4] = s[warp][2 * kk + 1];
                a[l][0] = (Pair){s0[l][0], s0[l][1]};
                a[l][1] = (Pair){s0[l][2], s0[l][3]};
                a[l][2] = (Pair){s1[l][0], s1[l][1]};
                a[l][3] = (Pair){s1[l][2], s1[l][3]};
            }
            for (int j = 0; j < D / 8; j += 2) {
                int addr[32];
                Pair b[32][4], b_lo[32][2], b_hi[32][2];
                for (int l = 0; l < 32; ++l) {
                    addr[l] = attn_swizzle(kk * 16 + attn_ldsm_a_row(l), j * 8 + attn_ldsm_a_col(l));
                }
                ldmatrix_x4(sv, addr, 1, b);
                for (int l = 0; l < 32; ++l) {
                    b_lo[l][0] = b[l][0];
                    b_lo[l][1] = b[l][1];
                    b_hi[l][0] = b[l][2];
                    b_hi[l][1] = b[l][3];
                }
                mma_16816(o[warp][j], a, b_lo);
                mma_16816(o[warp][j + 1], a, b_hi);
            }
        }
        /* Reference: P[row][key] read back from the S fragments by the C layout. */
        static float p_log[16][BN];
        for (int t = 0; t < BN / 8; ++t) {
            for (int l = 0; l < 32; ++l) {
                for (int e = 0; e < 4; ++e) {
                    p_log[l / 4 + 8 * (e >> 1)][t * 8 + 2 * (l % 4) + (e & 1)] = s[warp][t][l][e];
                }
            }
        }
        for (int j = 0; j < D / 8; ++j) {
            for (int l = 0; l < 32; ++l) {
                for (int e = 0; e < 4; ++e) {
                    const int r = l / 4 + 8 * (e >> 1);
                    const int dim = j * 8 + 2 * (l % 4) + (e & 1);
                    float want = 0.0f;
                    for (int key = 0; key < BN; ++key) {
                        want += p_log[r][key] * v_log[key][dim];
                    }
                    expect(o[warp][j][l][e] == want, "O = P V", warp * 16 + r, dim, (int)want);
                }
            }
        }

        /* Epilogue: fragments into the warp's swizzled Q rows, then 16-byte chunks out. */
        for (int j = 0; j < D / 8; ++j) {
            for (int l = 0; l < 32; ++l) {
                for (int h = 0; h < 2; ++h) {
                    const int r = warp * 16 + l / 4 + 8 * h;
                    const int c = j * 8 + 2 * (l % 4);
                    sq[attn_swizzle(r, c)] = o[warp][j][l][2 * h];
                    sq[attn_swizzle(r, c) + 1] = o[warp][j][l][2 * h + 1];
                }
            }
        }
        for (int i = 0; i < 16 * (D / 8) / 32; ++i) {
            for (int l = 0; l < 32; ++l) {
                const int chunk_index = l + i * 32;
                const int r = warp * 16 + chunk_index / (D / 8);
                const int c = (chunk_index % (D / 8)) * 8;
                for (int x = 0; x < 8; ++x) {
                    const float got = sq[attn_swizzle(r, c) + x];
                    const int lane = ((r - warp * 16) % 8) * 4 + ((c + x) % 8) / 2;
                    const int e = 2 * ((r - warp * 16) / 8) + ((c + x) & 1);
                    expect(got == o[warp][(c + x) / 8][lane][e], "epilogue staging", r, c + x, 0);
                }
            }
        }
    }
    if (failures) {
        printf("%d mismatches\n", failures);
        return 1;
    }
    printf("ok\n");
    return 0;
}
