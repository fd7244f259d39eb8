//! Criterion benchmarks of tokenization: the documents of `examples/corpus.jsonl` with the
//! `document` prompt, one at a time on one thread (`encode`) and all at once on every core
//! (`encode_batch`), as the engine's tokenizer pool and the corpus job tokenize them.
//!
//!     cargo bench --bench tokenize
//!
//! Uses the real model's tokenizer (`$GEMMA_EMBED_MODEL`, else `google/embeddinggemma-300m` in
//! the Hugging Face cache) and says so; without it, the tiny fixture's. Throughput is in tokens
//! (`Melem/s` reads as million tokens per second).

use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use gemma_embed::index::{self, Content, InputColumns, InputFormat};
use gemma_embed::model::{resolve_model_dir, ModelConfig, DEFAULT_MODEL_ID};
use gemma_embed::tokenize::{Tokenizer, Truncation};

fn tokenizer() -> Tokenizer {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = match std::env::var_os("GEMMA_EMBED_MODEL") {
        Some(dir) => PathBuf::from(dir),
        None => resolve_model_dir(DEFAULT_MODEL_ID).unwrap_or_else(|_| {
            eprintln!("real model not found: benchmarking the tiny fixture's tokenizer");
            root.join("tests/fixtures/tiny")
        }),
    };
    eprintln!("tokenizer of {}", dir.display());
    let config = ModelConfig::load(&dir).expect("model config");
    Tokenizer::load(&dir, &config).expect("tokenizer")
}

/// The texts of the corpus, read as `embed` reads its input.
fn corpus_texts() -> Vec<String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/corpus.jsonl");
    let records = index::read_records(
        path.to_str().expect("a UTF-8 path"),
        InputFormat::Jsonl,
        &InputColumns::default(),
    )
    .expect("read examples/corpus.jsonl");
    records
        .into_iter()
        .filter_map(|r| match r.content {
            Content::Text(text) => Some(text),
            Content::Ids(_) => None,
        })
        .collect()
}

fn tokenize(c: &mut Criterion) {
    let tokenizer = tokenizer();
    let prompt = tokenizer.prompt("document").ok().map(str::to_string);
    let texts = corpus_texts();
    let prompted: Vec<String> = texts
        .iter()
        .map(|t| format!("{}{t}", prompt.as_deref().unwrap_or("")))
        .collect();
    let tokens: usize = tokenizer
        .encode_batch(&prompted, Truncation::Truncate)
        .expect("tokenize the corpus")
        .iter()
        .map(Vec::len)
        .sum();

    let mut group = c.benchmark_group("tokenize");
    group.throughput(Throughput::Elements(tokens as u64));
    group.bench_function("encode_one_thread", |b| {
        b.iter(|| {
            for (i, text) in texts.iter().enumerate() {
                let ids = tokenizer.encode(i, prompt.as_deref(), text, Truncation::Truncate);
                std::hint::black_box(ids.expect("tokenize"));
            }
        })
    });
    group.bench_function("encode_batch_all_cores", |b| {
        b.iter(|| {
            let ids = tokenizer.encode_batch(&prompted, Truncation::Truncate);
            std::hint::black_box(ids.expect("tokenize"));
        })
    });
    group.finish();
}

criterion_group!(benches, tokenize);
criterion_main!(benches);
