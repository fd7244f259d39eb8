//! `gemma-embed bench`: offline throughput of a backend on synthetic workloads.
//!
//! A workload is a list of sequence lengths filled with random token ids: fixed lengths, or a
//! mixed draw of lengths. Offline mode queues the whole workload at once and packs it, in order,
//! into batches of at most `max_batch_tokens` tokens, which the backend runs one after another.
//! Warm-up runs are excluded; each measured run embeds the whole workload, and rates are
//! reported as the median over runs with the slowest and fastest run as the spread.
//!
//! The mixed length draw is shared with `tools/bench_reference.py` (same splitmix64 stream), so
//! the reference sees the same lengths.

mod report;

pub use report::{BuildInfo, MachineInfo, ModelInfo, Report, Settings, WorkloadResult};

use std::time::Instant;

use crate::backend::{Backend, Batch};
use crate::index;
use crate::model::Model;
use crate::rng::SplitMix64;
use crate::{Error, Result};

/// Mixed workloads draw lengths uniformly from this range (inclusive).
pub const MIXED_MIN_LEN: usize = 16;
pub const MIXED_MAX_LEN: usize = 1024;
/// Token ids below this are special tokens (`<pad>`, `<eos>`, `<bos>`, `<unk>`, ...).
const FIRST_ORDINARY_ID: u64 = 6;

/// A named list of sequence lengths.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    pub name: String,
    /// The length of every sequence for a fixed-length workload.
    pub seq_len: Option<usize>,
    pub lengths: Vec<usize>,
}

impl Workload {
    /// `tokens / seq_len` sequences (at least one) of `seq_len` tokens.
    pub fn fixed(seq_len: usize, tokens: usize) -> Self {
        Self {
            name: format!("fixed-{seq_len}"),
            seq_len: Some(seq_len),
            lengths: vec![seq_len; (tokens / seq_len.max(1)).max(1)],
        }
    }

    /// Lengths uniform in `MIXED_MIN_LEN..=MIXED_MAX_LEN` until they add up to `tokens`.
    pub fn mixed(tokens: usize, seed: u64) -> Self {
        let mut rng = SplitMix64::new(seed);
        let mut lengths = Vec::new();
        let mut total = 0;
        while total < tokens {
            let n = rng.in_range(MIXED_MIN_LEN as u64, MIXED_MAX_LEN as u64) as usize;
            lengths.push(n);
            total += n;
        }
        Self {
            name: format!("mixed-{MIXED_MIN_LEN}-{MIXED_MAX_LEN}"),
            seq_len: None,
            lengths,
        }
    }

    pub fn num_tokens(&self) -> usize {
        self.lengths.iter().sum()
    }
}

/// How to run the workloads.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub max_batch_tokens: usize,
    pub repeats: usize,
    pub warmup: usize,
    /// Matryoshka output width passed to the backend.
    pub dimensions: usize,
    /// Seed of the random token ids.
    pub seed: u64,
}

/// Pack sequences of the given lengths into batches exactly as `embed` does
/// ([`index::pack_batches`]: in order, at most `max_batch_tokens` tokens each), filled with
/// random ordinary token ids below `vocab_size`.
pub fn pack_offline(
    lengths: &[usize],
    max_batch_tokens: usize,
    vocab_size: usize,
    rng: &mut SplitMix64,
) -> Vec<Batch> {
    let mut ids = Vec::new();
    index::pack_batches(lengths, max_batch_tokens)
        .into_iter()
        .map(|group| {
            let mut batch = Batch::from_sequences::<&[u32]>(&[]);
            for &n in &lengths[group] {
                ids.clear();
                ids.extend(
                    (0..n).map(|_| rng.in_range(FIRST_ORDINARY_ID, vocab_size as u64 - 1) as u32),
                );
                batch.push(&ids);
            }
            batch
        })
        .collect()
}

fn check_options(model: &Model, workloads: &[Workload], options: &BenchOptions) -> Result<()> {
    let invalid = |message: String| Err(Error::Bench(message));
    if options.repeats == 0 {
        return invalid("--repeats must be at least 1".into());
    }
    let max_len = model.config.max_seq_len;
    for w in workloads {
        if w.lengths.is_empty() {
            return invalid(format!("workload {} has no sequences", w.name));
        }
        if let Some(&n) = w.lengths.iter().find(|&&n| n == 0 || n > max_len) {
            return invalid(format!(
                "workload {}: sequence length {n} outside 1..={max_len} (the model's max_seq_length)",
                w.name
            ));
        }
        let longest = *w.lengths.iter().max().unwrap_or(&0);
        if longest > options.max_batch_tokens {
            return invalid(format!(
                "workload {}: --max-batch-tokens {} is below its longest sequence ({longest})",
                w.name, options.max_batch_tokens
            ));
        }
    }
    Ok(())
}

fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        0.5 * (sorted[n / 2 - 1] + sorted[n / 2])
    }
}

/// Run every workload on `backend` and collect the measurements; `on_result` sees each
/// workload's result as soon as it is measured.
pub fn run(
    backend: &mut dyn Backend,
    model: &Model,
    workloads: &[Workload],
    options: &BenchOptions,
    mut on_result: impl FnMut(&WorkloadResult),
) -> Result<Vec<WorkloadResult>> {
    check_options(model, workloads, options)?;
    let mut rng = SplitMix64::new(options.seed);
    let mut results = Vec::with_capacity(workloads.len());
    for w in workloads {
        let batches = pack_offline(
            &w.lengths,
            options.max_batch_tokens,
            model.config.vocab_size,
            &mut rng,
        );
        let run_once = |backend: &mut dyn Backend| -> Result<f64> {
            let start = Instant::now();
            for batch in &batches {
                let embeddings = backend.forward(batch, options.dimensions)?;
                if embeddings.len() != batch.num_sequences() {
                    return Err(Error::Bench(format!(
                        "backend {} returned {} embeddings for {} sequences",
                        backend.name(),
                        embeddings.len(),
                        batch.num_sequences()
                    )));
                }
            }
            Ok(start.elapsed().as_secs_f64())
        };
        for _ in 0..options.warmup {
            run_once(backend)?;
        }
        let seconds = (0..options.repeats)
            .map(|_| run_once(backend))
            .collect::<Result<Vec<f64>>>()?;
        let result = WorkloadResult::new(w, &batches, seconds, options, model);
        on_result(&result);
        results.push(result);
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixed_lengths_stay_in_range_and_cover_the_tokens() {
        let w = Workload::mixed(50_000, 7);
        assert!(w
            .lengths
            .iter()
            .all(|&n| (MIXED_MIN_LEN..=MIXED_MAX_LEN).contains(&n)));
        let total = w.num_tokens();
        assert!((50_000..50_000 + MIXED_MAX_LEN).contains(&total), "{total}");
        let mean = total as f64 / w.lengths.len() as f64;
        let expected = (MIXED_MIN_LEN + MIXED_MAX_LEN) as f64 / 2.0;
        assert!((mean - expected).abs() < 60.0, "mean length {mean}");
    }

    #[test]
    fn mixed_lengths_match_bench_reference_py() {
        // `mixed_lengths(3000, 7)` in tools/bench_reference.py.
        assert_eq!(
            Workload::mixed(3000, 7).lengths,
            vec![139, 27, 600, 320, 453, 925, 644]
        );
    }

    #[test]
    fn fixed_workload_has_at_least_one_sequence() {
        assert_eq!(Workload::fixed(512, 2048).lengths, vec![512; 4]);
        assert_eq!(Workload::fixed(2048, 100).lengths, vec![2048]);
    }

    #[test]
    fn offline_packing_keeps_order_and_budget() {
        let lengths = [5, 3, 4, 8, 1, 1, 6];
        let mut rng = SplitMix64::new(1);
        let batches = pack_offline(&lengths, 8, 100, &mut rng);
        let per_batch: Vec<Vec<usize>> = batches
            .iter()
            .map(|b| {
                (0..b.num_sequences())
                    .map(|s| b.sequence(s).len())
                    .collect()
            })
            .collect();
        assert_eq!(per_batch, vec![vec![5, 3], vec![4], vec![8], vec![1, 1, 6]]);
        for b in &batches {
            b.validate(100, 8).unwrap();
            assert!(b.ids.iter().all(|&id| id >= 6));
        }
    }

    #[test]
    fn median_of_odd_and_even_runs() {
        assert_eq!(median(&[1.0, 2.0, 9.0]), 2.0);
        assert_eq!(median(&[1.0, 2.0, 4.0, 9.0]), 3.0);
    }
}
