//! Model configuration read from the model directory: `config.json` (Gemma3 text),
//! `modules.json`, `1_Pooling/config.json`, `2_Dense/config.json`, `3_Dense/config.json`,
//! `config_sentence_transformers.json` and `sentence_bert_config.json`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::{Error, Result};

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
    /// Read every configuration file of a sentence-transformers EmbeddingGemma directory and
    /// refuse what the engine does not implement, naming the file and field.
    pub fn load(dir: &Path) -> Result<Self> {
        let hf = JsonFile::read(&dir.join("config.json"))?;
        let modules = SentenceTransformerModules::load(dir)?;

        let model_type = hf.str("model_type")?;
        if model_type != "gemma3_text" {
            return Err(hf.refuse(
                "model_type",
                format!("`{model_type}` is not supported (expected `gemma3_text`)"),
            ));
        }
        if !hf.bool("use_bidirectional_attention")? {
            return Err(hf.refuse(
                "use_bidirectional_attention",
                "must be true: the engine implements the bidirectional EmbeddingGemma attention only",
            ));
        }
        for field in [
            "attn_logit_softcapping",
            "final_logit_softcapping",
            "rope_scaling",
        ] {
            if !hf.is_null_or_absent(field) {
                return Err(hf.refuse(field, "must be null: the engine does not implement it"));
            }
        }
        if !hf.is_null_or_absent("attention_bias") && hf.bool("attention_bias")? {
            return Err(hf.refuse(
                "attention_bias",
                "must be false: the engine has no attention bias",
            ));
        }
        let activation = hf.str("hidden_activation")?;
        if activation != "gelu_pytorch_tanh" {
            return Err(hf.refuse(
                "hidden_activation",
                format!("`{activation}` is not supported (expected `gelu_pytorch_tanh`)"),
            ));
        }

        let hidden_size = hf.positive("hidden_size")?;
        let num_layers = hf.positive("num_hidden_layers")?;
        let num_heads = hf.positive("num_attention_heads")?;
        let num_kv_heads = hf.positive("num_key_value_heads")?;
        if num_heads % num_kv_heads != 0 {
            return Err(hf.refuse(
                "num_key_value_heads",
                format!("{num_kv_heads} does not divide num_attention_heads = {num_heads}"),
            ));
        }
        let sliding_window = hf.positive("sliding_window")?;
        let layer_kinds = layer_schedule(&hf, num_layers)?;
        let max_position_embeddings = hf.positive("max_position_embeddings")?;

        let max_seq_len = modules.max_seq_len.unwrap_or(max_position_embeddings);
        if max_seq_len > max_position_embeddings {
            return Err(Error::Config {
                path: dir.join("sentence_bert_config.json"),
                field: "max_seq_length".into(),
                message: format!(
                    "{max_seq_len} exceeds max_position_embeddings = {max_position_embeddings}"
                ),
            });
        }
        if modules.pooling_dim != hidden_size {
            return Err(Error::Config {
                path: modules.pooling_path.clone(),
                field: "word_embedding_dimension".into(),
                message: format!(
                    "{} differs from hidden_size = {hidden_size}",
                    modules.pooling_dim
                ),
            });
        }
        let mut in_features = hidden_size;
        for dense in &modules.dense {
            if dense.in_features != in_features {
                return Err(Error::Config {
                    path: dense.config_path.clone(),
                    field: "in_features".into(),
                    message: format!(
                        "{} differs from the width of the previous stage, {in_features}",
                        dense.in_features
                    ),
                });
            }
            in_features = dense.out_features;
        }

        Ok(Self {
            hidden_size,
            intermediate_size: hf.positive("intermediate_size")?,
            num_layers,
            num_heads,
            num_kv_heads,
            head_dim: hf.positive("head_dim")?,
            vocab_size: hf.positive("vocab_size")?,
            rms_norm_eps: hf.f64("rms_norm_eps")? as f32,
            query_pre_attn_scalar: hf.f64("query_pre_attn_scalar")? as f32,
            // transformers turns the raw value into the exclusive bound `sliding_window/2 + 1`
            // for bidirectional models (configuration_gemma3.py), i.e. |i - j| <= sliding_window/2.
            window_radius: sliding_window / 2,
            rope_theta_sliding: hf.f64("rope_local_base_freq")? as f32,
            rope_theta_full: hf.f64("rope_theta")? as f32,
            layer_kinds,
            max_position_embeddings,
            max_seq_len,
            dense_out_features: modules.dense.iter().map(|d| d.out_features).collect(),
            embedding_dim: in_features,
            prompts: modules.prompts,
            default_prompt_name: modules.default_prompt_name,
            weight_dtype: safetensors_dtype(&dir.join("model.safetensors"))?,
        })
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

/// Layer kinds from `layer_types`, or from the sliding-window pattern when that list is absent
/// (transformers: layer `i` is full iff `(i + 1) % pattern == 0`).
fn layer_schedule(hf: &JsonFile, num_layers: usize) -> Result<Vec<LayerKind>> {
    if let Some(types) = hf.get("layer_types").filter(|v| !v.is_null()) {
        let types = types
            .as_array()
            .ok_or_else(|| hf.refuse("layer_types", "must be an array of strings"))?;
        if types.len() != num_layers {
            return Err(hf.refuse(
                "layer_types",
                format!(
                    "has {} entries, num_hidden_layers is {num_layers}",
                    types.len()
                ),
            ));
        }
        return types
            .iter()
            .enumerate()
            .map(|(i, t)| match t.as_str() {
                Some("sliding_attention") => Ok(LayerKind::Sliding),
                Some("full_attention") => Ok(LayerKind::Full),
                _ => Err(hf.refuse(
                    &format!("layer_types[{i}]"),
                    format!("{t} is not `sliding_attention` or `full_attention`"),
                )),
            })
            .collect();
    }
    let field = ["sliding_window_pattern", "_sliding_window_pattern"]
        .into_iter()
        .find(|f| hf.get(f).is_some_and(|v| !v.is_null()))
        .ok_or_else(|| {
            hf.refuse(
                "layer_types",
                "absent, and no `sliding_window_pattern` to derive it from",
            )
        })?;
    let pattern = hf.positive(field)?;
    Ok((0..num_layers)
        .map(|i| {
            if (i + 1) % pattern == 0 {
                LayerKind::Full
            } else {
                LayerKind::Sliding
            }
        })
        .collect())
}

/// Storage dtype of a safetensors file: `F32`, `BF16`, ... or `mixed (A, B)`.
fn safetensors_dtype(path: &Path) -> Result<String> {
    let file = std::fs::File::open(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    // SAFETY: the file is opened read-only and only read through this mapping while it lives;
    // model files are not expected to change while they are being loaded.
    let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let (_, metadata) =
        safetensors::SafeTensors::read_metadata(&mmap).map_err(|e| Error::Tensor {
            path: path.to_path_buf(),
            name: "(header)".into(),
            message: e.to_string(),
        })?;
    let mut dtypes: Vec<String> = metadata
        .tensors()
        .values()
        .map(|info| format!("{:?}", info.dtype))
        .collect();
    dtypes.sort();
    dtypes.dedup();
    Ok(match dtypes.len() {
        1 => dtypes.remove(0),
        _ => format!("mixed ({})", dtypes.join(", ")),
    })
}

/// One Dense module of the sentence-transformers pipeline.
#[derive(Clone, Debug)]
pub(crate) struct DenseModule {
    /// The module directory (`2_Dense`), holding `config.json` and `model.safetensors`.
    pub dir: PathBuf,
    pub config_path: PathBuf,
    pub in_features: usize,
    pub out_features: usize,
}

impl DenseModule {
    /// The module's weights (`2_Dense/model.safetensors`).
    pub fn weights_path(&self) -> PathBuf {
        self.dir.join("model.safetensors")
    }
}

/// What the sentence-transformers files say: `modules.json` (Transformer, Pooling, Dense...,
/// Normalize), the pooling and Dense configs, prompts and max_seq_length.
#[derive(Clone, Debug)]
pub(crate) struct SentenceTransformerModules {
    pub pooling_path: PathBuf,
    pub pooling_dim: usize,
    pub dense: Vec<DenseModule>,
    pub prompts: BTreeMap<String, String>,
    pub default_prompt_name: Option<String>,
    pub max_seq_len: Option<usize>,
}

const TRANSFORMER: &str = "sentence_transformers.models.Transformer";
const POOLING: &str = "sentence_transformers.models.Pooling";
const DENSE: &str = "sentence_transformers.models.Dense";
const NORMALIZE: &str = "sentence_transformers.models.Normalize";
const IDENTITY: &str = "torch.nn.modules.linear.Identity";

impl SentenceTransformerModules {
    pub(crate) fn load(dir: &Path) -> Result<Self> {
        let modules_file = JsonFile::read(&dir.join("modules.json"))?;
        let modules = modules_file
            .value
            .as_array()
            .ok_or_else(|| modules_file.refuse("(root)", "must be an array of modules"))?;
        let mut stages = Vec::with_capacity(modules.len());
        for (i, module) in modules.iter().enumerate() {
            let field = |name: &str| format!("[{i}].{name}");
            let kind = module
                .get("type")
                .and_then(Value::as_str)
                .ok_or_else(|| modules_file.refuse(&field("type"), "missing or not a string"))?;
            let path = module
                .get("path")
                .and_then(Value::as_str)
                .ok_or_else(|| modules_file.refuse(&field("path"), "missing or not a string"))?;
            let expected = match i {
                0 => &[TRANSFORMER][..],
                1 => &[POOLING][..],
                _ if i + 1 == modules.len() => &[NORMALIZE][..],
                _ => &[DENSE][..],
            };
            if !expected.contains(&kind) {
                return Err(modules_file.refuse(
                    &field("type"),
                    format!(
                        "`{kind}` is not supported here: the engine runs Transformer, Pooling, \
                         Dense..., Normalize (expected `{}`)",
                        expected[0]
                    ),
                ));
            }
            stages.push((kind, dir.join(path)));
        }
        if stages.len() < 3 {
            return Err(modules_file.refuse(
                "(root)",
                format!(
                    "has {} modules; expected Transformer, Pooling, Dense..., Normalize",
                    stages.len()
                ),
            ));
        }

        let pooling = JsonFile::read(&stages[1].1.join("config.json"))?;
        let modes = pooling.value.as_object().map(|o| {
            o.iter()
                .filter(|(k, v)| k.starts_with("pooling_mode_") && v.as_bool() == Some(true))
                .map(|(k, _)| k.clone())
                .collect::<Vec<_>>()
        });
        match modes.as_deref() {
            Some([mode]) if mode == "pooling_mode_mean_tokens" => {}
            Some(modes) => {
                let other = modes.iter().find(|m| *m != "pooling_mode_mean_tokens");
                return Err(pooling.refuse(
                    other.map_or("pooling_mode_mean_tokens", String::as_str),
                    "only mean pooling (`pooling_mode_mean_tokens` alone) is implemented",
                ));
            }
            None => return Err(pooling.refuse("(root)", "must be an object")),
        }
        if !pooling.is_null_or_absent("include_prompt") && !pooling.bool("include_prompt")? {
            return Err(pooling.refuse(
                "include_prompt",
                "must be true: pooling without the prompt tokens is not implemented",
            ));
        }
        let pooling_dim = pooling.positive("word_embedding_dimension")?;

        let mut dense = Vec::new();
        for (_, module_dir) in &stages[2..stages.len() - 1] {
            let config = JsonFile::read(&module_dir.join("config.json"))?;
            if config.bool("bias")? {
                return Err(
                    config.refuse("bias", "must be false: Dense with bias is not implemented")
                );
            }
            let activation = config.str("activation_function")?;
            if activation != IDENTITY {
                return Err(config.refuse(
                    "activation_function",
                    format!("`{activation}` is not implemented (only `{IDENTITY}`)"),
                ));
            }
            dense.push(DenseModule {
                dir: module_dir.clone(),
                config_path: config.path.clone(),
                in_features: config.positive("in_features")?,
                out_features: config.positive("out_features")?,
            });
        }
        if dense.is_empty() {
            return Err(
                modules_file.refuse("(root)", "no Dense module between Pooling and Normalize")
            );
        }

        let (prompts, default_prompt_name) =
            read_prompts(&dir.join("config_sentence_transformers.json"))?;

        let bert_path = dir.join("sentence_bert_config.json");
        let max_seq_len = if bert_path.exists() {
            let bert = JsonFile::read(&bert_path)?;
            if !bert.is_null_or_absent("do_lower_case") && bert.bool("do_lower_case")? {
                return Err(bert.refuse(
                    "do_lower_case",
                    "must be false: lower-casing is not implemented",
                ));
            }
            Some(bert.positive("max_seq_length")?)
        } else {
            None
        };

        Ok(Self {
            pooling_path: pooling.path,
            pooling_dim,
            dense,
            prompts,
            default_prompt_name,
            max_seq_len,
        })
    }
}

/// Prompts and the default prompt name; the file is optional (no prompts without it).
fn read_prompts(path: &Path) -> Result<(BTreeMap<String, String>, Option<String>)> {
    if !path.exists() {
        return Ok((BTreeMap::new(), None));
    }
    let file = JsonFile::read(path)?;
    let mut prompts = BTreeMap::new();
    if let Some(map) = file.get("prompts").filter(|v| !v.is_null()) {
        let map = map
            .as_object()
            .ok_or_else(|| file.refuse("prompts", "must be an object of strings"))?;
        for (name, prompt) in map {
            let prompt = prompt
                .as_str()
                .ok_or_else(|| file.refuse(&format!("prompts.{name}"), "must be a string"))?;
            prompts.insert(name.clone(), prompt.to_string());
        }
    }
    let default_prompt_name = match file.get("default_prompt_name") {
        None | Some(Value::Null) => None,
        Some(Value::String(name)) if prompts.contains_key(name) => Some(name.clone()),
        Some(other) => {
            return Err(file.refuse(
                "default_prompt_name",
                format!("{other} is not one of the prompts"),
            ))
        }
    };
    Ok((prompts, default_prompt_name))
}

/// A parsed JSON file that remembers its path, so every error names file and field.
struct JsonFile {
    path: PathBuf,
    value: Value,
}

impl JsonFile {
    fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let value = serde_json::from_str(&text).map_err(|source| Error::Json {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            value,
        })
    }

    fn refuse(&self, field: &str, message: impl Into<String>) -> Error {
        Error::Config {
            path: self.path.clone(),
            field: field.to_string(),
            message: message.into(),
        }
    }

    fn get(&self, field: &str) -> Option<&Value> {
        self.value.get(field)
    }

    fn is_null_or_absent(&self, field: &str) -> bool {
        self.get(field).is_none_or(Value::is_null)
    }

    fn required(&self, field: &str) -> Result<&Value> {
        self.get(field).ok_or_else(|| self.refuse(field, "missing"))
    }

    fn str(&self, field: &str) -> Result<&str> {
        self.required(field)?
            .as_str()
            .ok_or_else(|| self.refuse(field, "must be a string"))
    }

    fn bool(&self, field: &str) -> Result<bool> {
        self.required(field)?
            .as_bool()
            .ok_or_else(|| self.refuse(field, "must be true or false"))
    }

    fn f64(&self, field: &str) -> Result<f64> {
        let value = self
            .required(field)?
            .as_f64()
            .ok_or_else(|| self.refuse(field, "must be a number"))?;
        if value.is_finite() && value > 0.0 {
            Ok(value)
        } else {
            Err(self.refuse(field, format!("must be positive and finite, got {value}")))
        }
    }

    fn positive(&self, field: &str) -> Result<usize> {
        let value = self.required(field)?;
        match value.as_u64() {
            Some(n) if n > 0 => Ok(n as usize),
            _ => Err(self.refuse(field, format!("must be a positive integer, got {value}"))),
        }
    }
}
