/* proj_residual_norm.cu: the O or down projection with residual_norm's arithmetic in its
 * epilogue (sm_90a).
 *
 * For token t: b = x_t . W^T (the projection, never stored), then as residual_norm.cu:
 *   residual_t += b * rsqrt(mean(b^2) + eps) * (1 + w_post);
 *   residual_bf16_t = bf16(residual_t); inv_rms_t = rsqrt(mean(residual_t^2) + eps).
 * The cuBLAS projection followed by residual_norm, in one kernel: the [num_tokens, hidden] f32
 * branch is neither written nor read back.
 *
 * Layout (ProjResidualNormParams in params.h): x bf16 [num_tokens, k_dim]; w bf16 [hidden, k_dim];
 * post_norm f32 [hidden]; residual f32 [num_tokens, hidden] in/out; residual_bf16 bf16 and inv_rms
 * f32 out. hidden = PROJ_NORM_CLUSTER * 256, k_dim a multiple of 64.
 *
 * Launch: persistent, grid (PROJ_NORM_CLUSTER, clusters) in clusters of PROJ_NORM_CLUSTER CTAs
 * along x (a launch attribute: cuLaunchKernelEx; the kernel traps on any other cluster shape),
 * clusters = min(ceil(num_tokens / BLOCK_M), clusters the device runs at once), PROJ_NORM_THREADS
 * (two warpgroups), PROJ_NORM_SMEM_BYTES of dynamic shared memory (one CTA per SM). Cluster y
 * walks the row blocks y, y + clusters, ...; for each, CTA c computes BLOCK_M = 128 token rows x
 * outputs 256 c .. 256 c + 255 through gemm_pipeline.cuh's wgmma main loop (PROJ_NORM_STAGES
 * stages of 64-wide k slices, one slice's wgmmas in flight across each barrier,
 * wgmma.m64n256k16, 128 f32 accumulators per thread), and the next row block's first k slices
 * are in flight while it stores. A row's mean of squares spans the cluster: each CTA reduces its
 * 256 columns per row over the row's quad (two shuffles) and publishes the partial sums in its
 * shared memory; after a cluster barrier every CTA adds the cluster's partials through
 * distributed shared memory. That happens once for the branch and once for the new residual,
 * which stays in the accumulator registers until the second barrier has passed, so neither
 * barrier's release waits on global stores. A last arrive (release, after the CTA's remote reads
 * and before the next row block's loads and its stores, so its fence waits for neither) and
 * wait (before the next row block or the exit) keep each CTA's partials until its peers have
 * read them. Rows past num_tokens compute zeros (zero-filled x) and touch no memory. On other
 * architectures the kernel traps; the host launches it only on sm_90.
 *
 * proj_residual_norm_tma: the same tiles, cluster, grid and epilogue arithmetic, with
 * PROJ_NORM_TMA_THREADS (three warpgroups) and gemm_pipeline.cuh's TMA main loop: warpgroup 0
 * produces (one thread issues two TMA copies per k slice, maps in a second, __grid_constant__
 * parameter: x [num_tokens, k_dim] in boxes of GEMM_TILE_K x BLOCK_M, w [hidden, k_dim] in boxes
 * of GEMM_TILE_K x 256, the CTA's rows starting at 256 x its rank), hands its registers to the
 * consumers (PROJ_NORM_TMA_PRODUCER_REGS / _CONSUMER_REGS) and runs ahead across row blocks;
 * warpgroups 1 and 2 multiply and run the epilogue. No CTA-wide or cluster-wide barrier follows
 * the start, since the producer never joins the consumers again: the two row-sum exchanges of
 * each row block go through a full mbarrier per exchange in every CTA of the cluster, arrived on
 * remotely and waited on at cluster scope (a release fence before the arrivals, an acquire wait;
 * tile.cuh's proj_norm_exchange_*). Lane 0 of each quad writes its quad's partials into the
 * slot of its rank in every CTA, arrives on every CTA's barrier, waits for its own and adds the
 * cluster's partials in rank order, so every CTA computes the same bits. No empty barriers: a
 * lane writes an exchange's slots again only in the next row block, after passing the other
 * exchange's full barrier, which every lane of the cluster arrives on only after reading this
 * exchange; and once a CTA's second barrier has completed for its last row block, no write or
 * arrival of the cluster is left to reach it, so it may exit.
 *
 * Numerics: bf16 products accumulated in f32 by the tensor cores; the norm, the residual add
 * and the new inverse RMS in f32 (f32 branch, as residual_norm with an f32 branch); one bf16
 * rounding, of the residual's copy.
 */
#include <cooperative_groups.h>

#include "common.cuh"
#include "gemm_pipeline.cuh"

namespace {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
/* A CTA's 256 output columns: 32 n8 tiles per row of a quad, in 128 f32 accumulators. */
constexpr int kTiles = ATTENTION_HEAD_DIM / 8;
constexpr int kAccRegs = ATTENTION_HEAD_DIM / 2;

/* The row's total over the cluster of the partial sums each CTA left in `partials[local_row]`. */
__device__ __forceinline__ float cluster_row_sum(cooperative_groups::cluster_group &cluster,
                                                 float *partials, int local_row) {
    float total = 0.0f;
#pragma unroll
    for (unsigned rank = 0; rank < PROJ_NORM_CLUSTER; ++rank) {
        total += cluster.map_shared_rank(partials, rank)[local_row];
    }
    return total;
}

/* The epilogue's steps, per row `half` (0, 1) of this thread's accumulators, the tile row
 * gemm_wgmma_row(warp, lane, half) holding token `row`'s 256 outputs of the CTA's slice (columns
 * first_col ..). */

/* The sum of squares of the row over the slice, added over the quad (every lane gets it). */
__device__ __forceinline__ float quad_row_squares(const float (&acc)[kAccRegs], int half) {
    float squares = 0.0f;
#pragma unroll
    for (int tile = 0; tile < kTiles; ++tile) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
            const float b = acc[gemm_wgmma_reg(tile, half, e)];
            squares += b * b;
        }
    }
    return quad_sum(squares);
}

/* The row's branch b becomes the new residual, residual + b * branch_inv_rms * (1 + w_post),
 * kept in acc; returns its sum of squares over the slice, added over the quad (0 for a row past
 * num_tokens, which reads nothing). */
__device__ __forceinline__ float add_normed_branch(float (&acc)[kAccRegs],
                                                   const ProjResidualNormParams &p, uint32_t row,
                                                   uint32_t first_col, int lane, int half,
                                                   float branch_inv_rms) {
    float squares = 0.0f;
    if (row < p.num_tokens) {
        const size_t base = static_cast<size_t>(row) * p.hidden + first_col;
#pragma unroll
        for (int tile = 0; tile < kTiles; ++tile) {
            const int col = gemm_wgmma_col(lane, tile);
            const float2 w = *reinterpret_cast<const float2 *>(p.post_norm + first_col + col);
            const float2 x = *reinterpret_cast<const float2 *>(p.residual + base + col);
            float &x0 = acc[gemm_wgmma_reg(tile, half, 0)];
            float &x1 = acc[gemm_wgmma_reg(tile, half, 1)];
            x0 = x.x + x0 * branch_inv_rms * (1.0f + w.x);
            x1 = x.y + x1 * branch_inv_rms * (1.0f + w.y);
            squares += x0 * x0 + x1 * x1;
        }
    }
    return quad_sum(squares);
}

/* The new residual's row, in f32 and its bf16 copy (row < num_tokens). */
__device__ __forceinline__ void store_residual_row(const float (&acc)[kAccRegs],
                                                   const ProjResidualNormParams &p, uint32_t row,
                                                   uint32_t first_col, int lane, int half) {
    const size_t base = static_cast<size_t>(row) * p.hidden + first_col;
#pragma unroll
    for (int tile = 0; tile < kTiles; ++tile) {
        const int col = gemm_wgmma_col(lane, tile);
        const float x0 = acc[gemm_wgmma_reg(tile, half, 0)];
        const float x1 = acc[gemm_wgmma_reg(tile, half, 1)];
        *reinterpret_cast<float2 *>(p.residual + base + col) = make_float2(x0, x1);
        *reinterpret_cast<uint32_t *>(p.residual_bf16 + base + col) = pack_bf16x2(x0, x1);
    }
}

/* barrier.cluster split in two: a release arrive, which orders this thread's earlier accesses
 * (the remote reads of the peers' partials) before the peers' wait (PTX ISA: .relaxed would
 * order none of them, so a peer could exit while a read is in flight), and the wait that
 * completes it. Placed before the epilogue's global stores, the release waits for none of them. */
__device__ __forceinline__ void cluster_arrive_release() {
    asm volatile("barrier.cluster.arrive.release.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void cluster_wait() {
    asm volatile("barrier.cluster.wait.aligned;\n" ::: "memory");
}

/* proj_residual_norm_tma's exchanges: per exchange (0: the branch's sums of squares, 1: the new
 * residual's), a slot of BLOCK_M partial sums per rank of the cluster and the full mbarrier
 * (PROJ_NORM_EXCHANGE_ARRIVALS a phase). */
struct RowSumExchange {
    float slots[2][PROJ_NORM_CLUSTER][PROJ_NORM_BLOCK_M];
    uint64_t full[2];
};

/* Use `use` of exchange `which`: `sums` holds this thread's quad's partial sums of its two tile
 * rows (half 0, 1: gemm_wgmma_row(warp, lane, half)) in this CTA, and becomes their totals over
 * the cluster. Consumer threads only; every lane of the warp calls it. */
__device__ __forceinline__ void exchange_row_sums(cooperative_groups::cluster_group &cluster,
                                                  RowSumExchange &exchange, int which,
                                                  uint32_t use, uint32_t rank, int warp, int lane,
                                                  float (&sums)[2]) {
    if (proj_norm_exchange_writer(lane)) {
        float(&slots)[PROJ_NORM_CLUSTER][PROJ_NORM_BLOCK_M] = exchange.slots[which];
#pragma unroll
        for (unsigned peer = 0; peer < PROJ_NORM_CLUSTER; ++peer) {
            float *slot = cluster.map_shared_rank(&slots[rank][0], peer);
#pragma unroll
            for (int half = 0; half < 2; ++half) slot[gemm_wgmma_row(warp, lane, half)] = sums[half];
        }
        fence_cluster_release();
#pragma unroll
        for (unsigned peer = 0; peer < PROJ_NORM_CLUSTER; ++peer) {
            mbarrier_arrive_cluster(&exchange.full[which], peer);
        }
        mbarrier_wait<WaitScope::Cluster>(&exchange.full[which], gemm_tma_full_parity(use, 1));
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const int row = gemm_wgmma_row(warp, lane, half);
            float total = 0.0f;
#pragma unroll
            for (int r = 0; r < PROJ_NORM_CLUSTER; ++r) total += slots[r][row];
            sums[half] = total;
        }
    }
#pragma unroll
    for (int half = 0; half < 2; ++half) sums[half] = __shfl_sync(FULL_MASK, sums[half], lane & ~3);
}
#endif
} // namespace

extern "C" __global__ void __launch_bounds__(PROJ_NORM_THREADS, 1)
    proj_residual_norm_wgmma(const ProjResidualNormParams p) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    constexpr int kBlockM = PROJ_NORM_BLOCK_M;
    constexpr int kWeightRows = ATTENTION_HEAD_DIM;
    constexpr int kStages = PROJ_NORM_STAGES;
    static_assert(kStages * (kBlockM + kWeightRows) * GEMM_TILE_K * 2 + 1024 == PROJ_NORM_SMEM_BYTES,
                  "params.h smem size");
    static_assert(PROJ_NORM_THREADS == 2 * 128 && kBlockM == 2 * WGMMA_ROWS, "two warpgroups");
    extern __shared__ __align__(128) unsigned char proj_norm_smem_bytes[];
    /* Per tile row, this CTA's sum of squares over its 256 columns: [0] of the branch, [1] of the
     * new residual. */
    __shared__ float row_squares[2][kBlockM];
    bf16_t *smem = smem_align_1024<bf16_t>(proj_norm_smem_bytes);
    cooperative_groups::cluster_group cluster = cooperative_groups::this_cluster();
    if (cluster.num_blocks() != PROJ_NORM_CLUSTER) __trap();
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const uint32_t slice = blockIdx.x; /* == the CTA's rank in its cluster */
    const uint32_t first_col = slice * kWeightRows;
    const uint32_t row_blocks = (p.num_tokens + kBlockM - 1) / kBlockM;

    /* Persistent: the cluster walks row blocks blockIdx.y, + gridDim.y, ..., its
     * PROJ_NORM_CLUSTER CTAs in step (the same blockIdx.y), so their cluster barriers pair up. */
    uint32_t row_block = blockIdx.y;
    if (row_block < row_blocks) {
        wgmma_gemm_prologue<PROJ_NORM_THREADS, kBlockM, kWeightRows, kStages, 1>(
            smem, p.x, p.w, p.num_tokens, p.k_dim, row_block * kBlockM, first_col);
    }
    for (; row_block < row_blocks; row_block += gridDim.y) {
        const uint32_t first_row = row_block * kBlockM;
        float acc[kAccRegs];
#pragma unroll
        for (int r = 0; r < kAccRegs; ++r) acc[r] = 0.0f;
        wgmma_gemm_k_loop<PROJ_NORM_THREADS, kBlockM, kWeightRows, kStages, 1>(
            acc, smem, p.x, p.w, p.num_tokens, p.k_dim, first_row, first_col);

        /* The branch's sums of squares: quad, then cluster. */
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const float squares = quad_row_squares(acc, half);
            if (lane % 4 == 0) row_squares[0][gemm_wgmma_row(warp, lane, half)] = squares;
        }
        cluster.sync();

        /* residual += b * rsqrt(mean(b^2) + eps) * (1 + w_post), kept in acc; its sums of
         * squares. */
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const int local_row = gemm_wgmma_row(warp, lane, half);
            const float branch_inv_rms =
                inverse_rms(cluster_row_sum(cluster, row_squares[0], local_row), p.hidden, p.eps);
            const float squares = add_normed_branch(acc, p, first_row + local_row, first_col, lane,
                                                    half, branch_inv_rms);
            if (lane % 4 == 0) row_squares[1][local_row] = squares;
        }
        cluster.sync();

        /* Rank 0 owns the inverse RMS; then nobody reads a peer's shared memory any more. */
        float inv_rms[2] = {0.0f, 0.0f};
        if (slice == 0 && lane % 4 == 0) {
#pragma unroll
            for (int half = 0; half < 2; ++half) {
                const int local_row = gemm_wgmma_row(warp, lane, half);
                inv_rms[half] = inverse_rms(cluster_row_sum(cluster, row_squares[1], local_row),
                                            p.hidden, p.eps);
            }
        }
        cluster_arrive_release();

        /* The next row block's first loads, in flight during the stores. Every warpgroup's wgmmas
         * completed before the cluster barriers above (each also a CTA barrier), so the stages are
         * free; issued after the release arrive, whose fence therefore does not wait for them. */
        const uint32_t next = row_block + gridDim.y;
        if (next < row_blocks) {
            wgmma_gemm_prologue<PROJ_NORM_THREADS, kBlockM, kWeightRows, kStages, 1>(
                smem, p.x, p.w, p.num_tokens, p.k_dim, next * kBlockM, first_col);
        }

#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const uint32_t row = first_row + gemm_wgmma_row(warp, lane, half);
            if (row >= p.num_tokens) continue;
            store_residual_row(acc, p, row, first_col, lane, half);
            if (slice == 0 && lane % 4 == 0) p.inv_rms[row] = inv_rms[half];
        }
        /* No CTA overwrites (next row block) or frees (exit) its row_squares before every peer has
         * read them. */
        cluster_wait();
    }
#else
    __trap();
#endif
}

/* The kernel above with TMA-filled stages and mbarrier exchanges (header comment). */
extern "C" __global__ void __launch_bounds__(PROJ_NORM_TMA_THREADS, 1)
    proj_residual_norm_tma(const ProjResidualNormParams p,
                           const __grid_constant__ GemmTensorMaps maps) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    constexpr int kBlockM = PROJ_NORM_BLOCK_M;
    static_assert(PROJ_NORM_TMA_THREADS == 128 + kBlockM / WGMMA_ROWS * 128,
                  "a producer warpgroup and a consumer warpgroup per 64 rows");
    static_assert(PROJ_NORM_TMA_PRODUCER_REGS * 128 + PROJ_NORM_TMA_CONSUMER_REGS * 256 <= 65536,
                  "the register file holds the hand-over");
    extern __shared__ __align__(128) unsigned char proj_norm_tma_smem_bytes[];
    __shared__ RowSumExchange exchange;
    cooperative_groups::cluster_group cluster = cooperative_groups::this_cluster();
    if (cluster.num_blocks() != PROJ_NORM_CLUSTER) __trap();
    const uint32_t rank = blockIdx.x; /* == the CTA's rank in its cluster */
    const uint32_t first_col = rank * ATTENTION_HEAD_DIM;
    const int lane = threadIdx.x & 31;
    if (threadIdx.x == 0) {
#pragma unroll
        for (int which = 0; which < 2; ++which) {
            mbarrier_init(&exchange.full[which], PROJ_NORM_EXCHANGE_ARRIVALS);
        }
        fence_mbarrier_init();
    }
    /* Every CTA's exchange barriers are initialized before any peer arrives on them. */
    cluster.sync();

    uint32_t uses = 0;
    float acc[kAccRegs];
    wgmma_gemm_tma_persistent<kBlockM, ATTENTION_HEAD_DIM, PROJ_NORM_STAGES,
                                                    PROJ_NORM_TMA_PRODUCER_REGS,
                                                    PROJ_NORM_TMA_CONSUMER_REGS>(
        acc, smem_align_1024<unsigned char>(proj_norm_tma_smem_bytes), maps, p.num_tokens,
        p.k_dim, GemmTileWalk{blockIdx.y, gridDim.y, 1, first_col},
        [&](float (&tile_acc)[kAccRegs], uint32_t first_row, uint32_t, int warp) {
            /* The branch's sums of squares: quad, then cluster. */
            float sums[2];
#pragma unroll
            for (int half = 0; half < 2; ++half) sums[half] = quad_row_squares(tile_acc, half);
            exchange_row_sums(cluster, exchange, 0, uses, rank, warp, lane, sums);
            /* residual += b * rsqrt(mean(b^2) + eps) * (1 + w_post), kept in tile_acc; its sums
             * of squares, quad then cluster. */
#pragma unroll
            for (int half = 0; half < 2; ++half) {
                const uint32_t row = first_row + gemm_wgmma_row(warp, lane, half);
                sums[half] = add_normed_branch(tile_acc, p, row, first_col, lane, half,
                                               inverse_rms(sums[half], p.hidden, p.eps));
            }
            exchange_row_sums(cluster, exchange, 1, uses, rank, warp, lane, sums);
            ++uses;
#pragma unroll
            for (int half = 0; half < 2; ++half) {
                const uint32_t row = first_row + gemm_wgmma_row(warp, lane, half);
                if (row >= p.num_tokens) continue;
                store_residual_row(tile_acc, p, row, first_col, lane, half);
                if (rank == 0 && lane % 4 == 0) {
                    p.inv_rms[row] = inverse_rms(sums[half], p.hidden, p.eps);
                }
            }
        });
#else
    __trap();
#endif
}
