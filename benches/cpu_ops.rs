//! Criterion benchmarks of the CPU ops at EmbeddingGemma-300m's shapes (`config.json`: hidden
//! 768, intermediate 1152, 3 query heads and 1 KV head of 256, window radius 256), with all
//! tokens of a 2048-token batch as GEMM rows, as the CPU engine runs them (the projections also
//! at 128 rows, and with the weight in both layouts: the engine's input-major and PyTorch's).
//!
//!     cargo bench --bench cpu_ops
//!
//! Throughput is reported in elements per second, where one element is one floating-point
//! operation for the GEMMs and attention (so `Gelem/s` reads as GFLOP/s) and one activation
//! value for the elementwise ops.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use gemma_embed::backend::cpu::ops::{self, AttentionShape};
use gemma_embed::model::Linear;

const TOKENS: usize = 2048;
const HIDDEN: usize = 768;
const INTERMEDIATE: usize = 1152;
const HEADS: usize = 3;
const KV_HEADS: usize = 1;
const HEAD_DIM: usize = 256;
const WINDOW_RADIUS: usize = 256;

/// Deterministic values in [-1, 1).
fn filled(len: usize, seed: u32) -> Vec<f32> {
    let mut state = seed.wrapping_mul(2_654_435_761).max(1);
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state >> 8) as f32 / (1u32 << 23) as f32 - 1.0
        })
        .collect()
}

fn gemm_shapes(c: &mut Criterion) {
    let mut group = c.benchmark_group("linear");
    group.sample_size(10);
    for (name, in_features, out_features) in [
        ("q_o_proj", HIDDEN, HIDDEN),
        ("k_v_proj", HIDDEN, KV_HEADS * HEAD_DIM),
        ("gate_up_proj", HIDDEN, INTERMEDIATE),
        ("down_proj", INTERMEDIATE, HIDDEN),
    ] {
        let w = filled(out_features * in_features, 2);
        let linear = Linear::from_output_major(&w, out_features, in_features);
        let w_t = linear.input_major();
        // A whole batch's tokens, and one short request's (where gemm's packing of an
        // output-major weight weighs most).
        for rows in [TOKENS, 128] {
            let x = filled(rows * in_features, 1);
            let mut out = vec![0.0; rows * out_features];
            group.throughput(Throughput::Elements(
                (2 * rows * in_features * out_features) as u64,
            ));
            let shape = format!("{rows}x{in_features}->{out_features}");
            group.bench_function(
                BenchmarkId::new(format!("{name}/input_major"), &shape),
                |b| {
                    b.iter(|| ops::linear_input_major(&x, w_t, in_features, out_features, &mut out))
                },
            );
            group.bench_function(
                BenchmarkId::new(format!("{name}/output_major"), &shape),
                |b| b.iter(|| ops::linear(&x, &w, in_features, out_features, &mut out)),
            );
        }
    }
    group.finish();
}

fn attention(c: &mut Criterion) {
    let mut group = c.benchmark_group("attention");
    group.sample_size(10);
    // Four sequences of 512 tokens: the window (radius 256) covers about 3/4 of each.
    let seq_offsets: Vec<u32> = (0..=4).map(|s| (s * TOKENS / 4) as u32).collect();
    let q = filled(TOKENS * HEADS * HEAD_DIM, 3);
    let k = filled(TOKENS * KV_HEADS * HEAD_DIM, 4);
    let v = filled(TOKENS * KV_HEADS * HEAD_DIM, 5);
    let mut out = vec![0.0; q.len()];
    for (name, window) in [("sliding", Some(WINDOW_RADIUS)), ("full", None)] {
        let shape = AttentionShape {
            num_heads: HEADS,
            num_kv_heads: KV_HEADS,
            head_dim: HEAD_DIM,
            window,
            scale: (HEAD_DIM as f32).powf(-0.5),
        };
        // Useful work: two GEMM-like products over the allowed (query, key) pairs.
        let seq_len = TOKENS / 4;
        let pairs: usize = (0..seq_len)
            .map(|i| match window {
                Some(r) => (i + r + 1).min(seq_len) - i.saturating_sub(r),
                None => seq_len,
            })
            .sum::<usize>()
            * 4;
        group.throughput(Throughput::Elements((4 * pairs * HEADS * HEAD_DIM) as u64));
        group.bench_function(BenchmarkId::new(name, "4x512 tokens"), |b| {
            b.iter(|| ops::attention(&q, &k, &v, &seq_offsets, shape, &mut out))
        });
    }
    group.finish();
}

fn elementwise(c: &mut Criterion) {
    let mut group = c.benchmark_group("elementwise");
    let x = filled(TOKENS * HIDDEN, 6);
    let weight = filled(HIDDEN, 7);
    let mut out = vec![0.0; x.len()];
    group.throughput(Throughput::Elements(x.len() as u64));
    group.bench_function("rms_norm", |b| {
        b.iter(|| ops::rms_norm(&x, &weight, 1e-6, &mut out))
    });
    group.bench_function("residual_add_rms_norm", |b| {
        b.iter(|| ops::residual_add_rms_norm(&mut out, &x, &weight, 1e-6))
    });
    let gate = filled(TOKENS * INTERMEDIATE, 8);
    let up = filled(TOKENS * INTERMEDIATE, 9);
    let mut act = vec![0.0; gate.len()];
    group.throughput(Throughput::Elements(gate.len() as u64));
    group.bench_function("gelu_tanh_mul", |b| {
        b.iter(|| ops::gelu_tanh_mul(&gate, &up, &mut act))
    });
    group.finish();
}

criterion_group!(benches, gemm_shapes, attention, elementwise);
criterion_main!(benches);
