// mma.cuh: PTX wrappers for the tensor-core kernels: cp.async global -> shared copies, ldmatrix
// loads, mma.sync.m16n8k16 (bf16 in, f32 accumulate) and bf16x2 packing (sm_80+); wgmma and its
// fences, register hand-over, mbarriers and TMA copies (sm_90a only: call them under
// __CUDA_ARCH_FEAT_SM90_ALL); named barriers (any architecture).
//
// Their operand layouts are emulated on the host, from the PTX ISA definitions, by the
// fragment checks in kernels/tests/*.c.
#pragma once

#include <cuda_bf16.h>
#include <stdint.h>

namespace {

__device__ __forceinline__ uint32_t smem_addr(const void *ptr) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(ptr));
}

/* The first 1024-byte boundary at or after `bytes` (dynamic shared memory with 1024 bytes of
 * slack), as a T pointer: where the 128-byte swizzle's 1024-byte atoms that wgmma descriptors
 * address must start. */
template <typename T> __device__ __forceinline__ T *smem_align_1024(unsigned char *bytes) {
    return reinterpret_cast<T *>(bytes + ((1024 - (smem_addr(bytes) & 1023)) & 1023));
}

/* 16-byte global -> shared copy; copies nothing and zero-fills when !valid. */
__device__ __forceinline__ void cp_async_16(void *smem, const void *gmem, bool valid) {
    const int src_bytes = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(smem)),
                 "l"(gmem), "r"(src_bytes)
                 : "memory");
}

__device__ __forceinline__ void cp_async_commit() {
    asm volatile("cp.async.commit_group;\n" ::: "memory");
}

template <int Pending> __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(Pending) : "memory");
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void *smem) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(smem))
                 : "memory");
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void *smem) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(smem))
                 : "memory");
}

/* c (16x8 f32) += a (16x16 bf16, row-major) * b (16x8 bf16, column-major). */
__device__ __forceinline__ void mma_bf16_16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                               uint32_t b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/* Two floats rounded to bf16 (round to nearest even), `lo` in the low half. */
__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
    const __nv_bfloat162 packed = __floats2bfloat162_rn(lo, hi);
    uint32_t bits;
    memcpy(&bits, &packed, sizeof(bits));
    return bits;
}

/* ---- sm_90a: warpgroup MMA ----------------------------------------------------------------- */

/* Make this thread's generic-proxy shared-memory writes (cp.async included) visible to the
 * async proxy that wgmma reads shared memory through. */
__device__ __forceinline__ void fence_proxy_async_shared() {
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

/* Order the accumulator registers' earlier accesses before the wgmma that follows. */
__device__ __forceinline__ void wgmma_fence() {
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}

__device__ __forceinline__ void wgmma_commit() {
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}

/* The compiler does not know that wgmma writes its accumulators asynchronously: pin them in
 * place (no copies, no reordering) from the wgmma to the wait that completes it. */
template <int N> __device__ __forceinline__ void wgmma_fence_operands(float (&d)[N]) {
#pragma unroll
    for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}
template <int N> __device__ __forceinline__ void wgmma_fence_operands(uint32_t (&a)[N]) {
#pragma unroll
    for (int i = 0; i < N; ++i) asm volatile("" : "+r"(a[i])::"memory");
}

template <int Pending> __device__ __forceinline__ void wgmma_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(Pending) : "memory");
}

/* The accumulator operands of a wgmma with an f32 D of 32, 64 or 128 registers per thread, in
 * register order ("+f"(d[0]), "+f"(d[1]), ...), for the asm statements below. */
#define WGMMA_ACCUMULATORS_4(d, i) "+f"(d[i]), "+f"(d[(i) + 1]), "+f"(d[(i) + 2]), "+f"(d[(i) + 3])
#define WGMMA_ACCUMULATORS_16(d, i)                                                             \
    WGMMA_ACCUMULATORS_4(d, i), WGMMA_ACCUMULATORS_4(d, (i) + 4), WGMMA_ACCUMULATORS_4(d, (i) + 8), \
        WGMMA_ACCUMULATORS_4(d, (i) + 12)
#define WGMMA_ACCUMULATORS_32_AT(d, i) WGMMA_ACCUMULATORS_16(d, i), WGMMA_ACCUMULATORS_16(d, (i) + 16)
#define WGMMA_ACCUMULATORS_32(d) WGMMA_ACCUMULATORS_32_AT(d, 0)
#define WGMMA_ACCUMULATORS_64(d) WGMMA_ACCUMULATORS_32_AT(d, 0), WGMMA_ACCUMULATORS_32_AT(d, 32)
#define WGMMA_ACCUMULATORS_128(d) \
    WGMMA_ACCUMULATORS_64(d), WGMMA_ACCUMULATORS_32_AT(d, 64), WGMMA_ACCUMULATORS_32_AT(d, 96)

/* d (128 f32 per thread, the m64n256 accumulator layout) += A (64x16, from registers: the
 * four .b32 of wgmma_a_row / wgmma_a_k) * B (16x256, MN-major descriptor, imm-trans-b = 1);
 * scale-d 1, no negation. */
__device__ __forceinline__ void wgmma_m64n256k16_bf16_rs_tb(float (&d)[128], const uint32_t (&a)[4],
                                                           uint64_t desc_b) {
    asm volatile(
        "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, %96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}, "
        "{%128, %129, %130, %131}, %132, 1, 1, 1, 1;\n"
        : WGMMA_ACCUMULATORS_128(d)
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b)
        : "memory");
}

/* d (32 f32 per thread) += A (64x16, descriptor) * B (16x64, descriptor); both K-major, no
 * transpose, no negation. Accumulators: warp w of the warpgroup holds rows 16 w .. 16 w + 15,
 * and registers 4 j .. 4 j + 3 the n8 tile j exactly as mma.m16n8k16's C fragment. */
__device__ __forceinline__ void wgmma_m64n64k16_bf16(float (&d)[32], uint64_t desc_a, uint64_t desc_b) {
    asm volatile(
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
        "%32, %33, 1, 1, 1, 0, 0;\n"
        : WGMMA_ACCUMULATORS_32(d)
        : "l"(desc_a), "l"(desc_b)
        : "memory");
}

/* d (64 f32 per thread, m64n128 layout) += A (64x16, descriptor) * B (16x128, descriptor); both
 * K-major, no transpose, no negation. It reads shared memory: the "memory" clobber keeps it
 * after the fences and barrier that publish the tiles. */
__device__ __forceinline__ void wgmma_m64n128k16_bf16(float (&d)[64], uint64_t desc_a, uint64_t desc_b) {
    asm volatile(
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
        "%64, %65, 1, 1, 1, 0, 0;\n"
        : WGMMA_ACCUMULATORS_64(d)
        : "l"(desc_a), "l"(desc_b)
        : "memory");
}

/* d (128 f32 per thread, m64n256 layout) += A (64x16, descriptor) * B (16x256, descriptor); both
 * K-major, no transpose, no negation; like wgmma_m64n128k16_bf16 otherwise. */
__device__ __forceinline__ void wgmma_m64n256k16_bf16(float (&d)[128], uint64_t desc_a, uint64_t desc_b) {
    asm volatile(
        "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, %96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}, "
        "%128, %129, 1, 1, 1, 0, 0;\n"
        : WGMMA_ACCUMULATORS_128(d)
        : "l"(desc_a), "l"(desc_b)
        : "memory");
}

/* Named barrier `id` (1..15; 0 is __syncthreads') of `threads` threads, a multiple of 32: sync
 * waits until that many have arrived or synced, arrive counts this warp without waiting. */
__device__ __forceinline__ void named_barrier_sync(uint32_t id, uint32_t threads) {
    asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
__device__ __forceinline__ void named_barrier_arrive(uint32_t id, uint32_t threads) {
    asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

/* ---- sm_90a: mbarriers and TMA ----------------------------------------------------------- */

/* Hand registers between warpgroups (all 128 threads of the warpgroup execute it): a producer
 * warpgroup that only issues copies lowers its per-thread count so that consumer warpgroups can
 * raise theirs past what the CTA size gives every thread (65536 / threads, rounded down to 8).
 * Regs: 24..256, a multiple of 8. */
template <int Regs> __device__ __forceinline__ void setmaxnreg_dec() {
    static_assert(Regs >= 24 && Regs <= 256 && Regs % 8 == 0, "setmaxnreg range");
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(Regs));
}
template <int Regs> __device__ __forceinline__ void setmaxnreg_inc() {
    static_assert(Regs >= 24 && Regs <= 256 && Regs % 8 == 0, "setmaxnreg range");
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(Regs));
}

/* A shared-memory mbarrier whose phase completes after `count` arrivals (and, where a phase
 * expects transaction bytes, once they have landed). */
__device__ __forceinline__ void mbarrier_init(uint64_t *bar, uint32_t count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(count)
                 : "memory");
}

/* Make this thread's mbarrier initializations visible to the async proxy (the TMA unit). */
__device__ __forceinline__ void fence_mbarrier_init() {
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}

__device__ __forceinline__ void mbarrier_arrive(uint64_t *bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_addr(bar)) : "memory");
}

/* Arrive, and add `bytes` to the transaction count the current phase waits for. */
__device__ __forceinline__ void mbarrier_arrive_expect_tx(uint64_t *bar, uint32_t bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_addr(bar)),
                 "r"(bytes)
                 : "memory");
}

/* The scope an mbarrier wait acquires at: the CTA (TMA copies, this CTA's threads' arrivals) or
 * the cluster (arrivals of other CTAs' threads, and what they released before them). */
enum class WaitScope { Cta, Cluster };

/* try_wait.parity's asm, acquiring with `sem` (".acquire.cluster", or "" for the default,
 * .acquire.cta): %0 = whether the phase completed, %1 the barrier, %2 the parity. */
#define MBARRIER_TRY_WAIT_ASM(sem)                                                                 \
    "{\n.reg .pred complete;\nmbarrier.try_wait.parity" sem                                         \
    ".shared::cta.b64 complete, [%1], %2;\nselp.u32 %0, 1, 0, complete;\n}\n"

/* Whether the phase of parity `parity` has completed (a fresh barrier counts the phase before
 * its first, parity 1, as completed); the hardware may suspend the thread a while first. */
template <WaitScope Scope = WaitScope::Cta>
__device__ __forceinline__ bool mbarrier_try_wait(uint64_t *bar, uint32_t parity) {
    uint32_t done;
    if constexpr (Scope == WaitScope::Cta) {
        asm volatile(MBARRIER_TRY_WAIT_ASM("")
                     : "=r"(done) : "r"(smem_addr(bar)), "r"(parity) : "memory");
    } else {
        asm volatile(MBARRIER_TRY_WAIT_ASM(".acquire.cluster")
                     : "=r"(done) : "r"(smem_addr(bar)), "r"(parity) : "memory");
    }
    return done != 0;
}

__device__ __forceinline__ uint64_t globaltimer_ns() {
    uint64_t ns;
    asm volatile("mov.u64 %0, %globaltimer;\n" : "=l"(ns));
    return ns;
}

/* A phase still open after this long is a lost arrival or copy, i.e. a bug (a slice takes
 * microseconds): trap, so the launch fails and the host reports it, instead of hanging the
 * device. Under a debugger's breakpoint or a slow sanitizer a correct kernel can trip it too. */
#define MBARRIER_TIMEOUT_NS 5000000000ull

/* Wait until the phase of parity `parity` has completed. */
template <WaitScope Scope = WaitScope::Cta>
__device__ __forceinline__ void mbarrier_wait(uint64_t *bar, uint32_t parity) {
    if (mbarrier_try_wait<Scope>(bar, parity)) return;
    const uint64_t start = globaltimer_ns();
    while (!mbarrier_try_wait<Scope>(bar, parity)) {
        if (globaltimer_ns() - start > MBARRIER_TIMEOUT_NS) __trap();
    }
}

/* Cluster-scope handoffs through mbarriers (proj_residual_norm_tma's row-sum exchange). A
 * thread makes its earlier accesses (local or distributed shared memory) visible at cluster
 * scope with fence_cluster_release, then arrives on the mbarrier at `bar`'s offset in the shared
 * memory of the cluster's CTA `rank` (this one included) with mbarrier_arrive_cluster: the fence
 * and the relaxed arrival make a release pattern (PTX ISA, memory consistency model), and one
 * fence covers its arrivals on every CTA. A waiter acquires at cluster scope what the arrivals
 * released once the phase completes: mbarrier_wait<WaitScope::Cluster>. */
__device__ __forceinline__ void fence_cluster_release() {
    asm volatile("fence.release.cluster;\n" ::: "memory");
}
__device__ __forceinline__ void mbarrier_arrive_cluster(uint64_t *bar, uint32_t rank) {
    asm volatile("{\n.reg .b32 remote;\n"
                 "mapa.shared::cluster.u32 remote, %0, %1;\n"
                 "mbarrier.arrive.relaxed.cluster.shared::cluster.b64 _, [remote];\n}\n" ::"r"(
                     smem_addr(bar)),
                 "r"(rank)
                 : "memory");
}

/* TMA: the box at (k = k0, row = row0) of the 2D tensor `map` describes (a __grid_constant__
 * parameter) into shared memory at `dst`, completing `bytes` of `bar`'s transaction count. */
__device__ __forceinline__ void tma_load_2d(void *dst, const void *map, uint64_t *bar, int32_t k0,
                                            int32_t row0) {
    asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
                 " [%0], [%1, {%2, %3}], [%4];\n" ::"r"(smem_addr(dst)),
                 "l"(reinterpret_cast<uint64_t>(map)), "r"(k0), "r"(row0), "r"(smem_addr(bar))
                 : "memory");
}

} // namespace
