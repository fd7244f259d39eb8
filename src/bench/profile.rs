//! `gemma-embed profile`: where the CUDA forward spends its GPU time, operation by operation
//! ([`crate::backend::cuda::profile`]), on the bench's fixed-length and mixed workloads of
//! random token ids.

use std::io::Write;
use std::time::Instant;

use serde::Serialize;

use super::{pack_offline, random_sequences, Workload};
use crate::backend::cuda::profile::{OpTime, OpTimes};
use crate::backend::cuda::CudaBackend;
use crate::backend::Backend;
use crate::model::ModelConfig;
use crate::rng::SplitMix64;
use crate::{Error, Result};

/// What to profile.
#[derive(Clone, Debug)]
pub struct ProfileOptions {
    /// One fixed-length workload per length.
    pub lengths: Vec<usize>,
    /// Also the mixed 16..1024 workload.
    pub mixed: bool,
    /// Tokens per batch (each workload is `batches` batches of this many tokens).
    pub batch_tokens: usize,
    /// Profiled batches per workload, after `warmup` unprofiled ones.
    pub batches: usize,
    pub warmup: usize,
    pub seed: u64,
}

impl ProfileOptions {
    /// Refuse options that cannot be profiled on the model of `config`, before any device work.
    pub fn check(&self, config: &ModelConfig) -> Result<()> {
        if self.batches == 0 || self.batch_tokens == 0 {
            return Err(Error::Bench(
                "profile: --batches and --batch-tokens must be at least 1".into(),
            ));
        }
        let max_len = config.max_seq_len;
        if let Some(len) = self.lengths.iter().find(|&&l| l == 0 || l > max_len) {
            return Err(Error::Bench(format!(
                "profile: --lengths {len} is outside 1..={max_len} (the model's max_seq_length)"
            )));
        }
        Ok(())
    }
}

/// One workload's operations.
#[derive(Clone, Debug, Serialize)]
pub struct WorkloadProfile {
    pub workload: String,
    pub batches: u64,
    pub tokens_per_batch: f64,
    /// Host wall time of the profiled batches, events included.
    pub wall_ms: f64,
    /// Sum of the operations' GPU times.
    pub gpu_ms: f64,
    pub ops: Vec<OpTime>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ProfileReport {
    pub device: String,
    /// The backend's kernel choices, e.g. `cublas+qkv_post, attention_flash, cublas+geglu, f32 branch`.
    pub kernels: String,
    pub batch_tokens: usize,
    pub workloads: Vec<WorkloadProfile>,
}

impl WorkloadProfile {
    fn of(workload: &Workload, tokens: usize, wall_ms: f64, times: OpTimes) -> Self {
        let batches = times.forwards;
        Self {
            workload: workload.name.clone(),
            batches,
            tokens_per_batch: tokens as f64 / batches.max(1) as f64,
            wall_ms,
            gpu_ms: times.total_ms(),
            ops: times.ops,
        }
    }
}

/// Profile every workload of `options` on `backend`, which runs the model of `config`.
pub fn run(
    backend: &mut CudaBackend,
    config: &ModelConfig,
    options: &ProfileOptions,
) -> Result<ProfileReport> {
    options.check(config)?;
    let vocab = config.vocab_size;
    let total = options.batch_tokens * options.batches;
    let workloads = Workload::synthetic(&options.lengths, options.mixed, total, options.seed);
    let dim = config.embedding_dim;
    let mut rng = SplitMix64::new(options.seed);
    let mut profiles = Vec::with_capacity(workloads.len());
    for workload in &workloads {
        let sequences = random_sequences(&workload.lengths, vocab, &mut rng);
        let batches = pack_offline(&sequences, options.batch_tokens);
        for batch in batches.iter().cycle().take(options.warmup) {
            backend.forward(batch, dim)?;
        }
        backend.start_profiling();
        let start = Instant::now();
        let mut tokens = 0;
        for batch in &batches {
            backend.forward(batch, dim)?;
            tokens += batch.num_tokens();
        }
        let wall_ms = start.elapsed().as_secs_f64() * 1e3;
        let times = backend.stop_profiling().unwrap_or_default();
        profiles.push(WorkloadProfile::of(workload, tokens, wall_ms, times));
    }
    Ok(ProfileReport {
        device: backend.device_name().unwrap_or_default(),
        kernels: backend.options().describe(),
        batch_tokens: options.batch_tokens,
        workloads: profiles,
    })
}

/// The report as one table per workload: per batch, each operation's calls, GPU time, share of
/// the batch and time per call, in the order the forward runs them.
pub fn print(report: &ProfileReport, out: &mut impl Write) -> std::io::Result<()> {
    writeln!(
        out,
        "device: {}; kernels: {}",
        report.device, report.kernels
    )?;
    for w in &report.workloads {
        let batches = w.batches.max(1) as f64;
        let gpu_per_batch = w.gpu_ms / batches;
        writeln!(
            out,
            "\n{}: {} batches of {:.0} tokens; per batch {:.3} ms on the GPU, {:.3} ms wall; \
             {:.0} tok/s (wall)",
            w.workload,
            w.batches,
            w.tokens_per_batch,
            gpu_per_batch,
            w.wall_ms / batches,
            w.tokens_per_batch * batches / (w.wall_ms * 1e-3),
        )?;
        writeln!(
            out,
            "  {:<38} {:>11} {:>10} {:>7} {:>9}",
            "operation", "calls/batch", "ms/batch", "share", "us/call"
        )?;
        for op in &w.ops {
            writeln!(
                out,
                "  {:<38} {:>11.0} {:>10.3} {:>6.1}% {:>9.1}",
                op.op,
                op.calls as f64 / batches,
                op.ms / batches,
                100.0 * op.ms / w.gpu_ms.max(f64::MIN_POSITIVE),
                1e3 * op.ms / op.calls.max(1) as f64,
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_shows_each_operation_per_batch() {
        let mut times = OpTimes::default();
        for _ in 0..2 {
            times.add_forward(&["embed_tokens", "qkv_post", "qkv_post"], &[1.0, 0.5, 0.5]);
        }
        let report = ProfileReport {
            device: "Test GPU (sm_90)".into(),
            kernels: "cublas+qkv_post, attention_flash, cublas+geglu, f32 branch".into(),
            batch_tokens: 1000,
            workloads: vec![WorkloadProfile::of(
                &Workload::fixed(500, 2000),
                2000,
                4.0,
                times,
            )],
        };
        let mut text = Vec::new();
        print(&report, &mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "device: Test GPU (sm_90); kernels: cublas+qkv_post, attention_flash, cublas+geglu, f32 branch"
        );
        assert_eq!(
            lines[2],
            "fixed-500: 2 batches of 1000 tokens; per batch 2.000 ms on the GPU, 2.000 ms wall; \
             500000 tok/s (wall)"
        );
        let row = |name: &str| {
            let line = lines
                .iter()
                .find(|l| l.trim_start().starts_with(name))
                .unwrap();
            line.split_whitespace()
                .skip(1)
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert_eq!(row("embed_tokens"), "1 1.000 50.0% 1000.0");
        assert_eq!(row("qkv_post"), "2 1.000 50.0% 500.0");
    }

    #[test]
    fn options_the_model_cannot_run_are_refused_by_name() {
        let tiny = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny");
        let config = ModelConfig::load(&tiny).unwrap();
        let max = config.max_seq_len;
        let options = ProfileOptions {
            lengths: vec![1, max],
            mixed: true,
            batch_tokens: 65_536,
            batches: 3,
            warmup: 1,
            seed: 1,
        };
        options.check(&config).unwrap();
        let refused = |options: ProfileOptions| options.check(&config).unwrap_err().to_string();
        let too_long = refused(ProfileOptions {
            lengths: vec![max, max + 1],
            ..options.clone()
        });
        let expected = format!("--lengths {} is outside 1..={max}", max + 1);
        assert!(too_long.contains(&expected), "{too_long}");
        let no_batches = refused(ProfileOptions {
            batches: 0,
            ..options.clone()
        });
        assert!(no_batches.contains("--batches"), "{no_batches}");
    }
}
