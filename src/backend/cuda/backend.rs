//! [`CudaBackend`]: the whole forward pass on the GPU.
//!
//! Per layer: QKV GEMM → `qkv_post` (or both in `qkv_proj_wgmma`, see [`QkvKernel`]) →
//! attention → O GEMM → `residual_norm` → gate|up GEMM → `geglu` (or both in `gate_up_geglu`,
//! see [`MlpKernel`]) → down GEMM → `residual_norm`; then `pool_embeddings`. The residual
//! stream is f32. The O and down projections' outputs (the branches) are f32 (the default off
//! sm_90), or bf16 (`GEMMA_EMBED_BRANCH=bf16`, the sm_90 default), or never stored with
//! `GEMMA_EMBED_BRANCH=fused` or `tma`, where `proj_residual_norm_wgmma` or
//! `proj_residual_norm_tma` runs `residual_norm` in the projection's epilogue
//! ([`BranchStorage`]). GEMM operands are bf16 with f32 accumulation. The input and
//! pre-feedforward norms are folded: their `(1 + w)` scales the projection's weight columns at
//! upload, and the per-row inverse RMS is applied by the consumer kernel (`qkv_post`, `geglu`)
//! or epilogue.

use cudarc::driver::CudaSlice;

use super::attention::{Attention, AttentionPlan};
use super::device::{driver_err, Device};
use super::gemm::{linear, GemmOut};
use super::mlp::{interleave_gate_up, GateUpGeglu, MlpKernel};
use super::ops::{
    rope_tables, to_bf16_bits, Branch, Kernels, ModelDims, Pooled, QkNorms, QkvBuffers, Residual,
    RopeTable, Tokens,
};
use super::options::{BranchStorage, CudaOptions};
use super::profile::{OpTimes, Timeline};
use super::qkv::{QkvKernel, QkvProj};
use super::residual::{self, ProjResidualNorm};
use crate::backend::{Backend, Batch, Embeddings};
use crate::model::{LayerKind, Model};
use crate::{Error, Result};

struct LayerOnDevice {
    /// `[(heads + 2) · head_dim, hidden]`: q, k, v rows, columns scaled by `1 + input_layernorm`.
    qkv: CudaSlice<u16>,
    o: CudaSlice<u16>,
    /// `[2 · intermediate, hidden]`: gate, up rows (interleaved by blocks for the fused kernel,
    /// see [`interleave_gate_up`]), columns scaled by `1 + pre_feedforward_layernorm`.
    gate_up: CudaSlice<u16>,
    down: CudaSlice<u16>,
    q_norm: CudaSlice<f32>,
    k_norm: CudaSlice<f32>,
    post_attention_norm: CudaSlice<f32>,
    post_feedforward_norm: CudaSlice<f32>,
    kind: LayerKind,
    window: Option<usize>,
}

/// Activation buffers sized for `capacity` tokens and `seq_capacity` sequences; they grow
/// when a batch needs more and are reused otherwise.
struct Activations {
    capacity: usize,
    seq_capacity: usize,
    tokens: Tokens,
    residual: Residual,
    /// cuBLAS's QKV output; one unused element with the fused kernel.
    qkv: CudaSlice<u16>,
    attention_in: QkvBuffers,
    attention_out: CudaSlice<u16>,
    /// The O and down projections' output; one unused element with the fused kernel.
    branch: Branch,
    /// cuBLAS's gate|up output; one unused element with the fused kernel.
    gate_up: CudaSlice<u16>,
    mlp: CudaSlice<u16>,
    pooled: Pooled,
}

impl Activations {
    fn new(
        dev: &Device,
        d: &ModelDims,
        (capacity, seq_capacity): (usize, usize),
        (cublas_qkv, cublas_mlp): (bool, bool),
        branch: BranchStorage,
    ) -> Result<Self> {
        let gate_up_len = if cublas_mlp {
            capacity * 2 * d.intermediate
        } else {
            1
        };
        let qkv_len = if cublas_qkv {
            capacity * d.qkv_width()
        } else {
            1
        };
        Ok(Self {
            capacity,
            seq_capacity,
            tokens: Tokens {
                ids: dev.alloc(capacity, "token ids")?,
                seq_offsets: dev.alloc(seq_capacity + 1, "sequence offsets")?,
                positions: dev.alloc(capacity, "positions")?,
                num_tokens: 0,
                num_seqs: 0,
            },
            residual: Residual {
                x: dev.alloc(capacity * d.hidden, "residual")?,
                x_bf16: dev.alloc(capacity * d.hidden, "residual bf16")?,
                inv_rms: dev.alloc(capacity, "inverse RMS")?,
            },
            qkv: dev.alloc(qkv_len, "qkv")?,
            attention_in: QkvBuffers {
                q: dev.alloc(capacity * d.q_width(), "q")?,
                k: dev.alloc(capacity * d.head_dim, "k")?,
                v: dev.alloc(capacity * d.head_dim, "v")?,
            },
            attention_out: dev.alloc(capacity * d.q_width(), "attention output")?,
            branch: Branch::alloc(dev, branch, capacity * d.hidden)?,
            gate_up: dev.alloc(gate_up_len, "gate|up")?,
            mlp: dev.alloc(capacity * d.intermediate, "GEGLU output")?,
            pooled: Pooled {
                embeddings: dev.alloc(seq_capacity * d.embed_dim, "embeddings")?,
                norms: dev.alloc(seq_capacity, "embedding norms")?,
            },
        })
    }
}

/// How the layers compute attention-ready Q, K, V.
enum Qkv {
    Cublas,
    Fused(QkvProj),
}

/// How the layers add the O and down projections to the residual stream.
enum ResidualAdd {
    /// cuBLAS into the branch buffer, then `residual_norm` (or its bf16-branch twin).
    Unfused,
    Fused(ProjResidualNorm),
}

/// How the layers compute `gelu_tanh(r·gate)·(r·up)`.
enum Mlp {
    Cublas,
    Fused(GateUpGeglu),
}

impl Mlp {
    /// Whether the layers need cuBLAS's gate|up scratch and the uploaded gate|up weights in
    /// their plain order (true) or interleaved for a fused kernel (false).
    fn uses_cublas(&self) -> bool {
        matches!(self, Self::Cublas)
    }
}

pub struct CudaBackend {
    dev: Device,
    kernels: Kernels,
    qkv: Qkv,
    mlp: Mlp,
    residual_add: ResidualAdd,
    attention: Attention,
    options: CudaOptions,
    window_radius: usize,
    embed_tokens: CudaSlice<u16>,
    layers: Vec<LayerOnDevice>,
    /// RoPE tables for sliding and full layers.
    rope_sliding: RopeTable,
    rope_full: RopeTable,
    final_norm: CudaSlice<f32>,
    dense_folded: CudaSlice<f32>,
    activations: Option<Activations>,
    /// Set by [`CudaBackend::start_profiling`].
    timeline: Option<Timeline>,
    vocab_size: usize,
    max_seq_len: usize,
}

/// `w[o, k] · (1 + norm[k])` for the rows of every matrix in turn, rounded once to bf16.
fn fold_norm_into_columns(matrices: &[&[f32]], norm: &[f32]) -> Vec<u16> {
    let cols = norm.len();
    let total: usize = matrices.iter().map(|m| m.len()).sum();
    let mut out = Vec::with_capacity(total);
    for m in matrices {
        for row in m.chunks_exact(cols) {
            out.extend(
                row.iter()
                    .zip(norm)
                    .map(|(&w, &g)| half::bf16::from_f32(w * (1.0 + g)).to_bits()),
            );
        }
    }
    out
}

impl CudaBackend {
    /// The backend with the kernels the environment selects for the device
    /// ([`CudaOptions::from_env`]).
    pub fn new(model: &Model) -> Result<Self> {
        let dev = Device::open()?;
        let options = CudaOptions::from_env(dev.info.compute_capability)?;
        Self::on_device(model, dev, options)
    }

    pub fn with_options(model: &Model, options: CudaOptions) -> Result<Self> {
        Self::on_device(model, Device::open()?, options)
    }

    fn on_device(model: &Model, dev: Device, options: CudaOptions) -> Result<Self> {
        let mlp_kernel = options.mlp;
        let config = &model.config;
        let dims = ModelDims::new(config)?;
        let kernels = Kernels::load(&dev, dims)?;
        let attention = Attention::load(&dev, config, options.attention)?;
        let qkv = match options.qkv {
            QkvKernel::Cublas => Qkv::Cublas,
            QkvKernel::Wgmma | QkvKernel::Tma => {
                Qkv::Fused(QkvProj::load(&dev, &dims, options.qkv)?)
            }
        };
        let residual_add = match options.branch {
            BranchStorage::F32 | BranchStorage::Bf16 => ResidualAdd::Unfused,
            BranchStorage::Fused | BranchStorage::Tma => {
                residual::check_shape(dims.hidden, dims.q_width())?;
                residual::check_shape(dims.hidden, dims.intermediate)?;
                ResidualAdd::Fused(ProjResidualNorm::load(&dev, options.branch)?)
            }
        };
        let mlp = match mlp_kernel {
            MlpKernel::Cublas => Mlp::Cublas,
            MlpKernel::Fused | MlpKernel::Wgmma | MlpKernel::WgmmaWide | MlpKernel::Tma => {
                mlp_kernel.check_shape(dims.hidden, dims.intermediate)?;
                Mlp::Fused(GateUpGeglu::load(&dev, mlp_kernel)?)
            }
        };
        let w = &model.weights;
        if w.dense_folded.len() != dims.embed_dim * dims.hidden {
            return Err(Error::Cuda(format!(
                "folded Dense matrix has {} values, expected {}x{}",
                w.dense_folded.len(),
                dims.embed_dim,
                dims.hidden
            )));
        }

        let mut layers = Vec::with_capacity(config.num_layers);
        for (i, l) in w.layers.iter().enumerate() {
            let upload_f32 =
                |data: &[f32], what: &str| dev.upload(data, &format!("layer {i} {what}"));
            let upload_bf16 =
                |data: Vec<u16>, what: &str| dev.upload(&data, &format!("layer {i} {what}"));
            // The kernels and cuBLAS read every weight in PyTorch's [out, in] layout.
            let p = l.output_major_projections();
            let gate_up = fold_norm_into_columns(&[&p.gate, &p.up], &l.pre_feedforward_layernorm);
            layers.push(LayerOnDevice {
                qkv: upload_bf16(
                    fold_norm_into_columns(&[&p.q, &p.k, &p.v], &l.input_layernorm),
                    "qkv_proj",
                )?,
                o: upload_bf16(to_bf16_bits(&p.o), "o_proj")?,
                gate_up: upload_bf16(
                    if mlp.uses_cublas() {
                        gate_up
                    } else {
                        interleave_gate_up(&gate_up, dims.intermediate, dims.hidden)
                    },
                    "gate|up_proj",
                )?,
                down: upload_bf16(to_bf16_bits(&p.down), "down_proj")?,
                q_norm: upload_f32(&l.q_norm, "q_norm")?,
                k_norm: upload_f32(&l.k_norm, "k_norm")?,
                post_attention_norm: upload_f32(
                    &l.post_attention_layernorm,
                    "post_attention_layernorm",
                )?,
                post_feedforward_norm: upload_f32(
                    &l.post_feedforward_layernorm,
                    "post_feedforward_layernorm",
                )?,
                kind: config.layer_kind(i),
                window: config.window(i),
            });
        }

        let max_positions = config.max_seq_len.max(config.max_position_embeddings);
        let rope = |theta: f32, what: &str| -> Result<RopeTable> {
            let (cos, sin) = rope_tables(theta, dims.head_dim, max_positions);
            Ok(RopeTable {
                cos: dev.upload(&cos, &format!("{what} RoPE cos"))?,
                sin: dev.upload(&sin, &format!("{what} RoPE sin"))?,
                max_positions,
            })
        };
        Ok(Self {
            kernels,
            qkv,
            mlp,
            residual_add,
            attention,
            options,
            window_radius: config.window_radius,
            embed_tokens: dev.upload(&to_bf16_bits(&w.embed_tokens), "embed_tokens")?,
            layers,
            rope_sliding: rope(config.rope_theta_sliding, "sliding")?,
            rope_full: rope(config.rope_theta_full, "full")?,
            final_norm: dev.upload(&w.final_norm, "final norm")?,
            dense_folded: dev.upload(&w.dense_folded, "folded Dense")?,
            activations: None,
            timeline: None,
            vocab_size: config.vocab_size,
            max_seq_len: config.max_seq_len,
            dev,
        })
    }

    /// The kernel choices this backend runs.
    pub fn options(&self) -> CudaOptions {
        self.options
    }

    /// Time every operation of the forwards from now on, until [`CudaBackend::stop_profiling`]:
    /// one CUDA event after each, which costs a little host time per operation.
    pub fn start_profiling(&mut self) {
        self.timeline = Some(Timeline::default());
    }

    /// The operations' GPU times of the forwards since [`CudaBackend::start_profiling`]
    /// (`None` if it was not called); forwards after this are not timed.
    pub fn stop_profiling(&mut self) -> Option<OpTimes> {
        self.timeline.take().map(|t| t.totals)
    }

    fn activations_for(&mut self, num_tokens: usize, num_seqs: usize) -> Result<&mut Activations> {
        let fits = self
            .activations
            .as_ref()
            .is_some_and(|a| a.capacity >= num_tokens && a.seq_capacity >= num_seqs);
        if !fits {
            // Free the old buffers before allocating bigger ones.
            self.activations = None;
            let capacity = num_tokens.next_power_of_two().max(1024);
            let seq_capacity = num_seqs.next_power_of_two().max(64);
            self.activations = Some(Activations::new(
                &self.dev,
                &self.kernels.dims,
                (capacity, seq_capacity),
                (matches!(self.qkv, Qkv::Cublas), self.mlp.uses_cublas()),
                self.options.branch,
            )?);
        }
        Ok(self.activations.as_mut().expect("allocated above"))
    }
}

impl Backend for CudaBackend {
    fn name(&self) -> &'static str {
        "cuda"
    }

    /// `"<GPU name> (sm_XY)"`.
    fn device_name(&self) -> Option<String> {
        Some(self.dev.info.description.clone())
    }

    fn device_memory_used(&self) -> Option<u64> {
        let (free, total) = self.dev.ctx.mem_get_info().ok()?;
        Some((total - free) as u64)
    }

    fn forward(&mut self, batch: &Batch, dimensions: usize) -> Result<Embeddings> {
        let d = self.kernels.dims;
        crate::model::check_dimensions(dimensions, d.embed_dim)?;
        batch.validate(self.vocab_size, self.max_seq_len)?;
        let (n, b) = (batch.num_tokens(), batch.num_sequences());
        if b == 0 {
            return Ok(Embeddings {
                dim: dimensions,
                data: Vec::new(),
                norms: Vec::new(),
            });
        }
        self.dev
            .ctx
            .bind_to_thread()
            .map_err(driver_err("bind context"))?;
        // Take the buffers out so `self`'s weights stay borrowable alongside them.
        self.activations_for(n, b)?;
        let mut act = self
            .activations
            .take()
            .expect("allocated by activations_for");
        let mut timeline = self.timeline.take();
        let result = self.run(&mut act, batch, dimensions, timeline.as_mut());
        self.activations = Some(act);
        self.timeline = timeline;
        result
    }
}

impl CudaBackend {
    /// residual += RMSNorm(x·wᵀ)·(1 + post_norm), its bf16 copy and inverse RMS: cuBLAS into
    /// `branch`, then `residual_norm`; or both in `proj_residual_norm_wgmma` (or `_tma`).
    /// `gemm_label` names the cuBLAS step for `mark` (the profile).
    fn add_projection(
        &self,
        branch: &mut Branch,
        (x, w, post_norm): (&CudaSlice<u16>, &CudaSlice<u16>, &CudaSlice<f32>),
        (n, k_dim): (usize, usize),
        residual: &mut Residual,
        (gemm_label, mark): (&'static str, &mut dyn FnMut(&'static str) -> Result<()>),
    ) -> Result<()> {
        let d = &self.kernels.dims;
        match &self.residual_add {
            ResidualAdd::Fused(kernel) => {
                kernel.launch(&self.dev, d, (x, w, post_norm), (n, k_dim), residual)?;
                mark(kernel.name())
            }
            ResidualAdd::Unfused => {
                linear(&self.dev, x, w, branch.gemm_out(), (n, d.hidden, k_dim))?;
                mark(gemm_label)?;
                self.kernels
                    .residual_norm(&self.dev, n, branch, post_norm, residual)?;
                mark(self.options.branch.residual_norm_kernel())
            }
        }
    }

    fn run(
        &self,
        act: &mut Activations,
        batch: &Batch,
        dimensions: usize,
        mut timeline: Option<&mut Timeline>,
    ) -> Result<Embeddings> {
        let dev = &self.dev;
        let k = &self.kernels;
        let d = k.dims;
        let (n, b) = (batch.num_tokens(), batch.num_sequences());
        let stream = &dev.stream;
        if let Some(t) = timeline.as_deref_mut() {
            t.begin(dev)?;
        }
        // `op` has just been enqueued (when profiling).
        let mut mark = |op: &'static str| match timeline.as_deref_mut() {
            Some(t) => t.mark(dev, op),
            None => Ok(()),
        };
        stream
            .memcpy_htod(&batch.ids, &mut act.tokens.ids.slice_mut(..n))
            .map_err(driver_err("upload token ids"))?;
        stream
            .memcpy_htod(
                &batch.seq_offsets,
                &mut act.tokens.seq_offsets.slice_mut(..=b),
            )
            .map_err(driver_err("upload sequence offsets"))?;
        act.tokens.num_tokens = n;
        act.tokens.num_seqs = b;
        let plan = AttentionPlan::new(
            stream,
            &batch.seq_offsets,
            self.window_radius,
            &[self.options.attention],
        )?;
        mark("upload ids, offsets, attention plan")?;
        // Q arrives scaled by query_pre_attn_scalar^-0.5 (qkv_post), so the softmax scale is 1.
        let attend = |window, qkv: &QkvBuffers, out: &mut CudaSlice<u16>| {
            let inputs = (&qkv.q, &qkv.k, &qkv.v);
            self.attention.launch(
                stream,
                self.options.attention,
                &plan,
                window,
                1.0,
                inputs,
                out,
            )
        };

        k.embed(dev, &mut act.tokens, &self.embed_tokens, &mut act.residual)?;
        mark("embed_tokens")?;
        for layer in &self.layers {
            let rope = match layer.kind {
                LayerKind::Sliding => &self.rope_sliding,
                LayerKind::Full => &self.rope_full,
            };
            let norms = QkNorms {
                q_norm: &layer.q_norm,
                k_norm: &layer.k_norm,
                rope,
            };
            match &self.qkv {
                Qkv::Cublas => {
                    linear(
                        dev,
                        &act.residual.x_bf16,
                        &layer.qkv,
                        GemmOut::Bf16(&mut act.qkv),
                        (n, d.qkv_width(), d.hidden),
                    )?;
                    mark("QKV projection (cuBLAS)")?;
                    k.qkv_post(
                        dev,
                        &act.tokens,
                        &act.qkv,
                        &act.residual.inv_rms,
                        norms,
                        &mut act.attention_in,
                    )?;
                    mark("qkv_post")?;
                }
                Qkv::Fused(qkv_proj) => {
                    qkv_proj.launch(
                        dev,
                        &d,
                        &act.tokens,
                        (&act.residual.x_bf16, &layer.qkv, &act.residual.inv_rms),
                        norms,
                        &mut act.attention_in,
                    )?;
                    mark(qkv_proj.name())?;
                }
            }
            attend(layer.window, &act.attention_in, &mut act.attention_out)?;
            mark(match layer.kind {
                LayerKind::Sliding => "attention, sliding layers",
                LayerKind::Full => "attention, full layers",
            })?;
            self.add_projection(
                &mut act.branch,
                (&act.attention_out, &layer.o, &layer.post_attention_norm),
                (n, d.q_width()),
                &mut act.residual,
                ("O projection (cuBLAS)", &mut mark),
            )?;
            match &self.mlp {
                Mlp::Cublas => {
                    linear(
                        dev,
                        &act.residual.x_bf16,
                        &layer.gate_up,
                        GemmOut::Bf16(&mut act.gate_up),
                        (n, 2 * d.intermediate, d.hidden),
                    )?;
                    mark("gate|up projection (cuBLAS)")?;
                    k.geglu(dev, n, &act.gate_up, &act.residual.inv_rms, &mut act.mlp)?;
                    mark("geglu")?;
                }
                Mlp::Fused(gate_up_geglu) => {
                    gate_up_geglu.launch(
                        dev,
                        (&act.residual.x_bf16, &layer.gate_up, &act.residual.inv_rms),
                        &mut act.mlp,
                        (n, d.hidden, d.intermediate),
                    )?;
                    mark(gate_up_geglu.name())?;
                }
            }
            self.add_projection(
                &mut act.branch,
                (&act.mlp, &layer.down, &layer.post_feedforward_norm),
                (n, d.intermediate),
                &mut act.residual,
                ("down projection (cuBLAS)", &mut mark),
            )?;
        }
        k.pool(
            dev,
            &act.tokens,
            &act.residual,
            (&self.final_norm, &self.dense_folded),
            dimensions,
            &mut act.pooled,
        )?;
        mark("pool_embeddings")?;

        let mut data = vec![0.0f32; b * dimensions];
        stream
            .memcpy_dtoh(&act.pooled.embeddings.slice(..b * dimensions), &mut data)
            .map_err(driver_err("download embeddings"))?;
        let mut norms = vec![0.0f32; b];
        stream
            .memcpy_dtoh(&act.pooled.norms.slice(..b), &mut norms)
            .map_err(driver_err("download embedding norms"))?;
        mark("download embeddings")?;
        dev.synchronize()?;
        if let Some(t) = timeline {
            t.finish()?;
        }
        Ok(Embeddings {
            dim: dimensions,
            data,
            norms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn norm_weights_fold_into_columns_of_every_matrix() {
        let norm = [0.5f32, -1.0, 2.0];
        let q = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
        let k = [-1.0f32, 0.25, 1.0 / 3.0];
        let folded: Vec<f32> = fold_norm_into_columns(&[&q, &k], &norm)
            .into_iter()
            .map(|b| half::bf16::from_bits(b).to_f32())
            .collect();
        let expected: Vec<f32> = [1.5f32, 0.0, 9.0, 6.0, 0.0, 18.0, -1.5, 0.0, 1.0]
            .iter()
            .map(|&v| half::bf16::from_f32(v).to_f32())
            .collect();
        assert_eq!(folded, expected);
    }
}
