/* attention_tma_pipeline.c: host play of attention_flash_tma's synchronization protocol (and of
 * attention_flash_tma_free's, the same without the turn barriers).
 *
 * No GPU runs here, so the kernel's producer thread, the TMA copies it issues and its two consumer
 * warpgroups are played as agents that move one step at a time, in random orders, meeting at
 * emulated mbarriers (warp_emulator.h: arrivals, transaction bytes, phase parity) and at named
 * barriers (bar.sync / bar.arrive of 256 threads: the turn barriers). The steps, stage indices,
 * parities, turn barrier ids and the "pass the turn" rule are the kernel's, taken from
 * attention.cuh and tile.cuh. What every schedule must show:
 * - no deadlock: while anything is left to do, some agent can move;
 * - a consumer's Q K^T reads the Q of its tile and the K of its block, from the moment it issues
 *   the wgmmas until they have completed; its P V (issued with the next block's Q K^T, or after
 *   the tile's last block) reads the V of its block throughout; a copy landing in a buffer still
 *   being read changes what the reader sees;
 * - every turn barrier is completed by one warpgroup's sync and the other's arrival (never by
 *   arrivals alone), and none is left with a pending arrival at the end.
 *
 * Build and run (src/backend/cuda/attention.rs does this in a test):
 *   cc -std=c99 -O1 -I kernels -I kernels/tests kernels/tests/attention_tma_pipeline.c -o p && ./p
 * Exit status 0 and "ok" on success; the first mismatches are printed otherwise.
 */
#include <stdio.h>
#include <stdlib.h>

#include "attention.cuh"
#include "warp_emulator.h"

enum {
    STAGES = ATTENTION_TMA_STAGES,
    WGS = ATTN_TMA_WARPGROUPS,
    WARPS_PER_WG = 4,
    MAX_TILES = 16,
    MAX_COPIES = 8,
    /* What a buffer holds before its first copy: nothing (a block's or tile's index after). */
    EMPTY = -1,
};

typedef enum { COPY_Q, COPY_K, COPY_V } CopyKind;

typedef struct {
    CopyKind kind;
    int stage; /* the K/V stage, or the warpgroup of a Q half */
    int tag;
} Copy;

/* A named barrier of 2 x 128 threads, counted in warpgroups. */
typedef struct {
    int contributions;
    int syncing; /* the warpgroup blocked in bar.sync, or -1 */
} NamedBarrier;

/* Consumer warpgroup steps, in the kernel's order. */
typedef enum {
    C_START,      /* warpgroup 1: arrive on warpgroup 0's turn barrier */
    C_WAIT_Q,     /* mbarrier_wait(full_q[w]) */
    C_WAIT_K,     /* mbarrier_wait(full_k[st]) */
    C_WAIT_VPREV, /* past the first block: mbarrier_wait(full_v) of the previous block */
    C_TURN,       /* named_barrier_sync(turn(w)); blocked until completed */
    C_ISSUE,      /* Q K^T (and the previous block's P V) issued, then the turn passed */
    C_WAIT_S,     /* Q K^T completed: release K (and Q after the tile's last) */
    C_WAIT_PV,    /* the previous block's P V completed: release its V */
    C_WAIT_VLAST, /* after the tile's last block: mbarrier_wait(full_v) of that block */
    C_ISSUE_PV,   /* its P V issued ... */
    C_DONE_PV,    /* ... and completed, then release V; the epilogue touches no shared memory */
    C_FINISHED,
} ConsumerStep;

typedef struct {
    ConsumerStep step;
    int tile;  /* index into the CTA's tiles */
    int block; /* inside the tile */
    int count; /* blocks of the CTA so far (block_count) */
    int released_by_turn;
} Consumer;

static int q_region[WGS], k_stage[STAGES], v_stage[STAGES];


static void named_sync(NamedBarrier *b, int wg) {
    b->contributions++;
    b->syncing = wg;
}

/* Returns the warpgroup a completion releases, or -1. */
static int named_settle(NamedBarrier *b) {
    if (b->contributions < 2) return -1;
    expect(b->syncing >= 0, "turn barrier completed by arrivals alone", b->contributions, 0, 0);
    const int released = b->syncing;
    b->contributions = 0;
    b->syncing = -1;
    return released;
}

/* Warpgroup w syncs on its turn barrier (named_barrier_sync: blocked until it completes). */
static void take_turn(Consumer *wg, NamedBarrier *turn, int w, int turns) {
    if (!turns) {
        /* attention_flash_tma_free: no barrier, straight to the products. */
        wg[w].step = C_ISSUE;
        return;
    }
    wg[w].step = C_TURN;
    wg[w].released_by_turn = 0;
    NamedBarrier *mine = &turn[attn_tma_turn_barrier(w) - 1];
    named_sync(mine, w);
    const int released = named_settle(mine);
    if (released >= 0) wg[released].released_by_turn = 1;
}

/* Past a block's Q K^T (and the previous block's P V): the next block, or the last P V. */
static void next_block(Consumer *c, const int *blocks) {
    ++c->count;
    c->step = ++c->block < blocks[c->tile] ? C_WAIT_K : C_WAIT_VLAST;
}

/* One CTA over tiles of blocks[0..num_tiles) key blocks, in the schedule `seed` draws. */
static void play(const int *blocks, int num_tiles, int turns, uint64_t seed) {
    EmuMbarrier full_q[WGS], empty_q[WGS], full_k[STAGES], full_v[STAGES], empty_k[STAGES],
        empty_v[STAGES];
    for (int w = 0; w < WGS; ++w) {
        emu_mbarrier_init(&full_q[w], 1);
        emu_mbarrier_init(&empty_q[w], WARPS_PER_WG);
    }
    for (int st = 0; st < STAGES; ++st) {
        emu_mbarrier_init(&full_k[st], 1);
        emu_mbarrier_init(&full_v[st], 1);
        emu_mbarrier_init(&empty_k[st], WGS * WARPS_PER_WG);
        emu_mbarrier_init(&empty_v[st], WGS * WARPS_PER_WG);
        k_stage[st] = v_stage[st] = EMPTY;
    }
    for (int w = 0; w < WGS; ++w) q_region[w] = EMPTY;
    NamedBarrier turn[WGS];
    for (int w = 0; w < WGS; ++w) turn[w] = (NamedBarrier){0, -1};
    int total_blocks = 0;
    for (int j = 0; j < num_tiles; ++j) total_blocks += blocks[j];

    /* The producer: tile p_tile, block p_block, its p_part-th copy set (K, V, then after the
     * first block's each warpgroup's Q half). */
    int p_tile = 0, p_block = 0, p_count = 0, p_part = 0;
    Copy copies[MAX_COPIES];
    int num_copies = 0;
    Consumer wg[WGS];
    for (int w = 0; w < WGS; ++w) {
        wg[w] = (Consumer){w == 1 && turns ? C_START : C_WAIT_Q, 0, 0, 0, 0};
    }
    uint64_t state = seed;

    for (;;) {
        int movable[1 + WGS + 1], moves = 0;
        /* Producer. */
        if (p_tile < num_tiles) {
            const uint32_t st = gemm_tma_stage((uint32_t)p_count, STAGES);
            const uint32_t parity = gemm_tma_empty_parity((uint32_t)p_count, STAGES);
            int ready = 0;
            if (p_part == 0) ready = emu_mbarrier_try_wait(&empty_k[st], parity);
            if (p_part == 1) ready = emu_mbarrier_try_wait(&empty_v[st], parity);
            if (p_part >= 2)
                ready = emu_mbarrier_try_wait(&empty_q[p_part - 2], gemm_tma_empty_parity((uint32_t)p_tile, 1));
            if (ready) movable[moves++] = 0;
        }
        /* Consumers. */
        for (int w = 0; w < WGS; ++w) {
            const Consumer *c = &wg[w];
            const uint32_t st = gemm_tma_stage((uint32_t)c->count, STAGES);
            const uint32_t parity = gemm_tma_full_parity((uint32_t)c->count, STAGES);
            int ready = 1;
            switch (c->step) {
            case C_FINISHED: ready = 0; break;
            case C_WAIT_Q: ready = emu_mbarrier_try_wait(&full_q[w], gemm_tma_full_parity((uint32_t)c->tile, 1)); break;
            case C_WAIT_K: ready = emu_mbarrier_try_wait(&full_k[st], parity); break;
            case C_TURN: ready = c->released_by_turn; break;
            case C_WAIT_VPREV:
            case C_WAIT_VLAST:
                ready = emu_mbarrier_try_wait(&full_v[gemm_tma_stage((uint32_t)c->count - 1, STAGES)],
                                              gemm_tma_full_parity((uint32_t)c->count - 1, STAGES));
                break;
            default: break;
            }
            if (ready) movable[moves++] = 1 + w;
        }
        if (num_copies > 0) movable[moves++] = 1 + WGS;

        int done = p_tile == num_tiles && num_copies == 0;
        for (int w = 0; w < WGS; ++w) done = done && wg[w].step == C_FINISHED;
        if (done) break;
        if (moves == 0) {
            expect(0, "no agent can move (deadlock)", p_count, wg[0].count, wg[1].count);
            return;
        }
        const int agent = movable[emu_next_random(&state) % (uint32_t)moves];

        if (agent == 0) {
            /* The producer issues one copy set. */
            const int st = (int)gemm_tma_stage((uint32_t)p_count, STAGES);
            int block_done = 0;
            if (p_part == 0) {
                emu_mbarrier_arrive(&full_k[st], 1);
                copies[num_copies++] = (Copy){COPY_K, st, p_count};
                p_part = 1;
            } else if (p_part == 1) {
                emu_mbarrier_arrive(&full_v[st], 1);
                copies[num_copies++] = (Copy){COPY_V, st, p_count};
                p_part = p_block == 0 ? 2 : 0;
                block_done = p_block != 0;
            } else {
                const int w = p_part - 2;
                emu_mbarrier_arrive(&full_q[w], 1);
                copies[num_copies++] = (Copy){COPY_Q, w, p_tile};
                p_part = w + 1 < WGS ? p_part + 1 : 0;
                block_done = p_part == 0;
            }
            if (block_done) {
                ++p_count;
                if (++p_block == blocks[p_tile]) {
                    p_block = 0;
                    ++p_tile;
                }
            }
            expect(num_copies <= MAX_COPIES, "copies in flight", num_copies, 0, 0);
        } else if (agent == 1 + WGS) {
            /* One copy lands (each carries one transaction "byte"). */
            const int pick = (int)(emu_next_random(&state) % (uint32_t)num_copies);
            const Copy copy = copies[pick];
            copies[pick] = copies[--num_copies];
            if (copy.kind == COPY_Q) {
                q_region[copy.stage] = copy.tag;
                emu_mbarrier_complete_tx(&full_q[copy.stage], 1);
            } else if (copy.kind == COPY_K) {
                k_stage[copy.stage] = copy.tag;
                emu_mbarrier_complete_tx(&full_k[copy.stage], 1);
            } else {
                v_stage[copy.stage] = copy.tag;
                emu_mbarrier_complete_tx(&full_v[copy.stage], 1);
            }
        } else {
            const int w = agent - 1;
            Consumer *c = &wg[w];
            const int st = (int)gemm_tma_stage((uint32_t)c->count, STAGES);
            /* The previous block's V stage (its P V runs with this block's Q K^T). */
            const int prev = (int)gemm_tma_stage((uint32_t)c->count - 1, STAGES);
            switch (c->step) {
            case C_START: {
                /* The kernel: if (warpgroup == 1 && blockIdx.x < num_tiles) arrive. */
                NamedBarrier *first = &turn[attn_tma_turn_barrier(0) - 1];
                first->contributions++;
                const int released = named_settle(first);
                if (released >= 0) wg[released].released_by_turn = 1;
                c->step = C_WAIT_Q;
                break;
            }
            case C_WAIT_Q: c->step = C_WAIT_K; break;
            case C_WAIT_K:
                /* The first block takes its turn right away, the others once V is there too. */
                if (c->block > 0) {
                    c->step = C_WAIT_VPREV;
                } else {
                    take_turn(wg, turn, w, turns);
                }
                break;
            case C_WAIT_VPREV: take_turn(wg, turn, w, turns); break;
            case C_TURN: c->step = C_ISSUE; break;
            case C_ISSUE: {
                expect(q_region[w] == c->tile, "Q K^T issued on another tile's Q", w, q_region[w], c->tile);
                expect(k_stage[st] == c->count, "Q K^T issued on another block's K", w, k_stage[st], c->count);
                if (c->block > 0) {
                    expect(v_stage[prev] == c->count - 1, "P V issued on another block's V", w,
                           v_stage[prev], c->count - 1);
                }
                const int last = c->tile == num_tiles - 1 && c->block == blocks[c->tile] - 1;
                if (turns && attn_tma_passes_turn(w, last)) {
                    NamedBarrier *other = &turn[attn_tma_turn_barrier(1 - w) - 1];
                    other->contributions++;
                    const int released = named_settle(other);
                    if (released >= 0) wg[released].released_by_turn = 1;
                }
                c->step = C_WAIT_S;
                break;
            }
            case C_WAIT_S:
                expect(q_region[w] == c->tile, "Q overwritten during Q K^T", w, q_region[w], c->tile);
                expect(k_stage[st] == c->count, "K overwritten during Q K^T", w, k_stage[st], c->count);
                for (int warp = 0; warp < WARPS_PER_WG; ++warp) {
                    emu_mbarrier_arrive(&empty_k[st], 0);
                    if (c->block + 1 == blocks[c->tile]) emu_mbarrier_arrive(&empty_q[w], 0);
                }
                if (c->block > 0) {
                    c->step = C_WAIT_PV;
                } else {
                    next_block(c, blocks);
                }
                break;
            case C_WAIT_PV:
                expect(v_stage[prev] == c->count - 1, "V overwritten during P V", w, v_stage[prev],
                       c->count - 1);
                for (int warp = 0; warp < WARPS_PER_WG; ++warp) emu_mbarrier_arrive(&empty_v[prev], 0);
                next_block(c, blocks);
                break;
            case C_WAIT_VLAST: c->step = C_ISSUE_PV; break;
            case C_ISSUE_PV:
                expect(v_stage[prev] == c->count - 1, "P V issued on another block's V", w,
                       v_stage[prev], c->count - 1);
                c->step = C_DONE_PV;
                break;
            case C_DONE_PV:
                expect(v_stage[prev] == c->count - 1, "V overwritten during P V", w, v_stage[prev],
                       c->count - 1);
                for (int warp = 0; warp < WARPS_PER_WG; ++warp) emu_mbarrier_arrive(&empty_v[prev], 0);
                c->block = 0;
                c->step = ++c->tile < num_tiles ? C_WAIT_Q : C_FINISHED;
                break;
            case C_FINISHED: break;
            }
        }
    }
    for (int w = 0; w < WGS; ++w) {
        expect(turn[w].contributions == 0 && turn[w].syncing < 0, "turn barrier left pending", w,
               turn[w].contributions, turn[w].syncing);
        expect(wg[w].count == total_blocks, "blocks multiplied", w, wg[w].count, total_blocks);
    }
}

int main(void) {
    static const int lists[][MAX_TILES + 1] = {
        /* tiles, then each tile's key blocks */
        {1, 1},
        {1, 2},
        {2, 1, 1},
        {3, 9, 9, 9},
        {5, 3, 1, 4, 1, 5},
        {7, 1, 2, 1, 2, 1, 2, 1},
        {4, 33, 1, 1, 2},
    };
    for (size_t l = 0; l < sizeof lists / sizeof lists[0]; ++l) {
        checking = "tile list";
        for (uint64_t seed = 1; seed <= 400; ++seed) {
            for (int turns = 0; turns <= 1; ++turns) {
                play(&lists[l][1], lists[l][0], turns, seed * 0x9e3779b97f4a7c15ull + l);
            }
        }
    }
    return verdict();
}
