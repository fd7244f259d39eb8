// common.cuh: helpers shared by the kernels: warp/block sums and 4- and 8-wide bf16/f32 vectors.
//
// Every 4-wide access needs a 4-element aligned index into a buffer whose rows are a
// multiple of 4 elements long, every 8-wide access (16-byte bf16 loads and stores) an 8-element
// aligned index into rows a multiple of 8 long; the host wrappers check those row lengths
// before launching.
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

// Sum over each quad (lanes 4q .. 4q + 3, which hold the same rows of an mma/wgmma accumulator);
// every lane of the quad gets its quad's sum. All 32 lanes must call it.
__device__ __forceinline__ float quad_sum(float v) {
    v += __shfl_xor_sync(FULL_MASK, v, 1);
    return v + __shfl_xor_sync(FULL_MASK, v, 2);
}

// Sum over each aligned group of 16 lanes (lanes 0-15 and 16-31 separately); every lane of the
// group gets its group's sum. All 32 lanes must call it.
__device__ __forceinline__ float half_warp_sum(float v) {
    for (int offset = 8; offset > 0; offset /= 2) v += __shfl_xor_sync(FULL_MASK, v, offset);
    return v;
}

struct f32x8 {
    float v[8];
};

// 8 bf16 as loaded, one 16-byte load (p 16-byte aligned): half the registers of their floats,
// for rows held across a reduction.
__device__ __forceinline__ uint4 load_bf16x8_bits(const bf16_t* p) {
    return *reinterpret_cast<const uint4*>(p);
}

__device__ __forceinline__ f32x8 bf16x8_to_f32(const uint4& raw) {
    const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
    f32x8 out;
    for (int w = 0; w < 4; ++w) {
        const __nv_bfloat162 pair = *reinterpret_cast<const __nv_bfloat162*>(&words[w]);
        out.v[2 * w] = __low2float(pair);
        out.v[2 * w + 1] = __high2float(pair);
    }
    return out;
}

// 8 bf16 from one 16-byte load (p 16-byte aligned).
__device__ __forceinline__ f32x8 load_bf16x8(const bf16_t* p) {
    return bf16x8_to_f32(load_bf16x8_bits(p));
}

// 8 bf16 (round to nearest even) in one 16-byte store (p 16-byte aligned).
__device__ __forceinline__ void store_bf16x8(bf16_t* p, const f32x8& x) {
    uint32_t words[4];
    for (int w = 0; w < 4; ++w) {
        const __nv_bfloat162 pair = __floats2bfloat162_rn(x.v[2 * w], x.v[2 * w + 1]);
        words[w] = *reinterpret_cast<const uint32_t*>(&pair);
    }
    *reinterpret_cast<uint4*>(p) = make_uint4(words[0], words[1], words[2], words[3]);
}

// 8 floats in two 16-byte loads (p 16-byte aligned).
__device__ __forceinline__ f32x8 load_f32x8(const float* p) {
    const float4 lo = reinterpret_cast<const float4*>(p)[0];
    const float4 hi = reinterpret_cast<const float4*>(p)[1];
    return f32x8{{lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w}};
}

// 8 floats in two 16-byte stores (p 16-byte aligned).
__device__ __forceinline__ void store_f32x8(float* p, const f32x8& x) {
    reinterpret_cast<float4*>(p)[0] = make_float4(x.v[0], x.v[1], x.v[2], x.v[3]);
    reinterpret_cast<float4*>(p)[1] = make_float4(x.v[4], x.v[5], x.v[6], x.v[7]);
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
