// embed.cu: token embedding gather for the residual stream.
//
// Layout: table bf16 [vocab, hidden]; residual f32 and residual_bf16 [num_tokens, hidden];
// inv_rms f32 and positions u32 [num_tokens]; seq_offsets u32 [num_seqs + 1].
// Launch: one warp per token, 8 tokens per 256-thread block; hidden % 4 == 0.
// Numerics: residual = float(table[id]) * scale in f32 (scale is bf16(sqrt(hidden)) = 27.75, as
// transformers casts the embedding scale to the weight dtype). The kernel also emits what the
// first layer's input RMSNorm needs (bf16 copy of the row and its inverse RMS; the norm weight
// is folded into the QKV weight) and the token's position inside its sequence.
#include "common.cuh"

extern "C" __global__ void __launch_bounds__(256) embed_tokens(EmbedParams p) {
    const uint32_t token = (blockIdx.x * blockDim.x + threadIdx.x) / 32;
    const uint32_t lane = threadIdx.x % 32;
    if (token >= p.num_tokens) return;

    const bf16_t* row = p.table + static_cast<size_t>(p.ids[token]) * p.hidden;
    float* out = p.residual + static_cast<size_t>(token) * p.hidden;
    bf16_t* out_bf16 = p.residual_bf16 + static_cast<size_t>(token) * p.hidden;
    float sum_squares = 0.0f;
    for (uint32_t c = lane * 4; c < p.hidden; c += 32 * 4) {
        f32x4 x = load_bf16x4(row + c);
        for (int j = 0; j < 4; ++j) {
            x.v[j] *= p.scale;
            sum_squares += x.v[j] * x.v[j];
        }
        store_f32x4(out + c, x);
        store_bf16x4(out_bf16 + c, x);
    }
    sum_squares = warp_sum(sum_squares);
    if (lane == 0) {
        p.inv_rms[token] = inverse_rms(sum_squares, p.hidden, p.eps);
        // Largest s with seq_offsets[s] <= token.
        uint32_t lo = 0, hi = p.num_seqs;
        while (hi - lo > 1) {
            const uint32_t mid = (lo + hi) / 2;
            if (p.seq_offsets[mid] <= token) lo = mid; else hi = mid;
        }
        p.positions[token] = token - p.seq_offsets[lo];
    }
}
