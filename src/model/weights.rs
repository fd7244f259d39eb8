//! Weights from `model.safetensors`, `2_Dense/model.safetensors`, `3_Dense/model.safetensors`,
//! memory-mapped and converted to float32 (F32, BF16 and F16 files are accepted). The Linear
//! layers' weights are held input-major ([`Linear`]), the transpose of the files' `[out, in]`;
//! every other matrix is row-major as stored.

use std::path::{Path, PathBuf};

use memmap2::Mmap;
use rayon::prelude::*;
use safetensors::tensor::Metadata;
use safetensors::{Dtype, SafeTensors};

use super::config::SentenceTransformerModules;
use super::ModelConfig;
use crate::{Error, Result};

/// One decoder layer, names as in the checkpoint (`layers.{i}.…`).
#[derive(Clone, Debug)]
pub struct LayerWeights {
    pub input_layernorm: Vec<f32>,            // [hidden]
    pub q_proj: Linear,                       // hidden -> heads*head_dim
    pub k_proj: Linear,                       // hidden -> kv_heads*head_dim
    pub v_proj: Linear,                       // hidden -> kv_heads*head_dim
    pub q_norm: Vec<f32>,                     // [head_dim]
    pub k_norm: Vec<f32>,                     // [head_dim]
    pub o_proj: Linear,                       // heads*head_dim -> hidden
    pub post_attention_layernorm: Vec<f32>,   // [hidden]
    pub pre_feedforward_layernorm: Vec<f32>,  // [hidden]
    pub gate_proj: Linear,                    // hidden -> intermediate
    pub up_proj: Linear,                      // hidden -> intermediate
    pub down_proj: Linear,                    // intermediate -> hidden
    pub post_feedforward_layernorm: Vec<f32>, // [hidden]
}

/// A layer's projection weights in PyTorch's `[out, in]` layout (copies), as the CUDA kernels
/// and cuBLAS read them.
pub struct OutputMajorProjections {
    pub q: Vec<f32>,
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    pub o: Vec<f32>,
    pub gate: Vec<f32>,
    pub up: Vec<f32>,
    pub down: Vec<f32>,
}

impl LayerWeights {
    pub fn output_major_projections(&self) -> OutputMajorProjections {
        OutputMajorProjections {
            q: self.q_proj.to_output_major(),
            k: self.k_proj.to_output_major(),
            v: self.v_proj.to_output_major(),
            o: self.o_proj.to_output_major(),
            gate: self.gate_proj.to_output_major(),
            up: self.up_proj.to_output_major(),
            down: self.down_proj.to_output_major(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct ModelWeights {
    pub embed_tokens: Vec<f32>, // [vocab, hidden]
    pub layers: Vec<LayerWeights>,
    pub final_norm: Vec<f32>, // [hidden]
    /// The Dense modules in order (`2_Dense` 768 -> 3072, `3_Dense` 3072 -> 768).
    pub dense: Vec<Linear>,
    /// The Dense chain folded into one `[embedding_dim, hidden]` matrix, computed in f64
    /// (`W_last · … · W_first`) and rounded once to f32.
    pub dense_folded: Vec<f32>,
}

impl ModelWeights {
    /// Load and check every tensor against the shapes `config` implies.
    pub fn load(dir: &Path, config: &ModelConfig) -> Result<Self> {
        let h = config.hidden_size;
        let q_width = config.num_heads * config.head_dim;
        let kv_width = config.num_kv_heads * config.head_dim;
        let inter = config.intermediate_size;

        let main = TensorFile::open(&dir.join("model.safetensors"))?;
        let embed_tokens = main.load("embed_tokens.weight", &[config.vocab_size, h])?;
        let final_norm = main.load("norm.weight", &[h])?;
        let layers = (0..config.num_layers)
            .map(|i| {
                let t =
                    |name: &str, shape: &[usize]| main.load(&format!("layers.{i}.{name}"), shape);
                let linear = |name: &str, out_features: usize, in_features: usize| {
                    let weight = t(name, &[out_features, in_features])?;
                    Ok::<_, Error>(Linear::from_output_major(
                        &weight,
                        out_features,
                        in_features,
                    ))
                };
                Ok(LayerWeights {
                    input_layernorm: t("input_layernorm.weight", &[h])?,
                    q_proj: linear("self_attn.q_proj.weight", q_width, h)?,
                    k_proj: linear("self_attn.k_proj.weight", kv_width, h)?,
                    v_proj: linear("self_attn.v_proj.weight", kv_width, h)?,
                    q_norm: t("self_attn.q_norm.weight", &[config.head_dim])?,
                    k_norm: t("self_attn.k_norm.weight", &[config.head_dim])?,
                    o_proj: linear("self_attn.o_proj.weight", h, q_width)?,
                    post_attention_layernorm: t("post_attention_layernorm.weight", &[h])?,
                    pre_feedforward_layernorm: t("pre_feedforward_layernorm.weight", &[h])?,
                    gate_proj: linear("mlp.gate_proj.weight", inter, h)?,
                    up_proj: linear("mlp.up_proj.weight", inter, h)?,
                    down_proj: linear("mlp.down_proj.weight", h, inter)?,
                    post_feedforward_layernorm: t("post_feedforward_layernorm.weight", &[h])?,
                })
            })
            .collect::<Result<Vec<_>>>()?;

        let modules = SentenceTransformerModules::load(dir)?;
        let mut dense = Vec::with_capacity(modules.dense.len());
        let mut in_features = h;
        for (module, &out_features) in modules.dense.iter().zip(&config.dense_out_features) {
            let file = TensorFile::open(&module.weights_path())?;
            dense.push(file.load("linear.weight", &[out_features, in_features])?);
            in_features = out_features;
        }
        let dense_folded = fold_dense(&dense, h);
        let dense = dense
            .iter()
            .zip(&config.dense_out_features)
            .map(|(weight, &out_features)| {
                Linear::from_output_major(weight, out_features, weight.len() / out_features)
            })
            .collect();

        Ok(Self {
            embed_tokens,
            layers,
            final_norm,
            dense,
            dense_folded,
        })
    }
}

/// The files whose bytes make the model's numbers: `config.json`, `model.safetensors` and each
/// Dense module's weights, in pipeline order (the files [`ModelWeights::load`] reads).
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let modules = SentenceTransformerModules::load(dir)?;
    Ok([dir.join("config.json"), dir.join("model.safetensors")]
        .into_iter()
        .chain(modules.dense.iter().map(|module| module.weights_path()))
        .collect())
}

/// `W_last · … · W_first` in f64, rounded once to f32: `[out_last, in_first]`, from the Dense
/// weights in the files' `[out, in]` layout.
fn fold_dense(dense: &[Vec<f32>], in_features: usize) -> Vec<f32> {
    let mut folded: Vec<f64> = dense[0].iter().map(|&x| x as f64).collect();
    let mut rows = dense[0].len() / in_features;
    for w in &dense[1..] {
        let out = w.len() / rows;
        let w64: Vec<f64> = w.iter().map(|&x| x as f64).collect();
        let mut next = vec![0f64; out * in_features];
        // SAFETY: `w64` is [out, rows], `folded` is [rows, in_features] and `next` is
        // [out, in_features], all row-major with the strides given; the buffers do not overlap.
        unsafe {
            gemm::gemm(
                out,
                in_features,
                rows,
                next.as_mut_ptr(),
                1,
                in_features as isize,
                false,
                w64.as_ptr(),
                1,
                rows as isize,
                folded.as_ptr(),
                1,
                in_features as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::Rayon(0),
            );
        }
        folded = next;
        rows = out;
    }
    folded.into_iter().map(|x| x as f32).collect()
}

/// A Linear layer's weight, PyTorch's `[out_features, in_features]` matrix `W` of
/// `y = x · Wᵀ`, held input-major: `[in_features, out_features]` row-major, which is `Wᵀ`.
/// The CPU GEMM packs `Wᵀ` in this layout inside its threads, from contiguous columns (or reads
/// it as it is for a short batch); in the files' layout it packs the whole weight on one thread,
/// through strided reads, before every call ([`crate::backend::cpu::ops::linear_input_major`]).
#[derive(Clone, Debug)]
pub struct Linear {
    in_features: usize,
    out_features: usize,
    input_major: Vec<f32>,
}

impl Linear {
    /// From `weight` in PyTorch's layout, `[out_features, in_features]` row-major.
    pub fn from_output_major(weight: &[f32], out_features: usize, in_features: usize) -> Self {
        Self {
            in_features,
            out_features,
            input_major: transpose(weight, out_features, in_features),
        }
    }

    pub fn in_features(&self) -> usize {
        self.in_features
    }

    pub fn out_features(&self) -> usize {
        self.out_features
    }

    /// `[in_features, out_features]` row-major: element `(k, n)` is `W[n][k]`.
    pub fn input_major(&self) -> &[f32] {
        &self.input_major
    }

    /// A copy in PyTorch's layout, `[out_features, in_features]` row-major.
    pub fn to_output_major(&self) -> Vec<f32> {
        transpose(&self.input_major, self.in_features, self.out_features)
    }
}

/// `matrix` (`[rows, cols]` row-major) transposed: `[cols, rows]` row-major. Bands of output
/// rows go to the rayon pool; each band reads its columns of every input row in turn.
fn transpose(matrix: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    assert_eq!(matrix.len(), rows * cols);
    const BAND: usize = 32;
    let mut out = vec![0f32; matrix.len()];
    if rows == 0 || cols == 0 {
        return out;
    }
    out.par_chunks_mut(BAND * rows)
        .enumerate()
        .for_each(|(band, out)| {
            let first_col = band * BAND;
            let band_cols = out.len() / rows;
            for (r, row) in matrix.chunks_exact(cols).enumerate() {
                for (c, &value) in row[first_col..first_col + band_cols].iter().enumerate() {
                    out[c * rows + r] = value;
                }
            }
        });
    out
}

/// A memory-mapped safetensors file with its parsed header.
struct TensorFile {
    path: PathBuf,
    mmap: Mmap,
    /// Start of the data section (8-byte length + header).
    data_start: usize,
    metadata: Metadata,
}

impl TensorFile {
    fn open(path: &Path) -> Result<Self> {
        let io_error = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io_error)?;
        // SAFETY: read-only mapping of a model file that is not modified while loading; the
        // bytes are copied into owned f32 vectors before the mapping is dropped.
        let mmap = unsafe { Mmap::map(&file) }.map_err(io_error)?;
        let (header_len, metadata) =
            SafeTensors::read_metadata(&mmap).map_err(|e| Error::Tensor {
                path: path.to_path_buf(),
                name: "(header)".into(),
                message: e.to_string(),
            })?;
        Ok(Self {
            path: path.to_path_buf(),
            mmap,
            data_start: 8 + header_len,
            metadata,
        })
    }

    fn error(&self, name: &str, message: String) -> Error {
        Error::Tensor {
            path: self.path.clone(),
            name: name.to_string(),
            message,
        }
    }

    /// The tensor `name` as float32, checked to have `shape`.
    fn load(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let info = self
            .metadata
            .info(name)
            .ok_or_else(|| self.error(name, format!("missing (expected shape {shape:?})")))?;
        if info.shape != shape {
            return Err(self.error(
                name,
                format!("shape {:?} in the file, expected {shape:?}", info.shape),
            ));
        }
        // `read_metadata` checked that every tensor's offsets lie inside the file and match its
        // shape and dtype.
        let (start, end) = info.data_offsets;
        let bytes = &self.mmap[self.data_start + start..self.data_start + end];
        let n: usize = shape.iter().product();
        let mut out = vec![0f32; n];
        match info.dtype {
            Dtype::F32 => convert(bytes, &mut out, |b: [u8; 4]| f32::from_le_bytes(b)),
            Dtype::BF16 => convert(bytes, &mut out, |b: [u8; 2]| {
                half::bf16::from_bits(u16::from_le_bytes(b)).to_f32()
            }),
            Dtype::F16 => convert(bytes, &mut out, |b: [u8; 2]| {
                half::f16::from_bits(u16::from_le_bytes(b)).to_f32()
            }),
            other => {
                return Err(self.error(
                    name,
                    format!("dtype {other:?} is not supported (F32, BF16 or F16)"),
                ))
            }
        }
        Ok(out)
    }
}

/// Decode little-endian elements of `N` bytes into `out`, in parallel chunks.
fn convert<const N: usize>(bytes: &[u8], out: &mut [f32], decode: impl Fn([u8; N]) -> f32 + Sync) {
    const CHUNK: usize = 1 << 16;
    out.par_chunks_mut(CHUNK)
        .zip(bytes.par_chunks(CHUNK * N))
        .for_each(|(out, bytes)| {
            for (x, b) in out.iter_mut().zip(bytes.chunks_exact(N)) {
                *x = decode(b.try_into().expect("chunks_exact yields N bytes"));
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_linear_weight_is_held_as_its_transpose_and_given_back_as_loaded() {
        // Shapes around the transpose's 32-column bands: one band, a band and a piece, several;
        // and empty ones.
        for (out_features, in_features) in
            [(3, 5), (40, 7), (7, 70), (65, 33), (1, 1), (0, 5), (5, 0)]
        {
            let weight: Vec<f32> = (0..out_features * in_features)
                .map(|i| i as f32 * 0.5 - 3.0)
                .collect();
            let linear = Linear::from_output_major(&weight, out_features, in_features);
            assert_eq!(linear.in_features(), in_features);
            assert_eq!(linear.out_features(), out_features);
            for n in 0..out_features {
                for k in 0..in_features {
                    assert_eq!(
                        linear.input_major()[k * out_features + n],
                        weight[n * in_features + k],
                        "{out_features}x{in_features}: ({n}, {k})"
                    );
                }
            }
            assert_eq!(linear.to_output_major(), weight);
        }
    }
}
