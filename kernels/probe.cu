// probe.cu: a measuring kernel, not part of the model. It reads a buffer that fits in L2 over and
// over, so its rate is the card's L2-to-SM read bandwidth: the ceiling of the tiled GEMM kernels'
// operand loads, which fetch each x and weight tile from L2 once per CTA that needs it
// (check-kernels reports their operand bytes per second against it).
//
// Layout (L2ProbeParams in params.h): buffer u32 [num_words]; sum u32 [1].
// Launch: one wave of L2_PROBE_THREADS-thread blocks (the host sizes the grid to the SM count
// times the blocks resident per SM, 8 on sm_90); thread i
// reads the 16-byte chunks i, i + (all threads), ... of every pass with ld.global.cg (cached in L2
// only, as cp.async.cg fills the GEMMs' shared-memory stages), four independent loads in flight.
// Numerics: the wrapping u32 sum of every word read, added into *sum once per warp, so the loads
// cannot be optimized away and the host can check them: *sum grows by reps times the buffer's sum.
#include "common.cuh"

__device__ __forceinline__ uint4 load_l2(const uint4 *p) {
    uint4 v;
    asm volatile("ld.global.cg.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
    return v;
}

extern "C" __global__ void __launch_bounds__(L2_PROBE_THREADS) l2_read_probe(L2ProbeParams p) {
    constexpr uint32_t kUnroll = 4;
    const uint4 *chunks = reinterpret_cast<const uint4 *>(p.buffer);
    const uint32_t num_chunks = p.num_words / 4;
    const uint32_t stride = gridDim.x * blockDim.x;
    const uint32_t first = blockIdx.x * blockDim.x + threadIdx.x;
    uint32_t sum = 0;
    for (uint32_t rep = 0; rep < p.reps; ++rep) {
        for (uint32_t i = first; i < num_chunks; i += kUnroll * stride) {
            uint4 v[kUnroll];
#pragma unroll
            for (uint32_t u = 0; u < kUnroll; ++u) {
                const uint32_t c = i + u * stride;
                v[u] = c < num_chunks ? load_l2(chunks + c) : make_uint4(0, 0, 0, 0);
            }
#pragma unroll
            for (uint32_t u = 0; u < kUnroll; ++u) sum += v[u].x + v[u].y + v[u].z + v[u].w;
        }
    }
    for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(FULL_MASK, sum, offset);
    if (threadIdx.x % 32 == 0) atomicAdd(p.sum, sum);
}
