//! The corpus job end to end on the tiny fixture model: rows against the backend run on each
//! document alone, a real SIGKILL mid-run then a resume, shards merged, rejected documents;
//! Parquet input (files written here with the arrow writer) and output (read back with the
//! parquet crate).

mod common;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::cast::AsArray;
use arrow_array::types::{Float16Type, Float32Type};
use arrow_array::{
    ArrayRef, Float64Array, Int64Array, LargeStringArray, RecordBatch, StringArray, StringViewArray,
};
use arrow_schema::{DataType, Field, Schema};
use gemma_embed::backend::cpu::CpuBackend;
use gemma_embed::backend::{Backend, Batch};
use gemma_embed::model::Model;
use gemma_embed::tokenize::{Tokenizer, Truncation};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;
use serde_json::Value;

fn gemma_embed(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_gemma-embed"));
    command
        .arg(args[0])
        .args(["--model", common::tiny_model_dir().to_str().unwrap()])
        .args(&args[1..]);
    command
}

/// `embed --input INPUT --output OUTPUT EXTRA...`, as arguments.
fn embed_args<'a>(input: &'a Path, output: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "embed",
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    args
}

/// `gemma-embed merge --output OUTPUT SHARDS...`, run.
fn merge(output: &Path, shards: &[PathBuf]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gemma-embed"))
        .arg("merge")
        .arg("--output")
        .arg(output)
        .args(shards)
        .output()
        .unwrap()
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
    reference_rows_of_width(texts, None)
}

/// [`reference_rows`] at Matryoshka width `dimensions` (default: the model's width).
fn reference_rows_of_width(texts: &[String], dimensions: Option<usize>) -> Vec<Vec<f32>> {
    let model = Arc::new(Model::load_dir(&common::tiny_model_dir()).unwrap());
    let tokenizer = Tokenizer::load(&common::tiny_model_dir(), &model.config).unwrap();
    let dim = dimensions.unwrap_or(model.config.embedding_dim);
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

/// A Parquet file of `columns` (all nullable) in row groups of `group_rows` rows.
fn write_parquet(path: &Path, columns: Vec<(&str, ArrayRef)>, group_rows: usize) {
    let fields: Vec<Field> = columns
        .iter()
        .map(|(name, a)| Field::new(*name, a.data_type().clone(), true))
        .collect();
    let schema = Arc::new(Schema::new(fields));
    let batch =
        RecordBatch::try_new(schema.clone(), columns.into_iter().map(|c| c.1).collect()).unwrap();
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(group_rows))
        .build();
    let mut writer =
        ArrowWriter::try_new(File::create(path).unwrap(), schema, Some(props)).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}

/// A Parquet output read back: ids, the embeddings' element type, the values of each row as
/// f32 bits (f16 bits widened for float16), and the rows of each row group.
struct ParquetOutput {
    ids: Vec<String>,
    item: DataType,
    rows: Vec<Vec<u32>>,
    row_groups: Vec<i64>,
}

fn read_parquet_output(path: &Path) -> ParquetOutput {
    let builder = ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap()).unwrap();
    let schema = builder.schema().clone();
    assert_eq!(schema.fields().len(), 2);
    assert_eq!(schema.field(0).name(), "id");
    assert_eq!(schema.field(0).data_type(), &DataType::Utf8);
    assert_eq!(schema.field(1).name(), "embedding");
    let DataType::FixedSizeList(item, dim) = schema.field(1).data_type() else {
        panic!("embedding is {}", schema.field(1).data_type());
    };
    let (item, dim) = (item.data_type().clone(), *dim as usize);
    let row_groups = builder
        .metadata()
        .row_groups()
        .iter()
        .map(|g| g.num_rows())
        .collect();
    let mut out = ParquetOutput {
        ids: Vec::new(),
        item: item.clone(),
        rows: Vec::new(),
        row_groups,
    };
    for batch in builder.build().unwrap() {
        let batch = batch.unwrap();
        let ids = batch.column(0).as_string::<i32>();
        let lists = batch.column(1).as_fixed_size_list();
        for r in 0..batch.num_rows() {
            out.ids.push(ids.value(r).to_string());
            let values = lists.value(r);
            let bits: Vec<u32> = match item {
                DataType::Float32 => values
                    .as_primitive::<Float32Type>()
                    .values()
                    .iter()
                    .map(|x| x.to_bits())
                    .collect(),
                DataType::Float16 => values
                    .as_primitive::<Float16Type>()
                    .values()
                    .iter()
                    .map(|x| x.to_bits() as u32)
                    .collect(),
                ref other => panic!("embedding items are {other}"),
            };
            assert_eq!(bits.len(), dim);
            out.rows.push(bits);
        }
    }
    out
}

/// The rows of a `.npy` output (f32 or f16) as bits, and its dtype.
fn read_npy_bits(path: &Path) -> (String, Vec<u32>) {
    let bytes = std::fs::read(path).unwrap();
    let header = String::from_utf8_lossy(&bytes[10..128]).to_string();
    let descr = header.split("'descr': '").nth(1).unwrap()[..3].to_string();
    let bits = match descr.as_str() {
        "<f4" => bytes[128..]
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
            .collect(),
        "<f2" => bytes[128..]
            .chunks_exact(2)
            .map(|b| u16::from_le_bytes(b.try_into().unwrap()) as u32)
            .collect(),
        other => panic!("dtype {other}"),
    };
    (descr, bits)
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn checkpoint_rows(path: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str::<Value>(&text).ok()?["rows"].as_u64()
}

/// Start the job twice and SIGKILL it once its checkpoint moved `step` rows past where that
/// run started; returns how many runs were killed (not finished first).
fn kill_twice(args: &[&str], checkpoint: &Path, step: u64) -> u32 {
    let mut kills = 0;
    for _ in 0..2 {
        let mut child = gemma_embed(args).stderr(Stdio::null()).spawn().unwrap();
        let start = Instant::now();
        let before = checkpoint_rows(checkpoint).unwrap_or(0);
        while checkpoint_rows(checkpoint).unwrap_or(0) < before + step
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
    kills
}

/// `embed` of `input` into `output` with small requests, small batches and a checkpoint after
/// every request: the first checkpoint comes long before the end, so a kill lands mid-run even on
/// a fast machine. `extra` flags go last.
fn killable_embed(input: &str, output: &Path, extra: &[&str]) -> Vec<String> {
    [
        "embed",
        "--input",
        input,
        "--output",
        output.to_str().unwrap(),
        "--docs-per-request",
        "4",
        "--max-batch-tokens",
        "64",
        "--checkpoint-interval-ms",
        "0",
    ]
    .iter()
    .chain(extra)
    .map(|s| s.to_string())
    .collect()
}

/// A 1,500-document input `in.jsonl` and the [`killable_embed`] job writing it to `out.npy`.
struct KillableJob {
    input: String,
    output: PathBuf,
    checkpoint: PathBuf,
    args: Vec<String>,
}

fn killable_job(dir: &Path) -> KillableJob {
    let input = dir.join("in.jsonl");
    write_jsonl(&input, &corpus(1500));
    let input = input.to_str().unwrap().to_string();
    let output = dir.join("out.npy");
    KillableJob {
        args: killable_embed(&input, &output, &[]),
        checkpoint: dir.join("out.npy.checkpoint"),
        input,
        output,
    }
}

/// Run the job of `args` (writing `output`), SIGKILL it mid-run, rerun it: it resumes, and its
/// output is byte for byte the uninterrupted run's `whole`.
#[track_caller]
fn assert_killed_and_resumed_to(args: &[&str], output: &Path, whole: &Path) {
    let checkpoint = Path::new(&format!("{}.checkpoint", output.display())).to_path_buf();
    assert!(
        kill_twice(args, &checkpoint, 1) >= 1,
        "finished before the kill"
    );
    let out = run_ok(args);
    assert!(stderr_of(&out).contains("resuming"), "{}", stderr_of(&out));
    assert_eq!(
        std::fs::read(output).unwrap(),
        std::fs::read(whole).unwrap(),
        "{args:?}: killed and resumed, the output differs from the uninterrupted one"
    );
}

/// `args` as the `&str`s [`run_ok`] and [`gemma_embed`] take.
/// A copy of the tiny model's directory at `dest`, as another machine would keep it.
fn copy_of_tiny_model(dest: &Path) -> PathBuf {
    let copied = Command::new("cp")
        .arg("-r")
        .arg(common::tiny_model_dir())
        .arg(dest)
        .status()
        .unwrap();
    assert!(copied.success());
    dest.to_path_buf()
}

/// Run `args`, which must fail (exit 1) with `part` in its message; its stderr.
#[track_caller]
fn assert_refused(args: &[&str], part: &str) -> String {
    let out = gemma_embed(args).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains(part),
        "{args:?}: {}",
        stderr_of(&out)
    );
    stderr_of(&out)
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

#[test]
fn a_killed_job_resumes_to_the_uninterrupted_output() {
    let dir = tempfile::tempdir().unwrap();
    let texts = corpus(3000);
    let input = dir.path().join("in.jsonl");
    write_jsonl(&input, &texts);
    let input = input.to_str().unwrap();
    let whole = dir.path().join("whole.npy");
    run_ok(&strs(&killable_embed(input, &whole, &[])));
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
    let killed_args = killable_embed(input, &killed, &[]);
    let killed_args = strs(&killed_args);
    let kills = kill_twice(&killed_args, &checkpoint, 1);
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
    for (extension, dtype) in [
        ("jsonl", "f32"),
        ("npy", "f16"),
        ("parquet", "f32"),
        ("parquet", "f16"),
    ] {
        let path = |name: &str| dir.path().join(format!("{name}.{extension}"));
        let path_str = |name: &str| path(name).to_str().unwrap().to_string();
        let mut common = vec![
            "--on-error",
            "skip",
            "--dtype",
            dtype,
            "--docs-per-request",
            "3",
        ];
        if extension == "parquet" {
            // The unsharded 51 rows in 7 groups, each shard's 17 in 3.
            common.extend(["--row-group-rows", "8"]);
        }
        let whole = path_str("whole");
        let mut args = vec!["embed", "--input", input, "--output", &whole];
        args.extend(&common);
        let out = run_ok(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("3 rejected"), "{stderr}");
        let shards: Vec<String> = (0..3).map(|i| path_str(&format!("shard{i}"))).collect();
        for (i, shard_path) in shards.iter().enumerate() {
            let spec = format!("{i}/3");
            let mut args = vec!["embed", "--input", input, "--output", shard_path];
            args.extend(&common);
            args.extend(["--shard", &spec]);
            run_ok(&args);
        }
        let merged = path_str("merged");
        let mut args = vec!["merge", "--output", &merged];
        // In any order: each shard's record says which it is.
        args.extend(shards.iter().rev().map(String::as_str));
        let out = Command::new(env!("CARGO_BIN_EXE_gemma-embed"))
            .args(&args)
            .output()
            .unwrap();
        let stderr = stderr_of(&out);
        assert!(out.status.success(), "{stderr}");
        assert!(stderr.contains("51 rows, 3 rejected"), "{stderr}");
        assert_eq!(
            std::fs::read(&merged).unwrap(),
            std::fs::read(&whole).unwrap(),
            "merged {extension} {dtype} shards differ from the unsharded run"
        );
        let rejects = |output: &str| std::fs::read(format!("{output}.rejects.jsonl")).unwrap();
        assert_eq!(rejects(&merged), rejects(&whole), "{extension} {dtype}");
    }

    // A finished shard is passed over by a rerun of its job, not by a run of another job.
    let again = dir.path().join("again.jsonl");
    let shard_run = |extra: &[&str]| {
        let extra = [&["--on-error", "skip", "--shard", "0/3"][..], extra].concat();
        stderr_of(&run_ok(&embed_args(Path::new(input), &again, &extra)))
    };
    let first = shard_run(&[]);
    assert!(first.contains("embedded 17 docs"), "{first}");
    let finished = std::fs::read(&again).unwrap();
    let rerun = shard_run(&[]);
    assert!(
        rerun.contains(&format!(
            "{}: shard 0/3 done before, by a run of the same job (17 rows, 1 rejected",
            again.display()
        )) && !rerun.contains("embedded"),
        "{rerun}"
    );
    assert_eq!(std::fs::read(&again).unwrap(), finished);
    // Also after a crash between putting the output in place and removing the checkpoint (a
    // checkpoint, no partial output): the leftover checkpoint goes.
    let checkpoint = PathBuf::from(format!("{}.checkpoint", again.display()));
    std::fs::write(&checkpoint, "{}").unwrap();
    assert!(shard_run(&[]).contains("shard 0/3 done before"));
    assert!(!checkpoint.exists());
    assert_eq!(std::fs::read(&again).unwrap(), finished);
    let other_job = shard_run(&["--dimensions", "32"]);
    assert!(other_job.contains("embedded 17 docs"), "{other_job}");
    assert!(shard_run(&["--dimensions", "32"]).contains("done before"));
    // Nor by a run on an input changed since (its modification time, here), nor by one under
    // `--on-error fail`, which must not pass the shard's rejected document.
    File::options()
        .append(true)
        .open(input)
        .unwrap()
        .set_modified(std::time::SystemTime::now() + Duration::from_secs(5))
        .unwrap();
    let changed = shard_run(&["--dimensions", "32"]);
    assert!(changed.contains("embedded 17 docs"), "{changed}");
    let failing = gemma_embed(&embed_args(
        Path::new(input),
        &again,
        &["--shard", "0/3", "--dimensions", "32", "--on-error", "fail"],
    ))
    .output()
    .unwrap();
    assert!(!failing.status.success(), "{}", stderr_of(&failing));
    assert!(!stderr_of(&failing).contains("done before"));
    // Nor, from standard input, by any run: none can tell one stream from another.
    let from_stdin = dir.path().join("stdin.jsonl");
    for _ in 0..2 {
        let mut child = gemma_embed(&embed_args(
            Path::new("-"),
            &from_stdin,
            &["--shard", "0/3", "--on-error", "skip"],
        ))
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        std::io::Write::write_all(&mut stdin, &std::fs::read(input).unwrap()).unwrap();
        drop(stdin);
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", stderr_of(&out));
        assert!(
            stderr_of(&out).contains("embedded 17 docs"),
            "{}",
            stderr_of(&out)
        );
    }

    // Refused, naming the fault, with nothing written: a missing shard, one given twice, one
    // of another job, one without its record.
    let shard = |i: usize| dir.path().join(format!("shard{i}.jsonl"));
    let merged = dir.path().join("refused.jsonl");
    let refused = |shards: &[PathBuf], message: &str| {
        let out = merge(&merged, shards);
        assert!(!out.status.success(), "{shards:?}");
        assert!(stderr_of(&out).contains(message), "{}", stderr_of(&out));
        assert!(!merged.exists() && !dir.path().join("refused.jsonl.partial").exists());
    };
    // Shard 1/3 (skipping bad documents, as the shards above) of `input` by `model`.
    let second_shard = |model: &Path, input: &Path, name: &str, extra: &[&str]| {
        let output = dir.path().join(name);
        let out = Command::new(env!("CARGO_BIN_EXE_gemma-embed"))
            .arg("embed")
            .arg("--model")
            .arg(model)
            .arg("--input")
            .arg(input)
            .arg("--output")
            .arg(&output)
            .args(["--on-error", "skip", "--shard", "1/3"])
            .args(extra)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr_of(&out));
        output
    };
    refused(
        &[shard(0), shard(2)],
        "refused.jsonl: shards missing: 2 given of 3 (1/3)",
    );
    refused(
        &[shard(0), shard(1), shard(1)],
        "shard1.jsonl: shard 1/3, as",
    );
    let tiny = common::tiny_model_dir();
    let input = Path::new(input);
    let other = second_shard(&tiny, input, "other1.jsonl", &["--dimensions", "16"]);
    refused(
        &[shard(0), other, shard(2)],
        "a shard of another job than the first shard's (dimensions: 48 -> 16)",
    );
    let out = merge(&shard(0), &[shard(0), shard(1), shard(2)]);
    assert!(
        stderr_of(&out).contains("shard0.jsonl: is the --output"),
        "{}",
        stderr_of(&out)
    );
    // A shard of another input of the same size (one letter changed).
    let content = std::fs::read_to_string(input).unwrap();
    let changed = dir.path().join("changed.jsonl");
    std::fs::write(&changed, content.replacen("the end", "the End", 1)).unwrap();
    let foreign = second_shard(&tiny, &changed, "foreign1.jsonl", &[]);
    refused(
        &[shard(0), foreign, shard(2)],
        "a shard of another job than the first shard's (input_sample: ",
    );
    // A shard made with another model: the tiny one with its last weight changed.
    let model = copy_of_tiny_model(&dir.path().join("model"));
    let mut weights = std::fs::read(model.join("model.safetensors")).unwrap();
    *weights.last_mut().unwrap() ^= 0x40;
    std::fs::write(model.join("model.safetensors"), weights).unwrap();
    let other_model = second_shard(&model, input, "model1.jsonl", &[]);
    refused(
        &[shard(0), other_model, shard(2)],
        "a shard of another job than the first shard's (job: ",
    );
    std::fs::copy(shard(2), dir.path().join("copy2.jsonl")).unwrap();
    refused(
        &[shard(0), shard(1), dir.path().join("copy2.jsonl")],
        "copy2.jsonl.shard.json beside it",
    );
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
            (51, 50, Value::from("bad-prompt")),
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

    // Rerun under `fail` on the good documents: no rejects file is left from the `skip` run.
    let good = dir.path().join("good.jsonl");
    write_jsonl(&good, &texts[..5]);
    let whole = dir.path().join("whole.jsonl");
    run_ok(&embed_args(&good, &whole, &[]));
    assert!(!dir.path().join("whole.jsonl.rejects.jsonl").exists());
}

#[test]
fn a_checkpoint_of_other_parameters_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    std::fs::write(&input, "one\ntwo\n").unwrap();
    let output = dir.path().join("out.npy");
    let partial = dir.path().join("out.npy.partial");
    std::fs::write(&partial, b"").unwrap();
    // Each checkpoint is refused, naming what is wrong and what can be done.
    let checkpoint_of = |params: &str| {
        format!(
            r#"{{"params": {params}, "rows": 0, "output_bytes": 0, "rejects": 0,
                "rejects_bytes": 0, "input_offset": 0, "input_line": 0, "input_docs": 0}}"#
        )
    };
    let cases = [
        (
            checkpoint_of(r#"{"dimensions": 1}"#),
            vec![
                "a checkpoint of another command",
                "dimensions: 1 ->",
                "rerun that command to finish it",
            ],
        ),
        // Parameters of another shape.
        (checkpoint_of("[1]"), vec!["rerun that command"]),
        // An earlier version's (the model named by path and sample).
        (
            checkpoint_of(r#"{"job": {"model": "/m", "model_sample": "crc32:0"}}"#),
            vec!["written by an earlier gemma-embed: finish it with that version"],
        ),
        // An earlier version's of a text input (lines ended only at LF).
        (
            checkpoint_of(r#"{"job": {"model_crc32": "crc32:0"}}"#),
            vec!["written by an earlier gemma-embed: finish it with that version"],
        ),
        // A file that is no checkpoint at all.
        (
            "garbage".to_string(),
            vec![
                "out.npy.checkpoint: not a checkpoint (",
                "out.npy.partial to start over",
            ],
        ),
    ];
    for (checkpoint, expected) in cases {
        std::fs::write(dir.path().join("out.npy.checkpoint"), &checkpoint).unwrap();
        let out = gemma_embed(&embed_args(&input, &output, &[]))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
        for part in expected {
            assert!(
                stderr_of(&out).contains(part),
                "{checkpoint}: {}",
                stderr_of(&out)
            );
        }
    }
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
    run_ok(&embed_args(&jsonl, &from_jsonl, &[]));
    run_ok(&embed_args(
        &csv_path,
        &from_csv,
        &["--text-column", "body", "--id-column", "key"],
    ));
    assert_eq!(
        std::fs::read(&from_csv).unwrap(),
        std::fs::read(&from_jsonl).unwrap()
    );
    let rows: Vec<Value> = std::fs::read_to_string(&from_csv)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), texts.len());
    for (i, (row, want)) in rows.iter().zip(reference_rows(&texts)).enumerate() {
        assert_eq!(row["id"], Value::from(format!("doc-{i}")));
        let got: Vec<f32> = serde_json::from_value(row["embedding"].clone()).unwrap();
        assert_eq!(got, want, "row {i} differs from document {i} alone");
    }
}

#[test]
fn parquet_input_embeds_like_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let mut texts = corpus(40);
    texts[3] = String::new();
    texts[5] = "Ünïcödé, \"quoted\"\nand a new line".into();
    let path = |name: &str| dir.path().join(name);
    let embed = |input: &Path, output: &Path, extra: &[&str]| {
        let mut args = embed_args(input, output, &[]);
        args.extend(extra);
        run_ok(&args)
    };
    // String ids, large_utf8 text, row groups of 7 (the reader's batches cross them).
    write_jsonl(&path("in.jsonl"), &texts);
    let ids: Vec<String> = (0..texts.len()).map(|i| format!("doc-{i}")).collect();
    write_parquet(
        &path("in.parquet"),
        vec![
            ("key", Arc::new(StringArray::from_iter_values(&ids))),
            ("body", Arc::new(LargeStringArray::from_iter_values(&texts))),
        ],
        7,
    );
    embed(&path("in.jsonl"), &path("from_jsonl.jsonl"), &[]);
    embed(
        &path("in.parquet"),
        &path("from_parquet.jsonl"),
        &["--text-column", "body", "--id-column", "key"],
    );
    let from_parquet = std::fs::read_to_string(path("from_parquet.jsonl")).unwrap();
    assert_eq!(
        from_parquet,
        std::fs::read_to_string(path("from_jsonl.jsonl")).unwrap()
    );
    assert_eq!(from_parquet.lines().count(), texts.len());
    for (i, (line, want)) in from_parquet.lines().zip(reference_rows(&texts)).enumerate() {
        let row: Value = serde_json::from_str(line).unwrap();
        assert_eq!(row["id"], Value::from(ids[i].clone()));
        let got: Vec<f32> = serde_json::from_value(row["embedding"].clone()).unwrap();
        assert_eq!(got, want, "row {i}");
    }

    // `tokenize` reads Parquet too; a too-long text under --no-truncate names its row.
    let tokenize = |input: &Path, extra: &[&str]| {
        let mut args = vec!["tokenize", "--input", input.to_str().unwrap()];
        args.extend(extra);
        gemma_embed(&args).output().unwrap()
    };
    let parquet_columns = ["--text-column", "body", "--id-column", "key"];
    let from_parquet = tokenize(&path("in.parquet"), &parquet_columns);
    let from_jsonl = tokenize(&path("in.jsonl"), &[]);
    assert!(
        from_parquet.status.success(),
        "{}",
        stderr_of(&from_parquet)
    );
    assert_eq!(from_parquet.stdout, from_jsonl.stdout);
    let mut strict = parquet_columns.to_vec();
    strict.push("--no-truncate");
    let jsonl_error = stderr_of(&tokenize(&path("in.jsonl"), &["--no-truncate"]));
    let parquet_error = stderr_of(&tokenize(&path("in.parquet"), &strict));
    let line = jsonl_error
        .split("in.jsonl: line ")
        .nth(1)
        .and_then(|rest| rest.split(':').next())
        .unwrap_or_else(|| panic!("{jsonl_error}"));
    assert!(
        parquet_error.contains(&format!("in.parquet: row {line}: ")),
        "{parquet_error}"
    );

    // Integer ids and utf8_view text, against JSON Lines with number ids.
    let lines: String = texts
        .iter()
        .enumerate()
        .map(|(i, t)| serde_json::json!({"id": 1000 + i, "text": t}).to_string() + "\n")
        .collect();
    std::fs::write(path("numbered.jsonl"), lines).unwrap();
    write_parquet(
        &path("numbered.parquet"),
        vec![
            ("text", Arc::new(StringViewArray::from_iter_values(&texts))),
            (
                "n",
                Arc::new(Int64Array::from_iter_values(
                    1000..1000 + texts.len() as i64,
                )),
            ),
        ],
        16,
    );
    embed(&path("numbered.jsonl"), &path("a.jsonl"), &[]);
    embed(
        &path("numbered.parquet"),
        &path("b.jsonl"),
        &["--id-column", "n"],
    );
    assert_eq!(
        std::fs::read(path("b.jsonl")).unwrap(),
        std::fs::read(path("a.jsonl")).unwrap()
    );
}

#[test]
fn parquet_output_holds_the_npy_rows() {
    let dir = tempfile::tempdir().unwrap();
    let texts = corpus(50);
    let input = dir.path().join("in.jsonl");
    write_jsonl(&input, &texts);
    let input = input.to_str().unwrap();
    for (dtype, dimensions, item) in [
        ("f32", "48", DataType::Float32),
        ("f16", "16", DataType::Float16),
    ] {
        let path = |ext: &str| dir.path().join(format!("out-{dtype}.{ext}"));
        let common = [
            "--input",
            input,
            "--dtype",
            dtype,
            "--dimensions",
            dimensions,
        ];
        for ext in ["npy", "parquet"] {
            let output = path(ext);
            let mut args = vec!["embed", "--output", output.to_str().unwrap()];
            args.extend(common);
            if ext == "parquet" {
                args.extend(["--row-group-rows", "16"]);
            }
            run_ok(&args);
        }
        let parquet = read_parquet_output(&path("parquet"));
        assert_eq!(parquet.item, item);
        assert_eq!(parquet.row_groups, [16, 16, 16, 2]);
        let want_ids: Vec<String> = (0..texts.len()).map(|i| format!("doc-{i}")).collect();
        assert_eq!(parquet.ids, want_ids);
        let (_, npy) = read_npy_bits(&path("npy"));
        let dim: usize = dimensions.parse().unwrap();
        assert_eq!(npy.len(), texts.len() * dim);
        for (i, row) in parquet.rows.iter().enumerate() {
            assert_eq!(row[..], npy[i * dim..(i + 1) * dim], "{dtype} row {i}");
        }
        // Both against each document embedded alone at that width, rounded to the dtype.
        let reference = reference_rows_of_width(&texts, Some(dim));
        assert_eq!(parquet.rows.len(), reference.len());
        for (i, (row, want)) in parquet.rows.iter().zip(&reference).enumerate() {
            let want: Vec<u32> = match item {
                DataType::Float32 => want.iter().map(|x| x.to_bits()).collect(),
                _ => want
                    .iter()
                    .map(|&x| u32::from(half::f16::from_f32(x).to_bits()))
                    .collect(),
            };
            assert_eq!(
                *row, want,
                "{dtype} row {i} differs from document {i} alone"
            );
        }
        assert!(!dir
            .path()
            .join(format!("out-{dtype}.parquet.partial"))
            .exists());
    }
}

#[test]
fn a_killed_parquet_job_resumes_to_the_uninterrupted_output() {
    let dir = tempfile::tempdir().unwrap();
    let texts = corpus(3000);
    // Parquet in and out: the resumes start reading inside an input row group of 100 and
    // continue an output row group of 64.
    let input = dir.path().join("in.parquet");
    let ids: Vec<String> = (0..texts.len()).map(|i| format!("doc-{i}")).collect();
    write_parquet(
        &input,
        vec![
            ("text", Arc::new(StringArray::from_iter_values(&texts))),
            ("id", Arc::new(StringArray::from_iter_values(&ids))),
        ],
        100,
    );
    let input = input.to_str().unwrap();
    let args = |output: &Path| {
        killable_embed(
            input,
            output,
            &["--row-group-rows", "64", "--id-column", "id"],
        )
    };
    let whole = dir.path().join("whole.parquet");
    run_ok(&strs(&args(&whole)));
    assert_eq!(read_parquet_output(&whole).ids, ids);

    let killed = dir.path().join("killed.parquet");
    let checkpoint = dir.path().join("killed.parquet.checkpoint");
    let killed_args = args(&killed);
    let killed_args = strs(&killed_args);
    // Each run is killed some row groups after it started: the resumes have parts to keep and
    // a group in progress to read back.
    let kills = kill_twice(&killed_args, &checkpoint, 150);
    assert!(kills >= 1, "the job finished before it could be killed");
    assert!(!killed.exists());
    let done = checkpoint_rows(&checkpoint).unwrap();
    assert!(
        150 <= done && done < texts.len() as u64,
        "{done} rows at the kill"
    );
    let partial = dir.path().join("killed.parquet.partial");
    assert!(partial.join("part-000001.parquet").exists());
    let out = run_ok(&killed_args);
    assert!(stderr_of(&out).contains("resuming"), "{}", stderr_of(&out));
    assert!(
        std::fs::read(&killed).unwrap() == std::fs::read(&whole).unwrap(),
        "the resumed Parquet output differs from the uninterrupted one"
    );
    assert!(!checkpoint.exists());
    assert!(!partial.exists());
}

#[test]
fn bad_parquet_inputs_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.parquet");
    write_parquet(
        &input,
        vec![
            (
                "text",
                Arc::new(StringArray::from(vec![
                    Some("one"),
                    Some("two"),
                    None,
                    Some("four"),
                    Some("five"),
                ])),
            ),
            ("n", Arc::new(Int64Array::from_iter_values(10..15))),
            (
                "score",
                Arc::new(Float64Array::from(vec![0.5, 1.5, 2.5, 3.5, 4.5])),
            ),
        ],
        2,
    );
    let input = input.to_str().unwrap();
    let output = dir.path().join("out.jsonl");
    let output = output.to_str().unwrap();
    let fails = |extra: &[&str]| {
        let mut args = vec!["embed", "--input", input, "--output", output];
        args.extend(extra);
        let out = gemma_embed(&args).output().unwrap();
        assert!(!out.status.success(), "{args:?} succeeded");
        let files: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(files, ["in.parquet"], "{args:?} left files");
        stderr_of(&out)
    };
    let err = fails(&["--text-column", "body"]);
    assert!(
        err.contains("in.parquet: no column `body` (--text-column); the file has: text, n, score"),
        "{err}"
    );
    let err = fails(&["--text-column", "score"]);
    assert!(
        err.contains("in.parquet: column `score` (--text-column) holds Float64, not strings"),
        "{err}"
    );
    let err = fails(&["--id-column", "score"]);
    assert!(
        err.contains("column `score` (--id-column) holds Float64, not strings or integers"),
        "{err}"
    );
    let err = fails(&["--id-column", "n"]);
    assert!(
        err.contains("in.parquet: row 3: null text (--text-column `text`)"),
        "{err}"
    );

    let out = run_ok(&[
        "embed",
        "--input",
        input,
        "--output",
        output,
        "--id-column",
        "n",
        "--on-error",
        "skip",
    ]);
    assert!(
        stderr_of(&out).contains("1 rejected"),
        "{}",
        stderr_of(&out)
    );
    let rows: Vec<Value> = std::fs::read_to_string(output)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ids: Vec<&Value> = rows.iter().map(|r| &r["id"]).collect();
    assert_eq!(ids, [10, 11, 13, 14].map(Value::from).each_ref());
    let want = reference_rows(&["one", "two", "four", "five"].map(String::from));
    for (row, want) in rows.iter().zip(&want) {
        let got: Vec<f32> = serde_json::from_value(row["embedding"].clone()).unwrap();
        assert_eq!(&got, want);
    }
    let rejects = std::fs::read_to_string(dir.path().join("out.jsonl.rejects.jsonl")).unwrap();
    let reject: Value = serde_json::from_str(rejects.trim()).unwrap();
    // The row refused for its text keeps its own id.
    assert_eq!(
        reject,
        serde_json::json!({
            "line": 3, "doc": 2, "id": 12, "error": "null text (--text-column `text`)"
        })
    );
    // Without an id column, its row number: the id its row would have had.
    run_ok(&[
        "embed",
        "--input",
        input,
        "--output",
        output,
        "--on-error",
        "skip",
    ]);
    let rejects = std::fs::read_to_string(dir.path().join("out.jsonl.rejects.jsonl")).unwrap();
    let reject: Value = serde_json::from_str(rejects.trim()).unwrap();
    assert_eq!(reject["id"], 3, "{reject}");
}

#[test]
fn a_directory_embeds_each_file_as_one_document_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let docs = dir.path().join("docs");
    // Files in nested folders, written out of order; hidden ones are left out.
    let texts = corpus(1500);
    let mut files: Vec<(String, String)> = texts
        .iter()
        .enumerate()
        .rev()
        .map(|(i, t)| {
            (
                format!("{}/doc-{i:04}.txt", ["a", "b/c", "b"][i % 3]),
                t.clone(),
            )
        })
        .collect();
    for (name, text) in &files {
        let path = docs.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    std::fs::write(docs.join(".hidden"), "not a document").unwrap();
    std::fs::create_dir_all(docs.join(".git")).unwrap();
    std::fs::write(docs.join(".git/HEAD"), "not a document").unwrap();
    files.sort();
    let input = docs.to_str().unwrap();

    // The ids and each file's text embedded alone, in path order.
    let jsonl = dir.path().join("all.jsonl");
    run_ok(&[
        "embed",
        "--input",
        input,
        "--output",
        jsonl.to_str().unwrap(),
    ]);
    let rows: Vec<Value> = std::fs::read_to_string(&jsonl)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), files.len());
    let sample: Vec<usize> = (0..files.len()).step_by(97).collect();
    let reference = reference_rows(
        &sample
            .iter()
            .map(|&i| files[i].1.clone())
            .collect::<Vec<_>>(),
    );
    for (&i, want) in sample.iter().zip(reference) {
        assert_eq!(rows[i]["id"], Value::from(files[i].0.clone()), "row {i}");
        let got: Vec<f32> = serde_json::from_value(rows[i]["embedding"].clone()).unwrap();
        assert_eq!(
            got, want,
            "row {i}: {} differs from its text alone",
            files[i].0
        );
    }

    // Killed and resumed, the same file as the uninterrupted run.
    let whole = dir.path().join("whole.npy");
    run_ok(&strs(&killable_embed(input, &whole, &[])));
    let killed = dir.path().join("killed.npy");
    let checkpoint = dir.path().join("killed.npy.checkpoint");
    let killed_args = killable_embed(input, &killed, &[]);
    let killed_args = strs(&killed_args);
    assert_killed_and_resumed_to(&killed_args, &killed, &whole);

    // A file changed after the checkpoint, even to the same size with its time set back, or a
    // file added: the checkpoint is refused.
    let (name, text) = &files[7];
    let path = docs.join(name);
    let modified = std::fs::metadata(&path).unwrap().modified().unwrap();
    let refused = |change: &dyn Fn()| {
        assert!(
            kill_twice(&killed_args, &checkpoint, 1) >= 1,
            "finished before the kill"
        );
        change();
        let out = gemma_embed(&killed_args).output().unwrap();
        assert!(!out.status.success());
        assert!(
            stderr_of(&out).contains("a checkpoint of another command")
                && stderr_of(&out).contains("the input changed since"),
            "{}",
            stderr_of(&out)
        );
        std::fs::remove_file(&checkpoint).unwrap();
    };
    refused(&|| {
        std::fs::write(&path, text.to_uppercase()).unwrap();
        let file = File::options().write(true).open(&path).unwrap();
        file.set_modified(modified).unwrap();
    });
    refused(&|| std::fs::write(docs.join("a/new.txt"), "alpha").unwrap());

    // Only the first MiB of a file is read (the model keeps 64 tokens of the fixture, 2048 of
    // EmbeddingGemma): the same embedding as the whole text, even with the cut inside a
    // character.
    let big = dir.path().join("big");
    std::fs::create_dir(&big).unwrap();
    let long = format!(
        "{}é{}",
        "alpha ".repeat(174_762) + "bet",
        " gamma".repeat(100_000)
    );
    assert!(long.len() > 1 << 20 && !long.is_char_boundary(1 << 20));
    std::fs::write(big.join("long.txt"), &long).unwrap();
    let big_out = dir.path().join("big.jsonl");
    run_ok(&embed_args(&big, &big_out, &[]));
    let row: Value = serde_json::from_str(&std::fs::read_to_string(&big_out).unwrap()).unwrap();
    let got: Vec<f32> = serde_json::from_value(row["embedding"].clone()).unwrap();
    assert_eq!(got, reference_rows(&[long])[0]);

    // A file that is not text is a bad document, named by its path.
    std::fs::write(docs.join("b/binary.bin"), b"\xff\xfe").unwrap();
    let skipped = dir.path().join("skipped.jsonl");
    let out = run_ok(&[
        "embed",
        "--input",
        input,
        "--output",
        skipped.to_str().unwrap(),
        "--on-error",
        "skip",
    ]);
    let rejects = std::fs::read_to_string(dir.path().join("skipped.jsonl.rejects.jsonl")).unwrap();
    assert_eq!(rejects.lines().count(), 1, "{rejects}");
    let reject: Value = serde_json::from_str(rejects.trim_end()).unwrap();
    assert_eq!(reject["id"], "b/binary.bin", "{rejects}");
    let error = reject["error"].as_str().unwrap();
    assert!(error.starts_with("b/binary.bin: not UTF-8"), "{error}");
    assert!(
        stderr_of(&out).contains("1 rejected"),
        "{}",
        stderr_of(&out)
    );
    // Checkpoints from the first documents on, so that one stands when the bad file is met.
    let failing = killable_embed(input, &dir.path().join("failed.jsonl"), &[]);
    let out = gemma_embed(&strs(&failing)).output().unwrap();
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains("docs: file ")
            && stderr_of(&out).contains("b/binary.bin: not UTF-8"),
        "{}",
        stderr_of(&out)
    );
    // What the checkpoint holds is kept, and the same command with --on-error skip goes on
    // from it, rejecting the file.
    assert!(
        stderr_of(&out).contains("rows before it are kept: rerun with --on-error skip"),
        "{}",
        stderr_of(&out)
    );
    assert!(checkpoint_rows(&dir.path().join("failed.jsonl.checkpoint")).unwrap() > 0);
    let out = run_ok(&strs(
        &[&failing[..], &["--on-error".into(), "skip".into()]].concat(),
    ));
    assert!(stderr_of(&out).contains("resuming"), "{}", stderr_of(&out));
    assert_eq!(
        std::fs::read(dir.path().join("failed.jsonl")).unwrap(),
        std::fs::read(&skipped).unwrap()
    );
    assert_eq!(
        std::fs::read(dir.path().join("failed.jsonl.rejects.jsonl")).unwrap(),
        std::fs::read(dir.path().join("skipped.jsonl.rejects.jsonl")).unwrap()
    );
}

/// `bytes` gzip-compressed, as `parts` members one after the other (as `cat a.gz b.gz` makes).
fn gzip(bytes: &[u8], parts: usize) -> Vec<u8> {
    use std::io::Write;
    let mut out = Vec::new();
    for part in bytes.chunks(bytes.len().div_ceil(parts)) {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(part).unwrap();
        out.extend(encoder.finish().unwrap());
    }
    out
}

#[test]
fn compressed_inputs_embed_like_plain_ones_and_resume() {
    let dir = tempfile::tempdir().unwrap();
    let texts = corpus(1500);
    let plain = dir.path().join("in.jsonl");
    write_jsonl(&plain, &texts);
    let compressed = dir.path().join("in.jsonl.gz");
    std::fs::write(&compressed, gzip(&std::fs::read(&plain).unwrap(), 3)).unwrap();

    let whole = dir.path().join("whole.npy");
    run_ok(&strs(&killable_embed(plain.to_str().unwrap(), &whole, &[])));
    let killed = dir.path().join("killed.npy");
    let killed_args = killable_embed(compressed.to_str().unwrap(), &killed, &[]);
    assert_killed_and_resumed_to(&strs(&killed_args), &killed, &whole);

    // CSV compressed (named without .gz: the magic bytes tell), and text lines through stdin,
    // gzip and zstd.
    let csv: String = std::iter::once("id,text\n".to_string())
        .chain(
            texts[..40]
                .iter()
                .enumerate()
                .map(|(i, t)| format!("doc-{i},\"{t}\"\n")),
        )
        .collect();
    let csv_gz = dir.path().join("in-csv");
    std::fs::write(&csv_gz, gzip(csv.as_bytes(), 2)).unwrap();
    let from_csv = dir.path().join("csv.npy");
    run_ok(&[
        "embed",
        "--input",
        csv_gz.to_str().unwrap(),
        "--input-format",
        "csv",
        "--output",
        from_csv.to_str().unwrap(),
    ]);
    let (rows, data) = read_npy_f32(&from_csv);
    assert_eq!(rows, 40);
    let reference = reference_rows(&texts[..40]);
    let dim = reference[0].len();
    for (i, want) in reference.iter().enumerate() {
        assert_eq!(
            &data[i * dim..(i + 1) * dim],
            want.as_slice(),
            "CSV row {i}"
        );
    }
    let lines = texts[..40].join("\n") + "\n";
    let zstd = ruzstd::encoding::compress_to_vec(
        lines.as_bytes(),
        ruzstd::encoding::CompressionLevel::Fastest,
    );
    for compressed in [gzip(lines.as_bytes(), 1), zstd] {
        let from_stdin = dir.path().join("stdin.npy");
        let mut child = gemma_embed(&[
            "embed",
            "--input",
            "-",
            "--input-format",
            "text",
            "--output",
            from_stdin.to_str().unwrap(),
        ])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().unwrap();
            stdin.write_all(&compressed).unwrap();
        }
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", stderr_of(&out));
        assert_eq!(read_npy_f32(&from_stdin), (rows, data.clone()));
    }

    // A damaged file stops the job with its name and keeps the rows before the damage.
    let mut damaged = gzip(&std::fs::read(&plain).unwrap(), 1);
    let middle = damaged.len() / 2;
    damaged.truncate(middle);
    let damaged_path = dir.path().join("damaged.jsonl.gz");
    std::fs::write(&damaged_path, damaged).unwrap();
    let damaged_out = dir.path().join("damaged.npy");
    let out = gemma_embed(&strs(&killable_embed(
        damaged_path.to_str().unwrap(),
        &damaged_out,
        &[],
    )))
    .output()
    .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains("damaged.jsonl.gz"),
        "{}",
        stderr_of(&out)
    );
    assert!(checkpoint_rows(&dir.path().join("damaged.npy.checkpoint")).unwrap() > 0);
}

/// A job killed under `--on-error fail` resumes under `skip` (`--on-error` decides what happens
/// to a bad document, not what the rows are). And a title column has no place in a directory's
/// files: refused before anything is done.
#[test]
fn checkpoints_resume_across_on_error_and_columns_that_do_not_fit_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let KillableJob {
        checkpoint, args, ..
    } = killable_job(dir.path());
    assert!(
        kill_twice(&strs(&args), &checkpoint, 1) >= 1,
        "finished before the kill"
    );
    let skip = [&args[..], &["--on-error".into(), "skip".into()]].concat();
    let out = run_ok(&strs(&skip));
    assert!(stderr_of(&out).contains("resuming"), "{}", stderr_of(&out));

    let docs = dir.path().join("docs");
    std::fs::create_dir(&docs).unwrap();
    std::fs::write(docs.join("a.txt"), "alpha").unwrap();
    let titled = dir.path().join("titled.npy");
    let out = gemma_embed(&embed_args(&docs, &titled, &["--title-column", "title"]))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains("--title-column needs JSON Lines, CSV or Parquet input"),
        "{}",
        stderr_of(&out)
    );
    assert!(!titled.exists() && !dir.path().join("titled.npy.partial").exists());
}

/// `embed --input F1 F2 F3 --output DIR`: one output per file, each byte for byte the file's own
/// job's output; killed in the second file and rerun, the first is passed over and the second
/// resumes; `--shard` splits the files; other parameters on the same directory are refused.
#[test]
fn several_inputs_write_one_output_each_and_resume() {
    let dir = tempfile::tempdir().unwrap();
    let texts = corpus(3000);
    let inputs = dir.path().join("in");
    std::fs::create_dir(&inputs).unwrap();
    let a = inputs.join("a.jsonl");
    write_jsonl(&a, &texts[..200]);
    let b_plain = dir.path().join("b.jsonl");
    write_jsonl(&b_plain, &texts[200..2000]);
    let b = inputs.join("b.jsonl.gz");
    std::fs::write(&b, gzip(&std::fs::read(&b_plain).unwrap(), 1)).unwrap();
    let c = inputs.join("c.txt");
    std::fs::write(&c, texts[2000..].join("\n") + "\n").unwrap();
    let inputs: Vec<String> = [&a, &b, &c]
        .iter()
        .map(|p| p.to_str().unwrap().to_string())
        .collect();

    // Each file's own job, the reference.
    let alone: Vec<Vec<u8>> = inputs
        .iter()
        .enumerate()
        .map(|(i, input)| {
            let out = dir.path().join(format!("alone-{i}.npy"));
            run_ok(&strs(&killable_embed(input, &out, &[])));
            std::fs::read(out).unwrap()
        })
        .collect();

    let out_dir = dir.path().join("out");
    // The killable job's flags, with every input after `--input`.
    let several = |extra: &[&str]| -> Vec<String> {
        let flags = [&["--output-format", "npy"], extra].concat();
        let mut args = killable_embed(&inputs[0], &out_dir, &flags);
        args.splice(3..3, inputs[1..].iter().cloned());
        args
    };
    let args = several(&[]);
    let outputs = ["a.npy", "b.npy", "c.npy"].map(|name| out_dir.join(name));
    // Killed inside the second file (its checkpoint moved), then rerun to the end.
    let b_checkpoint = out_dir.join("b.npy.checkpoint");
    assert!(
        kill_twice(&strs(&args), &b_checkpoint, 1) >= 1,
        "finished before the kill"
    );
    assert!(outputs[0].exists() && !outputs[2].exists());
    let out = run_ok(&strs(&args));
    let stderr = stderr_of(&out);
    assert!(
        stderr.contains(&format!(
            "[1/3] {} -> {}: done before",
            inputs[0],
            outputs[0].display()
        )),
        "{stderr}"
    );
    assert!(stderr.contains("resuming"), "{stderr}");
    assert!(
        stderr.contains("3 files: 2 embedded in this run, 1 done before"),
        "{stderr}"
    );
    for (output, alone) in outputs.iter().zip(&alone) {
        assert_eq!(
            &std::fs::read(output).unwrap(),
            alone,
            "{}",
            output.display()
        );
    }

    // Shards of the files: 0/2 takes a and c, 1/2 takes b.
    for (shard, expected) in [("0/2", [true, false, true]), ("1/2", [false, true, false])] {
        let sharded_dir = dir.path().join(format!("shard-{}", &shard[..1]));
        let mut args = several(&["--shard", shard]);
        let at = args.iter().position(|a| a == "--output").unwrap();
        args[at + 1] = sharded_dir.to_str().unwrap().to_string();
        run_ok(&strs(&args));
        for ((name, want), alone) in ["a.npy", "b.npy", "c.npy"].iter().zip(expected).zip(&alone) {
            let path = sharded_dir.join(name);
            assert_eq!(path.exists(), want, "{shard}: {name}");
            if want {
                assert_eq!(&std::fs::read(path).unwrap(), alone);
            }
        }
    }

    // Runs on the same files share them. A file another run is writing (its lock held here) is
    // come back to at the end: taken over when that run stops without finishing it, or found
    // finished by it.
    let in_dir = |out_dir: &Path| {
        let mut args = several(&[]);
        let at = args.iter().position(|a| a == "--output").unwrap();
        args[at + 1] = out_dir.to_str().unwrap().to_string();
        args
    };
    for (name, finished_by_holder) in [("taken-over", false), ("done-by-other", true)] {
        let out_dir = dir.path().join(name);
        std::fs::create_dir(&out_dir).unwrap();
        let b_output = out_dir.join("b.npy");
        let held = File::create(out_dir.join("b.npy.lock")).unwrap();
        held.try_lock().unwrap();
        let mut run = gemma_embed(&strs(&in_dir(&out_dir)))
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = std::io::BufReader::new(run.stderr.take().unwrap());
        let mut seen = String::new();
        while !seen.contains("waiting for the run writing it") {
            let read = std::io::BufRead::read_line(&mut stderr, &mut seen).unwrap();
            assert!(read > 0, "{name}: ended without waiting: {seen}");
        }
        assert!(!b_output.exists(), "{name}");
        if finished_by_holder {
            std::fs::write(&b_output, &alone[1]).unwrap();
        }
        drop(held);
        std::io::Read::read_to_string(&mut stderr, &mut seen).unwrap();
        assert!(run.wait().unwrap().success(), "{name}: {seen}");
        let b_file = format!("[2/3] {} -> {}", inputs[1], b_output.display());
        let (end, summary) = if finished_by_holder {
            (
                "done by the other run",
                "2 embedded in this run, 0 done before, 1 by other runs",
            )
        } else {
            (
                "its run stopped; taking it over",
                "3 embedded in this run, 0 done before;",
            )
        };
        for line in [
            format!("{b_file}: another run is writing it, back to it at the end"),
            format!("{b_file}: {end}"),
            format!("3 files: {summary}"),
        ] {
            assert!(seen.contains(&line), "{name}: no `{line}` in {seen}");
        }
        for (file, alone) in ["a.npy", "b.npy", "c.npy"].iter().zip(&alone) {
            assert_eq!(
                &std::fs::read(out_dir.join(file)).unwrap(),
                alone,
                "{name}: {file}"
            );
        }
    }
    // Two real runs at once: whatever the interleaving, each file is embedded by one of them.
    let together_dir = dir.path().join("together");
    let together = in_dir(&together_dir);
    let first = gemma_embed(&strs(&together))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while checkpoint_rows(&together_dir.join("b.npy.checkpoint")).is_none()
        && start.elapsed() < Duration::from_secs(60)
    {
        std::thread::sleep(Duration::from_millis(2));
    }
    let second = stderr_of(&run_ok(&strs(&together)));
    let first = first.wait_with_output().unwrap();
    assert!(first.status.success(), "{}", stderr_of(&first));
    // Each run's files: embedded by it, done before it started, done by the other meanwhile.
    let counts = |stderr: &str| -> [usize; 3] {
        let summary = stderr.split("3 files: ").nth(1).expect(stderr);
        let count = |after: &str| -> usize {
            summary
                .split(after)
                .next()
                .unwrap()
                .rsplit(' ')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        };
        let by_others = if summary.contains(" by other runs meanwhile") {
            count(" by other runs meanwhile")
        } else {
            0
        };
        [
            count(" embedded in this run"),
            count(" done before"),
            by_others,
        ]
    };
    let first_stderr = stderr_of(&first);
    let both = || format!("first: {first_stderr}\nsecond: {second}");
    let [first_embedded, first_before, first_by_other] = counts(&first_stderr);
    let [second_embedded, second_before, second_by_other] = counts(&second);
    assert_eq!(first_embedded + second_embedded, 3, "{}", both());
    assert_eq!(
        first_embedded + first_before + first_by_other,
        3,
        "{}",
        both()
    );
    assert_eq!(
        second_embedded + second_before + second_by_other,
        3,
        "{}",
        both()
    );
    // The first started on an empty directory; the second once the first was into b.
    assert_eq!(first_before, 0, "{}", both());
    assert!(second_before >= 1, "{}", both());
    for (name, alone) in ["a.npy", "b.npy", "c.npy"].iter().zip(&alone) {
        assert_eq!(
            &std::fs::read(together_dir.join(name)).unwrap(),
            alone,
            "{name}"
        );
    }

    // Refused: other parameters in the same directory, no output format, one output name twice.
    let refused = |args: Vec<String>, message: &str| {
        let out = gemma_embed(&strs(&args)).output().unwrap();
        assert!(!out.status.success(), "{args:?}");
        assert!(stderr_of(&out).contains(message), "{}", stderr_of(&out));
    };
    refused(
        several(&["--dimensions", "16"]),
        "the outputs here were made with other parameters (dimensions: 48 -> 16)",
    );
    let mut no_format = several(&[]);
    let at = no_format
        .iter()
        .position(|a| a == "--output-format")
        .unwrap();
    no_format.drain(at..at + 2);
    refused(no_format, "give --output-format npy|jsonl|parquet");
    let mut clash = several(&[]);
    clash.insert(2, b_plain.to_str().unwrap().to_string());
    refused(clash, "its output would be");
}

#[test]
fn a_failed_run_of_several_inputs_can_be_rerun_with_fixed_flags() {
    let dir = tempfile::tempdir().unwrap();
    let texts = corpus(6);
    let out_dir = dir.path().join("out");
    let embed = |inputs: &[&Path], extra: &[&str]| {
        let mut args = vec!["embed", "--input"];
        args.extend(inputs.iter().map(|p| p.to_str().unwrap()));
        args.extend(["--output", out_dir.to_str().unwrap(), "--output-format"]);
        args.extend(["npy"].iter().chain(extra));
        gemma_embed(&args).output().unwrap()
    };

    // CSV files whose text is in `body`: the first run names no --text-column and fails at
    // the first file, having written nothing; the rerun with the column is not refused as one
    // of other parameters.
    let csvs: Vec<PathBuf> = (0..2)
        .map(|i| {
            let path = dir.path().join(format!("t{i}.csv"));
            let rows: String = texts[i * 3..i * 3 + 3]
                .iter()
                .map(|t| format!("\"{t}\"\n"))
                .collect();
            std::fs::write(&path, format!("body\n{rows}")).unwrap();
            path
        })
        .collect();
    let csv_refs: Vec<&Path> = csvs.iter().map(PathBuf::as_path).collect();
    let failed = embed(&csv_refs, &[]);
    assert!(!failed.status.success());
    let stderr = stderr_of(&failed);
    assert!(stderr.contains("text"), "{stderr}");
    assert!(
        stderr.contains("holds no output: its manifest is removed"),
        "{stderr}"
    );
    let fixed = embed(&csv_refs, &["--text-column", "body"]);
    assert!(fixed.status.success(), "{}", stderr_of(&fixed));
    for (i, name) in ["t0.npy", "t1.npy"].iter().enumerate() {
        let (rows, values) = read_npy_f32(&out_dir.join(name));
        assert_eq!(rows, 3);
        assert_eq!(values, reference_rows(&texts[i * 3..i * 3 + 3]).concat());
    }

    // A bad line stops the run under --on-error fail (the file before it is done); the rerun
    // with --on-error skip finishes it, rejecting the line.
    std::fs::remove_dir_all(&out_dir).unwrap();
    let good = dir.path().join("good.jsonl");
    write_jsonl(&good, &texts[..3]);
    let bad = dir.path().join("more.jsonl");
    std::fs::write(
        &bad,
        format!(
            "{}\n{{\"text\": 7}}\n{}\n",
            serde_json::json!({"text": texts[3]}),
            serde_json::json!({"text": texts[4]})
        ),
    )
    .unwrap();
    let failed = embed(&[&good, &bad], &[]);
    assert!(!failed.status.success());
    assert!(out_dir.join("good.npy").exists() && !out_dir.join("more.npy").exists());
    let skipped = embed(&[&good, &bad], &["--on-error", "skip"]);
    let stderr = stderr_of(&skipped);
    assert!(skipped.status.success(), "{stderr}");
    assert!(stderr.contains("done before"), "{stderr}");
    let (rows, values) = read_npy_f32(&out_dir.join("more.npy"));
    assert_eq!(rows, 2);
    assert_eq!(values, reference_rows(&texts[3..5]).concat());
    let rejects = std::fs::read_to_string(out_dir.join("more.npy.rejects.jsonl")).unwrap();
    assert_eq!(rejects.lines().count(), 1, "{rejects}");

    // The same model in another place (another machine's cache) shares the directory.
    let model = copy_of_tiny_model(&dir.path().join("model-copy"));
    let out = Command::new(env!("CARGO_BIN_EXE_gemma-embed"))
        .args(["embed", "--model", model.to_str().unwrap(), "--input"])
        .args([&good, &bad])
        .arg("--output")
        .arg(&out_dir)
        .args(["--output-format", "npy", "--on-error", "skip"])
        .output()
        .unwrap();
    let stderr = stderr_of(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("2 files: 0 embedded in this run, 2 done before"),
        "{stderr}"
    );
}

/// A run under `--on-error skip` killed after it rejected documents, resumed under `fail`: the
/// rejects it recorded are kept (they name rows missing from the output) whether the `fail` run
/// finishes or stops at a later bad document, and a `skip` run after that ends with the
/// uninterrupted run's output and rejects.
#[test]
fn rejects_of_an_interrupted_skip_run_survive_a_resume_under_fail() {
    let dir = tempfile::tempdir().unwrap();
    for late_bad_doc in [false, true] {
        let mut lines: Vec<String> = corpus(1500)
            .iter()
            .enumerate()
            .map(|(i, t)| serde_json::json!({"id": format!("doc-{i}"), "text": t}).to_string())
            .collect();
        lines[5] = r#"{"id": "bad-5", "text": 5}"#.into();
        lines[6] = r#"{"id": "bad-6", "text": 6}"#.into();
        if late_bad_doc {
            lines[1400] = r#"{"id": "bad-1400", "text": 1400}"#.into();
        }
        let input = dir.path().join(format!("in-{late_bad_doc}.jsonl"));
        std::fs::write(&input, lines.join("\n") + "\n").unwrap();
        let input = input.to_str().unwrap();
        let skip = ["--on-error", "skip"];
        let whole = dir.path().join(format!("whole-{late_bad_doc}.jsonl"));
        run_ok(&strs(&killable_embed(input, &whole, &skip)));

        let output = dir.path().join(format!("out-{late_bad_doc}.jsonl"));
        let checkpoint = dir
            .path()
            .join(format!("out-{late_bad_doc}.jsonl.checkpoint"));
        let rejects_of = |path: &Path| {
            std::fs::read_to_string(format!("{}.rejects.jsonl", path.display())).unwrap_or_default()
        };
        let mut child = gemma_embed(&strs(&killable_embed(input, &output, &skip)))
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        let recorded_rejects = || {
            let text = std::fs::read_to_string(&checkpoint).ok()?;
            serde_json::from_str::<Value>(&text).ok()?["rejects"].as_u64()
        };
        while recorded_rejects().unwrap_or(0) < 2
            && start.elapsed() < Duration::from_secs(60)
            && child.try_wait().unwrap().is_none()
        {
            std::thread::sleep(Duration::from_millis(2));
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "finished before the kill"
        );
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(rejects_of(&output).lines().count(), 2);

        let fail = killable_embed(input, &output, &[]);
        if late_bad_doc {
            let out = gemma_embed(&strs(&fail)).output().unwrap();
            assert!(!out.status.success());
            assert!(
                stderr_of(&out).contains("rerun with --on-error skip"),
                "{}",
                stderr_of(&out)
            );
            assert_eq!(rejects_of(&output).lines().count(), 2);
            run_ok(&strs(&killable_embed(input, &output, &skip)));
        } else {
            let out = run_ok(&strs(&fail));
            assert!(
                stderr_of(&out).contains("2 rejected"),
                "{}",
                stderr_of(&out)
            );
        }
        assert_eq!(
            std::fs::read(&output).unwrap(),
            std::fs::read(&whole).unwrap()
        );
        assert_eq!(
            rejects_of(&output),
            rejects_of(&whole),
            "late bad doc {late_bad_doc}"
        );
    }
}

/// Two runs on one output: the second is refused while the first runs (they used to write one
/// partial file together and could finish with rows of both); a killed run leaves its lock file,
/// which does not stop the rerun; a finished one removes it. An input that is one of the job's
/// own files, and in several-files mode an output named as another's side file, are refused.
#[test]
fn one_run_at_a_time_writes_an_output() {
    let dir = tempfile::tempdir().unwrap();
    let job = killable_job(dir.path());
    let input = job.input.as_str();
    let lock = dir.path().join("out.npy.lock");
    let mut first = gemma_embed(&strs(&job.args))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while checkpoint_rows(&job.checkpoint).is_none() && start.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(2));
    }
    // Stopped where it is, holding its lock, however slowly the second run starts.
    let stopped = std::process::Command::new("kill")
        .args(["-STOP", &first.id().to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    assert!(
        first.try_wait().unwrap().is_none(),
        "finished before the second run"
    );
    let refused = assert_refused(
        &strs(&job.args),
        "another gemma-embed run is writing it (it holds",
    );
    // Before it loaded the model and opened a backend.
    assert!(!refused.contains("backend:"), "{refused}");
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(lock.exists());
    let out = run_ok(&strs(&job.args));
    assert!(stderr_of(&out).contains("resuming"), "{}", stderr_of(&out));
    assert!(!lock.exists());
    let (rows, _) = read_npy_f32(&job.output);
    assert_eq!(rows, 1500);

    let own = dir.path().join("x.npy.partial");
    std::fs::copy(input, &own).unwrap();
    assert_refused(
        &[
            "embed",
            "--input",
            own.to_str().unwrap(),
            "--input-format",
            "jsonl",
            "--output",
            dir.path().join("x.npy").to_str().unwrap(),
        ],
        "is where the job writing",
    );
    assert!(own.exists(), "the input was removed");

    let a = dir.path().join("a.jsonl");
    let a_rejects = dir.path().join("a.jsonl.rejects.jsonl");
    for path in [&a, &a_rejects] {
        std::fs::copy(input, path).unwrap();
    }
    assert_refused(
        &[
            "embed",
            "--input",
            a.to_str().unwrap(),
            a_rejects.to_str().unwrap(),
            "--output",
            dir.path().join("several").to_str().unwrap(),
            "--output-format",
            "jsonl",
        ],
        "a file the job of",
    );
}

#[test]
fn output_options_for_another_format_are_refused_before_the_model_loads() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    write_jsonl(&input, &corpus(3));
    for (name, flags, part) in [
        (
            "out.npy",
            ["--row-group-rows", "8"],
            "--row-group-rows is for .parquet outputs",
        ),
        (
            "out.jsonl",
            ["--row-group-rows", "8"],
            "--row-group-rows is for .parquet outputs",
        ),
        (
            "out.jsonl",
            ["--dtype", "f16"],
            "--dtype f16 is for .npy and .parquet outputs",
        ),
    ] {
        let output = dir.path().join(name);
        let mut args = embed_args(&input, &output, &[]);
        args.extend(flags);
        let refused = assert_refused(&args, part);
        assert!(!refused.contains("backend:"), "{refused}");
        assert!(!output.exists(), "{name}");
    }
}

#[test]
fn merge_refuses_to_write_over_a_shards_files_and_to_read_fortran_order_rows() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    write_jsonl(&input, &corpus(10));
    let mut content = std::fs::read_to_string(&input).unwrap();
    content += "{not json\n";
    std::fs::write(&input, content).unwrap();
    for extension in ["jsonl", "npy"] {
        let shards: Vec<PathBuf> = (0..2)
            .map(|i| {
                let shard = dir.path().join(format!("s{i}.{extension}"));
                run_ok(&embed_args(
                    &input,
                    &shard,
                    &["--shard", &format!("{i}/2"), "--on-error", "skip"],
                ));
                shard
            })
            .collect();
        let rejects = dir.path().join("s0.jsonl.rejects.jsonl");
        if extension == "jsonl" {
            // The bad line is document 10: shard 0's.
            let before = std::fs::read(&rejects).unwrap();
            let out = merge(&rejects, &shards);
            assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
            assert!(
                stderr_of(&out).contains(&format!(
                    "the merge would write {}, which shard {} keeps beside it",
                    rejects.display(),
                    shards[0].display()
                )),
                "{}",
                stderr_of(&out)
            );
            assert_eq!(std::fs::read(&rejects).unwrap(), before);
            // A damaged row is named by its line.
            let text = std::fs::read_to_string(&shards[1]).unwrap();
            let mut lines: Vec<&str> = text.lines().collect();
            lines[1] = "{\"embedding\": [1, 2";
            std::fs::write(&shards[1], lines.join("\n") + "\n").unwrap();
            let out = merge(&dir.path().join("merged.jsonl"), &shards);
            assert!(
                stderr_of(&out).contains(&format!("{}: line 2: invalid JSON", shards[1].display())),
                "{}",
                stderr_of(&out)
            );
        } else {
            // The same rows, declared column by column (as numpy's asfortranarray saves them).
            let mut bytes = std::fs::read(&shards[1]).unwrap();
            let (from, to) = (b"'fortran_order': False, ", b"'fortran_order': True,  ");
            let at = bytes.windows(from.len()).position(|w| w == from).unwrap();
            bytes[at..at + to.len()].copy_from_slice(to);
            std::fs::write(&shards[1], bytes).unwrap();
            let output = dir.path().join("merged.npy");
            let out = merge(&output, &shards);
            assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
            assert!(
                stderr_of(&out).contains("rows of float32 or float16, C order"),
                "{}",
                stderr_of(&out)
            );
            assert!(!output.exists());
        }
    }
}

/// A run killed while removing a Parquet output's partial directory (its last step, after the
/// checkpoint went) leaves a finished output beside the rest of it: done, and the rest removed.
#[test]
fn a_parquet_partial_directory_left_beside_a_finished_output_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let inputs: Vec<String> = ["a", "b"]
        .iter()
        .map(|name| {
            let path = dir.path().join(format!("{name}.jsonl"));
            write_jsonl(&path, &corpus(20));
            path.to_str().unwrap().to_string()
        })
        .collect();
    let out = dir.path().join("out");
    let args = [
        "embed",
        "--input",
        &inputs[0],
        &inputs[1],
        "--output",
        out.to_str().unwrap(),
        "--output-format",
        "parquet",
        "--row-group-rows",
        "4",
    ];
    run_ok(&args);
    let output = out.join("a.parquet");
    let finished = std::fs::read(&output).unwrap();
    let leftover = out.join("a.parquet.partial");
    assert!(
        !leftover.exists(),
        "a finished run leaves no partial directory"
    );
    std::fs::create_dir(&leftover).unwrap();
    std::fs::write(leftover.join("part-3.parquet"), b"half removed").unwrap();
    let stderr = stderr_of(&run_ok(&args));
    assert!(
        stderr.contains(&format!(
            "{} -> {}: done before",
            inputs[0],
            output.display()
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("2 files: 0 embedded in this run, 2 done before"),
        "{stderr}"
    );
    assert!(!leftover.exists());
    assert_eq!(std::fs::read(&output).unwrap(), finished);
}

/// A job names its model by content, not by path: killed, and rerun with the same weights in
/// another folder (a Hugging Face cache on a new snapshot, a copied directory), it resumes.
#[test]
fn a_job_resumes_with_the_same_model_in_another_folder() {
    let dir = tempfile::tempdir().unwrap();
    let job = killable_job(dir.path());
    let whole = dir.path().join("whole.npy");
    run_ok(&strs(&killable_embed(&job.input, &whole, &[])));
    assert!(
        kill_twice(&strs(&job.args), &job.checkpoint, 1) >= 1,
        "finished before the kill"
    );
    let moved = copy_of_tiny_model(&dir.path().join("moved-model"));
    let out = Command::new(env!("CARGO_BIN_EXE_gemma-embed"))
        .arg("embed")
        .arg("--model")
        .arg(&moved)
        .args(&job.args[1..])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(stderr_of(&out).contains("resuming"), "{}", stderr_of(&out));
    assert_eq!(
        std::fs::read(&job.output).unwrap(),
        std::fs::read(&whole).unwrap()
    );
}
