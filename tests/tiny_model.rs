//! The CPU engine on the tiny random-weight fixture against sentence-transformers.
//!
//! `tests/fixtures/tiny` comes from `tools/make_tiny_fixture.py`: a 4-layer bidirectional Gemma3
//! with a window radius of 4 (so the window bites on most cases), MQA, and the real
//! sentence-transformers module chain; `expected.json` holds the float32 sentence-transformers
//! embeddings of each token-id sequence. Runs everywhere, no real model needed.

mod common;

use common::{tiny_expected, tiny_model_dir, TinyExpected};

use std::sync::Arc;

use gemma_embed::backend::cpu::CpuBackend;
use gemma_embed::backend::{Backend, Batch};
use gemma_embed::model::Model;
use gemma_embed::Error;

fn load() -> (CpuBackend, TinyExpected) {
    let model = Model::load_dir(&tiny_model_dir()).expect("load the tiny fixture");
    let expected = tiny_expected();
    assert_eq!(model.config.window_radius, expected.meta.window_radius);
    (CpuBackend::new(Arc::new(model)).unwrap(), expected)
}

#[track_caller]
fn assert_matches(name: &str, got: &[f32], want: &[f32]) {
    let cos = common::cosine(got, want);
    let diff = common::max_abs_diff(got, want);
    assert!(
        cos >= 0.99999 && diff <= 1e-5,
        "{name}: cosine {cos}, max abs diff {diff:e}"
    );
}

#[test]
fn packed_batch_matches_sentence_transformers() {
    let (mut backend, expected) = load();
    let dim = expected.cases[0].embedding.len();
    let sequences: Vec<&[u32]> = expected.cases.iter().map(|c| &c.token_ids[..]).collect();
    let out = backend
        .forward(&Batch::from_sequences(&sequences), dim)
        .unwrap();
    assert_eq!((out.dim, out.len()), (dim, expected.cases.len()));
    for (case, got) in expected.cases.iter().zip(out.rows()) {
        assert_matches(&case.name, got, &case.embedding);
    }
}

#[test]
fn each_sequence_alone_matches_sentence_transformers() {
    let (mut backend, expected) = load();
    let dim = expected.cases[0].embedding.len();
    for case in &expected.cases {
        let out = backend
            .forward(&Batch::from_sequences(&[&case.token_ids]), dim)
            .unwrap();
        assert_matches(&case.name, out.row(0), &case.embedding);
    }
}

#[test]
fn matryoshka_dimensions_truncate_and_renormalize() {
    let (mut backend, expected) = load();
    let sequences: Vec<&[u32]> = expected.cases.iter().map(|c| &c.token_ids[..]).collect();
    let batch = Batch::from_sequences(&sequences);
    for dimensions in [1, 16, 47] {
        let out = backend.forward(&batch, dimensions).unwrap();
        assert_eq!(out.dim, dimensions);
        for (case, got) in expected.cases.iter().zip(out.rows()) {
            let prefix = &case.embedding[..dimensions];
            let norm = prefix.iter().map(|v| v * v).sum::<f32>().sqrt();
            let want: Vec<f32> = prefix.iter().map(|v| v / norm).collect();
            assert_matches(&format!("{} @ {dimensions}", case.name), got, &want);
        }
    }
}

#[test]
fn bad_dimensions_and_batches_are_errors() {
    let (mut backend, expected) = load();
    let dim = expected.cases[0].embedding.len();
    let batch = Batch::from_sequences(&[[2u32, 5, 1]]);
    for bad in [0, dim + 1] {
        match backend.forward(&batch, bad) {
            Err(Error::Dimensions { got, max }) => assert_eq!((got, max), (bad, dim)),
            other => panic!("dimensions {bad}: expected a Dimensions error, got {other:?}"),
        }
    }
    let out_of_vocab = Batch::from_sequences(&[[2u32, 300, 1]]);
    assert!(matches!(
        backend.forward(&out_of_vocab, dim),
        Err(Error::Batch(_))
    ));
    let empty_sequence = Batch {
        ids: vec![2, 1],
        seq_offsets: vec![0, 0, 2],
    };
    assert!(matches!(
        backend.forward(&empty_sequence, dim),
        Err(Error::Batch(_))
    ));
}
