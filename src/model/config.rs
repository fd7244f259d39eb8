//! Model configuration read from the model directory: `config.json` (Gemma3 text),
//! `modules.json`, `1_Pooling/config.json`, `2_Dense/config.json`, `3_Dense/config.json`,
//! `config_sentence_transformers.json` and `sentence_bert_config.json`.

use std::collections::BTreeMap;
use std::path::Path;

use crate::Result;

/// Attention kind of one layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerKind {
    /// Bidirectional window: token i attends to j iff |i - j| <= `window_radius`.
    Sliding,
    /// Every token attends to every token of its sequence.
    Full,
}

/// Everything numeric the engine takes from the model files. Kernels and the CPU engine read
/// these; no model number is a literal elsewhere (beyond tile sizes checked against it).
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub rms_norm_eps: f32,
    /// Softmax scale is `query_pre_attn_scalar^-0.5`.
    pub query_pre_attn_scalar: f32,
    /// Bidirectional sliding window radius: `sliding_window / 2` (512 in config.json -> 256),
    /// because transformers turns the raw value into an exclusive bound of `sliding_window/2 + 1`.
    pub window_radius: usize,
    /// RoPE base of sliding layers (`rope_local_base_freq`).
    pub rope_theta_sliding: f32,
    /// RoPE base of full layers (`rope_theta`).
    pub rope_theta_full: f32,
    pub layer_kinds: Vec<LayerKind>,
    pub max_position_embeddings: usize,
    /// `sentence_bert_config.json` max_seq_length.
    pub max_seq_len: usize,
    /// Output widths of the Dense modules in order (`[3072, 768]` for EmbeddingGemma).
    pub dense_out_features: Vec<usize>,
    /// Width of the final embedding (last Dense's out_features).
    pub embedding_dim: usize,
    /// Named prompts from `config_sentence_transformers.json`.
    pub prompts: BTreeMap<String, String>,
    pub default_prompt_name: Option<String>,
    /// Storage dtype of `model.safetensors` (`F32`, `BF16`, `F16`), for `info`.
    pub weight_dtype: String,
}

impl ModelConfig {
    pub fn load(dir: &Path) -> Result<Self> {
        todo!("foundation: parse {dir:?}")
    }

    pub fn layer_kind(&self, layer: usize) -> LayerKind {
        self.layer_kinds[layer]
    }

    pub fn rope_theta(&self, layer: usize) -> f32 {
        match self.layer_kinds[layer] {
            LayerKind::Sliding => self.rope_theta_sliding,
            LayerKind::Full => self.rope_theta_full,
        }
    }

    /// Window radius of a layer: `Some(r)` for sliding layers, `None` for full attention.
    pub fn window(&self, layer: usize) -> Option<usize> {
        match self.layer_kinds[layer] {
            LayerKind::Sliding => Some(self.window_radius),
            LayerKind::Full => None,
        }
    }

    /// `query_pre_attn_scalar^-0.5` (1/16 for EmbeddingGemma).
    pub fn attention_scale(&self) -> f32 {
        self.query_pre_attn_scalar.powf(-0.5)
    }

    /// Embedding scale `sqrt(hidden_size)` as float32.
    pub fn embed_scale(&self) -> f32 {
        (self.hidden_size as f32).sqrt()
    }
}
