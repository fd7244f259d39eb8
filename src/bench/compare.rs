//! `gemma-embed bench --compare ref.json`: our rows against another report in the shared schema
//! (`tools/bench_reference.py`, or an earlier `gemma-embed bench --json`), workload by workload.

use std::fmt::Write as _;
use std::path::Path;

use serde::Deserialize;

use super::{Workload, WorkloadResult, MAX_TOKENS_PER_RUN};
use crate::model::ModelConfig;
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
    /// The model it measured, where it says.
    #[serde(default)]
    pub model: OtherModel,
}

/// A report's model shape: what decides the work behind its rows.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct OtherModel {
    #[serde(default)]
    pub num_layers: Option<usize>,
    #[serde(default)]
    pub hidden_size: Option<usize>,
    #[serde(default)]
    pub embedding_dim: Option<usize>,
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
    /// Absent in schema version 1.
    #[serde(default)]
    pub num_sequences: Option<usize>,
    #[serde(default)]
    pub num_tokens: Option<usize>,
}

impl OtherWorkload {
    /// `offline` when the report does not say (schema version 1 is offline only).
    fn mode(&self) -> &str {
        self.mode.as_deref().unwrap_or("offline")
    }

    /// The setting, as [`WorkloadResult::setting_label`] writes ours (`?` for what the report
    /// does not record).
    pub fn setting_label(&self) -> String {
        let load = match (self.concurrency, self.rate) {
            (Some(c), _) => format!("c={c}"),
            (None, Some(r)) => format!("r={r}/s"),
            (None, None) => self.mode().to_string(),
        };
        match self.max_batch_tokens {
            Some(budget) => format!("{load} mbt={budget}"),
            None => format!("{load} mbt=?"),
        }
    }

    /// Why this row of the same name did not measure what `ours` did: another mode (offline
    /// throughput against online latency), or another workload under the same name (other
    /// tokens per run, another draw of the mixed lengths, another corpus of the same stem).
    fn differs_from(&self, ours: &WorkloadResult) -> Option<String> {
        if self.mode() != ours.mode {
            return Some(format!("theirs is {}, ours {}", self.mode(), ours.mode));
        }
        let theirs = (
            self.num_sequences.unwrap_or(ours.num_sequences),
            self.num_tokens.unwrap_or(ours.num_tokens),
        );
        (theirs != (ours.num_sequences, ours.num_tokens)).then(|| {
            format!(
                "theirs ran {} sequences of {} tokens in all, ours {} of {}",
                theirs.0, theirs.1, ours.num_sequences, ours.num_tokens
            )
        })
    }
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
        if let Some(tokens) = report.settings.tokens_per_run {
            if !(1..=MAX_TOKENS_PER_RUN).contains(&tokens) {
                return Err(bad(format!(
                    "tokens_per_run {tokens} is not in 1..={MAX_TOKENS_PER_RUN}"
                )));
            }
        }
        if let Some(w) = report
            .workloads
            .iter()
            .find(|w| !(w.tokens_per_s.is_finite() && w.tokens_per_s > 0.0))
        {
            return Err(bad(format!(
                "workload {}: tokens_per_s {} is not a throughput",
                w.name, w.tokens_per_s
            )));
        }
        Ok(report)
    }

    /// Refuse the report (`path`) of a model of another shape than `config`: its rows measured
    /// other work.
    pub fn check_model(&self, path: &Path, config: &ModelConfig) -> Result<()> {
        let theirs = &self.model;
        let pairs = [
            ("layers", theirs.num_layers, config.num_layers),
            ("hidden size", theirs.hidden_size, config.hidden_size),
            ("embedding size", theirs.embedding_dim, config.embedding_dim),
        ];
        let differences: Vec<String> = pairs
            .iter()
            .filter_map(|&(what, theirs, ours)| {
                theirs
                    .filter(|&theirs| theirs != ours)
                    .map(|theirs| format!("{what} {theirs}, here {ours}"))
            })
            .collect();
        if differences.is_empty() {
            return Ok(());
        }
        Err(Error::Bench(format!(
            "--compare {}: a report of another model ({}): compare runs of the same model",
            path.display(),
            differences.join("; ")
        )))
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
                    let mixed = Workload::mixed(tokens, self.seed());
                    if mixed.name == w.name {
                        out.push(mixed);
                    }
                }
            }
        }
        Some(out)
    }

    /// When none of the report's rows ran in `our_mode`: what they measured and the flags that
    /// would run the same, for a note before a run whose rows would all differ.
    pub fn mode_hint(&self, our_mode: &str) -> Option<String> {
        if self.workloads.is_empty() || self.workloads.iter().any(|w| w.mode() == our_mode) {
            return None;
        }
        if our_mode == "online" {
            return Some(
                "its rows measured offline throughput and this run is online: drop --mode \
                 online to compare them"
                    .into(),
            );
        }
        // Each kind of load of theirs as the flag that runs it (`--concurrency 4,16`).
        let flag = |name: &str, mut values: Vec<f64>| {
            values.sort_by(f64::total_cmp);
            values.dedup();
            let values: Vec<String> = values.iter().map(f64::to_string).collect();
            if values.is_empty() {
                String::new()
            } else {
                format!(" --{name} {}", values.join(","))
            }
        };
        let concurrency = flag(
            "concurrency",
            self.workloads
                .iter()
                .filter_map(|w| w.concurrency.map(|c| c as f64))
                .collect(),
        );
        let rate = flag(
            "rate",
            self.workloads.iter().filter_map(|w| w.rate).collect(),
        );
        Some(format!(
            "its rows measured online latency and this run is offline: add --mode \
             online{concurrency}{rate} to compare them"
        ))
    }

    /// The seed of the report's random draws (0 when it does not record one).
    pub fn seed(&self) -> u64 {
        self.settings.seed.unwrap_or(0)
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

/// How one of our rows pairs with the other report's rows.
#[derive(Clone, Debug, PartialEq)]
pub enum RowMatch {
    /// The row that measured the same workload in the same mode: the one with the same setting
    /// (batch budget, concurrency, rate) when there is one, else the fastest.
    Row(usize),
    /// Rows of the same name, none of which measured the same thing; why the first did not.
    Differs(String),
    /// No row of that name.
    Missing,
}

/// For each of our rows, the other report's row to compare it with ([`RowMatch`]).
pub fn match_rows(ours: &[WorkloadResult], theirs: &[OtherWorkload]) -> Vec<RowMatch> {
    ours.iter()
        .map(|our| {
            let same_name = || {
                theirs
                    .iter()
                    .enumerate()
                    .filter(|(_, t)| t.name == our.name)
            };
            let comparable = || same_name().filter(|(_, t)| t.differs_from(our).is_none());
            let same_setting = comparable().find(|(_, t)| {
                t.max_batch_tokens == Some(our.max_batch_tokens)
                    && t.concurrency == our.concurrency
                    && t.rate == our.rate
            });
            let fastest =
                || comparable().max_by(|(_, a), (_, b)| a.tokens_per_s.total_cmp(&b.tokens_per_s));
            match same_setting.or_else(fastest) {
                Some((j, _)) => RowMatch::Row(j),
                None => match same_name().find_map(|(_, t)| t.differs_from(our)) {
                    Some(why) => RowMatch::Differs(why),
                    None => RowMatch::Missing,
                },
            }
        })
        .collect()
}

/// The comparison table: per row, our tokens/s, the setting and tokens/s of the row of theirs
/// it is compared with, and the ratio; rows that share only a name with theirs get no ratio and
/// a note saying why; then the other report's workloads we did not run.
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
        "{:<16} {:<18} {:>12} {:<18} {:>12} {:>8}",
        "workload", "setting", "ours tok/s", "their setting", "theirs tok/s", "ratio"
    );
    let mut notes = Vec::new();
    for (our, matched) in ours.iter().zip(match_rows(ours, &other.workloads)) {
        let (setting, theirs, ratio) = match matched {
            RowMatch::Row(j) => {
                let t = &other.workloads[j];
                (
                    t.setting_label(),
                    format!("{:.0}", t.tokens_per_s),
                    format!("{:.2}x", our.tokens_per_s / t.tokens_per_s),
                )
            }
            RowMatch::Differs(why) => {
                notes.push(format!(
                    "{} [{}]: not compared, {why}",
                    our.name,
                    our.setting_label()
                ));
                ("-".into(), "-".into(), "differs".into())
            }
            RowMatch::Missing => ("-".into(), "-".into(), "no match".into()),
        };
        let _ = writeln!(
            out,
            "{:<16} {:<18} {:>12.0} {:<18} {:>12} {:>8}",
            our.name,
            our.setting_label(),
            our.tokens_per_s,
            setting,
            theirs,
            ratio
        );
    }
    // A row of theirs is matched only by a row of ours of the same name.
    for t in &other.workloads {
        if !ours.iter().any(|o| o.name == t.name) {
            let _ = writeln!(
                out,
                "{:<16} {:<18} {:>12} {:<18} {:>12.0} {:>8}",
                t.name,
                "(not run here)",
                "-",
                t.setting_label(),
                t.tokens_per_s,
                "-"
            );
        }
    }
    for note in notes {
        let _ = writeln!(out, "{note}");
    }
    if let Some(hint) = ours.first().and_then(|our| other.mode_hint(our.mode)) {
        let _ = writeln!(out, "{hint}");
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
            vec![
                RowMatch::Row(0),
                RowMatch::Row(2),
                RowMatch::Row(1),
                RowMatch::Missing
            ]
        );
    }

    /// A gemma-embed report of schema 2 with these workload rows.
    fn v2_report(workloads: &str) -> OtherReport {
        let text = format!(
            r#"{{"schema": "gemma-embed-bench/2", "engine": "gemma-embed", "backend": "cpu",
                 "workloads": [{workloads}]}}"#
        );
        serde_json::from_str(&text).unwrap()
    }

    #[test]
    fn a_report_of_the_other_mode_names_the_flags_that_would_compare() {
        let online = v2_report(
            r#"{"name": "fixed-128", "mode": "online", "concurrency": 16, "tokens_per_s": 9},
               {"name": "fixed-128", "mode": "online", "concurrency": 4, "tokens_per_s": 9},
               {"name": "fixed-512", "mode": "online", "concurrency": 4, "tokens_per_s": 9},
               {"name": "fixed-512", "mode": "online", "rate": 2.5, "tokens_per_s": 9}"#,
        );
        let hint = "its rows measured online latency and this run is offline: add --mode online \
                    --concurrency 4,16 --rate 2.5 to compare them";
        assert_eq!(online.mode_hint("offline").as_deref(), Some(hint));
        assert_eq!(online.mode_hint("online"), None);
        let table = table(&[ours("fixed-128", "offline", 8192, None)], &online);
        assert!(table.ends_with(&format!("{hint}\n")), "{table}");
        let offline: OtherReport = serde_json::from_str(REFERENCE_V1).unwrap();
        assert_eq!(offline.mode_hint("offline"), None);
        assert!(offline
            .mode_hint("online")
            .is_some_and(|h| h.contains("drop --mode online")));
        // A report with a row of each mode compares rows of either.
        let both = v2_report(
            r#"{"name": "fixed-128", "mode": "online", "concurrency": 4, "tokens_per_s": 9},
               {"name": "fixed-128", "mode": "offline", "tokens_per_s": 9}"#,
        );
        assert_eq!(both.mode_hint("offline"), None);
        assert_eq!(both.mode_hint("online"), None);
    }

    #[test]
    fn rows_that_share_only_a_name_get_no_ratio() {
        let other: OtherReport = serde_json::from_str(
            r#"{"schema": "gemma-embed-bench/2", "engine": "sentence-transformers", "backend": "cpu",
                "workloads": [
                  {"name": "fixed-16", "mode": "offline", "max_batch_tokens": 4096,
                   "num_sequences": 32, "num_tokens": 512, "tokens_per_s": 50},
                  {"name": "fixed-128", "mode": "offline", "max_batch_tokens": 4096,
                   "num_sequences": 1, "num_tokens": 100, "tokens_per_s": 50}
                ]}"#,
        )
        .unwrap();
        // Ours ran one sequence of 100 tokens: the fixed-16 row of theirs ran 32 of 512.
        let rows = [
            ours("fixed-16", "offline", 8192, None),
            ours("fixed-128", "online", 4096, Some(1)),
            ours("fixed-128", "offline", 8192, None),
        ];
        let matches = match_rows(&rows, &other.workloads);
        assert_eq!(
            matches[0],
            RowMatch::Differs("theirs ran 32 sequences of 512 tokens in all, ours 1 of 100".into())
        );
        assert_eq!(
            matches[1],
            RowMatch::Differs("theirs is offline, ours online".into())
        );
        // Same workload and mode at another budget: compared, their setting shown.
        assert_eq!(matches[2], RowMatch::Row(1));
        let table = table(&rows, &other);
        assert!(
            table.contains("not compared, theirs ran 32 sequences"),
            "{table}"
        );
        assert_eq!(table.matches("differs").count(), 2, "{table}");
        assert!(
            table.contains("offline mbt=4096") && table.contains("2.00x"),
            "{table}"
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
