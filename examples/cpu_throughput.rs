//! Throughput of the CPU backend on pre-tokenized documents, for `tools/bench_cpu_vs_st.py`.
//!
//!     cargo run --release --example cpu_throughput -- MODEL_DIR IDS.jsonl [MAX_BATCH_TOKENS] [OUT.f32]
//!
//! `IDS.jsonl` holds one JSON array of token ids per line. Documents are packed in input order
//! into batches of at most MAX_BATCH_TOKENS tokens (default 8192). One untimed warm-up batch,
//! then every document once; prints one JSON line with tokens, wall and CPU seconds and tokens/s. With
//! OUT.f32 the 768-d embeddings are written there as raw little-endian float32, in input order.

use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use gemma_embed::backend::cpu::CpuBackend;
use gemma_embed::backend::{Backend, Batch};
use gemma_embed::model::Model;

/// User + system CPU time of this process so far (`/proc/self/stat`, in USER_HZ = 100 ticks).
fn process_cpu_seconds() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").context("read /proc/self/stat")?;
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("parse /proc/self/stat")?
        .1
        .split_whitespace()
        .collect();
    // Fields 14 and 15 of proc(5), counted after the command name (field 2).
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    Ok(ticks as f64 / 100.0)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model_dir, ids_path, rest @ ..] = &args[..] else {
        anyhow::bail!("usage: cpu_throughput MODEL_DIR IDS.jsonl [MAX_BATCH_TOKENS] [OUT.f32]");
    };
    let max_batch_tokens: usize = match rest.first() {
        Some(n) => n.parse().context("MAX_BATCH_TOKENS")?,
        None => 8192,
    };
    let docs: Vec<Vec<u32>> = std::fs::read_to_string(ids_path)
        .with_context(|| format!("read {ids_path}"))?
        .lines()
        .enumerate()
        .map(|(i, line)| serde_json::from_str(line).with_context(|| format!("line {}", i + 1)))
        .collect::<Result<_>>()?;

    let model = Arc::new(Model::load_dir(model_dir.as_ref())?);
    let dim = model.config.embedding_dim;
    let mut backend = CpuBackend::new(model)?;

    let mut batches = vec![Batch::from_sequences::<Vec<u32>>(&[])];
    for doc in &docs {
        let last = batches.last_mut().expect("one batch");
        if last.num_sequences() > 0 && last.num_tokens() + doc.len() > max_batch_tokens {
            batches.push(Batch::from_sequences(&[doc]));
        } else {
            last.push(doc);
        }
    }

    backend.forward(&batches[0], dim)?;
    let cpu_start = process_cpu_seconds()?;
    let start = Instant::now();
    let mut embeddings = Vec::with_capacity(docs.len() * dim);
    for batch in &batches {
        embeddings.extend(backend.forward(batch, dim)?.data);
    }
    let seconds = start.elapsed().as_secs_f64();
    let cpu_seconds = process_cpu_seconds()? - cpu_start;
    let tokens: usize = docs.iter().map(Vec::len).sum();
    println!(
        "{{\"docs\": {}, \"tokens\": {tokens}, \"batches\": {}, \"seconds\": {seconds:.3}, \"cpu_seconds\": {cpu_seconds:.3}, \"tokens_per_s\": {:.1}}}",
        docs.len(),
        batches.len(),
        tokens as f64 / seconds
    );
    if let Some(out) = rest.get(1) {
        let mut file = std::io::BufWriter::new(
            std::fs::File::create(out).with_context(|| format!("create {out}"))?,
        );
        for v in embeddings {
            file.write_all(&v.to_le_bytes())?;
        }
        file.flush()?;
    }
    Ok(())
}
