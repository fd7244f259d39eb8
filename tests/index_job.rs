//! The corpus job end to end on the tiny fixture model: rows against the backend run on each
//! document alone, a real SIGKILL mid-run then a resume, shards merged, rejected documents.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gemma_embed::backend::cpu::CpuBackend;
use gemma_embed::backend::{Backend, Batch};
use gemma_embed::model::Model;
use gemma_embed::tokenize::{Tokenizer, Truncation};
use serde_json::Value;

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny")
}

fn gemma_embed(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_gemma-embed"));
    command
        .arg(args[0])
        .args(["--model", fixture_dir().to_str().unwrap()])
        .args(&args[1..]);
    command
}

#[track_caller]
fn run_ok(args: &[&str]) -> Output {
    let out = gemma_embed(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "gemma-embed {args:?} failed: {stderr}"
    );
    out
}

/// Documents of varied length (1 to ~90 words, so some are truncated at max_seq_length 64).
fn corpus(docs: usize) -> Vec<String> {
    let words = [
        "alpha", "beta", "gamma", "delta", "the", "of", "Zeta", "42", "émoji", "x",
    ];
    (0..docs)
        .map(|i| {
            let len = 1 + (i * 37 + i / 7) % 90;
            (0..len)
                .map(|w| words[(i + w * 3) % words.len()])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

fn write_jsonl(path: &Path, texts: &[String]) {
    let lines: String = texts
        .iter()
        .enumerate()
        .map(|(i, t)| serde_json::json!({"id": format!("doc-{i}"), "text": t}).to_string() + "\n")
        .collect();
    std::fs::write(path, lines).unwrap();
}

fn read_npy_f32(path: &Path) -> (usize, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    let header = String::from_utf8_lossy(&bytes[10..128]).to_string();
    let shape = header.split("'shape': (").nth(1).unwrap();
    let rows: usize = shape.split(',').next().unwrap().trim().parse().unwrap();
    assert!(header.contains("'<f4'"), "{header}");
    let data = bytes[128..]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    (rows, data)
}

/// The reference: each document tokenized and run alone through the CPU backend.
fn reference_rows(texts: &[String]) -> Vec<Vec<f32>> {
    let model = Arc::new(Model::load_dir(&fixture_dir()).unwrap());
    let tokenizer = Tokenizer::load(&fixture_dir(), &model.config).unwrap();
    let dim = model.config.embedding_dim;
    let mut backend = CpuBackend::new(model).unwrap();
    texts
        .iter()
        .map(|t| {
            let ids = tokenizer.encode(0, None, t, Truncation::Truncate).unwrap();
            backend
                .forward(&Batch::from_sequences(&[ids]), dim)
                .unwrap()
                .data
        })
        .collect()
}

fn checkpoint_rows(path: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str::<Value>(&text).ok()?["rows"].as_u64()
}

#[test]
fn a_killed_job_resumes_to_the_uninterrupted_output() {
    let dir = tempfile::tempdir().unwrap();
    let texts = corpus(3000);
    let input = dir.path().join("in.jsonl");
    write_jsonl(&input, &texts);
    let input = input.to_str().unwrap();
    // Small requests, small batches and a checkpoint after every request: the first checkpoint
    // comes long before the end, so the kill lands mid-run even on a fast machine.
    let args = |output: &str| {
        vec![
            "embed",
            "--input",
            input,
            "--output",
            output,
            "--docs-per-request",
            "4",
            "--max-batch-tokens",
            "64",
            "--checkpoint-interval-ms",
            "0",
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>()
    };
    let whole = dir.path().join("whole.npy");
    let whole_args = args(whole.to_str().unwrap());
    run_ok(&whole_args.iter().map(String::as_str).collect::<Vec<_>>());
    let (rows, data) = read_npy_f32(&whole);
    assert_eq!(rows, texts.len());
    let reference = reference_rows(&texts);
    let dim = reference[0].len();
    for (i, want) in reference.iter().enumerate() {
        let got = &data[i * dim..(i + 1) * dim];
        assert!(
            got.iter()
                .zip(want)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "row {i} differs from document {i} embedded alone"
        );
    }

    let killed = dir.path().join("killed.npy");
    let checkpoint = dir.path().join("killed.npy.checkpoint");
    let killed_args = args(killed.to_str().unwrap());
    let killed_args: Vec<&str> = killed_args.iter().map(String::as_str).collect();
    let mut kills = 0;
    for _ in 0..2 {
        let mut child = gemma_embed(&killed_args)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        let before = checkpoint_rows(&checkpoint).unwrap_or(0);
        // Kill once the checkpoint moved past where this run started.
        while checkpoint_rows(&checkpoint).unwrap_or(0) <= before
            && start.elapsed() < Duration::from_secs(60)
            && child.try_wait().unwrap().is_none()
        {
            std::thread::sleep(Duration::from_millis(2));
        }
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            kills += 1;
        }
        child.wait().unwrap();
    }
    assert!(kills >= 1, "the job finished before it could be killed");
    assert!(
        !killed.exists(),
        "the killed run must not leave a final output"
    );
    let done = checkpoint_rows(&checkpoint).unwrap();
    assert!(
        0 < done && done < texts.len() as u64,
        "{done} rows at the kill"
    );
    let stale = std::fs::read(&checkpoint).unwrap();
    let out = run_ok(&killed_args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("resuming"), "{stderr}");
    assert_eq!(
        std::fs::read(&killed).unwrap(),
        std::fs::read(&whole).unwrap(),
        "the resumed output differs from the uninterrupted one"
    );
    assert!(!checkpoint.exists());
    assert!(!dir.path().join("killed.npy.partial").exists());

    // A checkpoint whose partial output is gone is dropped and the job starts over.
    std::fs::write(&checkpoint, stale).unwrap();
    let out = run_ok(&killed_args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("resuming"), "{stderr}");
    assert_eq!(
        std::fs::read(&killed).unwrap(),
        std::fs::read(&whole).unwrap()
    );
    assert!(!checkpoint.exists());
}

#[test]
fn sharded_runs_merge_to_the_unsharded_output() {
    let dir = tempfile::tempdir().unwrap();
    let mut texts = corpus(50);
    let input = dir.path().join("in.jsonl");
    write_jsonl(&input, &texts);
    // Bad documents, skipped: an unknown prompt, ids out of the vocabulary, invalid JSON.
    let mut content = std::fs::read_to_string(&input).unwrap();
    content += "{\"id\": \"bad-prompt\", \"text\": \"a\", \"prompt_name\": \"nope\"}\n";
    content += "{\"id\": \"bad-ids\", \"ids\": [2, 99999, 1]}\n\n";
    content += "{not json\n";
    content += "{\"id\": \"last\", \"text\": \"the end\"}\n";
    std::fs::write(&input, content).unwrap();
    texts.push("the end".into());
    let input = input.to_str().unwrap();
    for (extension, dtype) in [("jsonl", "f32"), ("npy", "f16")] {
        let path = |name: &str| dir.path().join(format!("{name}.{extension}"));
        let path_str = |name: &str| path(name).to_str().unwrap().to_string();
        let common = [
            "--on-error",
            "skip",
            "--dtype",
            dtype,
            "--docs-per-request",
            "3",
        ];
        let whole = path_str("whole");
        let mut args = vec!["embed", "--input", input, "--output", &whole];
        args.extend(common);
        let out = run_ok(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("3 rejected"), "{stderr}");
        let shards: Vec<String> = (0..3).map(|i| path_str(&format!("shard{i}"))).collect();
        for (i, shard_path) in shards.iter().enumerate() {
            let spec = format!("{i}/3");
            let mut args = vec!["embed", "--input", input, "--output", shard_path];
            args.extend(common);
            args.extend(["--shard", &spec]);
            run_ok(&args);
        }
        let merged = path_str("merged");
        let mut args = vec!["merge", "--output", &merged];
        args.extend(shards.iter().map(String::as_str));
        let out = Command::new(env!("CARGO_BIN_EXE_gemma-embed"))
            .args(&args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            std::fs::read(&merged).unwrap(),
            std::fs::read(&whole).unwrap(),
            "merged {extension} shards differ from the unsharded run"
        );
    }
    // Rows of the f32 .jsonl against each document alone; ids in input order.
    let rows: Vec<Value> = std::fs::read_to_string(dir.path().join("whole.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), texts.len());
    for ((row, want), i) in rows.iter().zip(reference_rows(&texts)).zip(0..) {
        let id = if i == texts.len() - 1 {
            "last".to_string()
        } else {
            format!("doc-{i}")
        };
        assert_eq!(row["id"], Value::from(id));
        let got: Vec<f32> = serde_json::from_value(row["embedding"].clone()).unwrap();
        assert_eq!(got, want, "row {i}");
    }
    let rejects: Vec<Value> = std::fs::read_to_string(dir.path().join("whole.jsonl.rejects.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let summary: Vec<(u64, u64, Value)> = rejects
        .iter()
        .map(|r| {
            (
                r["line"].as_u64().unwrap(),
                r["doc"].as_u64().unwrap(),
                r["id"].clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (51, 50, Value::Null),
            (52, 51, Value::from("bad-ids")),
            (54, 52, Value::Null)
        ]
    );
    assert!(rejects[0]["error"]
        .as_str()
        .unwrap()
        .contains("unknown prompt name `nope`"));
    assert!(rejects[1]["error"].as_str().unwrap().contains("99999"));
    assert!(rejects[2]["error"]
        .as_str()
        .unwrap()
        .contains("invalid JSON"));
}

#[test]
fn a_checkpoint_of_other_parameters_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    std::fs::write(&input, "one\ntwo\n").unwrap();
    let output = dir.path().join("out.npy");
    let partial = dir.path().join("out.npy.partial");
    std::fs::write(&partial, b"").unwrap();
    std::fs::write(
        dir.path().join("out.npy.checkpoint"),
        r#"{"params": {"dimensions": 1}, "rows": 0, "output_bytes": 0, "rejects": 0,
            "rejects_bytes": 0, "input_offset": 0, "input_line": 0, "input_docs": 0}"#,
    )
    .unwrap();
    let out = gemma_embed(&[
        "embed",
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
    ])
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("a checkpoint of another command") && stderr.contains("dimensions: 1 ->"),
        "{stderr}"
    );
}

#[test]
fn csv_input_embeds_like_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let texts = [
        "plain".to_string(),
        "with, comma".into(),
        "two\nlines \"quoted\"".into(),
    ];
    let jsonl = dir.path().join("in.jsonl");
    write_jsonl(&jsonl, &texts);
    let mut csv = String::from("body,key\n");
    for (i, t) in texts.iter().enumerate() {
        csv += &format!("\"{}\",doc-{i}\n", t.replace('"', "\"\""));
    }
    let csv_path = dir.path().join("in.csv");
    std::fs::write(&csv_path, csv).unwrap();
    let from_jsonl = dir.path().join("a.jsonl");
    let from_csv = dir.path().join("b.jsonl");
    run_ok(&[
        "embed",
        "--input",
        jsonl.to_str().unwrap(),
        "--output",
        from_jsonl.to_str().unwrap(),
    ]);
    run_ok(&[
        "embed",
        "--input",
        csv_path.to_str().unwrap(),
        "--output",
        from_csv.to_str().unwrap(),
        "--text-column",
        "body",
        "--id-column",
        "key",
    ]);
    assert_eq!(
        std::fs::read(&from_csv).unwrap(),
        std::fs::read(&from_jsonl).unwrap()
    );
}
