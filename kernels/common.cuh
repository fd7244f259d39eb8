// common.cuh: helpers shared by the kernels: warp/block sums and 4-wide bf16/f32 vectors.
//
// Every 4-wide access needs a 4-element aligned index into a buffer whose rows are a
// multiple of 4 elements long; the host wrappers check those row lengths before launching.
#pragma once

#include <cuda_bf16.h>
#include <stdint.h>

#include "params.h"

constexpr unsigned FULL_MASK = 0xffffffffu;

__device__ __forceinline__ float warp_sum(float v) {
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(FULL_MASK, v, offset);
    return v;
}

// Sum over the whole block (blockDim.x a multiple of 32, at most 1024); every thread gets the
// result. `scratch` holds 32 floats; the call ends with a barrier, so it can be reused.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    const unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    v = warp_sum(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    const unsigned num_warps = blockDim.x / 32;
    float total = lane < num_warps ? scratch[lane] : 0.0f;
    total = warp_sum(total);
    __syncthreads();
    return total;
}

struct f32x4 {
    float v[4];
};

__device__ __forceinline__ f32x4 load_bf16x4(const bf16_t* p) {
    const uint2 raw = *reinterpret_cast<const uint2*>(p);
    const __nv_bfloat162 lo = *reinterpret_cast<const __nv_bfloat162*>(&raw.x);
    const __nv_bfloat162 hi = *reinterpret_cast<const __nv_bfloat162*>(&raw.y);
    f32x4 out;
    out.v[0] = __low2float(lo);
    out.v[1] = __high2float(lo);
    out.v[2] = __low2float(hi);
    out.v[3] = __high2float(hi);
    return out;
}

__device__ __forceinline__ void store_bf16x4(bf16_t* p, const f32x4& x) {
    const __nv_bfloat162 lo = __floats2bfloat162_rn(x.v[0], x.v[1]);
    const __nv_bfloat162 hi = __floats2bfloat162_rn(x.v[2], x.v[3]);
    uint2 raw;
    raw.x = *reinterpret_cast<const uint32_t*>(&lo);
    raw.y = *reinterpret_cast<const uint32_t*>(&hi);
    *reinterpret_cast<uint2*>(p) = raw;
}

__device__ __forceinline__ f32x4 load_f32x4(const float* p) {
    const float4 raw = *reinterpret_cast<const float4*>(p);
    f32x4 out;
    out.v[0] = raw.x;
    out.v[1] = raw.y;
    out.v[2] = raw.z;
    out.v[3] = raw.w;
    return out;
}

__device__ __forceinline__ void store_f32x4(float* p, const f32x4& x) {
    *reinterpret_cast<float4*>(p) = make_float4(x.v[0], x.v[1], x.v[2], x.v[3]);
}

// Gemma RMSNorm's inverse RMS: 1 / sqrt(mean(x^2) + eps), from a sum of squares.
__device__ __forceinline__ float inverse_rms(float sum_squares, uint32_t n, float eps) {
    return rsqrtf(sum_squares / static_cast<float>(n) + eps);
}

// torch's gelu(approximate="tanh"): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), with the
// accurate tanhf (no fast-math intrinsics).
__device__ __forceinline__ float gelu_tanh(float x) {
    const float sqrt_2_over_pi = 0.7978845608028654f;
    return 0.5f * x * (1.0f + tanhf(sqrt_2_over_pi * (x + 0.044715f * x * x * x)));
}
