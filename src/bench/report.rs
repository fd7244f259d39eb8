//! The bench report: one JSON schema shared with `tools/bench_reference.py`, and a table.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::stats::{median, percentile, sorted};
use super::{BenchOptions, Load, Measured, Setting, Workload};
use crate::model::Model;

/// Version 2 added the per-row setting (`mode`, `max_batch_tokens`, `concurrency`, `rate`),
/// latencies and peak memory; `settings.max_batch_tokens` became a list.
pub const SCHEMA: &str = "gemma-embed-bench/2";

/// Request latency percentiles in milliseconds (median over the measured runs of each run's
/// percentile).
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    fn of_runs(runs: &[Vec<f64>]) -> Option<Self> {
        if runs.is_empty() || runs.iter().any(Vec::is_empty) {
            return None;
        }
        let per_run: Vec<Vec<f64>> = runs.iter().map(|r| sorted(r)).collect();
        let at = |p: f64| {
            let values: Vec<f64> = per_run.iter().map(|r| percentile(r, p)).collect();
            1e3 * median(&sorted(&values))
        };
        Some(Self {
            p50_ms: at(50.0),
            p90_ms: at(90.0),
            p99_ms: at(99.0),
            max_ms: at(100.0),
        })
    }
}

/// Measurements of one workload under one setting.
#[derive(Clone, Debug, Serialize)]
pub struct WorkloadResult {
    pub name: String,
    pub seq_len: Option<usize>,
    /// `offline` or `online`.
    pub mode: &'static str,
    pub max_batch_tokens: usize,
    /// Online, closed loop: clients with one request in flight each.
    pub concurrency: Option<usize>,
    /// Online, open loop: Poisson arrivals per second.
    pub rate: Option<f64>,
    pub num_sequences: usize,
    pub num_tokens: usize,
    /// Online: requests per run, and the fewest answered in a run (all of them, or the run fails).
    pub num_requests: Option<usize>,
    pub answered_requests: Option<usize>,
    /// Batches of the median run (offline: always the same packing).
    pub num_batches: usize,
    /// Mean tokens per batch over `max_batch_tokens`.
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
    /// Online: submit (or scheduled arrival) to answer.
    pub latency: Option<Latency>,
    /// Matmul FLOPs of the workload ([`crate::model::ModelConfig::forward_flops`]).
    pub flops: u64,
    pub tflops_per_s: f64,
    /// Achieved over the card's dense bf16 peak, in percent, when the peak is known.
    pub percent_of_peak: Option<f64>,
    /// Peak resident set of the whole process during the measured runs (weights included).
    pub peak_host_rss_bytes: Option<u64>,
    /// Peak device memory in use (whole device): the most read right after any measured run,
    /// outside its timing; `None` on the CPU.
    pub peak_device_memory_bytes: Option<u64>,
}

impl WorkloadResult {
    pub(super) fn new(
        workload: &Workload,
        setting: &Setting,
        measured: Measured,
        options: &BenchOptions,
        model: &Model,
    ) -> Self {
        let seconds = measured.seconds;
        let by_time = sorted(&seconds);
        let seconds_median = median(&by_time);
        let num_tokens = workload.num_tokens();
        let flops = workload
            .lengths
            .iter()
            .map(|&n| model.config.forward_flops(n))
            .sum::<u64>();
        let tflops_per_s = flops as f64 / seconds_median / 1e12;
        let (concurrency, rate) = match setting.load {
            Load::Offline => (None, None),
            Load::Concurrency(c) => (Some(c), None),
            Load::Rate(r) => (None, Some(r)),
        };
        Self {
            name: workload.name.clone(),
            seq_len: workload.seq_len,
            mode: if setting.load == Load::Offline {
                "offline"
            } else {
                "online"
            },
            max_batch_tokens: setting.max_batch_tokens,
            concurrency,
            rate,
            num_sequences: workload.lengths.len(),
            num_tokens,
            num_requests: measured.requests.map(|(n, _)| n),
            answered_requests: measured.requests.map(|(_, answered)| answered),
            num_batches: measured.batches_per_run,
            batch_fill: measured.batch_tokens as f64
                / (measured.batches.max(1) * setting.max_batch_tokens as u64) as f64,
            tokens_per_s: num_tokens as f64 / seconds_median,
            tokens_per_s_min: num_tokens as f64 / by_time[by_time.len() - 1],
            tokens_per_s_max: num_tokens as f64 / by_time[0],
            sequences_per_s: workload.lengths.len() as f64 / seconds_median,
            latency: Latency::of_runs(&measured.latencies),
            tflops_per_s,
            percent_of_peak: options.peak_tflops.map(|peak| 100.0 * tflops_per_s / peak),
            flops,
            seconds,
            seconds_median,
            peak_host_rss_bytes: measured.peak_host_rss,
            peak_device_memory_bytes: measured.peak_device_memory,
        }
    }

    /// The setting, for tables and plot legends: `offline`, `c=4`, `r=20/s`, with the budget.
    pub fn setting_label(&self) -> String {
        let load = match (self.concurrency, self.rate) {
            (Some(c), _) => format!("c={c}"),
            (None, Some(r)) => format!("r={r}/s"),
            (None, None) => self.mode.to_string(),
        };
        format!("{load} mbt={}", self.max_batch_tokens)
    }
}

/// Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s from NVIDIA's datasheets, by a
/// substring of the device name as the driver reports it; the most specific names come first.
const KNOWN_PEAKS: &[(&str, f64)] = &[
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),
    ("H200", 989.4),
    ("A100", 312.0),
];

/// The dense bf16 peak of a known card (H100 SXM/PCIe/NVL, H200, A100), from its device name.
pub fn known_peak_tflops(device: &str) -> Option<f64> {
    KNOWN_PEAKS
        .iter()
        .find(|(name, _)| device.contains(name))
        .map(|&(_, peak)| peak)
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
    /// Every swept batch budget.
    pub max_batch_tokens: Vec<usize>,
    /// Online: the swept concurrencies or rates (one of the two is empty).
    pub concurrency: Vec<usize>,
    pub rate: Vec<f64>,
    pub inputs_per_request: usize,
    pub repeats: usize,
    pub warmup: usize,
    pub seed: u64,
    pub dimensions: usize,
    /// The card's dense bf16 peak used for `percent_of_peak`.
    pub peak_tflops: Option<f64>,
}

/// A whole bench run, as written by `--json` (schema shared with `tools/bench_reference.py`).
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub schema: &'static str,
    pub engine: &'static str,
    pub backend: String,
    /// Activation precision of the backend (`f32` on the CPU, `bf16` on CUDA).
    pub dtype: String,
    /// `offline` or `online`.
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
        let online = !(settings.concurrency.is_empty() && settings.rate.is_empty());
        Self {
            schema: SCHEMA,
            engine: "gemma-embed",
            backend: backend.to_string(),
            dtype: dtype.to_string(),
            mode: if online { "online" } else { "offline" },
            timestamp: utc_timestamp(SystemTime::now()),
            machine,
            build: BuildInfo::current(),
            model: ModelInfo::of(model),
            settings,
            workloads,
        }
    }

    /// A readable table: one row per (workload, setting).
    pub fn table(&self) -> String {
        let mut out = String::new();
        let device = self.machine.gpu.as_deref().unwrap_or(&self.machine.cpu);
        let _ = writeln!(
            out,
            "gemma-embed bench ({}): backend {} ({}), {}, {} CPU threads, median of {} runs \
             after {} warm-up",
            self.mode,
            self.backend,
            self.dtype,
            device,
            self.machine.cpu_threads,
            self.settings.repeats,
            self.settings.warmup
        );
        // GFLOP/s on the CPU, TFLOP/s on a GPU.
        let (flops_unit, flops_scale) = if self.machine.gpu.is_some() {
            ("TFLOP/s", 1.0)
        } else {
            ("GFLOP/s", 1e3)
        };
        let peak = self.settings.peak_tflops.is_some();
        let online = self.mode == "online";
        let mut header = format!(
            "{:<16} {:<18} {:>6} {:>8} {:>11} {:>21} {:>9} {:>8}",
            "workload",
            "setting",
            "seqs",
            "tokens",
            "tokens/s",
            "(slowest..fastest)",
            "seqs/s",
            flops_unit
        );
        if peak {
            let _ = write!(header, " {:>6}", "%peak");
        }
        let _ = write!(header, " {:>5} {:>9} {:>9}", "fill", "host MiB", "dev MiB");
        if online {
            let _ = write!(
                header,
                " {:>9} {:>9} {:>9} {:>9}",
                "p50 ms", "p90 ms", "p99 ms", "answered"
            );
        }
        let _ = writeln!(out, "{header}");
        let mib = |b: Option<u64>| {
            b.map_or("n/a".to_string(), |b| {
                format!("{:.0}", b as f64 / 1048576.0)
            })
        };
        for w in &self.workloads {
            let mut row = format!(
                "{:<16} {:<18} {:>6} {:>8} {:>11.0} {:>21} {:>9.1} {:>8.2}",
                w.name,
                w.setting_label(),
                w.num_sequences,
                w.num_tokens,
                w.tokens_per_s,
                format!("({:.0}..{:.0})", w.tokens_per_s_min, w.tokens_per_s_max),
                w.sequences_per_s,
                w.tflops_per_s * flops_scale
            );
            if peak {
                let _ = write!(row, " {:>6.1}", w.percent_of_peak.unwrap_or(f64::NAN));
            }
            let _ = write!(
                row,
                " {:>5.2} {:>9} {:>9}",
                w.batch_fill,
                mib(w.peak_host_rss_bytes),
                mib(w.peak_device_memory_bytes)
            );
            if let (Some(l), Some(n), Some(answered)) =
                (w.latency, w.num_requests, w.answered_requests)
            {
                let _ = write!(
                    row,
                    " {:>9.1} {:>9.1} {:>9.1} {:>9}",
                    l.p50_ms,
                    l.p90_ms,
                    l.p99_ms,
                    format!("{answered}/{n}")
                );
            }
            let _ = writeln!(out, "{row}");
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
    fn latency_is_the_median_of_per_run_percentiles() {
        // Run percentiles (p50): 2.5 ms, 5 ms, 10 ms -> median 5 ms.
        let runs = vec![
            vec![0.001, 0.002, 0.003, 0.004],
            vec![0.005; 3],
            vec![0.010, 0.010],
        ];
        let l = Latency::of_runs(&runs).unwrap();
        assert!((l.p50_ms - 5.0).abs() < 1e-9, "{l:?}");
        // Maxima 4, 5, 10 ms -> 5 ms.
        assert!((l.max_ms - 5.0).abs() < 1e-9, "{l:?}");
        assert!(Latency::of_runs(&[]).is_none());
    }

    #[test]
    fn known_peaks_pick_the_most_specific_name() {
        assert_eq!(
            known_peak_tflops("NVIDIA H100 80GB HBM3 (sm_90)"),
            Some(989.4)
        );
        assert_eq!(known_peak_tflops("NVIDIA H100 PCIe (sm_90)"), Some(756.0));
        assert_eq!(known_peak_tflops("NVIDIA H200 (sm_90)"), Some(989.4));
        assert_eq!(known_peak_tflops("NVIDIA A100-SXM4-80GB"), Some(312.0));
        assert_eq!(known_peak_tflops("Tesla T4"), None);
    }

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
