//! Shared test helpers: the real model directory and the sentence-transformers golden file.
#![allow(dead_code)] // each test binary uses its own subset of these helpers

use std::path::{Path, PathBuf};

use serde::Deserialize;

const SKIP_MESSAGE: &str =
    "SKIPPED: real model not found (run ../shared/models/fetch-embeddinggemma-300m.sh)";

/// The real EmbeddingGemma-300m directory: `$GEMMA_EMBED_MODEL`, else
/// `google/embeddinggemma-300m` from the Hugging Face cache. `None` (after a loud message)
/// when it is missing; under `CI=true` a missing model fails the test instead.
pub fn real_model_dir() -> Option<PathBuf> {
    let found = match std::env::var_os("GEMMA_EMBED_MODEL") {
        Some(dir) => Some(PathBuf::from(dir)).filter(|d| d.join("config.json").is_file()),
        None => gemma_embed::model::resolve_model_dir(gemma_embed::model::DEFAULT_MODEL_ID).ok(),
    };
    if found.is_none() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{SKIP_MESSAGE} and CI=true");
        }
        eprintln!("\n{}\n{SKIP_MESSAGE}\n{}\n", "!".repeat(80), "!".repeat(80));
    }
    found
}

#[derive(Debug, Deserialize)]
pub struct Golden {
    pub meta: GoldenMeta,
    pub cases: Vec<GoldenCase>,
}

#[derive(Debug, Deserialize)]
pub struct GoldenMeta {
    pub model: String,
    pub reference: String,
    pub max_seq_length: usize,
}

/// One sentence-transformers reference: `prompt + text` tokenized to `token_ids` and embedded
/// to the 768-d L2-normalized `embedding`.
#[derive(Debug, Deserialize)]
pub struct GoldenCase {
    pub name: String,
    pub prompt_name: Option<String>,
    /// The prompt string; empty when `prompt_name` is null.
    pub prompt: String,
    pub text: String,
    pub n_tokens: usize,
    pub token_ids: Vec<u32>,
    pub embedding: Vec<f32>,
}

pub fn golden_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/golden/embeddinggemma-300m.json")
}

/// The golden file (`../shared/golden/embeddinggemma-300m.json`), parsed.
pub fn golden() -> Golden {
    let path = golden_path();
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read the golden file {}: {e}", path.display()));
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("cannot parse the golden file {}: {e}", path.display()))
}

pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum();
    let na: f64 = a.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
    dot / (na * nb)
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}
