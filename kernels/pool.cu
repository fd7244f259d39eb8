// pool.cu: the pooling epilogue, from the last residual to the final embeddings.
//
// Layout: residual f32 [num_tokens, hidden], inv_rms f32 [num_tokens] (of the last residual),
// final_norm f32 [hidden], seq_offsets u32 [num_seqs + 1], dense f32 [embed_dim, hidden] (the
// Dense chain folded into one matrix); out f32 [num_seqs, out_dim].
// Launch: one 256-thread block per sequence, dynamic shared memory (hidden + embed_dim)
// floats. Deterministic: fixed-order loops and reductions, no atomics.
// Numerics, all f32:
//   pooled = (1 + w) * (sum_t inv_rms_t * x_t) / len    (final RMSNorm, then mean pooling)
//   y = dense . pooled
//   z = y / max(|y|, 1e-12)                              (sentence-transformers Normalize)
//   out = z[:out_dim] / max(|z[:out_dim]|, 1e-12)        (Matryoshka truncation, renormalized)
#include "common.cuh"

extern "C" __global__ void __launch_bounds__(256) pool_embeddings(PoolParams p) {
    extern __shared__ float shared[];
    float* pooled = shared;            // [hidden]
    float* projected = shared + p.hidden; // [embed_dim]
    __shared__ float scratch[32];

    const uint32_t seq = blockIdx.x;
    const uint32_t first = p.seq_offsets[seq], end = p.seq_offsets[seq + 1];
    const float inv_len = 1.0f / static_cast<float>(end - first);

    for (uint32_t c = threadIdx.x; c < p.hidden; c += blockDim.x) {
        float sum = 0.0f;
        for (uint32_t t = first; t < end; ++t)
            sum += p.inv_rms[t] * p.residual[static_cast<size_t>(t) * p.hidden + c];
        pooled[c] = sum * inv_len * (1.0f + p.final_norm[c]);
    }
    __syncthreads();

    const uint32_t lane = threadIdx.x % 32, warp = threadIdx.x / 32, num_warps = blockDim.x / 32;
    for (uint32_t o = warp; o < p.embed_dim; o += num_warps) {
        const float* row = p.dense + static_cast<size_t>(o) * p.hidden;
        float dot = 0.0f;
        for (uint32_t k = lane; k < p.hidden; k += 32) dot += row[k] * pooled[k];
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
}
