//! The bench report: one JSON schema shared with `tools/bench_reference.py`, and a table.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::{median, BenchOptions, Workload};
use crate::backend::Batch;
use crate::model::Model;

pub const SCHEMA: &str = "gemma-embed-bench/1";

/// Measurements of one workload.
#[derive(Clone, Debug, Serialize)]
pub struct WorkloadResult {
    pub name: String,
    pub seq_len: Option<usize>,
    pub num_sequences: usize,
    pub num_tokens: usize,
    pub num_batches: usize,
    /// Tokens over the token capacity of the batches (`num_batches * max_batch_tokens`).
    pub batch_fill: f64,
    /// Wall time of each measured run of the whole workload.
    pub seconds: Vec<f64>,
    pub seconds_median: f64,
    pub tokens_per_s: f64,
    /// Rate of the slowest run.
    pub tokens_per_s_min: f64,
    /// Rate of the fastest run.
    pub tokens_per_s_max: f64,
    pub sequences_per_s: f64,
    /// Matmul FLOPs of the workload ([`crate::model::ModelConfig::forward_flops`]).
    pub flops: u64,
    pub tflops_per_s: f64,
}

impl WorkloadResult {
    pub(super) fn new(
        workload: &Workload,
        batches: &[Batch],
        seconds: Vec<f64>,
        options: &BenchOptions,
        model: &Model,
    ) -> Self {
        let mut sorted = seconds.clone();
        sorted.sort_by(f64::total_cmp);
        let seconds_median = median(&sorted);
        let num_tokens = workload.num_tokens();
        let flops = workload
            .lengths
            .iter()
            .map(|&n| model.config.forward_flops(n))
            .sum::<u64>();
        Self {
            name: workload.name.clone(),
            seq_len: workload.seq_len,
            num_sequences: workload.lengths.len(),
            num_tokens,
            num_batches: batches.len(),
            batch_fill: num_tokens as f64 / (batches.len() * options.max_batch_tokens) as f64,
            tokens_per_s: num_tokens as f64 / seconds_median,
            tokens_per_s_min: num_tokens as f64 / sorted[sorted.len() - 1],
            tokens_per_s_max: num_tokens as f64 / sorted[0],
            sequences_per_s: workload.lengths.len() as f64 / seconds_median,
            tflops_per_s: flops as f64 / seconds_median / 1e12,
            flops,
            seconds,
            seconds_median,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct MachineInfo {
    pub cpu: String,
    pub cpu_threads: usize,
    /// The device the backend runs on, for GPU backends.
    pub gpu: Option<String>,
}

impl MachineInfo {
    /// The host CPU (from `/proc/cpuinfo` where there is one) and the rayon thread count.
    pub fn host(gpu: Option<String>) -> Self {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|text| {
                text.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, name)| name.trim().to_string())
            })
            .unwrap_or_else(|| std::env::consts::ARCH.to_string());
        Self {
            cpu,
            cpu_threads: rayon::current_num_threads(),
            gpu,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct BuildInfo {
    pub version: String,
    pub profile: String,
}

impl BuildInfo {
    pub fn current() -> Self {
        Self {
            version: env!("CARGO_PKG_VERSION").to_string(),
            profile: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            }
            .to_string(),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct ModelInfo {
    pub dir: String,
    pub num_layers: usize,
    pub hidden_size: usize,
    pub embedding_dim: usize,
    pub weight_dtype: String,
}

impl ModelInfo {
    pub fn of(model: &Model) -> Self {
        Self {
            dir: model.dir.display().to_string(),
            num_layers: model.config.num_layers,
            hidden_size: model.config.hidden_size,
            embedding_dim: model.config.embedding_dim,
            weight_dtype: model.config.weight_dtype.clone(),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Settings {
    pub tokens_per_run: usize,
    pub max_batch_tokens: usize,
    pub repeats: usize,
    pub warmup: usize,
    pub seed: u64,
    pub dimensions: usize,
}

/// A whole bench run, as written by `--json` (schema shared with `tools/bench_reference.py`).
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub schema: &'static str,
    pub engine: &'static str,
    pub backend: String,
    /// Activation precision of the backend (`f32` on the CPU, `bf16` on CUDA).
    pub dtype: String,
    pub mode: &'static str,
    /// UTC, ISO 8601.
    pub timestamp: String,
    pub machine: MachineInfo,
    pub build: BuildInfo,
    pub model: ModelInfo,
    pub settings: Settings,
    pub workloads: Vec<WorkloadResult>,
}

impl Report {
    pub fn new(
        backend: &str,
        dtype: &str,
        machine: MachineInfo,
        model: &Model,
        settings: Settings,
        workloads: Vec<WorkloadResult>,
    ) -> Self {
        Self {
            schema: SCHEMA,
            engine: "gemma-embed",
            backend: backend.to_string(),
            dtype: dtype.to_string(),
            mode: "offline",
            timestamp: utc_timestamp(SystemTime::now()),
            machine,
            build: BuildInfo::current(),
            model: ModelInfo::of(model),
            settings,
            workloads,
        }
    }

    /// A readable table: one row per workload.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let device = self.machine.gpu.as_deref().unwrap_or(&self.machine.cpu);
        let _ = writeln!(
            out,
            "gemma-embed bench: backend {} ({}), {}, {} CPU threads, max batch {} tokens, \
             median of {} runs after {} warm-up",
            self.backend,
            self.dtype,
            device,
            self.machine.cpu_threads,
            self.settings.max_batch_tokens,
            self.settings.repeats,
            self.settings.warmup
        );
        let _ = writeln!(
            out,
            "{:<16} {:>8} {:>9} {:>12} {:>23} {:>10} {:>8} {:>5}",
            "workload",
            "seqs",
            "tokens",
            "tokens/s",
            "(slowest..fastest)",
            "seqs/s",
            "TFLOP/s",
            "fill"
        );
        for w in &self.workloads {
            let _ = writeln!(
                out,
                "{:<16} {:>8} {:>9} {:>12.0} {:>23} {:>10.1} {:>8.2} {:>5.2}",
                w.name,
                w.num_sequences,
                w.num_tokens,
                w.tokens_per_s,
                format!("({:.0}..{:.0})", w.tokens_per_s_min, w.tokens_per_s_max),
                w.sequences_per_s,
                w.tflops_per_s,
                w.batch_fill
            );
        }
        out
    }
}

/// `YYYY-MM-DDTHH:MM:SS+00:00` for a system time (civil-from-days, proleptic Gregorian).
fn utc_timestamp(time: SystemTime) -> String {
    let secs = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}+00:00",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn timestamps_match_known_dates() {
        let at = |secs| utc_timestamp(UNIX_EPOCH + Duration::from_secs(secs));
        assert_eq!(at(0), "1970-01-01T00:00:00+00:00");
        // `date -u -d @951782400`: the leap day of 2000.
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00+00:00");
        // `date -u -d @1795789323`
        assert_eq!(at(1_795_789_323), "2026-11-27T14:22:03+00:00");
    }
}
