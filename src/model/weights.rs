//! Weights from `model.safetensors`, `2_Dense/model.safetensors`, `3_Dense/model.safetensors`,
//! memory-mapped and converted to float32 (F32, BF16 and F16 files are accepted). Every
//! matrix is row-major `[out, in]` as stored (PyTorch Linear convention).

use std::path::Path;

use super::ModelConfig;
use crate::Result;

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
    pub fn load(dir: &Path, config: &ModelConfig) -> Result<Self> {
        todo!("foundation: load {dir:?} for {config:?}")
    }
}
