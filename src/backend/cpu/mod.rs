//! The float32 reference forward on the CPU.
//!
//! One pass over a packed batch: every projection is one GEMM with all tokens of the batch as
//! rows, attention runs per sequence in query blocks that only touch keys inside the window,
//! and the elementwise ops run over row chunks on the rayon pool. The numerics are those of
//! [`ops`], which the GPU kernels are tested against.

pub mod ops;

use std::sync::Arc;

use rayon::prelude::*;

use crate::backend::{Backend, Batch, Embeddings};
use crate::model::{Linear, Model};
use crate::Result;

use ops::AttentionShape;

/// Rows per task for the elementwise ops: enough work per task to amortize scheduling.
const ROWS_PER_TASK: usize = 16;

/// RoPE cosine/sine tables for one base, `[max_seq_len, head_dim / 2]`.
struct RopeTables {
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl RopeTables {
    fn new(max_positions: usize, head_dim: usize, base: f32) -> Self {
        let (cos, sin) = ops::rope_tables(max_positions, &ops::rope_inv_freq(head_dim, base));
        Self { cos, sin }
    }
}

/// Activations of one forward, kept between calls so the hot loop does not allocate.
#[derive(Default)]
struct Scratch {
    positions: Vec<u32>,
    /// Residual stream `[tokens, hidden]`.
    residual: Vec<f32>,
    /// Normed input of the next projection `[tokens, hidden]`.
    normed: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    attn: Vec<f32>,
    /// Output of o_proj or down_proj before its post-norm `[tokens, hidden]`.
    branch: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
}

/// Exact float32 EmbeddingGemma forward on the CPU, threaded with rayon.
pub struct CpuBackend {
    model: Arc<Model>,
    rope_sliding: RopeTables,
    rope_full: RopeTables,
    scratch: Scratch,
}

impl CpuBackend {
    pub fn new(model: Arc<Model>) -> Result<Self> {
        let config = &model.config;
        let rope_sliding = RopeTables::new(
            config.max_seq_len,
            config.head_dim,
            config.rope_theta_sliding,
        );
        let rope_full =
            RopeTables::new(config.max_seq_len, config.head_dim, config.rope_theta_full);
        Ok(Self {
            model,
            rope_sliding,
            rope_full,
            scratch: Scratch::default(),
        })
    }
}

/// Resize `buf` to `len` without keeping its old contents meaningful.
fn sized(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    buf.resize(len, 0.0);
    &mut buf[..]
}

impl Backend for CpuBackend {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn forward(&mut self, batch: &Batch, dimensions: usize) -> Result<Embeddings> {
        let model = &*self.model;
        let config = &model.config;
        let weights = &model.weights;
        crate::model::check_dimensions(dimensions, config.embedding_dim)?;
        batch.validate(config.vocab_size, config.max_seq_len)?;

        let tokens = batch.num_tokens();
        let hidden = config.hidden_size;
        let head_dim = config.head_dim;
        let q_width = config.num_heads * head_dim;
        let kv_width = config.num_kv_heads * head_dim;
        let intermediate = config.intermediate_size;
        let eps = config.rms_norm_eps;
        let offsets = &batch.seq_offsets;

        let s = &mut self.scratch;
        s.positions.clear();
        s.positions.extend(batch.positions());
        let positions = &s.positions[..];
        let residual = sized(&mut s.residual, tokens * hidden);
        let normed = sized(&mut s.normed, tokens * hidden);
        let q = sized(&mut s.q, tokens * q_width);
        let k = sized(&mut s.k, tokens * kv_width);
        let v = sized(&mut s.v, tokens * kv_width);
        let attn = sized(&mut s.attn, tokens * q_width);
        let branch = sized(&mut s.branch, tokens * hidden);
        let gate = sized(&mut s.gate, tokens * intermediate);
        let up = sized(&mut s.up, tokens * intermediate);

        let chunk = ROWS_PER_TASK;
        let scale = config.embed_scale();
        residual
            .par_chunks_mut(chunk * hidden)
            .zip(batch.ids.par_chunks(chunk))
            .for_each(|(out, ids)| {
                ops::embed_scaled(&weights.embed_tokens, hidden, ids, scale, out)
            });

        for (layer, lw) in weights.layers.iter().enumerate() {
            let rope = match config.window(layer) {
                Some(_) => &self.rope_sliding,
                None => &self.rope_full,
            };

            par_rms_norm(residual, &lw.input_layernorm, eps, normed);
            project(normed, &lw.q_proj, q);
            project(normed, &lw.k_proj, k);
            project(normed, &lw.v_proj, v);
            for (x, width, norm_weight, heads) in [
                (&mut *q, q_width, &lw.q_norm, config.num_heads),
                (&mut *k, kv_width, &lw.k_norm, config.num_kv_heads),
            ] {
                x.par_chunks_mut(chunk * width)
                    .zip(positions.par_chunks(chunk))
                    .for_each(|(rows, pos)| {
                        ops::rms_norm_in_place(rows, norm_weight, eps);
                        ops::rope(rows, pos, heads, head_dim, &rope.cos, &rope.sin);
                    });
            }
            let shape = AttentionShape {
                num_heads: config.num_heads,
                num_kv_heads: config.num_kv_heads,
                head_dim,
                window: config.window(layer),
                scale: config.attention_scale(),
            };
            ops::attention(q, k, v, offsets, shape, attn);
            project(attn, &lw.o_proj, branch);
            residual
                .par_chunks_mut(chunk * hidden)
                .zip(branch.par_chunks(chunk * hidden))
                .zip(normed.par_chunks_mut(chunk * hidden))
                .for_each(|((res, br), out)| {
                    ops::residual_add_rms_norm(res, br, &lw.post_attention_layernorm, eps);
                    ops::rms_norm(res, &lw.pre_feedforward_layernorm, eps, out);
                });

            project(normed, &lw.gate_proj, gate);
            project(normed, &lw.up_proj, up);
            gate.par_chunks_mut(chunk * intermediate)
                .zip(up.par_chunks(chunk * intermediate))
                .for_each(|(g, u)| {
                    g.iter_mut()
                        .zip(u)
                        .for_each(|(g, &u)| *g = ops::gelu_tanh(*g) * u)
                });
            project(gate, &lw.down_proj, branch);
            residual
                .par_chunks_mut(chunk * hidden)
                .zip(branch.par_chunks(chunk * hidden))
                .for_each(|(res, br)| {
                    ops::residual_add_rms_norm(res, br, &lw.post_feedforward_layernorm, eps)
                });
        }

        par_rms_norm(residual, &weights.final_norm, eps, normed);
        let num_seqs = batch.num_sequences();
        let mut pooled = vec![0.0; num_seqs * hidden];
        ops::mean_pool(normed, hidden, offsets, &mut pooled);
        for dense in &weights.dense {
            let mut projected = vec![0.0; num_seqs * dense.out_features()];
            project(&pooled, dense, &mut projected);
            pooled = projected;
        }
        let width = config.embedding_dim;
        // As the pooling kernel: normalized, then truncated and renormalized; the divisors'
        // product takes a row back to the Dense output's first `dimensions` components.
        let full_norms = ops::l2_normalize(&mut pooled, width);
        let (data, norms) = if dimensions == width {
            (pooled, full_norms)
        } else {
            let (kept, kept_norms) = ops::truncate_normalize(&pooled, width, dimensions);
            let norms = full_norms
                .iter()
                .zip(kept_norms)
                .map(|(f, k)| f * k)
                .collect();
            (kept, norms)
        };
        Ok(Embeddings {
            dim: dimensions,
            data,
            norms,
        })
    }
}

/// `out = x · Wᵀ` for the rows of `x` ([`ops::linear_input_major`]).
fn project(x: &[f32], weight: &Linear, out: &mut [f32]) {
    let (in_features, out_features) = (weight.in_features(), weight.out_features());
    ops::linear_input_major(x, weight.input_major(), in_features, out_features, out);
}

/// [`ops::rms_norm`] over row chunks on the rayon pool.
fn par_rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let width = ROWS_PER_TASK * weight.len();
    x.par_chunks(width)
        .zip(out.par_chunks_mut(width))
        .for_each(|(x, out)| ops::rms_norm(x, weight, eps, out));
}
