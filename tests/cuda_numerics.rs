//! A host model of the CUDA backend's numerics on the real model, against the
//! sentence-transformers float32 golden embeddings: the rounding points the GPU pipeline has,
//! applied to the CPU twins of its kernels. It runs without a GPU, so the bf16 design's parity
//! (cosine >= 0.9995 per vector) is known before the first device run.
//!
//! Rounding points modelled (see `src/backend/cuda/backend.rs`): weights in bf16, with the input
//! and pre-feedforward norms' `(1 + w)` folded into the QKV and gate|up columns; embedding scale
//! bf16(sqrt(hidden)); f32 residual stream; bf16 GEMM inputs with f32 accumulation; bf16 QKV
//! and gate|up GEMM outputs on the cuBLAS paths (the fused `qkv_proj_wgmma` and
//! `gate_up_geglu` kernels keep them in f32); the per-row inverse RMS applied by the
//! consumer; bf16 Q, K, V, the attention output and the GEGLU output; f32 O and down projection
//! outputs, or bf16 with `GEMMA_EMBED_BRANCH=bf16` (f32 accumulators with `=fused`); f32 pooling with the folded Dense. Not
//! modelled: the flash kernel's bf16 probabilities and summation order. Two ignored tests cost
//! designs the backend does not have: a bf16 residual stream and float8 projection GEMMs.
//! Skips loudly without the model; fails under `CI=true`.

mod common;

use gemma_embed::backend::cpu::ops as cpu;
use gemma_embed::backend::cuda::mlp::MlpKernel;
use gemma_embed::backend::cuda::qkv::QkvKernel;
use gemma_embed::backend::cuda::{BranchStorage, CudaOptions};
use gemma_embed::backend::Batch;
use gemma_embed::model::{LayerKind, Model};

fn bf16(values: &mut [f32]) {
    for v in values {
        *v = half::bf16::from_f32(*v).to_f32();
    }
}

fn rounded(values: &[f32]) -> Vec<f32> {
    let mut out = values.to_vec();
    bf16(&mut out);
    out
}

/// Rows of every matrix with columns scaled by `1 + norm`, rounded to bf16.
fn folded(matrices: &[&[f32]], norm: &[f32]) -> Vec<f32> {
    let mut out: Vec<f32> = matrices
        .iter()
        .flat_map(|m| m.chunks_exact(norm.len()))
        .flat_map(|row| row.iter().zip(norm).map(|(&w, &g)| w * (1.0 + g)))
        .collect();
    bf16(&mut out);
    out
}

fn gemm_bf16(x: &[f32], w: &[f32], in_features: usize, out_features: usize) -> Vec<f32> {
    let rows = x.len() / in_features;
    let mut out = vec![0.0; rows * out_features];
    cpu::linear(&rounded(x), w, in_features, out_features, &mut out);
    out
}

/// `value` rounded to float8 e4m3 (3 mantissa bits, normal down to 2^-6, subnormal steps of
/// 2^-9, largest finite 448), nearest with ties to even; magnitudes above 448 saturate.
fn e4m3(value: f32) -> f32 {
    let magnitude = value.abs().min(448.0);
    if magnitude == 0.0 {
        return value;
    }
    let exponent = (((magnitude.to_bits() >> 23) & 0xff) as i32 - 127).max(-6);
    let step = 2f32.powi(exponent - 3);
    ((magnitude / step).round_ties_even() * step)
        .min(448.0)
        .copysign(value)
}

#[test]
fn e4m3_rounds_as_torch_float8_e4m3fn() {
    // Expected values from torch 2.x: `torch.tensor(inputs).to(torch.float8_e4m3fn).float()`.
    let cases = [
        (448.0, 448.0),
        (500.0, 448.0),
        (-1000.0, -448.0),
        (430.0, 416.0),
        (440.0, 448.0),
        (1.0625, 1.0),
        (1.1875, 1.25),
        (0.3, 0.3125),
        (-0.3, -0.3125),
        (2f32.powi(-9), 2f32.powi(-9)),
        (0.75 * 2f32.powi(-9), 2f32.powi(-9)),
        (3.0 * 2f32.powi(-10), 2f32.powi(-8)),
        (2f32.powi(-10), 0.0),
        (1e-30, 0.0),
    ];
    for (input, expected) in cases {
        assert_eq!(e4m3(input), expected, "e4m3({input})");
    }
}

/// How a float8 GEMM's inputs and weights are scaled into e4m3's range.
#[derive(Clone, Copy, Debug)]
enum Fp8Scaling {
    /// One scale per activation row (token) and per weight row (output channel).
    PerRow,
    /// One scale per 128 consecutive elements of a row, for activations and weights alike
    /// (finer than the 128 x 128 weight blocks of block-scaled float8 GEMMs).
    Blocks128,
}

/// Every block of `block` consecutive values rounded to e4m3 under its own scale (the block's
/// largest magnitude mapped to 448), then scaled back.
fn e4m3_blocks(values: &[f32], block: usize) -> Vec<f32> {
    values
        .chunks_exact(block)
        .flat_map(|chunk| {
            let scale = chunk.iter().fold(0.0f32, |m, v| m.max(v.abs())) / 448.0;
            chunk.iter().map(move |&v| {
                if scale == 0.0 {
                    0.0
                } else {
                    e4m3(v / scale) * scale
                }
            })
        })
        .collect()
}

/// A projection GEMM as the pipeline rounds it: bf16 inputs, or e4m3 inputs and weights under
/// `fp8` scaling (a costing of float8 projections, which the backend does not have); f32
/// accumulation.
fn projection(
    x: &[f32],
    w: &[f32],
    in_features: usize,
    out_features: usize,
    fp8: Option<Fp8Scaling>,
) -> Vec<f32> {
    let block = match fp8 {
        None => return gemm_bf16(x, w, in_features, out_features),
        Some(Fp8Scaling::PerRow) => in_features,
        Some(Fp8Scaling::Blocks128) => 128,
    };
    let rows = x.len() / in_features;
    let mut out = vec![0.0; rows * out_features];
    let (x8, w8) = (e4m3_blocks(x, block), e4m3_blocks(w, block));
    cpu::linear(&x8, &w8, in_features, out_features, &mut out);
    out
}

/// Where the modelled pipeline rounds to bf16 beyond the fixed points listed above.
#[derive(Clone, Copy, Debug)]
struct Rounding {
    /// The QKV GEMM output (the cuBLAS path; `qkv_proj_wgmma` keeps it in f32).
    qkv: bool,
    /// The gate|up GEMM output (the cuBLAS MLP path; the fused kernels keep it in f32).
    gate_up: bool,
    /// The O and down projection outputs (`GEMMA_EMBED_BRANCH=bf16`).
    branch: bool,
    /// The residual stream after every add (f32 in the backend; a candidate saving).
    residual: bool,
    /// The four projection GEMMs on float8 e4m3 inputs and weights instead of bf16.
    fp8_projections: Option<Fp8Scaling>,
}

impl Rounding {
    /// The backend's rounding with these kernel choices.
    fn of(options: CudaOptions) -> Self {
        Self {
            qkv: options.qkv == QkvKernel::Cublas,
            gate_up: options.mlp == MlpKernel::Cublas,
            branch: options.branch == BranchStorage::Bf16,
            residual: false,
            fp8_projections: None,
        }
    }
}

/// The CUDA pipeline's numerics on the host: `[num_seqs, embedding_dim]`, L2-normalized.
fn cuda_model_forward(model: &Model, batch: &Batch, rounding: Rounding) -> Vec<f32> {
    let c = &model.config;
    let w = &model.weights;
    let (h, hd, heads, inter) = (c.hidden_size, c.head_dim, c.num_heads, c.intermediate_size);
    let n = batch.num_tokens();
    let positions = batch.positions();
    let embed_scale = half::bf16::from_f32(c.embed_scale()).to_f32();

    let table = rounded(&w.embed_tokens);
    let mut x = vec![0.0f32; n * h];
    cpu::embed_scaled(&table, h, &batch.ids, embed_scale, &mut x);

    let tables = |theta| cpu::rope_tables(c.max_seq_len, &cpu::rope_inv_freq(hd, theta));
    let (sliding, full) = (tables(c.rope_theta_sliding), tables(c.rope_theta_full));
    for (i, l) in w.layers.iter().enumerate() {
        let p = l.output_major_projections();
        let qkv_w = folded(&[&p.q, &p.k, &p.v], &l.input_layernorm);
        let gate_up_w = folded(&[&p.gate, &p.up], &l.pre_feedforward_layernorm);
        let (o_w, down_w) = (rounded(&p.o), rounded(&p.down));

        let inv = cpu::inverse_rms_rows_f64(&x, h, c.rms_norm_eps);
        let width = (heads + 2) * hd;
        let mut qkv = projection(&x, &qkv_w, h, width, rounding.fp8_projections);
        if rounding.qkv {
            bf16(&mut qkv);
        }
        let (mut q, mut k, mut v) = (Vec::new(), Vec::new(), Vec::new());
        for (row, &r) in qkv.chunks_exact(width).zip(&inv) {
            let scaled: Vec<f32> = row.iter().map(|&e| e * r).collect();
            q.extend_from_slice(&scaled[..heads * hd]);
            k.extend_from_slice(&scaled[heads * hd..(heads + 1) * hd]);
            v.extend_from_slice(&scaled[(heads + 1) * hd..]);
        }
        cpu::rms_norm_in_place(&mut q, &l.q_norm, c.rms_norm_eps);
        cpu::rms_norm_in_place(&mut k, &l.k_norm, c.rms_norm_eps);
        let (cos, sin) = match c.layer_kind(i) {
            LayerKind::Sliding => (&sliding.0, &sliding.1),
            LayerKind::Full => (&full.0, &full.1),
        };
        cpu::rope(&mut q, &positions, heads, hd, cos, sin);
        cpu::rope(&mut k, &positions, 1, hd, cos, sin);
        q.iter_mut().for_each(|e| *e *= c.attention_scale());
        bf16(&mut q);
        bf16(&mut k);
        bf16(&mut v);
        let mut attention = vec![0.0f32; n * heads * hd];
        let shape = cpu::AttentionShape {
            num_heads: heads,
            num_kv_heads: 1,
            head_dim: hd,
            window: c.window(i),
            scale: 1.0,
        };
        cpu::attention(&q, &k, &v, &batch.seq_offsets, shape, &mut attention);
        let mut o = projection(&attention, &o_w, heads * hd, h, rounding.fp8_projections);
        if rounding.branch {
            bf16(&mut o);
        }
        cpu::residual_add_rms_norm(&mut x, &o, &l.post_attention_layernorm, c.rms_norm_eps);
        if rounding.residual {
            bf16(&mut x);
        }

        let inv = cpu::inverse_rms_rows_f64(&x, h, c.rms_norm_eps);
        let mut gate_up = projection(&x, &gate_up_w, h, 2 * inter, rounding.fp8_projections);
        if rounding.gate_up {
            bf16(&mut gate_up);
        }
        let (mut gate, mut up) = (Vec::with_capacity(n * inter), Vec::with_capacity(n * inter));
        for (row, &r) in gate_up.chunks_exact(2 * inter).zip(&inv) {
            gate.extend(row[..inter].iter().map(|&g| g * r));
            up.extend(row[inter..].iter().map(|&u| u * r));
        }
        let mut mlp = vec![0.0f32; n * inter];
        cpu::gelu_tanh_mul(&gate, &up, &mut mlp);
        let mut down = projection(&mlp, &down_w, inter, h, rounding.fp8_projections);
        if rounding.branch {
            bf16(&mut down);
        }
        cpu::residual_add_rms_norm(&mut x, &down, &l.post_feedforward_layernorm, c.rms_norm_eps);
        if rounding.residual {
            bf16(&mut x);
        }
    }

    let mut normed = vec![0.0f32; n * h];
    cpu::rms_norm(&x, &w.final_norm, c.rms_norm_eps, &mut normed);
    let mut pooled = vec![0.0f32; batch.num_sequences() * h];
    cpu::mean_pool(&normed, h, &batch.seq_offsets, &mut pooled);
    let mut out = vec![0.0f32; batch.num_sequences() * c.embedding_dim];
    cpu::linear(&pooled, &w.dense_folded, h, c.embedding_dim, &mut out);
    cpu::l2_normalize(&mut out, c.embedding_dim);
    out
}

/// Worst cosine against the golden embeddings of the modelled pipeline with each rounding;
/// `None` (after the loud skip message) without the real model.
fn worst_cosines(roundings: &[(String, Rounding)]) -> Option<Vec<f64>> {
    let dir = common::real_model_dir()?;
    let model = Model::load_dir(&dir).expect("load the real model");
    let golden = common::golden();
    let batch = golden.batch();
    let dim = model.config.embedding_dim;
    let worst = roundings
        .iter()
        .map(|(label, rounding)| {
            let out = cuda_model_forward(&model, &batch, *rounding);
            golden.worst_cosine(label, &out, dim)
        })
        .collect();
    Some(worst)
}

#[test]
fn bf16_pipeline_meets_the_parity_target() {
    // Every MLP path with every branch storage, then every candidate together; the fused MLP
    // kernels (GEMMA_EMBED_MLP=fused, =wgmma and =wgmma-wide) round alike, and the attention kernels are not
    // modelled.
    let every_candidate = CudaOptions {
        qkv: QkvKernel::Wgmma,
        mlp: MlpKernel::Wgmma,
        branch: BranchStorage::Fused,
        ..CudaOptions::default_on((8, 0))
    };
    let paths: Vec<(String, Rounding)> = [MlpKernel::Cublas, MlpKernel::Fused]
        .into_iter()
        .flat_map(|mlp| {
            [BranchStorage::F32, BranchStorage::Bf16].map(|branch| CudaOptions {
                mlp,
                branch,
                ..CudaOptions::default_on((8, 0))
            })
        })
        .chain([every_candidate])
        .map(|o| (o.describe(), Rounding::of(o)))
        .collect();
    let Some(worst) = worst_cosines(&paths) else {
        return;
    };
    for ((label, _), worst) in paths.iter().zip(worst) {
        assert!(
            worst >= 0.9995,
            "{label}: bf16 pipeline worst cosine {worst}"
        );
    }
}

/// A bf16 residual stream, which the backend does not use, costed before building it
/// (docs/gpu-report.md): `cargo test --release --test cuda_numerics -- --ignored --nocapture`.
/// Ignored by default: it models one more full forward and checks nothing the backend runs.
#[test]
#[ignore]
fn bf16_residual_storage_keeps_the_parity_target() {
    let rounding = Rounding {
        residual: true,
        ..Rounding::of(CudaOptions {
            branch: BranchStorage::Bf16,
            ..CudaOptions::default_on((8, 0))
        })
    };
    let label = "bf16 O/down outputs and residual".to_string();
    let Some(worst) = worst_cosines(&[(label.clone(), rounding)]) else {
        return;
    };
    assert!(worst[0] >= 0.9995, "{label}: worst cosine {}", worst[0]);
}

/// Float8 (e4m3) projection GEMMs, the one way left to run the GEMMs, which alone need 17 ms of a
/// 65536-token batch at the measured bf16 matmul ceiling, in the 24.4 ms (H200) to 26 ms (H100)
/// that 10x sentence-transformers bf16 allows (docs/gpu-report.md), costed before building them:
/// with per-token and per-output-channel scales, and with a scale per 128 elements of every row.
/// Everything else as the default pipeline. Ignored by default for the same reason as the test
/// above: `cargo test --release --test cuda_numerics -- --ignored --nocapture`.
#[test]
#[ignore]
fn fp8_projections_miss_the_parity_target() {
    let paths: Vec<(String, Rounding)> = [Fp8Scaling::PerRow, Fp8Scaling::Blocks128]
        .map(|scaling| {
            let rounding = Rounding {
                fp8_projections: Some(scaling),
                ..Rounding::of(CudaOptions::default_on((9, 0)))
            };
            (
                format!("e4m3 projection GEMMs, {scaling:?} scales"),
                rounding,
            )
        })
        .into();
    let Some(worst) = worst_cosines(&paths) else {
        return;
    };
    for ((label, _), worst) in paths.iter().zip(worst) {
        assert!(worst < 0.9995, "{label}: worst cosine {worst}");
    }
}
