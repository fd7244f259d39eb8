/* attention_fragments.c: host check of the flash kernels' fragment index math.
 *
 * No simulator runs mma.sync/ldmatrix, so this drives the warp emulator of warp_emulator.h
 * (ldmatrix.m8n8.x4(.trans).b16 and mma.m16n8k16 from the PTX ISA definitions) with the lane
 * -> (row, column) functions and the swizzle of tile.cuh / attention.cuh, in the same loop
 * order as attention_flash:
 *   S = Q K^T for one warp's 16 rows and a 64-key block, O = P V with P taken from the S
 *   accumulators exactly as the kernel packs them, and the epilogue staging of O through the
 *   swizzled Q tile; for attention_flash_wgmma, the wgmma operand layout of Q, K and V, the P
 *   registers and where its accumulators land (check_wgmma_operands). Values are small
 *   integers, so every product is exact and the results must equal the direct matrix products
 *   bit for bit. It also checks that each 8-row phase of every ldmatrix touches all 32
 *   shared-memory banks once (no bank conflicts).
 *
 * Build and run (src/backend/cuda/attention.rs does this in a test):
 *   cc -std=c99 -O1 -I kernels -I kernels/tests kernels/tests/attention_fragments.c -o frag && ./frag
 * Exit status 0 and "ok" on success; the first mismatches are printed otherwise.
 */
#include <stdio.h>
#include <stdlib.h>

#include "attention.cuh"
#include "warp_emulator.h"

#define D ATTENTION_HEAD_DIM
#define BM ATTENTION_FLASH_BLOCK_M
#define BN ATTENTION_FLASH_BLOCK_N
#define WARPS (ATTENTION_FLASH_THREADS / 32)

static float sq[BM * D], sk[BN * D], sv[BN * D];
static float q_log[BM][D], k_log[BN][D], v_log[BN][D];

/* attention_flash_wgmma: the Q tile at shared byte 0, the K block and the V block after it, all
 * stored by attn_wgmma_swizzle. Q K^T: the 16 wgmma.m64n64k16 of a key block address Q and K
 * through wgmma_desc_sw128 at attn_wgmma_k_offset. P V: the 4 wgmma.m64n256k16 take P from
 * registers and V through wgmma_desc_sw128_mn at attn_wgmma_v_offset. Every (row, k) a
 * descriptor decodes to must be the element the kernel stored there (elements hold their own
 * logical index); the P registers the kernel packs must hold the (row, key) the register-A
 * layout says; and the accumulators of both products must land where the kernel reads them
 * (s[t][e] and o_acc[j][e]: register 4 t + e of lane l in warp w is row 16 w + l / 4 + 8 (e / 2),
 * column 8 t + 2 (l % 4) + (e % 2), as on the mma.sync path). */
static float smem_w[(BM + 2 * BN) * D];

/* Every register of the m64nN accumulators in one place, where the kernel expects it. */
static void check_wgmma_accumulators(int n, const char *what) {
    static int dealt[BM][D];
    for (int r = 0; r < BM; ++r)
        for (int c = 0; c < n; ++c) dealt[r][c] = 0;
    for (int warp = 0; warp < WARPS; ++warp) {
        for (int l = 0; l < 32; ++l) {
            for (int reg = 0; reg < n / 2; ++reg) {
                const int t = reg / 4, e = reg % 4;
                const int row = wgmma_acc_row(warp, l, reg), col = wgmma_acc_col(l, reg);
                expect(row == warp * 16 + l / 4 + 8 * (e >> 1), what, warp, l, reg);
                expect(col == t * 8 + 2 * (l % 4) + (e & 1), what, warp, l, reg);
                if (row >= 0 && row < BM && col >= 0 && col < n) {
                    dealt[row][col]++;
                }
            }
        }
    }
    for (int r = 0; r < BM; ++r)
        for (int c = 0; c < n; ++c) expect(dealt[r][c] == 1, what, r, c, dealt[r][c]);
}

static void check_wgmma_operands(void) {
    checking = "attention_flash_wgmma";
    const int q_code = 0, k_code = 1 << 20, v_code = 1 << 21;
    static int seen[BM * D];
    for (int r = 0; r < BM; ++r) {
        for (int c = 0; c < D; ++c) {
            const int off = attn_wgmma_swizzle(r, c);
            expect(off >= 0 && off < BM * D && !seen[off]++, "wgmma tile layout is a permutation",
                   r, c, off);
            smem_w[off] = (float)(q_code + r * D + c);
            smem_w[BM * D + off] = (float)(k_code + r * D + c);
            smem_w[(BM + BN) * D + off] = (float)(v_code + r * D + c);
        }
    }
    const uint32_t q_base = 0, k_base = BM * D * 2, v_base = (BM + BN) * D * 2;
    expect(k_base % 1024 == 0 && v_base % 1024 == 0, "K and V blocks 1024-byte aligned",
           (int)k_base, (int)v_base, 0);
    for (int ks = 0; ks < D / 16; ++ks) {
        const uint64_t da = wgmma_desc_sw128(q_base + attn_wgmma_k_offset(ks));
        const uint64_t db = wgmma_desc_sw128(k_base + attn_wgmma_k_offset(ks));
        for (int row = 0; row < ATTN_WGMMA_ROWS; ++row) {
            for (int k = 0; k < 16; ++k) {
                const int dim = 16 * ks + k;
                expect(smem_w[wgmma_element(da, row, k)] == (float)(q_code + row * D + dim),
                       "Q K^T: A operand (Q row, dim)", row, dim, ks);
                expect(smem_w[wgmma_element(db, row, k)] == (float)(k_code + row * D + dim),
                       "Q K^T: B operand (key, dim)", row, dim, ks);
            }
        }
    }
    check_wgmma_accumulators(BN, "Q K^T accumulators = s[t][e]");

    for (int kk = 0; kk < BN / 16; ++kk) {
        const uint64_t dv =
            wgmma_desc_sw128_mn(v_base + attn_wgmma_v_offset(kk), ATTN_WGMMA_SEGMENT_BYTES);
        for (int dim = 0; dim < D; ++dim) {
            for (int k = 0; k < 16; ++k) {
                const int key = 16 * kk + k;
                expect(smem_w[wgmma_element_mn(dv, dim, k)] == (float)(v_code + key * D + dim),
                       "P V: B operand (key, dim)", key, dim, kk);
            }
        }
        /* The kernel packs register reg of k-step kk from s[2 kk + reg / 2][2 (reg % 2) + x]. */
        for (int warp = 0; warp < WARPS; ++warp) {
            for (int l = 0; l < 32; ++l) {
                for (int reg = 0; reg < 4; ++reg) {
                    for (int x = 0; x < 2; ++x) {
                        const int t = 2 * kk + reg / 2, e = 2 * (reg % 2) + x;
                        const int row = warp * 16 + l / 4 + 8 * (e >> 1);
                        const int key = t * 8 + 2 * (l % 4) + (e & 1);
                        expect(row == wgmma_a_row(warp, l, reg), "P V: A register row", warp, l,
                               reg);
                        expect(key == 16 * kk + wgmma_a_k(l, reg) + x, "P V: A register key",
                               warp, l, reg);
                    }
                }
            }
        }
    }
    check_wgmma_accumulators(D, "P V accumulators = o_acc[j][e]");
    checking = "";
}

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
                addr[l] = attn_swizzle(warp * 16 + ldsm_a_row(l), ks * 16 + ldsm_a_col(l));
            }
            ldmatrix_x4(sq, addr, 0, a);
            for (int t = 0; t < BN / 8; t += 2) {
                Pair b[32][4];
                for (int l = 0; l < 32; ++l) {
                    addr[l] = attn_swizzle(t * 8 + ldsm_b_row(l), ks * 16 + ldsm_b_col(l));
                }
                ldmatrix_x4(sk, addr, 0, b);
                mma_16816_b_x4(s[warp][t], s[warp][t + 1], a, b);
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
                Pair b[32][4];
                for (int l = 0; l < 32; ++l) {
                    addr[l] = attn_swizzle(kk * 16 + ldsm_a_row(l), j * 8 + ldsm_a_col(l));
                }
                ldmatrix_x4(sv, addr, 1, b);
                mma_16816_b_x4(o[warp][j], o[warp][j + 1], a, b);
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
    check_wgmma_operands();
    return verdict();
}
