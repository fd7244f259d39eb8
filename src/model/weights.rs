//! Weights from `model.safetensors`, `2_Dense/model.safetensors`, `3_Dense/model.safetensors`,
//! memory-mapped and converted to float32 (F32, BF16 and F16 files are accepted). Every
//! matrix is row-major `[out, in]` as stored (PyTorch Linear convention).

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
    pub q_proj: Vec<f32>,                     // [heads*head_dim, hidden]
    pub k_proj: Vec<f32>,                     // [kv_heads*head_dim, hidden]
    pub v_proj: Vec<f32>,                     // [kv_heads*head_dim, hidden]
    pub q_norm: Vec<f32>,                     // [head_dim]
    pub k_norm: Vec<f32>,                     // [head_dim]
    pub o_proj: Vec<f32>,                     // [hidden, heads*head_dim]
    pub post_attention_layernorm: Vec<f32>,   // [hidden]
    pub pre_feedforward_layernorm: Vec<f32>,  // [hidden]
    pub gate_proj: Vec<f32>,                  // [intermediate, hidden]
    pub up_proj: Vec<f32>,                    // [intermediate, hidden]
    pub down_proj: Vec<f32>,                  // [hidden, intermediate]
    pub post_feedforward_layernorm: Vec<f32>, // [hidden]
}

#[derive(Clone, Debug)]
pub struct ModelWeights {
    pub embed_tokens: Vec<f32>, // [vocab, hidden]
    pub layers: Vec<LayerWeights>,
    pub final_norm: Vec<f32>, // [hidden]
    /// The Dense modules in order, each `[out, in]` (`2_Dense` [3072,768], `3_Dense` [768,3072]).
    pub dense: Vec<Vec<f32>>,
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
                Ok(LayerWeights {
                    input_layernorm: t("input_layernorm.weight", &[h])?,
                    q_proj: t("self_attn.q_proj.weight", &[q_width, h])?,
                    k_proj: t("self_attn.k_proj.weight", &[kv_width, h])?,
                    v_proj: t("self_attn.v_proj.weight", &[kv_width, h])?,
                    q_norm: t("self_attn.q_norm.weight", &[config.head_dim])?,
                    k_norm: t("self_attn.k_norm.weight", &[config.head_dim])?,
                    o_proj: t("self_attn.o_proj.weight", &[h, q_width])?,
                    post_attention_layernorm: t("post_attention_layernorm.weight", &[h])?,
                    pre_feedforward_layernorm: t("pre_feedforward_layernorm.weight", &[h])?,
                    gate_proj: t("mlp.gate_proj.weight", &[inter, h])?,
                    up_proj: t("mlp.up_proj.weight", &[inter, h])?,
                    down_proj: t("mlp.down_proj.weight", &[h, inter])?,
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

/// `W_last · … · W_first` in f64, rounded once to f32: `[out_last, in_first]`.
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
