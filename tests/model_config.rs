//! Model loading: the real EmbeddingGemma configuration against the spec, and a tiny
//! hand-written model directory to check dtype conversion, the Dense fold and every refusal.

mod common;

use std::path::{Path, PathBuf};

use gemma_embed::model::{LayerKind, Model, ModelConfig, ModelWeights};
use gemma_embed::Error;
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use serde_json::{json, Value};

#[test]
fn real_model_config_matches_the_spec() {
    let Some(dir) = common::real_model_dir() else {
        return;
    };
    let config = ModelConfig::load(&dir).unwrap();
    // model-semantics.md section 0 and 5.
    assert_eq!(config.hidden_size, 768);
    assert_eq!(config.intermediate_size, 1152);
    assert_eq!(config.num_layers, 24);
    assert_eq!(
        (config.num_heads, config.num_kv_heads, config.head_dim),
        (3, 1, 256)
    );
    assert_eq!(config.vocab_size, 262144);
    assert_eq!(config.rms_norm_eps, 1e-6);
    assert_eq!(config.attention_scale(), 1.0 / 16.0);
    assert_eq!(config.window_radius, 256);
    assert_eq!(
        (config.rope_theta_sliding, config.rope_theta_full),
        (1e4, 1e6)
    );
    let full: Vec<usize> = (0..24)
        .filter(|&l| config.layer_kind(l) == LayerKind::Full)
        .collect();
    assert_eq!(full, [5, 11, 17, 23]);
    assert_eq!(config.window(0), Some(256));
    assert_eq!(config.window(5), None);
    assert_eq!(config.max_position_embeddings, 2048);
    assert_eq!(config.max_seq_len, 2048);
    assert_eq!(config.dense_out_features, [3072, 768]);
    assert_eq!(config.embedding_dim, 768);
    assert_eq!(config.prompts["query"], "task: search result | query: ");
    assert_eq!(config.prompts["document"], "title: none | text: ");
    assert_eq!(config.prompts.len(), 14);
    assert_eq!(config.default_prompt_name, None);
    assert_eq!(config.weight_dtype, "F32");
}

#[test]
fn real_model_loads_quickly_with_every_tensor() {
    let Some(dir) = common::real_model_dir() else {
        return;
    };
    let start = std::time::Instant::now();
    let model = Model::load_dir(&dir).unwrap();
    eprintln!("real model loaded in {:.2?}", start.elapsed());
    let w = &model.weights;
    assert_eq!(w.embed_tokens.len(), 262144 * 768);
    assert_eq!(w.layers.len(), 24);
    assert_eq!(w.dense.len(), 2);
    assert_eq!(w.dense_folded.len(), 768 * 768);
    // The fold against a plain f64 dot product, on a few entries.
    let (first, second) = (w.dense[0].to_output_major(), w.dense[1].to_output_major());
    for (r, c) in [(0, 0), (17, 700), (767, 767), (400, 3)] {
        let expected: f64 = (0..3072)
            .map(|k| second[r * 3072 + k] as f64 * first[k * 768 + c] as f64)
            .sum();
        let got = w.dense_folded[r * 768 + c] as f64;
        assert!(
            (got - expected).abs() <= 1e-6 * expected.abs().max(1e-3),
            "({r},{c}): {got} vs {expected}"
        );
    }
    assert!(w.embed_tokens.iter().all(|x| x.is_finite()));
}

// ---------------------------------------------------------------------------------------------
// A tiny model directory written by hand.

const HIDDEN: usize = 8;
const HEADS: usize = 2;
const KV_HEADS: usize = 1;
const HEAD_DIM: usize = 4;
const INTER: usize = 12;
const LAYERS: usize = 3;
const VOCAB: usize = 16;
const DENSE: [usize; 2] = [12, 8];

fn tiny_config() -> Value {
    json!({
        "model_type": "gemma3_text",
        "architectures": ["Gemma3TextModel"],
        "hidden_size": HIDDEN,
        "intermediate_size": INTER,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "head_dim": HEAD_DIM,
        "vocab_size": VOCAB,
        "rms_norm_eps": 1e-6,
        "query_pre_attn_scalar": 4,
        "sliding_window": 6,
        "rope_theta": 1000000.0,
        "rope_local_base_freq": 10000.0,
        "rope_scaling": null,
        "attn_logit_softcapping": null,
        "final_logit_softcapping": null,
        "attention_bias": false,
        "hidden_activation": "gelu_pytorch_tanh",
        "max_position_embeddings": 64,
        "use_bidirectional_attention": true,
        "layer_types": ["sliding_attention", "full_attention", "sliding_attention"]
    })
}

/// Deterministic values that bf16 and f16 represent exactly (multiples of 1/8 in [-2, 2)).
fn values(seed: usize, n: usize) -> Vec<f32> {
    let mut state = (seed as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) % 32) as f32 / 8.0 - 2.0
        })
        .collect()
}

fn tensor_list() -> Vec<(String, Vec<usize>)> {
    let mut list = vec![
        ("embed_tokens.weight".to_string(), vec![VOCAB, HIDDEN]),
        ("norm.weight".to_string(), vec![HIDDEN]),
    ];
    for i in 0..LAYERS {
        for (name, shape) in [
            ("input_layernorm.weight", vec![HIDDEN]),
            ("self_attn.q_proj.weight", vec![HEADS * HEAD_DIM, HIDDEN]),
            ("self_attn.k_proj.weight", vec![KV_HEADS * HEAD_DIM, HIDDEN]),
            ("self_attn.v_proj.weight", vec![KV_HEADS * HEAD_DIM, HIDDEN]),
            ("self_attn.q_norm.weight", vec![HEAD_DIM]),
            ("self_attn.k_norm.weight", vec![HEAD_DIM]),
            ("self_attn.o_proj.weight", vec![HIDDEN, HEADS * HEAD_DIM]),
            ("post_attention_layernorm.weight", vec![HIDDEN]),
            ("pre_feedforward_layernorm.weight", vec![HIDDEN]),
            ("mlp.gate_proj.weight", vec![INTER, HIDDEN]),
            ("mlp.up_proj.weight", vec![INTER, HIDDEN]),
            ("mlp.down_proj.weight", vec![HIDDEN, INTER]),
            ("post_feedforward_layernorm.weight", vec![HIDDEN]),
        ] {
            list.push((format!("layers.{i}.{name}"), shape));
        }
    }
    list
}

fn encode(values: &[f32], dtype: Dtype) -> Vec<u8> {
    match dtype {
        Dtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Dtype::BF16 => values
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
            .collect(),
        Dtype::F16 => values
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect(),
        other => panic!("no encoder for {other:?}"),
    }
}

/// Write `tensors` (name, shape, values) as a safetensors file.
fn write_safetensors(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)], dtype: Dtype) {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(name, shape, v)| (name.clone(), shape.clone(), encode(v, dtype)))
        .collect();
    let views = bytes.iter().map(|(name, shape, data)| {
        (
            name.clone(),
            TensorView::new(dtype, shape.clone(), data).unwrap(),
        )
    });
    safetensors::serialize_to_file(views, None, path).unwrap();
}

fn write_json(path: &Path, value: &Value) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, serde_json::to_string_pretty(value).unwrap()).unwrap();
}

fn main_tensors() -> Vec<(String, Vec<usize>, Vec<f32>)> {
    tensor_list()
        .into_iter()
        .enumerate()
        .map(|(i, (name, shape))| {
            let n = shape.iter().product();
            (name, shape, values(i, n))
        })
        .collect()
}

fn dense_tensors(k: usize) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let (out, inp) = if k == 0 {
        (DENSE[0], HIDDEN)
    } else {
        (DENSE[1], DENSE[0])
    };
    vec![(
        "linear.weight".to_string(),
        vec![out, inp],
        values(100 + k, out * inp),
    )]
}

/// A complete tiny sentence-transformers model directory with weights stored as `dtype`.
fn tiny_model(dtype: Dtype) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_json(&dir.join("config.json"), &tiny_config());
    write_json(
        &dir.join("modules.json"),
        &json!([
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"},
            {"idx": 3, "name": "3", "path": "3_Dense", "type": "sentence_transformers.models.Dense"},
            {"idx": 4, "name": "4", "path": "4_Normalize", "type": "sentence_transformers.models.Normalize"}
        ]),
    );
    write_json(
        &dir.join("1_Pooling/config.json"),
        &json!({
            "word_embedding_dimension": HIDDEN,
            "pooling_mode_cls_token": false,
            "pooling_mode_mean_tokens": true,
            "pooling_mode_max_tokens": false,
            "pooling_mode_mean_sqrt_len_tokens": false,
            "pooling_mode_weightedmean_tokens": false,
            "pooling_mode_lasttoken": false,
            "include_prompt": true
        }),
    );
    for (k, (module, inp)) in [("2_Dense", HIDDEN), ("3_Dense", DENSE[0])]
        .into_iter()
        .enumerate()
    {
        write_json(
            &dir.join(module).join("config.json"),
            &json!({
                "in_features": inp,
                "out_features": DENSE[k],
                "bias": false,
                "activation_function": "torch.nn.modules.linear.Identity"
            }),
        );
        write_safetensors(
            &dir.join(module).join("model.safetensors"),
            &dense_tensors(k),
            dtype,
        );
    }
    write_json(
        &dir.join("config_sentence_transformers.json"),
        &json!({"prompts": {"query": "q: ", "document": "d: "}, "default_prompt_name": null}),
    );
    write_json(
        &dir.join("sentence_bert_config.json"),
        &json!({"max_seq_length": 32, "do_lower_case": false}),
    );
    write_safetensors(&dir.join("model.safetensors"), &main_tensors(), dtype);
    tmp
}

fn edit_json(path: PathBuf, edit: impl FnOnce(&mut Value)) {
    let mut value: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut value);
    write_json(&path, &value);
}

/// Assert `err` is a config error naming `file` (path suffix) and `field`.
fn assert_config_error(err: Error, file: &str, field: &str) {
    let message = err.to_string();
    match err {
        Error::Config { path, field: f, .. } => {
            assert!(path.ends_with(file), "{message}");
            assert_eq!(f, field, "{message}");
            assert!(
                message.contains(file) && message.contains(field),
                "{message}"
            );
        }
        other => panic!("expected a config error on {file} `{field}`, got: {other}"),
    }
}

#[test]
fn tiny_model_loads_in_every_dtype() {
    let expected = main_tensors();
    for dtype in [Dtype::F32, Dtype::BF16, Dtype::F16] {
        let tmp = tiny_model(dtype);
        let model = Model::load(tmp.path().to_str().unwrap()).unwrap();
        let c = &model.config;
        assert_eq!(c.weight_dtype, format!("{dtype:?}"));
        assert_eq!(c.window_radius, 3);
        assert_eq!(
            c.layer_kinds,
            [LayerKind::Sliding, LayerKind::Full, LayerKind::Sliding]
        );
        assert_eq!(c.max_seq_len, 32);
        assert_eq!(c.dense_out_features, DENSE);
        assert_eq!(c.embedding_dim, 8);
        assert_eq!(c.attention_scale(), 0.5);
        assert_eq!(c.prompts["query"], "q: ");
        let w: &ModelWeights = &model.weights;
        let find = |name: &str| &expected.iter().find(|t| t.0 == name).unwrap().2;
        assert_eq!(&w.embed_tokens, find("embed_tokens.weight"));
        assert_eq!(&w.final_norm, find("norm.weight"));
        assert_eq!(
            &w.layers[2].q_proj.to_output_major(),
            find("layers.2.self_attn.q_proj.weight")
        );
        assert_eq!(
            &w.layers[1].k_norm,
            find("layers.1.self_attn.k_norm.weight")
        );
        assert_eq!(
            &w.layers[0].down_proj.to_output_major(),
            find("layers.0.mlp.down_proj.weight")
        );
        assert_eq!(
            &w.layers[2].post_feedforward_layernorm,
            find("layers.2.post_feedforward_layernorm.weight")
        );
        assert_eq!(w.dense[0].to_output_major(), dense_tensors(0)[0].2);
        assert_eq!(w.dense[1].to_output_major(), dense_tensors(1)[0].2);
    }
}

#[test]
fn dense_fold_is_the_matrix_product() {
    let tmp = tiny_model(Dtype::F32);
    let model = Model::load_dir(tmp.path()).unwrap();
    let (w1, w2) = (&dense_tensors(0)[0].2, &dense_tensors(1)[0].2);
    for r in 0..DENSE[1] {
        for c in 0..HIDDEN {
            let expected: f64 = (0..DENSE[0])
                .map(|k| w2[r * DENSE[0] + k] as f64 * w1[k * HIDDEN + c] as f64)
                .sum();
            assert_eq!(
                model.weights.dense_folded[r * HIDDEN + c] as f64,
                expected,
                "({r},{c})"
            );
        }
    }
}

#[test]
fn layer_types_derive_from_the_pattern_when_absent() {
    let tmp = tiny_model(Dtype::F32);
    edit_json(tmp.path().join("config.json"), |c| {
        c.as_object_mut().unwrap().remove("layer_types");
        c["_sliding_window_pattern"] = json!(2);
    });
    let config = ModelConfig::load(tmp.path()).unwrap();
    assert_eq!(
        config.layer_kinds,
        [LayerKind::Sliding, LayerKind::Full, LayerKind::Sliding]
    );
}

#[test]
fn refuses_cls_pooling() {
    let tmp = tiny_model(Dtype::F32);
    edit_json(tmp.path().join("1_Pooling/config.json"), |c| {
        c["pooling_mode_cls_token"] = json!(true);
        c["pooling_mode_mean_tokens"] = json!(false);
    });
    let err = ModelConfig::load(tmp.path()).unwrap_err();
    assert_config_error(err, "1_Pooling/config.json", "pooling_mode_cls_token");
}

#[test]
fn refuses_pooling_without_prompt() {
    let tmp = tiny_model(Dtype::F32);
    edit_json(tmp.path().join("1_Pooling/config.json"), |c| {
        c["include_prompt"] = json!(false)
    });
    let err = ModelConfig::load(tmp.path()).unwrap_err();
    assert_config_error(err, "1_Pooling/config.json", "include_prompt");
}

#[test]
fn refuses_dense_with_bias() {
    let tmp = tiny_model(Dtype::F32);
    edit_json(tmp.path().join("3_Dense/config.json"), |c| {
        c["bias"] = json!(true)
    });
    let err = ModelConfig::load(tmp.path()).unwrap_err();
    assert_config_error(err, "3_Dense/config.json", "bias");
}

#[test]
fn refuses_dense_with_activation() {
    let tmp = tiny_model(Dtype::F32);
    edit_json(tmp.path().join("2_Dense/config.json"), |c| {
        c["activation_function"] = json!("torch.nn.modules.activation.Tanh")
    });
    let err = ModelConfig::load(tmp.path()).unwrap_err();
    assert_config_error(err, "2_Dense/config.json", "activation_function");
}

#[test]
fn refuses_causal_models() {
    let tmp = tiny_model(Dtype::F32);
    edit_json(tmp.path().join("config.json"), |c| {
        c["use_bidirectional_attention"] = json!(false)
    });
    let err = ModelConfig::load(tmp.path()).unwrap_err();
    assert_config_error(err, "config.json", "use_bidirectional_attention");
}

#[test]
fn refuses_softcapping() {
    let tmp = tiny_model(Dtype::F32);
    edit_json(tmp.path().join("config.json"), |c| {
        c["attn_logit_softcapping"] = json!(50.0)
    });
    let err = ModelConfig::load(tmp.path()).unwrap_err();
    assert_config_error(err, "config.json", "attn_logit_softcapping");
}

#[test]
fn refuses_unknown_modules() {
    let tmp = tiny_model(Dtype::F32);
    edit_json(tmp.path().join("modules.json"), |m| {
        m[2]["type"] = json!("sentence_transformers.models.LayerNorm")
    });
    let err = ModelConfig::load(tmp.path()).unwrap_err();
    assert_config_error(err, "modules.json", "[2].type");
}

#[test]
fn refuses_inconsistent_dense_chain() {
    let tmp = tiny_model(Dtype::F32);
    edit_json(tmp.path().join("3_Dense/config.json"), |c| {
        c["in_features"] = json!(7)
    });
    let err = ModelConfig::load(tmp.path()).unwrap_err();
    assert_config_error(err, "3_Dense/config.json", "in_features");
}

#[test]
fn refuses_a_missing_field_naming_it() {
    let tmp = tiny_model(Dtype::F32);
    edit_json(tmp.path().join("config.json"), |c| {
        c.as_object_mut().unwrap().remove("head_dim");
    });
    let err = ModelConfig::load(tmp.path()).unwrap_err();
    assert_config_error(err, "config.json", "head_dim");
}

#[test]
fn unknown_default_prompt_is_an_error() {
    let tmp = tiny_model(Dtype::F32);
    edit_json(tmp.path().join("config_sentence_transformers.json"), |c| {
        c["default_prompt_name"] = json!("nope")
    });
    let err = ModelConfig::load(tmp.path()).unwrap_err();
    assert_config_error(
        err,
        "config_sentence_transformers.json",
        "default_prompt_name",
    );
}

fn tensor_error(err: Error) -> (PathBuf, String, String) {
    match err {
        Error::Tensor {
            path,
            name,
            message,
        } => (path, name, message),
        other => panic!("expected a tensor error, got: {other}"),
    }
}

#[test]
fn missing_tensor_is_named() {
    let tmp = tiny_model(Dtype::F32);
    let tensors: Vec<_> = main_tensors()
        .into_iter()
        .filter(|t| t.0 != "layers.1.mlp.up_proj.weight")
        .collect();
    write_safetensors(&tmp.path().join("model.safetensors"), &tensors, Dtype::F32);
    let (path, name, message) = tensor_error(Model::load_dir(tmp.path()).err().unwrap());
    assert!(path.ends_with("model.safetensors"));
    assert_eq!(name, "layers.1.mlp.up_proj.weight");
    assert!(
        message.contains("missing") && message.contains("[12, 8]"),
        "{message}"
    );
}

#[test]
fn wrong_shape_names_both_shapes() {
    let tmp = tiny_model(Dtype::F32);
    let mut tensors = dense_tensors(1);
    tensors[0].1 = vec![DENSE[0], DENSE[1]];
    write_safetensors(
        &tmp.path().join("3_Dense/model.safetensors"),
        &tensors,
        Dtype::F32,
    );
    let err = Model::load_dir(tmp.path()).err().unwrap();
    let text = err.to_string();
    let (path, name, message) = tensor_error(err);
    assert!(path.ends_with("3_Dense/model.safetensors"), "{text}");
    assert_eq!(name, "linear.weight");
    assert!(
        message.contains("[12, 8]") && message.contains("[8, 12]"),
        "{message}"
    );
}

#[test]
fn unsupported_dtype_is_named() {
    let tmp = tiny_model(Dtype::F32);
    let data = vec![0u8; HIDDEN * 8];
    let view = TensorView::new(Dtype::F64, vec![HIDDEN], &data).unwrap();
    let mut views: Vec<(String, TensorView)> = Vec::new();
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = main_tensors()
        .into_iter()
        .filter(|t| t.0 != "norm.weight")
        .map(|(n, s, v)| (n, s, encode(&v, Dtype::F32)))
        .collect();
    for (n, s, b) in &bytes {
        views.push((
            n.clone(),
            TensorView::new(Dtype::F32, s.clone(), b).unwrap(),
        ));
    }
    views.push(("norm.weight".into(), view));
    safetensors::serialize_to_file(views, None, &tmp.path().join("model.safetensors")).unwrap();
    let (_, name, message) = tensor_error(Model::load_dir(tmp.path()).err().unwrap());
    assert_eq!(name, "norm.weight");
    assert!(message.contains("F64"), "{message}");
}

#[test]
fn unknown_model_id_says_how_to_get_it() {
    let err = gemma_embed::model::resolve_model_dir("no-such-org/no-such-model-xyz")
        .err()
        .unwrap();
    let message = err.to_string();
    assert!(matches!(err, Error::ModelNotFound { .. }), "{message}");
    assert!(
        message.contains("HF_TOKEN") && message.contains("--model"),
        "{message}"
    );
}

/// A copy of the tiny fixture model (weights and tokenizer) with the configuration files of
/// `tests/fixtures/tiny-st6`: what sentence-transformers 6.2.0 with transformers 5.24.0 writes
/// for it (`SentenceTransformer("tests/fixtures/tiny").save(DIR)`; its tokenizer.json is
/// byte-equal to the fixture's). New module type paths, `pooling_mode: "mean"`, no
/// max_seq_length in sentence_bert_config.json (the tokenizer's model_max_length instead),
/// `rope_parameters` instead of `rope_theta` and `rope_local_base_freq`.
fn tiny_saved_by_sentence_transformers_6() -> tempfile::TempDir {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let tmp = tempfile::tempdir().unwrap();
    let copy = |from: &Path, name: &str| {
        let to = tmp.path().join(name);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(from.join(name), to).unwrap();
    };
    for name in [
        "modules.json",
        "config.json",
        "config_sentence_transformers.json",
        "sentence_bert_config.json",
        "tokenizer_config.json",
        "1_Pooling/config.json",
        "2_Dense/config.json",
        "3_Dense/config.json",
        "4_Normalize/config.json",
    ] {
        copy(&root.join("tiny-st6"), name);
    }
    for name in [
        "model.safetensors",
        "2_Dense/model.safetensors",
        "3_Dense/model.safetensors",
        "tokenizer.json",
    ] {
        copy(&root.join("tiny"), name);
    }
    tmp
}

#[test]
fn a_model_saved_by_sentence_transformers_6_is_the_same_model() {
    let tmp = tiny_saved_by_sentence_transformers_6();
    let saved = ModelConfig::load(tmp.path()).unwrap();
    let original = ModelConfig::load(&common::tiny_model_dir()).unwrap();
    assert_eq!(saved, original);
    assert_eq!(saved.max_seq_len, 64, "the tokenizer's model_max_length");
    assert_eq!(
        (saved.rope_theta_sliding, saved.rope_theta_full),
        (1e4, 1e6)
    );
}

#[test]
fn sentence_transformers_6_files_are_checked_like_the_older_ones() {
    type Edit = fn(&mut Value);
    let cases: [(&str, &str, Edit); 3] = [
        ("1_Pooling/config.json", "pooling_mode", |c| {
            c["pooling_mode"] = json!("cls")
        }),
        (
            "config.json",
            "rope_parameters.full_attention.rope_type",
            |c| c["rope_parameters"]["full_attention"]["rope_type"] = json!("yarn"),
        ),
        ("config.json", "rope_parameters.sliding_attention", |c| {
            c["rope_parameters"]
                .as_object_mut()
                .unwrap()
                .remove("sliding_attention");
        }),
    ];
    for (file, field, edit) in cases {
        let tmp = tiny_saved_by_sentence_transformers_6();
        edit_json(tmp.path().join(file), edit);
        let err = ModelConfig::load(tmp.path()).unwrap_err();
        assert_config_error(err, file, field);
    }
    // Without sentence_bert_config.json's max_seq_length or the tokenizer's model_max_length,
    // max_position_embeddings (128) bounds it, as in sentence-transformers.
    let tmp = tiny_saved_by_sentence_transformers_6();
    edit_json(tmp.path().join("tokenizer_config.json"), |c| {
        c.as_object_mut().unwrap().remove("model_max_length");
    });
    assert_eq!(ModelConfig::load(tmp.path()).unwrap().max_seq_len, 128);
    // A null prompt prepends nothing, as in sentence-transformers.
    edit_json(tmp.path().join("config_sentence_transformers.json"), |c| {
        c["prompts"]["query"] = Value::Null
    });
    assert_eq!(ModelConfig::load(tmp.path()).unwrap().prompts["query"], "");
}
