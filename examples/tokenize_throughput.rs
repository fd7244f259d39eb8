//! Tokenizer throughput on one core: `cargo run --release --example tokenize_throughput --
//! MODEL_DIR CORPUS.jsonl [SECONDS]` tokenizes every `text` of the corpus (with the model's
//! `document` prompt, as an indexing job would) on the calling thread, repeating for at least
//! SECONDS (default 5), and prints documents/s and tokens/s.

use std::path::Path;
use std::time::Instant;

use gemma_embed::model::ModelConfig;
use gemma_embed::tokenize::{Tokenizer, Truncation};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, corpus, rest @ ..] = args.as_slice() else {
        anyhow::bail!("usage: tokenize_throughput MODEL_DIR CORPUS.jsonl [SECONDS]");
    };
    let seconds: f64 = rest.first().map_or(Ok(5.0), |s| s.parse())?;
    let dir = Path::new(dir);
    let config = ModelConfig::load(dir)?;
    let tokenizer = Tokenizer::load(dir, &config)?;
    let prompt = tokenizer.prompt("document").ok().map(String::from);
    let texts: Vec<String> = std::fs::read_to_string(corpus)?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| -> anyhow::Result<String> {
            let value: serde_json::Value = serde_json::from_str(l)?;
            Ok(value["text"].as_str().unwrap_or_default().to_string())
        })
        .collect::<anyhow::Result<_>>()?;
    let (mut docs, mut tokens) = (0usize, 0usize);
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < seconds {
        for (i, text) in texts.iter().enumerate() {
            tokens += tokenizer
                .encode(i, prompt.as_deref(), text, Truncation::Truncate)?
                .len();
        }
        docs += texts.len();
    }
    let elapsed = start.elapsed().as_secs_f64();
    println!(
        "{docs} docs, {tokens} tokens in {elapsed:.2} s on one thread: {:.0} docs/s, {:.0} tokens/s",
        docs as f64 / elapsed,
        tokens as f64 / elapsed
    );
    Ok(())
}
