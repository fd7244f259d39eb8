// geglu.cu: the gated GELU of the MLP, completing the folded pre-feedforward RMSNorm.
//
// Layout: gate_up bf16 [num_tokens, 2 * intermediate] (gate columns, then up columns; the
// GEMM ran on bf16(residual) with the pre-feedforward norm's (1 + w) folded into its weight
// columns), inv_rms f32 [num_tokens]; out bf16 [num_tokens, intermediate].
// Launch: one thread per 8 consecutive outputs of a row (16-byte loads of gate and up, one
// 16-byte store), 256-thread blocks, ceil(num_tokens * intermediate / 8 / 256) of them; flat
// 32-bit group index. intermediate % 8 == 0 (16-byte aligned rows and up half) and
// num_tokens * intermediate / 8 < 2^32, both checked by the host.
// Numerics, f32: out = gelu_tanh(r * gate) * (r * up), r = inv_rms (the norm's 1/rms),
// gelu_tanh(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) as torch's
// gelu(approximate="tanh"); accurate tanhf, no fast-math intrinsics.
#include "common.cuh"

static_assert(GEGLU_OUTPUTS_PER_THREAD == 8, "one f32x8 (16 bytes of bf16) per thread");

extern "C" __global__ void __launch_bounds__(256) geglu(GegluParams p) {
    const uint32_t groups_per_row = p.intermediate / GEGLU_OUTPUTS_PER_THREAD;
    const uint32_t group = blockIdx.x * blockDim.x + threadIdx.x;
    if (group >= p.num_tokens * groups_per_row) return;
    const uint32_t token = group / groups_per_row;
    const uint32_t c = (group - token * groups_per_row) * GEGLU_OUTPUTS_PER_THREAD;
    const bf16_t* row = p.gate_up + static_cast<size_t>(token) * 2 * p.intermediate;
    const f32x8 gate = load_bf16x8(row + c);
    const f32x8 up = load_bf16x8(row + p.intermediate + c);
    const float r = p.inv_rms[token];
    f32x8 out;
    for (int j = 0; j < 8; ++j) out.v[j] = gelu_tanh(r * gate.v[j]) * (r * up.v[j]);
    store_bf16x8(p.out + static_cast<size_t>(token) * p.intermediate + c, out);
}
