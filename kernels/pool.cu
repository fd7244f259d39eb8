// pool.cu: the pooling epilogue, from the last residual to the final embeddings.
//
// Layout: residual f32 [num_tokens, hidden], inv_rms f32 [num_tokens] (of the last residual),
// final_norm f32 [hidden], seq_offsets u32 [num_seqs + 1], dense f32 [embed_dim, hidden] (the
// Dense chain folded into one matrix); out f32 [num_seqs, out_dim], norms f32 [num_seqs].
// hidden % 4 == 0.
// Launch: one POOL_BLOCK-thread block per sequence. Thread i works on column quad i % (hidden/4)
// for token group i / (hidden/4); group g sums tokens g, g + groups, ... with 16-byte loads, four
// tokens in flight. Dynamic shared memory: (groups + 1) * hidden + embed_dim floats.
// Deterministic: the token-to-group assignment and every summation order are fixed, no atomics.
// Numerics, all f32:
//   pooled = (1 + w) * (sum_t inv_rms_t * x_t) / len    (final RMSNorm, then mean pooling)
//   y = dense . pooled
//   z = y / max(|y|, 1e-12)                              (sentence-transformers Normalize)
//   out = z[:out_dim] / max(|z[:out_dim]|, 1e-12)        (Matryoshka truncation, renormalized)
//   norm = max(|y|, 1e-12) * max(|z[:out_dim]|, 1e-12)   (out * norm = y[:out_dim], for callers
//                                                          that want the un-normalized vector)
#include "common.cuh"

__device__ __forceinline__ void add_scaled(float4& acc, float scale, const float4& x) {
    acc.x += scale * x.x;
    acc.y += scale * x.y;
    acc.z += scale * x.z;
    acc.w += scale * x.w;
}

extern "C" __global__ void __launch_bounds__(POOL_BLOCK) pool_embeddings(PoolParams p) {
    extern __shared__ float4 shared_vec[];  // float4 so that the 16-byte views below are aligned
    float* shared = reinterpret_cast<float*>(shared_vec);
    const uint32_t quads = p.hidden / 4;
    const uint32_t groups = blockDim.x / quads;
    float* partial = shared;                           // [groups, hidden]
    float* pooled = shared + groups * p.hidden;        // [hidden]
    float* projected = pooled + p.hidden;              // [embed_dim]
    __shared__ float scratch[32];

    const uint32_t seq = blockIdx.x;
    const uint32_t first = p.seq_offsets[seq], end = p.seq_offsets[seq + 1];

    const uint32_t quad = threadIdx.x % quads, group = threadIdx.x / quads;
    if (group < groups) {
        const float4* rows = reinterpret_cast<const float4*>(p.residual) + quad;
        float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        uint32_t t = first + group;
        for (; t + 3 * groups < end; t += 4 * groups) {
            float4 x[4];
            float r[4];
#pragma unroll
            for (int u = 0; u < 4; ++u) {
                x[u] = rows[static_cast<size_t>(t + u * groups) * quads];
                r[u] = p.inv_rms[t + u * groups];
            }
#pragma unroll
            for (int u = 0; u < 4; ++u) add_scaled(acc, r[u], x[u]);
        }
        for (; t < end; t += groups) add_scaled(acc, p.inv_rms[t], rows[static_cast<size_t>(t) * quads]);
        reinterpret_cast<float4*>(partial + group * p.hidden)[quad] = acc;
    }
    __syncthreads();

    const float inv_len = 1.0f / static_cast<float>(end - first);
    for (uint32_t c = threadIdx.x; c < p.hidden; c += blockDim.x) {
        float sum = 0.0f;
        for (uint32_t g = 0; g < groups; ++g) sum += partial[g * p.hidden + c];
        pooled[c] = sum * inv_len * (1.0f + p.final_norm[c]);
    }
    __syncthreads();

    const uint32_t lane = threadIdx.x % 32, warp = threadIdx.x / 32, num_warps = blockDim.x / 32;
    const float4* pooled4 = reinterpret_cast<const float4*>(pooled);
    for (uint32_t o = warp; o < p.embed_dim; o += num_warps) {
        const float4* row = reinterpret_cast<const float4*>(p.dense + static_cast<size_t>(o) * p.hidden);
        float dot = 0.0f;
        for (uint32_t k = lane; k < quads; k += 32) {
            const float4 w = row[k], x = pooled4[k];
            dot += w.x * x.x + w.y * x.y + w.z * x.z + w.w * x.w;
        }
        dot = warp_sum(dot);
        if (lane == 0) projected[o] = dot;
    }
    __syncthreads();

    float squares = 0.0f;
    for (uint32_t o = threadIdx.x; o < p.embed_dim; o += blockDim.x)
        squares += projected[o] * projected[o];
    const float full_norm = fmaxf(sqrtf(block_sum(squares, scratch)), 1e-12f);

    float kept_squares = 0.0f;
    for (uint32_t o = threadIdx.x; o < p.out_dim; o += blockDim.x) {
        const float z = projected[o] / full_norm;
        kept_squares += z * z;
    }
    const float kept_norm = fmaxf(sqrtf(block_sum(kept_squares, scratch)), 1e-12f);

    for (uint32_t o = threadIdx.x; o < p.out_dim; o += blockDim.x)
        p.out[static_cast<size_t>(seq) * p.out_dim + o] = projected[o] / full_norm / kept_norm;
    if (threadIdx.x == 0) p.norms[seq] = full_norm * kept_norm;
}
