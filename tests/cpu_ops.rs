//! Every op of `backend::cpu::ops` against a straightforward f64 loop on random inputs.

use gemma_embed::backend::cpu::ops::{self, AttentionShape};
use gemma_embed::model::Linear;
use gemma_embed::rng::SplitMix64;

/// `len` uniform numbers in `[-scale, scale)`.
fn random_vec(rng: &mut SplitMix64, len: usize, scale: f32) -> Vec<f32> {
    (0..len).map(|_| rng.uniform(-1.0, 1.0) * scale).collect()
}

#[track_caller]
fn assert_close(got: &[f32], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (f64::from(g) - w).abs();
        assert!(
            err <= tol * (1.0 + w.abs()),
            "element {i}: got {g}, want {w} (error {err:e})"
        );
    }
}

fn rms_norm_ref(row: &[f32], weight: &[f32], eps: f64) -> Vec<f64> {
    let mean_sq = row.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / row.len() as f64;
    let r = 1.0 / (mean_sq + eps).sqrt();
    row.iter()
        .zip(weight)
        .map(|(&v, &w)| f64::from(v) * r * (1.0 + f64::from(w)))
        .collect()
}

/// `x [rows, k] · w[n, k]^T` in f64.
fn linear_ref(x: &[f32], w: &[f32], k: usize, n: usize) -> Vec<f64> {
    let rows = x.len() / k;
    let mut out = vec![0.0; rows * n];
    for r in 0..rows {
        for j in 0..n {
            out[r * n + j] = (0..k)
                .map(|i| f64::from(x[r * k + i]) * f64::from(w[j * k + i]))
                .sum();
        }
    }
    out
}

#[test]
fn embed_scaled_gathers_and_scales_rows() {
    let mut rng = SplitMix64::new(1);
    let (vocab, hidden) = (50, 24);
    let table = random_vec(&mut rng, vocab * hidden, 1.0);
    let ids = [3u32, 0, 49, 3, 17];
    let scale = (hidden as f32).sqrt();
    let mut out = vec![f32::NAN; ids.len() * hidden];
    ops::embed_scaled(&table, hidden, &ids, scale, &mut out);
    let want: Vec<f64> = ids
        .iter()
        .flat_map(|&id| &table[id as usize * hidden..][..hidden])
        .map(|&e| f64::from(e) * f64::from(scale))
        .collect();
    assert_close(&out, &want, 1e-6);
}

#[test]
fn rms_norm_matches_gemma_definition() {
    let mut rng = SplitMix64::new(2);
    let (rows, width, eps) = (7, 96, 1e-6f32);
    // Large values like the real residual stream (up to ~1e5).
    let x = random_vec(&mut rng, rows * width, 3e4);
    let weight = random_vec(&mut rng, width, 2.0);
    let want: Vec<f64> = x
        .chunks(width)
        .flat_map(|row| rms_norm_ref(row, &weight, eps.into()))
        .collect();

    let mut out = vec![f32::NAN; x.len()];
    ops::rms_norm(&x, &weight, eps, &mut out);
    assert_close(&out, &want, 1e-6);

    let mut in_place = x.clone();
    ops::rms_norm_in_place(&mut in_place, &weight, eps);
    assert_close(&in_place, &want, 1e-6);
}

#[test]
fn rms_norm_eps_is_inside_the_root() {
    // A zero row normalizes to zero; a tiny row is damped by eps inside the rsqrt.
    let weight = [0.5f32; 4];
    let x = [0.0f32, 0.0, 0.0, 0.0, 1e-4, -1e-4, 1e-4, -1e-4];
    let mut out = [f32::NAN; 8];
    ops::rms_norm(&x, &weight, 1e-6, &mut out);
    let r = 1.0 / (1e-8f64 + 1e-6).sqrt();
    let want: Vec<f64> = x.iter().map(|&v| f64::from(v) * r * 1.5).collect();
    assert_close(&out, &want, 1e-6);
}

#[test]
fn residual_add_rms_norm_adds_the_normed_branch() {
    let mut rng = SplitMix64::new(3);
    let (rows, width, eps) = (5, 64, 1e-6f32);
    let residual = random_vec(&mut rng, rows * width, 100.0);
    let branch = random_vec(&mut rng, rows * width, 10.0);
    let weight = random_vec(&mut rng, width, 1.0);
    let want: Vec<f64> = residual
        .chunks(width)
        .zip(branch.chunks(width))
        .flat_map(|(res, br)| {
            let normed = rms_norm_ref(br, &weight, eps.into());
            res.iter()
                .zip(normed)
                .map(|(&r, n)| f64::from(r) + n)
                .collect::<Vec<_>>()
        })
        .collect();
    let mut got = residual.clone();
    ops::residual_add_rms_norm(&mut got, &branch, &weight, eps);
    assert_close(&got, &want, 1e-6);
}

#[test]
fn rope_inv_freq_follows_the_base_power() {
    for (head_dim, base) in [(256usize, 1e4f32), (256, 1e6), (32, 1e4)] {
        let got = ops::rope_inv_freq(head_dim, base);
        let want: Vec<f64> = (0..head_dim / 2)
            .map(|i| 1.0 / f64::from(base).powf(2.0 * i as f64 / head_dim as f64))
            .collect();
        assert_close(&got, &want, 1e-6);
    }
}

#[test]
fn rope_rotates_half_split_pairs() {
    let mut rng = SplitMix64::new(4);
    let (heads, head_dim) = (3, 32);
    let half = head_dim / 2;
    let positions = [0u32, 1, 2, 7, 40, 1000, 2047];
    let inv_freq = ops::rope_inv_freq(head_dim, 1e4);
    let (cos, sin) = ops::rope_tables(2048, &inv_freq);
    let x = random_vec(&mut rng, positions.len() * heads * head_dim, 1.0);

    let mut want = vec![0.0f64; x.len()];
    for (t, &pos) in positions.iter().enumerate() {
        for h in 0..heads {
            let base = (t * heads + h) * head_dim;
            for i in 0..half {
                // The angle is an f32 product by definition; the rotation is done in f64.
                let angle = f64::from(pos as f32 * inv_freq[i]);
                let (a, b) = (f64::from(x[base + i]), f64::from(x[base + i + half]));
                want[base + i] = a * angle.cos() - b * angle.sin();
                want[base + i + half] = b * angle.cos() + a * angle.sin();
            }
        }
    }
    let mut got = x.clone();
    ops::rope(&mut got, &positions, heads, head_dim, &cos, &sin);
    assert_close(&got, &want, 1e-6);
}

#[test]
fn exp_f32_is_accurate_over_the_clamped_range() {
    let mut worst = 0.0f64;
    for i in 0..175_000 {
        let x = (-87.0 + f64::from(i) * 0.001) as f32;
        let got = f64::from(ops::exp_f32(x));
        let want = f64::from(x).exp();
        worst = worst.max((got - want).abs() / want);
    }
    assert!(worst < 3e-7, "worst relative error {worst:e}");
    // Beyond the clamp the result stays finite and tiny, never NaN, infinite or denormal.
    assert_eq!(ops::exp_f32(-1000.0), ops::exp_f32(-87.0));
    assert!(ops::exp_f32(1000.0).is_finite());
}

fn gelu_tanh_ref(x: f64) -> f64 {
    0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh())
}

#[test]
fn gelu_tanh_matches_formula_and_torch_values() {
    // torch.nn.functional.gelu(torch.tensor([1.0, -0.5, 3.0]), approximate="tanh").
    let torch = [
        (1.0f32, 0.841_192_f64),
        (-0.5, -0.154_285_99),
        (3.0, 2.996_363_6),
    ];
    for (x, want) in torch {
        assert!(
            (f64::from(ops::gelu_tanh(x)) - want).abs() < 1e-6,
            "gelu({x})"
        );
    }
    let mut rng = SplitMix64::new(5);
    let gate = random_vec(&mut rng, 500, 8.0);
    let up = random_vec(&mut rng, 500, 2.0);
    let mut got = vec![f32::NAN; 500];
    ops::gelu_tanh_mul(&gate, &up, &mut got);
    let want: Vec<f64> = gate
        .iter()
        .zip(&up)
        .map(|(&g, &u)| gelu_tanh_ref(g.into()) * f64::from(u))
        .collect();
    assert_close(&got, &want, 1e-6);
}

#[test]
fn linear_multiplies_by_the_transposed_weight() {
    let mut rng = SplitMix64::new(6);
    for (rows, k, n) in [(1usize, 8usize, 3usize), (37, 96, 70), (130, 257, 33)] {
        let x = random_vec(&mut rng, rows * k, 1.0);
        let w = random_vec(&mut rng, n * k, 1.0);
        let mut got = vec![f32::NAN; rows * n];
        ops::linear(&x, &w, k, n, &mut got);
        assert_close(&got, &linear_ref(&x, &w, k, n), 1e-5);
    }
}

#[test]
fn linear_gives_the_same_bits_from_an_input_major_weight() {
    let mut rng = SplitMix64::new(16);
    // Row counts on both sides of the padding to gemm's blocked kernel (65 rows for a narrow
    // output over a long input, else 256 / out + 1), and a gemm tile's edges.
    for (k, n) in [(600usize, 48usize), (96, 70), (257, 33), (48, 300)] {
        let w = random_vec(&mut rng, n * k, 1.0);
        let linear = Linear::from_output_major(&w, n, k);
        for rows in [1usize, 2, 7, 8, 9, 64, 65, 66, 130] {
            let x = random_vec(&mut rng, rows * k, 1.0);
            let mut want = vec![f32::NAN; rows * n];
            ops::linear(&x, &w, k, n, &mut want);
            let mut got = vec![f32::NAN; rows * n];
            ops::linear_input_major(&x, linear.input_major(), k, n, &mut got);
            assert_close(&got, &linear_ref(&x, &w, k, n), 1e-5);
            let differ = got
                .iter()
                .zip(&want)
                .filter(|(a, b)| a.to_bits() != b.to_bits())
                .count();
            assert_eq!(differ, 0, "{rows} rows, {k} -> {n}: {differ} values differ");
        }
    }
}

#[test]
fn gated_mlp_matches_naive_loops() {
    let mut rng = SplitMix64::new(7);
    let (rows, hidden, inter) = (9, 48, 80);
    let h = random_vec(&mut rng, rows * hidden, 1.0);
    let gate_w = random_vec(&mut rng, inter * hidden, 0.3);
    let up_w = random_vec(&mut rng, inter * hidden, 0.3);
    let down_w = random_vec(&mut rng, hidden * inter, 0.3);
    let gate = linear_ref(&h, &gate_w, hidden, inter);
    let up = linear_ref(&h, &up_w, hidden, inter);
    let act: Vec<f64> = gate
        .iter()
        .zip(&up)
        .map(|(&g, &u)| gelu_tanh_ref(g) * u)
        .collect();
    let mut want = vec![0.0f64; rows * hidden];
    for r in 0..rows {
        for j in 0..hidden {
            want[r * hidden + j] = (0..inter)
                .map(|i| act[r * inter + i] * f64::from(down_w[j * inter + i]))
                .sum();
        }
    }
    let mut got = vec![f32::NAN; rows * hidden];
    ops::gated_mlp(&h, &gate_w, &up_w, &down_w, hidden, inter, &mut got);
    assert_close(&got, &want, 1e-5);
}

/// Attention by definition: every (sequence, query, head) with an explicit mask, in f64.
fn attention_ref(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    seq_offsets: &[u32],
    shape: AttentionShape,
) -> Vec<f64> {
    let d = shape.head_dim;
    let (qw, kw) = (shape.num_heads * d, shape.num_kv_heads * d);
    let group = shape.num_heads / shape.num_kv_heads;
    let mut out = vec![0.0; q.len()];
    for w in seq_offsets.windows(2) {
        let (start, end) = (w[0] as usize, w[1] as usize);
        for i in start..end {
            for h in 0..shape.num_heads {
                let g = h / group;
                let allowed: Vec<usize> = (start..end)
                    .filter(|&j| shape.window.is_none_or(|r| i.abs_diff(j) <= r))
                    .collect();
                let scores: Vec<f64> = allowed
                    .iter()
                    .map(|&j| {
                        (0..d)
                            .map(|c| {
                                f64::from(q[i * qw + h * d + c]) * f64::from(k[j * kw + g * d + c])
                            })
                            .sum::<f64>()
                            * f64::from(shape.scale)
                    })
                    .collect();
                let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let exps: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let sum: f64 = exps.iter().sum();
                for c in 0..d {
                    out[i * qw + h * d + c] = allowed
                        .iter()
                        .zip(&exps)
                        .map(|(&j, e)| e / sum * f64::from(v[j * kw + g * d + c]))
                        .sum();
                }
            }
        }
    }
    out
}

#[test]
fn attention_matches_masked_softmax_over_packed_sequences() {
    let mut rng = SplitMix64::new(8);
    // Lengths around the 64-query block and the windows; a 1-token sequence too.
    let lengths = [1usize, 5, 64, 65, 130, 200];
    let mut seq_offsets = vec![0u32];
    for len in lengths {
        seq_offsets.push(seq_offsets.last().unwrap() + len as u32);
    }
    let tokens = *seq_offsets.last().unwrap() as usize;
    for (num_heads, num_kv_heads) in [(3usize, 1usize), (4, 2)] {
        for window in [Some(0usize), Some(4), Some(70), None] {
            let head_dim = 32;
            let shape = AttentionShape {
                num_heads,
                num_kv_heads,
                head_dim,
                window,
                scale: (head_dim as f32).powf(-0.5),
            };
            let q = random_vec(&mut rng, tokens * num_heads * head_dim, 2.0);
            let k = random_vec(&mut rng, tokens * num_kv_heads * head_dim, 2.0);
            let v = random_vec(&mut rng, tokens * num_kv_heads * head_dim, 1.0);
            let mut got = vec![f32::NAN; q.len()];
            ops::attention(&q, &k, &v, &seq_offsets, shape, &mut got);
            assert_close(&got, &attention_ref(&q, &k, &v, &seq_offsets, shape), 1e-5);
        }
    }
}

#[test]
fn mean_pool_averages_each_sequence() {
    let mut rng = SplitMix64::new(9);
    let hidden = 16;
    let seq_offsets = [0u32, 1, 4, 20];
    let x = random_vec(&mut rng, 20 * hidden, 50.0);
    let mut got = vec![f32::NAN; 3 * hidden];
    ops::mean_pool(&x, hidden, &seq_offsets, &mut got);
    let mut want = Vec::new();
    for w in seq_offsets.windows(2) {
        let n = (w[1] - w[0]) as f64;
        for c in 0..hidden {
            want.push(
                (w[0] as usize..w[1] as usize)
                    .map(|t| f64::from(x[t * hidden + c]))
                    .sum::<f64>()
                    / n,
            );
        }
    }
    assert_close(&got, &want, 1e-6);
}

fn normalized_ref(row: &[f32]) -> Vec<f64> {
    let norm = norm_ref(row);
    row.iter()
        .map(|&v| f64::from(v) / norm.max(1e-12))
        .collect()
}

fn norm_ref(row: &[f32]) -> f64 {
    row.iter()
        .map(|&v| f64::from(v).powi(2))
        .sum::<f64>()
        .sqrt()
}

#[test]
fn l2_normalize_and_matryoshka_truncation() {
    let mut rng = SplitMix64::new(10);
    let dim = 40;
    let x = random_vec(&mut rng, 3 * dim, 5.0);
    let mut got = x.clone();
    let norms = ops::l2_normalize(&mut got, dim);
    let want: Vec<f64> = x.chunks(dim).flat_map(normalized_ref).collect();
    assert_close(&got, &want, 1e-6);
    // Each row's divisor is its norm: row * norm is the input again.
    let norms_ref: Vec<f64> = x.chunks(dim).map(norm_ref).collect();
    assert_close(&norms, &norms_ref, 1e-5);

    let (truncated, kept_norms) = ops::truncate_normalize(&got, dim, 12);
    let want: Vec<f64> = got
        .chunks(dim)
        .flat_map(|r| normalized_ref(&r[..12]))
        .collect();
    assert_close(&truncated, &want, 1e-6);
    let kept_ref: Vec<f64> = got.chunks(dim).map(|r| norm_ref(&r[..12])).collect();
    assert_close(&kept_norms, &kept_ref, 1e-6);

    // A zero vector stays zero instead of becoming NaN.
    let mut zero = vec![0.0f32; dim];
    assert_eq!(ops::l2_normalize(&mut zero, dim), [1e-12]);
    assert!(zero.iter().all(|&v| v == 0.0));
}
