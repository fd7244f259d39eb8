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
        let (rope_theta_sliding, rope_theta_full) = rope_thetas(&hf)?;
        let layer_kinds = layer_schedule(&hf, num_layers)?;
        let max_position_embeddings = hf.positive("max_position_embeddings")?;

        // sentence-transformers: sentence_bert_config.json's max_seq_length, else the
        // tokenizer's model_max_length (what version 6 saves) capped at the positions.
        let max_seq_len = match modules.max_seq_len {
            Some(n) if n > max_position_embeddings => {
                return Err(Error::Config {
                    path: dir.join("sentence_bert_config.json"),
                    field: "max_seq_length".into(),
                    message: format!(
                        "{n} exceeds max_position_embeddings = {max_position_embeddings}"
                    ),
                })
            }
            Some(n) => n,
            None => tokenizer_max_length(dir)?
                .map_or(max_position_embeddings, |n| n.min(max_position_embeddings)),
        };
        if modules.pooling_dim != hidden_size {
            return Err(Error::Config {
                path: modules.pooling_path.clone(),
                field: modules.pooling_dim_field.into(),
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
            rope_theta_sliding,
            rope_theta_full,
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

/// RoPE's theta on sliding and on full layers: `rope_local_base_freq` and `rope_theta`, or,
/// as transformers 5 writes them, `rope_parameters.sliding_attention.rope_theta` and
/// `rope_parameters.full_attention.rope_theta`. Only plain RoPE (`rope_type` `default`) is
/// implemented: a scaled one is refused rather than ignored.
fn rope_thetas(hf: &JsonFile) -> Result<(f32, f32)> {
    let Some(params) = hf.get("rope_parameters").filter(|v| !v.is_null()) else {
        return Ok((
            hf.f64("rope_local_base_freq")? as f32,
            hf.f64("rope_theta")? as f32,
        ));
    };
    let theta = |kind: &str| -> Result<f32> {
        let field = format!("rope_parameters.{kind}");
        let entry = params
            .get(kind)
            .filter(|v| v.is_object())
            .ok_or_else(|| hf.refuse(&field, "missing or not an object"))?;
        match entry.get("rope_type").and_then(Value::as_str) {
            None | Some("default") => {}
            Some(other) => {
                return Err(hf.refuse(
                    &format!("{field}.rope_type"),
                    format!("`{other}` is not implemented (only `default`)"),
                ))
            }
        }
        match entry.get("rope_theta").and_then(Value::as_f64) {
            Some(theta) if theta.is_finite() && theta > 0.0 => Ok(theta as f32),
            _ => Err(hf.refuse(
                &format!("{field}.rope_theta"),
                "missing, or not a positive number",
            )),
        }
    };
    Ok((theta("sliding_attention")?, theta("full_attention")?))
}

/// The tokenizer's `model_max_length` from `tokenizer_config.json`, where the file gives one as
/// an integer (transformers writes a huge float for "no limit").
fn tokenizer_max_length(dir: &Path) -> Result<Option<usize>> {
    let path = dir.join("tokenizer_config.json");
    if !path.exists() {
        return Ok(None);
    }
    let file = JsonFile::read(&path)?;
    Ok(file
        .get("model_max_length")
        .and_then(Value::as_u64)
        .filter(|&n| n > 0)
        .map(|n| n as usize))
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
    /// `word_embedding_dimension`, or `embedding_dimension` (sentence-transformers 6).
    pub pooling_dim_field: &'static str,
    pub dense: Vec<DenseModule>,
    pub prompts: BTreeMap<String, String>,
    pub default_prompt_name: Option<String>,
    pub max_seq_len: Option<usize>,
}

const IDENTITY: &str = "torch.nn.modules.linear.Identity";

/// The class of a sentence-transformers module type: `Dense` for
/// `sentence_transformers.models.Dense` (what versions up to 5 write) and for
/// `sentence_transformers.base.modules.dense.Dense` (version 6); `None` for other packages.
fn module_class(kind: &str) -> Option<&str> {
    kind.strip_prefix("sentence_transformers.")?
        .rsplit('.')
        .next()
}

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
                0 => "Transformer",
                1 => "Pooling",
                _ if i + 1 == modules.len() => "Normalize",
                _ => "Dense",
            };
            if module_class(kind) != Some(expected) {
                return Err(modules_file.refuse(
                    &field("type"),
                    format!(
                        "`{kind}` is not supported here: the engine runs Transformer, Pooling, \
                         Dense..., Normalize (expected sentence-transformers' `{expected}`)"
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
        let (pooling_dim, pooling_dim_field) = if pooling.get("pooling_mode").is_some() {
            // sentence-transformers 6: one mode by name, and the width as embedding_dimension.
            let mode = pooling.str("pooling_mode")?;
            if mode != "mean" {
                return Err(pooling.refuse(
                    "pooling_mode",
                    format!("`{mode}`: only mean pooling (`mean`) is implemented"),
                ));
            }
            (
                pooling.positive("embedding_dimension")?,
                "embedding_dimension",
            )
        } else {
            check_pooling_flags(&pooling)?;
            let field = "word_embedding_dimension";
            (pooling.positive(field)?, field)
        };
        if !pooling.is_null_or_absent("include_prompt") && !pooling.bool("include_prompt")? {
            return Err(pooling.refuse(
                "include_prompt",
                "must be true: pooling without the prompt tokens is not implemented",
            ));
        }

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
            // Absent where sentence-transformers 6 saved the model (the tokenizer has it).
            if bert.is_null_or_absent("max_seq_length") {
                None
            } else {
                Some(bert.positive("max_seq_length")?)
            }
        } else {
            None
        };

        Ok(Self {
            pooling_path: pooling.path,
            pooling_dim,
            pooling_dim_field,
            dense,
            prompts,
            default_prompt_name,
            max_seq_len,
        })
    }
}

/// The pooling flags of sentence-transformers up to version 5: `pooling_mode_mean_tokens` must
/// be the only one set.
fn check_pooling_flags(pooling: &JsonFile) -> Result<()> {
    let modes = pooling.value.as_object().map(|o| {
        o.iter()
            .filter(|(k, v)| k.starts_with("pooling_mode_") && v.as_bool() == Some(true))
            .map(|(k, _)| k.clone())
            .collect::<Vec<_>>()
    });
    match modes.as_deref() {
        Some([mode]) if mode == "pooling_mode_mean_tokens" => Ok(()),
        Some(modes) => {
            let other = modes.iter().find(|m| *m != "pooling_mode_mean_tokens");
            Err(pooling.refuse(
                other.map_or("pooling_mode_mean_tokens", String::as_str),
                "only mean pooling (`pooling_mode_mean_tokens` alone) is implemented",
            ))
        }
        None => Err(pooling.refuse("(root)", "must be an object")),
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
            // A null prompt prepends nothing, as in sentence-transformers.
            let prompt = match prompt {
                Value::Null => "",
                other => other.as_str().ok_or_else(|| {
                    file.refuse(&format!("prompts.{name}"), "must be a string or null")
                })?,
            };
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
