//! The CPU engine on the real EmbeddingGemma-300m against the sentence-transformers golden file
//! (`../shared/golden/embeddinggemma-300m.json`), fed the golden token ids (no tokenizer here).
//! Skips loudly without the model; fails under `CI=true`.

mod common;

use std::sync::{Arc, OnceLock};

use gemma_embed::backend::cpu::CpuBackend;
use gemma_embed::backend::{Backend, Batch};
use gemma_embed::model::Model;

/// The real model, loaded once per test binary (about 1.2 GB of float32).
fn real_model() -> Option<Arc<Model>> {
    static MODEL: OnceLock<Option<Arc<Model>>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            let dir = common::real_model_dir()?;
            Some(Arc::new(
                Model::load_dir(&dir).expect("load the real model"),
            ))
        })
        .clone()
}

fn truncate_normalize(v: &[f32], dimensions: usize) -> Vec<f32> {
    let norm = v[..dimensions].iter().map(|x| x * x).sum::<f32>().sqrt();
    v[..dimensions].iter().map(|x| x / norm).collect()
}

#[test]
fn golden_cases_match_sentence_transformers() {
    let Some(model) = real_model() else { return };
    let golden = common::golden();
    let mut backend = CpuBackend::new(model).unwrap();
    // One packed batch of every case (about 9k tokens, 24 sequences of 2..2048 tokens).
    let out = backend.forward(&golden.batch(), 768).unwrap();

    let (mut worst_cos, mut worst_diff) = (1.0f64, 0.0f32);
    let mut failures = Vec::new();
    for (case, got) in golden.cases.iter().zip(out.rows()) {
        let cos = common::cosine(got, &case.embedding);
        let diff = common::max_abs_diff(got, &case.embedding);
        eprintln!(
            "{:>16} {:>5} tokens: cosine {cos:.8}, max abs diff {diff:.2e}",
            case.name, case.n_tokens
        );
        worst_cos = worst_cos.min(cos);
        worst_diff = worst_diff.max(diff);
        if cos < 0.99999 || diff > 1e-4 {
            failures.push(format!(
                "{}: cosine {cos}, max abs diff {diff:e}",
                case.name
            ));
        }
    }
    eprintln!(
        "worst 1 - cosine {:.2e}, worst max abs diff {worst_diff:.2e}",
        1.0 - worst_cos
    );
    assert!(failures.is_empty(), "golden mismatches: {failures:#?}");
}

#[test]
fn matryoshka_output_is_the_renormalized_prefix() {
    let Some(model) = real_model() else { return };
    let golden = common::golden();
    let mut backend = CpuBackend::new(model).unwrap();
    let cases: Vec<_> = golden
        .cases
        .iter()
        .filter(|c| ["card_query", "card_doc1", "readme_1500c"].contains(&c.name.as_str()))
        .collect();
    assert_eq!(cases.len(), 3);
    let sequences: Vec<&[u32]> = cases.iter().map(|c| &c.token_ids[..]).collect();
    let batch = Batch::from_sequences(&sequences);
    let full = backend.forward(&batch, 768).unwrap();
    for dimensions in [512, 256, 128] {
        let truncated = backend.forward(&batch, dimensions).unwrap();
        assert_eq!(truncated.dim, dimensions);
        for ((case, got), ours) in cases.iter().zip(truncated.rows()).zip(full.rows()) {
            let from_ours = truncate_normalize(ours, dimensions);
            let diff = common::max_abs_diff(got, &from_ours);
            assert!(
                diff <= 1e-6,
                "{} @ {dimensions}: {diff:e} from our prefix",
                case.name
            );
            let from_golden = truncate_normalize(&case.embedding, dimensions);
            let cos = common::cosine(got, &from_golden);
            assert!(cos >= 0.99999, "{} @ {dimensions}: cosine {cos}", case.name);
        }
    }
}

#[test]
fn embeddings_do_not_depend_on_batching() {
    let Some(model) = real_model() else { return };
    let golden = common::golden();
    let ids = |name: &str| -> Vec<u32> {
        golden
            .cases
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("golden case {name}"))
            .token_ids
            .clone()
    };
    // Three different sequences of the same length 281 (> 256, so the window matters), one of
    // them twice, between short and long ones.
    let long = ids("seed_200w");
    assert_eq!(long.len(), 281);
    let prefix_of = |name: &str| {
        let mut seq = ids(name)[..280].to_vec();
        seq.push(1);
        seq
    };
    let sequences = [
        ids("card_query"),
        long.clone(),
        prefix_of("repeat"),
        ids("empty"),
        prefix_of("readme_4000c"),
        long,
        ids("seed_450w"),
        ids("code"),
    ];
    let mut backend = CpuBackend::new(model).unwrap();
    let packed = backend
        .forward(&Batch::from_sequences(&sequences), 768)
        .unwrap();
    for (s, seq) in sequences.iter().enumerate() {
        let alone = backend
            .forward(&Batch::from_sequences(&[seq]), 768)
            .unwrap();
        let diff = common::max_abs_diff(packed.row(s), alone.row(0));
        eprintln!(
            "sequence {s} ({} tokens): packed vs alone {diff:.2e}",
            seq.len()
        );
        assert!(
            diff <= 1e-5,
            "sequence {s}: packed vs alone differ by {diff:e}"
        );
    }
}
