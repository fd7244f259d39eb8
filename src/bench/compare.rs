//! `gemma-embed bench --compare ref.json`: our rows against another report in the shared schema
//! (`tools/bench_reference.py`, or an earlier `gemma-embed bench --json`), workload by workload.

use std::fmt::Write as _;
use std::path::Path;

use serde::Deserialize;

use super::{Workload, WorkloadResult};
use crate::{Error, Result};

/// The parts of a report that a comparison reads (any `gemma-embed-bench/*` schema).
#[derive(Clone, Debug, Deserialize)]
pub struct OtherReport {
    pub schema: String,
    pub engine: String,
    pub backend: String,
    #[serde(default)]
    pub dtype: Option<String>,
    #[serde(default)]
    pub settings: OtherSettings,
    pub workloads: Vec<OtherWorkload>,
}

/// The settings a comparison can reuse to run the same workloads.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct OtherSettings {
    #[serde(default)]
    pub tokens_per_run: Option<usize>,
    #[serde(default)]
    pub seed: Option<u64>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct OtherWorkload {
    pub name: String,
    /// The length of every sequence of a fixed-length workload.
    #[serde(default)]
    pub seq_len: Option<usize>,
    pub tokens_per_s: f64,
    /// Absent in schema version 1 (offline, one budget per report).
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default)]
    pub max_batch_tokens: Option<usize>,
    #[serde(default)]
    pub concurrency: Option<usize>,
    #[serde(default)]
    pub rate: Option<f64>,
}

impl OtherReport {
    pub fn load(path: &Path) -> Result<Self> {
        let bad = |what: String| Error::Bench(format!("--compare {}: {what}", path.display()));
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let report: Self =
            serde_json::from_str(&text).map_err(|e| bad(format!("not a bench report: {e}")))?;
        if !report.schema.starts_with("gemma-embed-bench/") {
            return Err(bad(format!(
                "schema `{}` is not a gemma-embed-bench report",
                report.schema
            )));
        }
        Ok(report)
    }

    /// The workloads of this report, rebuilt: one fixed-length workload per distinct `seq_len`,
    /// and the mixed draw (with the report's seed) when it has a row of that name. `None` when
    /// the report does not record its tokens per run.
    pub fn workloads(&self) -> Option<Vec<Workload>> {
        let tokens = self.settings.tokens_per_run?;
        let mut out: Vec<Workload> = Vec::new();
        for w in &self.workloads {
            if out.iter().any(|o| o.name == w.name) {
                continue;
            }
            match w.seq_len {
                Some(n) => out.push(Workload::fixed(n, tokens)),
                None => {
                    let mixed = Workload::mixed(tokens, self.settings.seed.unwrap_or(0));
                    if mixed.name == w.name {
                        out.push(mixed);
                    }
                }
            }
        }
        Some(out)
    }

    /// `engine backend dtype`, e.g. `sentence-transformers cpu f32`.
    pub fn label(&self) -> String {
        let mut label = format!("{} {}", self.engine, self.backend);
        if let Some(dtype) = &self.dtype {
            let _ = write!(label, " {dtype}");
        }
        label
    }
}

/// For each of our rows, the index of the other report's row of the same workload name: the one
/// with the same setting (mode, batch budget, concurrency, rate) when there is one, else the
/// fastest of that name; `None` when it has no workload of that name.
pub fn match_rows(ours: &[WorkloadResult], theirs: &[OtherWorkload]) -> Vec<Option<usize>> {
    ours.iter()
        .map(|our| {
            let same_name = || {
                theirs
                    .iter()
                    .enumerate()
                    .filter(move |(_, t)| t.name == our.name)
            };
            let same_setting = same_name().find(|(_, t)| {
                t.mode.as_deref() == Some(our.mode)
                    && t.max_batch_tokens == Some(our.max_batch_tokens)
                    && t.concurrency == our.concurrency
                    && t.rate == our.rate
            });
            let fastest =
                || same_name().max_by(|(_, a), (_, b)| a.tokens_per_s.total_cmp(&b.tokens_per_s));
            same_setting.or_else(fastest).map(|(j, _)| j)
        })
        .collect()
}

/// The comparison table: per row, our tokens/s, theirs and the ratio; then the other report's
/// workloads we did not run.
pub fn table(ours: &[WorkloadResult], other: &OtherReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "compared with {} ({} workloads, schema {})",
        other.label(),
        other.workloads.len(),
        other.schema
    );
    let _ = writeln!(
        out,
        "{:<16} {:<18} {:>12} {:>12} {:>8}",
        "workload", "setting", "ours tok/s", "theirs tok/s", "ratio"
    );
    for (our, theirs) in ours.iter().zip(match_rows(ours, &other.workloads)) {
        let (theirs, ratio) = match theirs {
            Some(j) => {
                let t = other.workloads[j].tokens_per_s;
                (format!("{t:.0}"), format!("{:.2}x", our.tokens_per_s / t))
            }
            None => ("-".to_string(), "no match".to_string()),
        };
        let _ = writeln!(
            out,
            "{:<16} {:<18} {:>12.0} {:>12} {:>8}",
            our.name,
            our.setting_label(),
            our.tokens_per_s,
            theirs,
            ratio
        );
    }
    // A row of theirs is matched only by a row of ours of the same name.
    for t in &other.workloads {
        if !ours.iter().any(|o| o.name == t.name) {
            let _ = writeln!(
                out,
                "{:<16} {:<18} {:>12} {:>12.0} {:>8}",
                t.name, "(not run here)", "-", t.tokens_per_s, "-"
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ours(
        name: &str,
        mode: &'static str,
        mbt: usize,
        concurrency: Option<usize>,
    ) -> WorkloadResult {
        WorkloadResult {
            name: name.into(),
            seq_len: None,
            mode,
            max_batch_tokens: mbt,
            concurrency,
            rate: None,
            num_sequences: 1,
            num_tokens: 100,
            num_requests: None,
            answered_requests: None,
            num_batches: 1,
            batch_fill: 1.0,
            seconds: vec![1.0],
            seconds_median: 1.0,
            tokens_per_s: 100.0,
            tokens_per_s_min: 100.0,
            tokens_per_s_max: 100.0,
            sequences_per_s: 1.0,
            latency: None,
            flops: 0,
            tflops_per_s: 0.0,
            percent_of_peak: None,
            peak_host_rss_bytes: None,
            peak_device_memory_bytes: None,
        }
    }

    const REFERENCE_V1: &str = r#"{
        "schema": "gemma-embed-bench/1", "engine": "sentence-transformers", "backend": "cpu",
        "dtype": "f32", "mode": "offline",
        "workloads": [
            {"name": "fixed-128", "seq_len": 128, "tokens_per_s": 50.0},
            {"name": "fixed-512", "seq_len": 512, "tokens_per_s": 40.0}
        ]}"#;

    #[test]
    fn rows_match_by_name_and_prefer_the_same_setting() {
        let other: OtherReport = serde_json::from_str(
            r#"{"schema": "gemma-embed-bench/2", "engine": "gemma-embed", "backend": "cuda",
                "workloads": [
                  {"name": "fixed-128", "mode": "offline", "max_batch_tokens": 4096, "tokens_per_s": 10},
                  {"name": "fixed-128", "mode": "offline", "max_batch_tokens": 8192, "tokens_per_s": 30},
                  {"name": "fixed-128", "mode": "online", "max_batch_tokens": 4096, "concurrency": 4, "tokens_per_s": 20}
                ]}"#,
        )
        .unwrap();
        let rows = [
            ours("fixed-128", "offline", 4096, None),
            ours("fixed-128", "online", 4096, Some(4)),
            // No row with this budget: the fastest of the name.
            ours("fixed-128", "offline", 16384, None),
            ours("fixed-16", "offline", 4096, None),
        ];
        assert_eq!(
            match_rows(&rows, &other.workloads),
            vec![Some(0), Some(2), Some(1), None]
        );
    }

    #[test]
    fn reference_v1_reports_compare_by_name() {
        let other: OtherReport = serde_json::from_str(REFERENCE_V1).unwrap();
        let rows = [ours("fixed-128", "offline", 8192, None)];
        let table = table(&rows, &other);
        // 100 tokens/s against 50: 2.00x; fixed-512 was not run here.
        assert!(table.contains("2.00x"), "{table}");
        assert!(
            table.contains("fixed-512") && table.contains("(not run here)"),
            "{table}"
        );
        assert!(table.contains("sentence-transformers cpu f32"), "{table}");
    }

    #[test]
    fn the_reports_workloads_are_rebuilt_from_its_settings() {
        let other: OtherReport = serde_json::from_str(
            r#"{"schema": "gemma-embed-bench/2", "engine": "sentence-transformers", "backend": "cpu",
                "settings": {"tokens_per_run": 3000, "seed": 7},
                "workloads": [
                  {"name": "fixed-512", "seq_len": 512, "tokens_per_s": 1},
                  {"name": "mixed-16-1024", "seq_len": null, "tokens_per_s": 1},
                  {"name": "corpus-x", "seq_len": null, "tokens_per_s": 1}
                ]}"#,
        )
        .unwrap();
        let workloads = other.workloads().unwrap();
        assert_eq!(workloads.len(), 2);
        assert_eq!(workloads[0].lengths, vec![512; 5]);
        // `mixed_lengths(3000, 7)` in tools/bench_reference.py.
        assert_eq!(workloads[1].lengths, vec![139, 27, 600, 320, 453, 925, 644]);
        let v1: OtherReport = serde_json::from_str(REFERENCE_V1).unwrap();
        assert!(v1.workloads().is_none());
    }

    #[test]
    fn a_file_that_is_not_a_report_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.json");
        std::fs::write(
            &path,
            r#"{"schema": "other/1", "engine": "x", "backend": "y", "workloads": []}"#,
        )
        .unwrap();
        let err = OtherReport::load(&path).unwrap_err().to_string();
        assert!(err.contains("r.json") && err.contains("other/1"), "{err}");
        std::fs::write(&path, "[1, 2]").unwrap();
        let err = OtherReport::load(&path).unwrap_err().to_string();
        assert!(err.contains("not a bench report"), "{err}");
    }
}
