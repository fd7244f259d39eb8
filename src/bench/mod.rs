//! `gemma-embed bench`: throughput and latency of a backend on synthetic workloads.
//!
//! A workload is a list of sequence lengths filled with random token ids: fixed lengths, or a
//! mixed draw of lengths; or the documents of a corpus file with their real token ids. Offline mode queues the whole workload at once and packs it, in order,
//! into batches of at most `max_batch_tokens` tokens, which the backend runs one after another.
//! Online mode ([`online`]) sends it as requests through the [`Engine`] at a fixed concurrency
//! or a Poisson arrival rate and measures each request's latency. Every combination of the
//! swept settings ([`Setting::sweep`]) is one run per workload. Warm-up runs are excluded; rates
//! are reported as the median over the measured runs with the slowest and fastest as the spread.
//!
//! The mixed length draw is shared with `tools/bench_reference.py` (same splitmix64 stream), so
//! the reference sees the same lengths.

pub mod compare;
mod memory;
pub mod online;
pub mod plot;
pub mod profile;
mod report;
pub mod stats;

pub use memory::{host_peak_rss, reset_host_peak, SharedBackend};
pub use online::Load;
pub use report::{
    known_peak_tflops, BuildInfo, Latency, MachineInfo, ModelInfo, Report, Settings,
    WorkloadResult, SCHEMA,
};

use std::time::Instant;

use crate::backend::{Backend, Batch};
use crate::engine::{Engine, EngineConfig};
use crate::index;
use crate::model::Model;
use crate::rng::SplitMix64;
use crate::tokenize::Tokenizer;
use crate::{Error, Result};

/// Mixed workloads draw lengths uniformly from this range (inclusive).
pub const MIXED_MIN_LEN: usize = 16;
pub const MIXED_MAX_LEN: usize = 1024;
/// The most tokens one measured run may hold (`--tokens`, or a compared report's): 2^28, a GiB
/// of token ids, minutes of work on a GPU.
pub const MAX_TOKENS_PER_RUN: usize = 1 << 28;
/// Token ids below this are special tokens (`<pad>`, `<eos>`, `<bos>`, `<unk>`, ...).
const FIRST_ORDINARY_ID: u64 = 6;

/// A named list of sequence lengths, filled with random token ids, or a corpus's real token ids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    pub name: String,
    /// The length of every sequence for a fixed-length workload.
    pub seq_len: Option<usize>,
    pub lengths: Vec<usize>,
    /// The token ids of a corpus workload (`None`: random ids of `lengths`).
    pub token_ids: Option<Vec<Vec<u32>>>,
}

impl Workload {
    /// `tokens / seq_len` sequences (at least one) of `seq_len` tokens.
    pub fn fixed(seq_len: usize, tokens: usize) -> Self {
        Self {
            name: format!("fixed-{seq_len}"),
            seq_len: Some(seq_len),
            lengths: vec![seq_len; (tokens / seq_len.max(1)).max(1)],
            token_ids: None,
        }
    }

    /// One fixed-length workload per length, then the mixed one if asked for, `tokens` each:
    /// the random-id workloads of `bench` and `profile`.
    pub fn synthetic(lengths: &[usize], mixed: bool, tokens: usize, seed: u64) -> Vec<Self> {
        let mut workloads: Vec<Self> = lengths.iter().map(|&n| Self::fixed(n, tokens)).collect();
        if mixed {
            workloads.push(Self::mixed(tokens, seed));
        }
        workloads
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
            token_ids: None,
        }
    }

    /// The documents of a corpus file, as tokenized (prompt and special tokens included), named
    /// `corpus-STEM`.
    pub fn corpus(stem: &str, token_ids: Vec<Vec<u32>>) -> Self {
        Self {
            name: format!("corpus-{stem}"),
            seq_len: None,
            lengths: token_ids.iter().map(Vec::len).collect(),
            token_ids: Some(token_ids),
        }
    }

    pub fn num_tokens(&self) -> usize {
        self.lengths.iter().sum()
    }
}

/// One point of a sweep: a batch budget and how requests arrive.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Setting {
    pub max_batch_tokens: usize,
    pub load: Load,
}

impl Setting {
    /// Every combination of the batch budgets and the loads (offline when `loads` is empty),
    /// batch budget outermost.
    pub fn sweep(max_batch_tokens: &[usize], loads: &[Load]) -> Vec<Setting> {
        let offline = [Load::Offline];
        let loads = if loads.is_empty() {
            &offline[..]
        } else {
            loads
        };
        max_batch_tokens
            .iter()
            .flat_map(|&max_batch_tokens| {
                loads.iter().map(move |&load| Setting {
                    max_batch_tokens,
                    load,
                })
            })
            .collect()
    }
}

/// How to run the workloads.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub repeats: usize,
    pub warmup: usize,
    /// Matryoshka output width passed to the backend.
    pub dimensions: usize,
    /// Seed of the random token ids and of the arrival times.
    pub seed: u64,
    /// Online mode: inputs per request.
    pub inputs_per_request: usize,
    /// The card's dense peak in TFLOP/s, for the percentage of peak.
    pub peak_tflops: Option<f64>,
}

/// Pack sequences into batches exactly as `embed` does ([`index::pack_batches`]: in order, at
/// most `max_batch_tokens` tokens each).
pub fn pack_offline(sequences: &[Vec<u32>], max_batch_tokens: usize) -> Vec<Batch> {
    let lengths: Vec<usize> = sequences.iter().map(Vec::len).collect();
    index::pack_batches(&lengths, max_batch_tokens)
        .into_iter()
        .map(|group| Batch::from_sequences(&sequences[group]))
        .collect()
}

/// Random ordinary token ids (below `vocab_size`) for sequences of the given lengths.
fn random_sequences(lengths: &[usize], vocab_size: usize, rng: &mut SplitMix64) -> Vec<Vec<u32>> {
    lengths
        .iter()
        .map(|&n| {
            (0..n)
                .map(|_| rng.in_range(FIRST_ORDINARY_ID, vocab_size as u64 - 1) as u32)
                .collect()
        })
        .collect()
}

fn check_options(
    model: &Model,
    workloads: &[Workload],
    settings: &[Setting],
    options: &BenchOptions,
) -> Result<()> {
    let invalid = |message: String| Err(Error::Bench(message));
    if options.repeats == 0 {
        return invalid("--repeats must be at least 1".into());
    }
    if options.inputs_per_request == 0 {
        return invalid("--inputs-per-request must be at least 1".into());
    }
    if settings.is_empty() {
        return invalid("no --max-batch-tokens given".into());
    }
    for setting in settings {
        match setting.load {
            Load::Concurrency(0) => return invalid("--concurrency must be at least 1".into()),
            Load::Rate(r) if !(r.is_finite() && r > 0.0) => {
                return invalid(format!(
                    "--rate {r}: must be a positive number of requests/s"
                ))
            }
            _ => {}
        }
    }
    let max_len = model.config.max_seq_len;
    let smallest_budget = settings.iter().map(|s| s.max_batch_tokens).min();
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
        if let Some(budget) = smallest_budget.filter(|&b| longest > b) {
            return invalid(format!(
                "workload {}: --max-batch-tokens {budget} is below its longest sequence ({longest})",
                w.name
            ));
        }
    }
    Ok(())
}

/// What one (workload, setting) run measured, before it becomes a [`WorkloadResult`].
pub(crate) struct Measured {
    /// Wall time of each measured run of the whole workload.
    seconds: Vec<f64>,
    /// Online: per measured run, every request's latency in seconds.
    latencies: Vec<Vec<f64>>,
    /// Online: requests per run, and the fewest answered in any run.
    requests: Option<(usize, usize)>,
    /// Batches of the median measured run; batches and the tokens they held, over all
    /// measured runs.
    batches_per_run: usize,
    batches: u64,
    batch_tokens: u64,
    peak_host_rss: Option<u64>,
    peak_device_memory: Option<u64>,
}

/// Run every workload under every setting on `backend` and collect the measurements;
/// `on_result` sees each result as soon as it is measured.
pub fn run(
    backend: Box<dyn Backend>,
    model: &Model,
    workloads: &[Workload],
    settings: &[Setting],
    options: &BenchOptions,
    mut on_result: impl FnMut(&WorkloadResult),
) -> Result<Vec<WorkloadResult>> {
    check_options(model, workloads, settings, options)?;
    let mut backend = SharedBackend::new(backend);
    let mut results = Vec::with_capacity(workloads.len() * settings.len());
    // Online runs start an engine each; the tokenizer is parsed once for all of them.
    let tokenizer = if settings.iter().any(|s| s.load != Load::Offline) {
        Some(Tokenizer::for_model(model)?)
    } else {
        None
    };
    for w in workloads {
        let random;
        let sequences: &[Vec<u32>] = match &w.token_ids {
            Some(ids) => ids,
            None => {
                let mut rng = stream(options.seed, &format!("ids of {}", w.name));
                random = random_sequences(&w.lengths, model.config.vocab_size, &mut rng);
                &random
            }
        };
        for setting in settings {
            let measured = match setting.load {
                Load::Offline => run_offline(&mut backend, sequences, setting, options)?,
                load => {
                    let arrivals = match load {
                        Load::Rate(rate) => {
                            let n = sequences.len().div_ceil(options.inputs_per_request);
                            let what = format!("arrivals of {} at {rate}/s", w.name);
                            online::poisson_arrivals(n, rate, &mut stream(options.seed, &what))?
                        }
                        _ => Vec::new(),
                    };
                    let tokenizer = tokenizer.clone().expect("loaded for online settings");
                    run_online(
                        &backend, tokenizer, model, sequences, setting, &arrivals, options,
                    )?
                }
            };
            let result = WorkloadResult::new(w, setting, measured, options, model);
            on_result(&result);
            results.push(result);
        }
    }
    Ok(results)
}

/// The generator of one draw (`what`: a workload's token ids, a run's arrival times), seeded
/// from `--seed` and `what`: a draw does not depend on the other workloads and settings of the
/// command (`--rate 5` arrives as it does in `--rate 1,5`).
fn stream(seed: u64, what: &str) -> SplitMix64 {
    let salt = u64::from(crc32fast::hash(what.as_bytes()));
    SplitMix64::new(seed ^ (salt << 32 | salt))
}

/// Warm-up runs, then the measured runs (each `run_once` times itself) with the host and
/// device peaks over them: the runs, the peak host RSS and the peak device memory.
///
/// The device peak is the most device memory in use (the whole device, as the driver reports
/// it) right after a measured run, read between runs so that no timed region pays for the
/// driver call. The CUDA backend's activation buffers grow to its largest batch so far and stay
/// allocated, so this is the footprint of the workload's largest batch: context, weights and
/// activations (and whatever else runs on the device). An allocation made and freed inside one
/// batch is not seen.
fn measure<T>(
    backend: &SharedBackend,
    options: &BenchOptions,
    mut run_once: impl FnMut() -> Result<T>,
) -> Result<(Vec<T>, Option<u64>, Option<u64>)> {
    for _ in 0..options.warmup {
        run_once()?;
    }
    let host_peak_resets = memory::reset_host_peak();
    let mut runs = Vec::with_capacity(options.repeats);
    let mut device_peak = None;
    for _ in 0..options.repeats {
        runs.push(run_once()?);
        device_peak = device_peak.max(backend.device_memory_used());
    }
    let host_peak = memory::host_peak_rss().filter(|_| host_peak_resets);
    Ok((runs, host_peak, device_peak))
}

fn run_offline(
    backend: &mut SharedBackend,
    sequences: &[Vec<u32>],
    setting: &Setting,
    options: &BenchOptions,
) -> Result<Measured> {
    let batches = pack_offline(sequences, setting.max_batch_tokens);
    let shared = backend.clone();
    let (seconds, peak_host_rss, peak_device_memory) = measure(&shared, options, || {
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
    })?;
    Ok(Measured {
        seconds,
        latencies: Vec::new(),
        requests: None,
        batches_per_run: batches.len(),
        batches: (batches.len() * options.repeats) as u64,
        batch_tokens: sequences.iter().map(|s| s.len() as u64).sum::<u64>()
            * options.repeats as u64,
        peak_host_rss,
        peak_device_memory,
    })
}

fn run_online(
    backend: &SharedBackend,
    tokenizer: Tokenizer,
    model: &Model,
    sequences: &[Vec<u32>],
    setting: &Setting,
    arrivals: &[std::time::Duration],
    options: &BenchOptions,
) -> Result<Measured> {
    let requests = online::requests_of(sequences, options.inputs_per_request, options.dimensions);
    let num_tokens: usize = sequences.iter().map(Vec::len).sum();
    let engine = Engine::start(
        Box::new(backend.clone()),
        tokenizer,
        model.config.embedding_dim,
        EngineConfig {
            max_batch_tokens: setting.max_batch_tokens,
            // Room for the whole workload: admission never blocks the submitting thread.
            max_queued_inputs: sequences.len(),
            max_queued_tokens: num_tokens,
            // Ids are only validated, not tokenized.
            tokenizer_workers: 1,
            ..EngineConfig::default()
        },
    )?;
    let mut batch_counts = Vec::new();
    let (mut batches_total, mut batch_tokens) = (0, 0);
    let (runs, peak_host_rss, peak_device_memory) = measure(backend, options, || {
        let before = engine.stats();
        let run = online::run_requests(&engine, requests.clone(), setting.load, arrivals)?;
        let after = engine.stats();
        Ok((
            run,
            after.batches - before.batches,
            after.batch_tokens - before.batch_tokens,
        ))
    })?;
    let mut seconds = Vec::with_capacity(runs.len());
    let mut latencies = Vec::with_capacity(runs.len());
    let mut fewest_answered = requests.len();
    for (run, batches, tokens) in runs {
        seconds.push(run.seconds);
        latencies.push(run.latencies);
        fewest_answered = fewest_answered.min(run.answered);
        batch_counts.push(batches as f64);
        batches_total += batches;
        batch_tokens += tokens;
    }
    batch_counts.sort_by(f64::total_cmp);
    Ok(Measured {
        seconds,
        latencies,
        requests: Some((requests.len(), fewest_answered)),
        batches_per_run: stats::median(&batch_counts).round() as usize,
        batches: batches_total,
        batch_tokens,
        peak_host_rss,
        peak_device_memory,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Embeddings;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// A device whose memory in use grows by one byte per batch run, counting how often that
    /// memory is read.
    struct GrowingDevice {
        batches: u64,
        reads: Arc<AtomicUsize>,
    }

    impl Backend for GrowingDevice {
        fn name(&self) -> &'static str {
            "growing"
        }

        fn device_memory_used(&self) -> Option<u64> {
            self.reads.fetch_add(1, Ordering::Relaxed);
            Some(1000 + self.batches)
        }

        fn forward(&mut self, batch: &Batch, dimensions: usize) -> Result<Embeddings> {
            self.batches += 1;
            Ok(Embeddings {
                dim: dimensions,
                data: vec![0.0; batch.num_sequences() * dimensions],
                norms: vec![1.0; batch.num_sequences()],
            })
        }
    }

    #[test]
    fn device_memory_is_read_after_each_measured_run_not_per_batch() {
        let reads = Arc::new(AtomicUsize::new(0));
        let mut backend = SharedBackend::new(Box::new(GrowingDevice {
            batches: 0,
            reads: Arc::clone(&reads),
        }));
        // Six sequences of 4 tokens under a budget of 8: three batches per run.
        let sequences = vec![vec![7u32; 4]; 6];
        let setting = Setting {
            max_batch_tokens: 8,
            load: Load::Offline,
        };
        let options = BenchOptions {
            repeats: 3,
            warmup: 1,
            dimensions: 2,
            seed: 0,
            inputs_per_request: 1,
            peak_tflops: None,
        };
        let measured = run_offline(&mut backend, &sequences, &setting, &options).unwrap();
        assert_eq!(measured.batches_per_run, 3);
        assert_eq!(reads.load(Ordering::Relaxed), options.repeats);
        // The last read follows (1 warm-up + 3 measured runs) x 3 batches.
        assert_eq!(measured.peak_device_memory, Some(1000 + 12));
    }

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
        let sequences = random_sequences(&lengths, 100, &mut rng);
        let batches = pack_offline(&sequences, 8);
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
    fn sweep_is_every_combination_budget_outermost() {
        let loads = [Load::Concurrency(1), Load::Concurrency(4)];
        let settings = Setting::sweep(&[4096, 8192], &loads);
        let pairs: Vec<(usize, Load)> = settings
            .iter()
            .map(|s| (s.max_batch_tokens, s.load))
            .collect();
        assert_eq!(
            pairs,
            vec![
                (4096, Load::Concurrency(1)),
                (4096, Load::Concurrency(4)),
                (8192, Load::Concurrency(1)),
                (8192, Load::Concurrency(4)),
            ]
        );
        let offline = Setting::sweep(&[512, 1024], &[]);
        assert_eq!(offline.len(), 2);
        assert!(offline.iter().all(|s| s.load == Load::Offline));
        assert!(Setting::sweep(&[], &loads).is_empty());
    }
}
