// geglu.cu: the gated GELU of the MLP, completing the folded pre-feedforward RMSNorm.
//
// Layout: gate_up bf16 [num_tokens, 2 * intermediate] (gate columns, then up columns; the
// GEMM ran on bf16(residual) with the pre-feedforward norm's (1 + w) folded into its weight
// columns), inv_rms f32 [num_tokens]; out bf16 [num_tokens, intermediate].
// Launch: one thread per 4 outputs, 256-thread blocks, grid-stride; intermediate % 4 == 0.
// Numerics, f32: out = gelu_tanh(r * gate) * (r * up), r = inv_rms (the norm's 1/rms),
// gelu_tanh(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) as torch's
// gelu(approximate="tanh"); accurate tanhf, no fast-math intrinsics.
#include "common.cuh"

extern "C" __global__ void __launch_bounds__(256) geglu(GegluParams p) {
    const uint32_t groups_per_row = p.intermediate / 4;
    const size_t total = static_cast<size_t>(p.num_tokens) * groups_per_row;
    for (size_t g = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; g < total;
         g += static_cast<size_t>(gridDim.x) * blockDim.x) {
        const size_t token = g / groups_per_row;
        const uint32_t c = static_cast<uint32_t>(g % groups_per_row) * 4;
        const bf16_t* row = p.gate_up + token * 2 * p.intermediate;
        const float r = p.inv_rms[token];
        const f32x4 gate = load_bf16x4(row + c);
        const f32x4 up = load_bf16x4(row + p.intermediate + c);
        f32x4 out;
        for (int j = 0; j < 4; ++j) out.v[j] = gelu_tanh(r * gate.v[j]) * (r * up.v[j]);
        store_bf16x4(p.out + token * p.intermediate + c, out);
    }
}
