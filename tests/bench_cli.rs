//! `gemma-embed bench` end to end on the tiny fixture model: offline sweeps, online runs through
//! the engine (closed loop and Poisson arrivals), `--compare` against a report written by
//! `tools/bench_reference.py`, `--plot`. Nothing here asserts a speed.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{json, Value};

fn tiny() -> String {
    common::tiny_model_dir().display().to_string()
}

/// `gemma-embed bench --model tiny --backend cpu --repeats 2 --warmup 1 ARGS...`
fn bench(args: &[&str]) -> Output {
    let model = tiny();
    let mut all = vec![
        "bench",
        "--model",
        &model,
        "--backend",
        "cpu",
        "--repeats",
        "2",
        "--warmup",
        "1",
    ];
    all.extend_from_slice(args);
    Command::new(env!("CARGO_BIN_EXE_gemma-embed"))
        .args(&all)
        .output()
        .expect("run gemma-embed")
}

fn ok(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench failed: {stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// [`bench`] with `--json` into a temporary file, which must succeed: the table it printed and
/// the report it wrote.
fn bench_json(args: &[&str]) -> (String, Value) {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let mut all = args.to_vec();
    all.extend_from_slice(&["--json", json.to_str().unwrap()]);
    let table = ok(&bench(&all));
    (table, read_json(&json))
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn rows(report: &Value) -> &Vec<Value> {
    report["workloads"].as_array().unwrap()
}

/// The online fields of one row: every request answered, latencies positive and ordered.
fn check_online_row(row: &Value, expected_requests: u64) {
    assert_eq!(row["mode"], "online");
    assert_eq!(
        row["num_requests"].as_u64(),
        Some(expected_requests),
        "{row}"
    );
    assert_eq!(
        row["answered_requests"].as_u64(),
        Some(expected_requests),
        "{row}"
    );
    let latency = &row["latency"];
    let (p50, p90, p99, max) = (
        latency["p50_ms"].as_f64().unwrap(),
        latency["p90_ms"].as_f64().unwrap(),
        latency["p99_ms"].as_f64().unwrap(),
        latency["max_ms"].as_f64().unwrap(),
    );
    assert!(
        p50 > 0.0 && p50 <= p90 && p90 <= p99 && p99 <= max,
        "{latency}"
    );
    let fill = row["batch_fill"].as_f64().unwrap();
    assert!(fill > 0.0 && fill <= 1.0, "{row}");
    assert!(row["tokens_per_s"].as_f64().unwrap() > 0.0);
    assert_eq!(row["seconds"].as_array().unwrap().len(), 2);
    assert!(row["peak_device_memory_bytes"].is_null());
}

#[test]
fn online_closed_loop_answers_every_request() {
    let (table, report) = bench_json(&[
        "--mode",
        "online",
        "--concurrency",
        "2",
        "--lengths",
        "16,40",
        "--tokens",
        "480",
        "--inputs-per-request",
        "3",
        "--max-batch-tokens",
        "128",
    ]);
    assert_eq!(report["schema"], "gemma-embed-bench/2");
    assert_eq!(report["mode"], "online");
    assert_eq!(report["settings"]["concurrency"], serde_json::json!([2]));
    let rows = rows(&report);
    assert_eq!(rows.len(), 2);
    // 480 / 16 = 30 sequences in requests of 3; 480 / 40 = 12 sequences in requests of 3.
    for (row, (name, requests)) in rows.iter().zip([("fixed-16", 10), ("fixed-40", 4)]) {
        assert_eq!(row["name"], name);
        assert_eq!(row["concurrency"], 2);
        check_online_row(row, requests);
    }
    assert!(
        table.contains("p99 ms") && table.contains("10/10"),
        "{table}"
    );
}

#[test]
fn online_poisson_rate_answers_every_request() {
    let (_, report) = bench_json(&[
        "--mode",
        "online",
        "--rate",
        "400,800",
        "--lengths",
        "24",
        "--tokens",
        "480",
        "--max-batch-tokens",
        "96",
    ]);
    let rows = rows(&report);
    // One row per rate; 20 sequences, one per request.
    assert_eq!(rows.len(), 2);
    for (row, rate) in rows.iter().zip([400.0, 800.0]) {
        assert_eq!(row["rate"].as_f64(), Some(rate));
        assert!(row["concurrency"].is_null());
        check_online_row(row, 20);
    }
}

#[test]
fn offline_sweep_has_a_row_per_workload_and_budget_with_its_batch_fill() {
    let (table, report) = bench_json(&[
        "--lengths",
        "16,32",
        "--tokens",
        "256",
        "--max-batch-tokens",
        "64,40",
    ]);
    assert_eq!(report["mode"], "offline");
    assert_eq!(
        report["settings"]["max_batch_tokens"],
        serde_json::json!([64, 40])
    );
    // (workload, budget) -> (batches, fill): 16 x 16 tokens pack 4 per 64-token batch (fill
    // 1.0) and 2 per 40-token batch (32/40); 8 x 32 tokens pack 2 per 64 and 1 per 40.
    let expected = [
        ("fixed-16", 64, 4, 1.0),
        ("fixed-16", 40, 8, 0.8),
        ("fixed-32", 64, 4, 1.0),
        ("fixed-32", 40, 8, 0.8),
    ];
    let rows = rows(&report);
    assert_eq!(rows.len(), expected.len());
    for (row, (name, budget, batches, fill)) in rows.iter().zip(expected) {
        assert_eq!(row["name"], name);
        assert_eq!(row["mode"], "offline");
        assert_eq!(row["max_batch_tokens"], budget);
        assert_eq!(row["num_batches"], batches, "{row}");
        assert!(
            (row["batch_fill"].as_f64().unwrap() - fill).abs() < 1e-12,
            "{row}"
        );
        assert!(row["latency"].is_null());
        // Peak RSS of the process (Linux, /proc/self/status): at least the weights are resident.
        let rss = row["peak_host_rss_bytes"]
            .as_u64()
            .unwrap_or_else(|| panic!("no peak_host_rss_bytes on Linux: {row}"));
        assert!(rss > 1 << 20, "{row}");
    }
    assert!(
        table.contains("mbt=40") && table.contains("GFLOP/s"),
        "{table}"
    );
}

#[test]
fn compare_matches_the_reference_report_by_workload() {
    // Written by `tools/bench_reference.py --model tests/fixtures/tiny --device cpu
    // --lengths 16,64 --tokens 1024 --json tests/fixtures/bench_reference_tiny.json`.
    let reference: PathBuf =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bench_reference_tiny.json");
    let theirs = read_json(&reference);
    let (table, ours) = bench_json(&[
        "--lengths",
        "16,32",
        "--tokens",
        "1024",
        "--compare",
        reference.to_str().unwrap(),
    ]);
    let compare = table
        .split("compared with")
        .nth(1)
        .unwrap_or_else(|| panic!("no comparison in {table}"));
    assert!(
        compare.contains("sentence-transformers cpu f32"),
        "{compare}"
    );
    let line = |name: &str| {
        compare
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} line in {compare}"))
            .to_string()
    };
    // fixed-16 is in both: our rate, theirs and the ratio, as printed.
    let ours_16 = rows(&ours)[0]["tokens_per_s"].as_f64().unwrap();
    let theirs_16 = rows(&theirs)
        .iter()
        .find(|w| w["name"] == "fixed-16")
        .unwrap()["tokens_per_s"]
        .as_f64()
        .unwrap();
    let fields: Vec<String> = line("fixed-16")
        .split_whitespace()
        .map(String::from)
        .collect();
    // workload, our setting (`offline mbt=…`), ours, their setting, theirs, ratio.
    assert_eq!(fields[3], format!("{ours_16:.0}"), "{fields:?}");
    assert_eq!(fields[4..6], ["offline", "mbt=4096"], "{fields:?}");
    assert_eq!(fields[6], format!("{theirs_16:.0}"), "{fields:?}");
    assert_eq!(
        fields[7],
        format!("{:.2}x", ours_16 / theirs_16),
        "{fields:?}"
    );
    // fixed-32 only here, fixed-64 only there.
    assert!(line("fixed-32").contains("no match"));
    assert!(line("fixed-64").contains("(not run here)"));
}

#[test]
fn plot_writes_a_png_and_an_svg_or_says_which_font_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("bench.png");
    let svg = dir.path().join("bench.svg");
    let common = [
        "--mode",
        "online",
        "--concurrency",
        "1,2",
        "--lengths",
        "8,16",
    ];
    let common_tail = ["--tokens", "128", "--max-batch-tokens", "64"];
    for path in [&png, &svg] {
        let mut args = common.to_vec();
        args.extend_from_slice(&common_tail);
        args.extend_from_slice(&["--plot", path.to_str().unwrap()]);
        let out = bench(&args);
        if !out.status.success() {
            // A machine without any TrueType font: the error says so and how to fix it. CI
            // installs one, so there the plot must be drawn.
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                stderr.contains("needs a TrueType font") && stderr.contains("GEMMA_EMBED_FONT"),
                "{stderr}"
            );
            assert!(
                !std::env::var("CI").is_ok_and(|v| v == "true"),
                "CI=true needs a font for the plot: {stderr}"
            );
            eprintln!("SKIPPED: no TrueType font on this machine, the plot was not drawn");
            return;
        }
    }
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.starts_with("<svg") && text.contains("latency vs load"));
    assert!(text.contains("fixed-16") && text.contains("c=2 mbt=64"));
}

#[test]
fn bad_flags_are_refused_before_measuring() {
    let refused = |args: &[&str], message: &str| {
        let out = bench(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} ran: {stderr}");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
        // No table, and no workload measured (each prints its tokens/s to stderr).
        assert!(out.stdout.is_empty(), "{args:?} printed a table");
        assert!(!stderr.contains("tokens/s"), "{args:?} measured: {stderr}");
    };
    let cases: [(&[&str], &str); 11] = [
        (
            &["--concurrency", "2", "--lengths", "8"],
            "are for --mode online",
        ),
        (
            &["--mode", "online", "--lengths", "8"],
            "--concurrency C or --rate R",
        ),
        (&["--lengths", "8", "--plot", "chart.gif"], ".png or .svg"),
        (
            &["--mode", "online", "--concurrency", "0", "--lengths", "8"],
            "--concurrency must be at least 1",
        ),
        (
            &["--mode", "online", "--rate", "1e-300", "--lengths", "8"],
            "--rate 1e-300: request 1 would arrive",
        ),
        (
            &["--mode", "online", "--rate", "1e-9", "--lengths", "8"],
            "(more than a day): raise the rate",
        ),
        (
            &["--lengths", "8", "--tokens", "0"],
            "--tokens must be in 1..=268435456",
        ),
        (
            &["--lengths", "8", "--tokens", "10000000000000"],
            "--tokens must be in 1..=268435456",
        ),
        (
            &["--lengths", "8", "--json", "-"],
            "--json -: give a file name (standard output carries the table)",
        ),
        (
            &["--lengths", "8", "--peak-tflops", "0"],
            "--peak-tflops must be a positive number of TFLOP/s, got 0",
        ),
        (
            &[
                "--lengths",
                "8",
                "--corpus-docs",
                "5",
                "--prompt-name",
                "query",
            ],
            "--corpus-docs, --prompt-name describe the --corpus workload: give --corpus FILE",
        ),
    ];
    for (args, message) in cases {
        refused(args, message);
    }
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("c.txt");
    std::fs::write(&corpus, "one\ntwo\n").unwrap();
    refused(
        &["--corpus", corpus.to_str().unwrap(), "--tokens", "100"],
        "--tokens sizes the synthetic workloads",
    );
    let report = dir.path().join("r.json");
    for other in ["--plot", "--compare"] {
        let report = report.to_str().unwrap();
        refused(
            &["--lengths", "8", "--json", report, other, report],
            &format!("--json and {other} name one file"),
        );
    }
    // Reports that cannot be compared with: another model's, impossible numbers.
    let reference: Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bench_reference_tiny.json"),
        )
        .unwrap(),
    )
    .unwrap();
    for (field, value, message) in [
        (
            "/model/num_layers",
            json!(24),
            "a report of another model (layers 24, here 4): compare runs of the same model",
        ),
        (
            "/settings/tokens_per_run",
            json!(1e13),
            "not a bench report",
        ),
        (
            "/settings/tokens_per_run",
            json!(10_000_000_000_000u64),
            "tokens_per_run 10000000000000 is not in 1..=268435456",
        ),
        (
            "/workloads/0/tokens_per_s",
            json!(-5.0),
            "workload fixed-16: tokens_per_s -5 is not a throughput",
        ),
    ] {
        let mut other = reference.clone();
        *other.pointer_mut(field).unwrap() = value;
        let path = dir.path().join("other.json");
        std::fs::write(&path, other.to_string()).unwrap();
        refused(&["--compare", path.to_str().unwrap()], message);
    }
    let unwritable = dir.path().join("no such folder/report.json");
    refused(
        &["--lengths", "8", "--json", unwritable.to_str().unwrap()],
        "cannot write there",
    );
}

#[test]
fn compare_without_workload_flags_runs_the_reports_workloads() {
    let reference: PathBuf =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bench_reference_tiny.json");
    let (table, ours) = bench_json(&["--compare", reference.to_str().unwrap()]);
    let names: Vec<&str> = rows(&ours)
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    // The reference ran fixed-16 and fixed-64 with 1024 tokens each.
    assert_eq!(names, vec!["fixed-16", "fixed-64"]);
    assert_eq!(ours["settings"]["tokens_per_run"], 1024);
    assert_eq!(rows(&ours)[1]["num_sequences"], 16);
    // Both count the same FLOPs for the same workload (the window radius from the raw config).
    let theirs = read_json(&reference);
    for (our, their) in rows(&ours).iter().zip(rows(&theirs)) {
        assert_eq!(our["flops"], their["flops"], "{}", our["name"]);
    }
    let compare = table.split("compared with").nth(1).unwrap();
    assert!(
        !compare.contains("no match") && !compare.contains("(not run here)"),
        "{compare}"
    );
}

#[test]
fn corpus_workload_tokenizes_like_sentence_transformers() {
    // Written by `tools/bench_reference.py --model tests/fixtures/tiny --device cpu --corpus
    // examples/corpus.jsonl --prompt-name document --repeats 2
    // --json tests/fixtures/bench_reference_tiny_corpus.json`: the corpus tokenized by the
    // sentence-transformers tokenizer (per-line prompts, `null` for none, truncation at 64).
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let reference = root.join("tests/fixtures/bench_reference_tiny_corpus.json");
    let corpus = root.join("examples/corpus.jsonl");
    let theirs = read_json(&reference);
    let theirs = &rows(&theirs)[0];
    let (table, ours) = bench_json(&[
        "--corpus",
        corpus.to_str().unwrap(),
        "--prompt-name",
        "document",
        "--compare",
        reference.to_str().unwrap(),
    ]);
    assert_eq!(rows(&ours).len(), 1, "only the corpus without --lengths");
    let row = &rows(&ours)[0];
    assert_eq!(row["name"], "corpus-corpus");
    assert_eq!(row["name"], theirs["name"]);
    assert_eq!(row["num_sequences"], theirs["num_sequences"]);
    assert_eq!(row["num_tokens"], theirs["num_tokens"]);
    let compare = table
        .split("compared with")
        .nth(1)
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        compare
            .lines()
            .any(|l| l.starts_with("corpus-corpus") && l.ends_with('x')),
        "{compare}"
    );

    // The first 5 documents only, online.
    let (_, report) = bench_json(&[
        "--corpus",
        corpus.to_str().unwrap(),
        "--corpus-docs",
        "5",
        "--mode",
        "online",
        "--concurrency",
        "2",
    ]);
    let row = &rows(&report)[0];
    assert_eq!(row["num_sequences"], 5);
    check_online_row(row, 5);
}

/// `gemma-embed tokenize --model MODEL --input INPUT ARGS...`: the ids of every document.
fn tokenize_ids(model: &str, input: &Path, args: &[&str]) -> Vec<Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_gemma-embed"))
        .args([
            "tokenize",
            "--model",
            model,
            "--input",
            input.to_str().unwrap(),
        ])
        .args(args)
        .output()
        .expect("run gemma-embed tokenize");
    let stdout = ok(&out);
    stdout
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap()["ids"].clone())
        .collect()
}

#[test]
fn the_reference_reads_a_corpus_as_gemma_embed_does() {
    // tools/corpus_docs.py is how tools/bench_reference.py reads --corpus. Its documents (prompt
    // + text) tokenized by `gemma-embed tokenize` must give the ids of that command on the corpus
    // itself, flag for flag, so that both engines measure the same sequences.
    let Some(model) = common::real_model_dir() else {
        return;
    };
    let model = model.to_str().unwrap();
    let python = common::python();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, bytes).unwrap();
        path
    };
    let beir = "{\"_id\": \"d1\", \"title\": \"Gemma\", \"text\": \"Small open models.\", \
                \"meta\": {\"n\": 1}}\n\n\
                {\"_id\": \"d2\", \"title\": null, \"text\": \"An untitled text\"}\r\n\
                {\"_id\": \"d3\", \"title\": \" \", \"text\": \"Blank title, ünïcødé 中文\"}\n\
                {\"_id\": \"d4\", \"title\": null, \"ids\": [2, 100, 1]}";
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gzip, beir.as_bytes()).unwrap();
    let cases: Vec<(PathBuf, Vec<&str>)> = vec![
        (
            write("beir.jsonl.gz", &gzip.finish().unwrap()),
            vec!["--id-column", "_id", "--title-column", "title"],
        ),
        (
            write(
                "notes.txt",
                b"first line\r\n\nthird, after a blank one\nlast, no newline",
            ),
            vec!["--prompt-name", "query"],
        ),
        (
            write(
                "table.csv",
                "heading,body\r\n\"A, quoted\",\"two\nlines of \"\"body\"\"\"\r\n,no heading\r\n"
                    .as_bytes(),
            ),
            vec!["--text-column", "body", "--title-column", "heading"],
        ),
        (
            write(
                "mixed.ndjson",
                b"{\"text\": \"inherits\"}\n{\"text\": \"a query\", \"prompt_name\": \"query\"}\n\
                  {\"text\": \"none\", \"prompt_name\": null}\n{\"ids\": [2, 7, 1]}\n",
            ),
            vec!["--prompt-name", "STS"],
        ),
    ];
    // A directory: hidden entries left out, paths in component order (a/ before a-b/).
    write("folder/a-b/x.txt", b"from a-b");
    write("folder/a/x.txt", b"from a");
    write("folder/.hidden/y.txt", b"hidden");
    write("folder/.dotfile", b"hidden");
    write("folder/z.md", "# zed\n\nwith a title line".as_bytes());
    let cases = cases
        .into_iter()
        .chain([(dir.path().join("folder"), vec!["--prompt-name", "document"])]);

    for (corpus, flags) in cases {
        // corpus_docs.py takes the reading flags (not --id-column: ids are not benchmarked).
        let reading: Vec<&str> = flags
            .chunks(2)
            .filter(|flag| flag[0] != "--id-column")
            .flatten()
            .copied()
            .collect();
        let out = Command::new(&python)
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/corpus_docs.py"))
            .arg(&corpus)
            .args(["--model", model])
            .args(&reading)
            .output()
            .expect("run python3");
        assert!(
            out.status.success(),
            "{}: {}",
            corpus.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let prompted = dir.path().join("prompted.jsonl");
        std::fs::write(&prompted, &out.stdout).unwrap();
        let theirs = tokenize_ids(model, &prompted, &[]);
        let ours = tokenize_ids(model, &corpus, &flags);
        assert!(ours.len() >= 2, "{}: {ours:?}", corpus.display());
        assert_eq!(theirs, ours, "{}", corpus.display());
    }
}

#[test]
fn a_corpus_reads_only_its_first_documents_with_their_titles() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("titled.csv");
    // The third row is not CSV (a stray quote): never read with --corpus-docs 2.
    std::fs::write(
        &corpus,
        "title,text\nGemma,one two three\n,four five\n\"bad,x\n",
    )
    .unwrap();
    let tiny = tiny();
    let titled = ["--text-column", "text", "--title-column", "title"];
    let (_, report) = bench_json(
        &[
            ["--corpus", corpus.to_str().unwrap(), "--corpus-docs", "2"].as_slice(),
            &titled,
        ]
        .concat(),
    );
    let row = &rows(&report)[0];
    assert_eq!(row["name"], "corpus-titled");
    assert_eq!(row["num_sequences"], 2);
    std::fs::write(&corpus, "title,text\nGemma,one two three\n,four five\n").unwrap();
    let expected: usize = tokenize_ids(&tiny, &corpus, &titled)
        .iter()
        .map(|ids| ids.as_array().unwrap().len())
        .sum();
    assert_eq!(row["num_tokens"], expected);
    let untitled: usize = tokenize_ids(&tiny, &corpus, &[])
        .iter()
        .map(|ids| ids.as_array().unwrap().len())
        .sum();
    assert!(expected > untitled, "the titles make the prompts");

    let out = bench(&[
        "--corpus",
        corpus.to_str().unwrap(),
        "--title-column",
        "title",
        "--prompt-name",
        "query",
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot be used with"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
