/* proj_norm_exchange.c: host play of proj_residual_norm_tma's row-sum exchange across its
 * cluster.
 *
 * No GPU runs here, so the lanes that take part (lane 0 of every quad of the two consumer
 * warpgroups, in each of the cluster's PROJ_NORM_CLUSTER CTAs: tile.cuh's
 * proj_norm_exchange_writer) are played as agents that move one step at a time, in random
 * orders, through the kernel's exchange_row_sums: each tile (use n) runs exchange 0 then
 * exchange 1, and each exchange is
 *   write the partials of the lane's two rows into its rank's slot in every CTA (one step each);
 *   arrive on every CTA's full mbarrier of the exchange (one step each);
 *   wait for the own full mbarrier's phase of parity gemm_tma_full_parity(n, 1);
 *   read every rank's partials of the two rows.
 * The mbarriers (warp_emulator.h: arrivals, phase parity) take PROJ_NORM_EXCHANGE_ARRIVALS
 * arrivals a phase. A CTA exits once all its taking-part lanes are through their last tile.
 * What every schedule must show:
 * - no deadlock: while anything is left to do, some lane can move;
 * - the partials read in use n of exchange u are those every rank wrote for use n of exchange u
 *   (a slot overwritten before every CTA has read it, or read before it was written, fails):
 *   the kernel has no empty barriers, since a lane writes exchange u again only after passing
 *   the other exchange's full barrier, which every lane arrives on after reading exchange u;
 * - nothing writes to or arrives on a CTA that has exited;
 * - the lanes' rows (gemm_wgmma_row of their warp, lane and half) cover every tile row once.
 *
 * Build and run (src/backend/cuda/residual.rs does this in a test):
 *   cc -std=c99 -O1 -I kernels -I kernels/tests kernels/tests/proj_norm_exchange.c -o x && ./x
 * Exit status 0 and "ok" on success; the first mismatches are printed otherwise.
 */
#include <stdio.h>
#include <stdlib.h>

#include "params.h"
#include "warp_emulator.h"

enum {
    CLUSTER = PROJ_NORM_CLUSTER,
    ROWS = PROJ_NORM_BLOCK_M,
    CONSUMER_WARPS = PROJ_NORM_BLOCK_M / WGMMA_ROWS * 4,
    MAX_WRITERS = CLUSTER * CONSUMER_WARPS * 32,
};

typedef enum {
    X_WRITE,       /* into CTA `peer` */
    X_ARRIVE_FULL, /* on CTA `peer` */
    X_WAIT_FULL,
    X_READ,
    X_DONE,
} Step;

typedef struct {
    int cta, warp, lane;
    Step step;
    int peer;
    int which;
    uint32_t use;
} Writer;

/* What rank `rank` writes for row `row` in use `use` of exchange `which`. */
static int partial(uint32_t use, int which, int rank, int row) {
    return (((int)use * 2 + which) * CLUSTER + rank) * ROWS + row + 1;
}

static Writer writers[MAX_WRITERS];
static int slots[CLUSTER][2][CLUSTER][ROWS];

/* One cluster through `uses` tiles, in the schedule `seed` draws. */
static void play(uint32_t uses, uint64_t seed) {
    EmuMbarrier full[CLUSTER][2];
    int exited[CLUSTER] = {0}, through[CLUSTER] = {0};
    int num_writers = 0;
    for (int c = 0; c < CLUSTER; ++c) {
        for (int which = 0; which < 2; ++which) {
            emu_mbarrier_init(&full[c][which], PROJ_NORM_EXCHANGE_ARRIVALS);
        }
        for (int which = 0; which < 2; ++which) {
            for (int r = 0; r < CLUSTER; ++r) {
                for (int row = 0; row < ROWS; ++row) slots[c][which][r][row] = 0;
            }
        }
        for (int warp = 0; warp < CONSUMER_WARPS; ++warp) {
            for (int lane = 0; lane < 32; ++lane) {
                if (!proj_norm_exchange_writer(lane)) continue;
                writers[num_writers++] =
                    (Writer){c, warp, lane, uses > 0 ? X_WRITE : X_DONE, 0, 0, 0};
            }
        }
    }
    expect(num_writers == PROJ_NORM_EXCHANGE_ARRIVALS, "taking-part lanes = arrivals a phase",
           num_writers, PROJ_NORM_EXCHANGE_ARRIVALS, 0);
    uint64_t state = seed;
    static int movable[MAX_WRITERS];

    for (;;) {
        int moves = 0, left = 0;
        for (int i = 0; i < num_writers; ++i) {
            const Writer *w = &writers[i];
            const uint32_t parity = gemm_tma_full_parity(w->use, 1);
            int ready = 1;
            switch (w->step) {
            case X_DONE: ready = 0; break;
            case X_WAIT_FULL: ready = emu_mbarrier_try_wait(&full[w->cta][w->which], parity); break;
            default: break;
            }
            left += w->step != X_DONE;
            if (ready) movable[moves++] = i;
        }
        if (left == 0) break;
        if (moves == 0) {
            expect(0, "no lane can move (deadlock)", (int)uses, left, 0);
            return;
        }
        Writer *w = &writers[movable[emu_next_random(&state) % (uint32_t)moves]];
        const int rank = w->cta;
        switch (w->step) {
        case X_WRITE:
            expect(!exited[w->peer], "write into an exited CTA", rank, w->peer, (int)w->use);
            for (int half = 0; half < 2; ++half) {
                const int row = gemm_wgmma_row(w->warp, w->lane, half);
                slots[w->peer][w->which][rank][row] = partial(w->use, w->which, rank, row);
            }
            if (++w->peer == CLUSTER) {
                w->step = X_ARRIVE_FULL;
                w->peer = 0;
            }
            break;
        case X_ARRIVE_FULL:
            expect(!exited[w->peer], "arrival on an exited CTA", rank, w->peer, (int)w->use);
            emu_mbarrier_arrive(&full[w->peer][w->which], 0);
            if (++w->peer == CLUSTER) w->step = X_WAIT_FULL;
            break;
        case X_WAIT_FULL: w->step = X_READ; break;
        case X_READ:
            for (int half = 0; half < 2; ++half) {
                const int row = gemm_wgmma_row(w->warp, w->lane, half);
                for (int r = 0; r < CLUSTER; ++r) {
                    expect(slots[rank][w->which][r][row] == partial(w->use, w->which, r, row),
                           "read another use's partial", rank, r, row);
                }
            }
            w->peer = 0;
            if (w->which == 0) {
                w->which = 1;
                w->step = X_WRITE;
            } else if (++w->use < uses) {
                w->which = 0;
                w->step = X_WRITE;
            } else {
                w->step = X_DONE;
                if (++through[rank] == PROJ_NORM_EXCHANGE_ARRIVALS / CLUSTER) exited[rank] = 1;
            }
            break;
        case X_DONE: break;
        }
    }
    for (int c = 0; c < CLUSTER; ++c) {
        for (int which = 0; which < 2; ++which) {
            expect(full[c][which].phase == uses, "every use completes one phase of each barrier",
                   c, which, (int)uses);
        }
    }
}

int main(void) {
    checking = "rows";
    int covered[ROWS] = {0};
    for (int warp = 0; warp < CONSUMER_WARPS; ++warp) {
        for (int lane = 0; lane < 32; ++lane) {
            if (!proj_norm_exchange_writer(lane)) continue;
            for (int half = 0; half < 2; ++half) covered[gemm_wgmma_row(warp, lane, half)]++;
        }
    }
    for (int row = 0; row < ROWS; ++row) expect(covered[row] == 1, "row covered once", row, covered[row], 0);

    static const uint32_t use_counts[] = {0, 1, 2, 3, 6};
    for (size_t u = 0; u < sizeof use_counts / sizeof use_counts[0]; ++u) {
        checking = "cluster";
        for (uint64_t seed = 1; seed <= 60; ++seed) {
            play(use_counts[u], seed * 0x9e3779b97f4a7c15ull + u);
        }
    }
    return verdict();
}
