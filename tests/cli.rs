//! End-to-end runs of the `gemma-embed` binary on the real model: input formats, prompts, id
//! input, output formats and order, errors naming the line, nothing written on failure.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output};

use common::{cosine, golden, GoldenCase};
use serde_json::{json, Value};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gemma-embed"))
        .args(args)
        .output()
        .expect("run gemma-embed")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `gemma-embed embed --model MODEL --input INPUT --output OUTPUT EXTRA...`
fn embed(model: &str, input: &Path, output: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "embed",
        "--model",
        model,
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    run(&args)
}

fn case<'a>(cases: &'a [GoldenCase], name: &str) -> &'a GoldenCase {
    cases.iter().find(|c| c.name == name).unwrap()
}

/// Rows of a float32 `.npy` file written by us: (shape, data).
fn read_npy(path: &Path) -> ((usize, usize), Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + header_len]).unwrap();
    assert!(header.contains("'descr': '<f4'") && header.contains("'fortran_order': False"));
    let shape = header
        .split("'shape': (")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap();
    let dims: Vec<usize> = shape
        .split(',')
        .map(|s| s.trim().parse().unwrap())
        .collect();
    let data: Vec<f32> = bytes[10 + header_len..]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(data.len(), dims[0] * dims[1]);
    ((dims[0], dims[1]), data)
}

fn read_jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn renormalized_prefix(v: &[f32], d: usize) -> Vec<f32> {
    let norm = v[..d].iter().map(|x| x * x).sum::<f32>().sqrt();
    v[..d].iter().map(|x| x / norm).collect()
}

#[test]
fn embed_writes_jsonl_and_npy_in_input_order() {
    let Some(model) = common::real_model_dir() else {
        return;
    };
    let model = model.to_str().unwrap();
    let golden = golden();
    let cases = &golden.cases;
    let (query, doc, plain, sts) = (
        case(cases, "card_query"),
        case(cases, "card_doc1"),
        case(cases, "no_prompt_short"),
        case(cases, "sts_prompt"),
    );
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let lines = [
        json!({"id": "q", "text": query.text, "prompt_name": "query"}),
        json!({"text": doc.text}), // inherits --prompt-name document
        json!({"id": 42, "text": plain.text, "prompt_name": null}),
        json!({"ids": sts.token_ids}),
    ];
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&input, text).unwrap();
    let expected = [query, doc, plain, sts];

    let out_jsonl = dir.path().join("out.jsonl");
    let out = embed(
        model,
        &input,
        &out_jsonl,
        &[
            "--prompt-name",
            "document",
            "--backend",
            "cpu",
            "--max-batch-tokens",
            "40",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("embedded 4 docs"), "{}", stderr(&out));
    let rows = read_jsonl(&out_jsonl);
    let ids: Vec<Value> = rows.iter().map(|r| r["id"].clone()).collect();
    assert_eq!(ids, [json!("q"), json!(2), json!(42), json!(4)]);
    let mut from_jsonl = Vec::new();
    for (row, case) in rows.iter().zip(expected) {
        let embedding: Vec<f32> = serde_json::from_value(row["embedding"].clone()).unwrap();
        let cos = cosine(&embedding, &case.embedding);
        assert!(cos >= 0.99999, "{}: cosine {cos}", case.name);
        from_jsonl.extend(embedding);
    }

    let out_npy = dir.path().join("out.npy");
    let out = embed(model, &input, &out_npy, &["--prompt-name", "document"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (shape, data) = read_npy(&out_npy);
    assert_eq!(shape, (4, 768));
    for (r, case) in expected.iter().enumerate() {
        let row = &data[r * 768..(r + 1) * 768];
        assert!(cosine(row, &case.embedding) >= 0.99999, "{}", case.name);
        assert!(cosine(row, &from_jsonl[r * 768..(r + 1) * 768]) >= 0.999999);
    }

    // Matryoshka: the renormalized prefix of the reference.
    let out_small = dir.path().join("small.npy");
    let out = embed(
        model,
        &input,
        &out_small,
        &["--prompt-name", "document", "--dimensions", "128"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let (shape, data) = read_npy(&out_small);
    assert_eq!(shape, (4, 128));
    for (r, case) in expected.iter().enumerate() {
        let reference = renormalized_prefix(&case.embedding, 128);
        assert!(
            cosine(&data[r * 128..(r + 1) * 128], &reference) >= 0.99999,
            "{}",
            case.name
        );
    }
}

/// A BEIR-style corpus (`_id`, `title`, `text`, other fields): untitled documents (empty, null
/// or blank title) get the document prompt, `title: none | text: `, and match
/// sentence-transformers' `encode_document`; a titled one is the text after
/// `title: {title} | text: `, as the model card writes it.
#[test]
fn titles_make_the_document_prompt() {
    let Some(model) = common::real_model_dir() else {
        return;
    };
    let golden = golden();
    let cases = &golden.cases;
    let docs = [
        case(cases, "card_doc0"),
        case(cases, "card_doc1"),
        case(cases, "card_doc2"),
    ];
    assert!(docs.iter().all(|d| d.prompt == "title: none | text: "));
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("corpus.jsonl");
    let lines = [
        json!({"_id": "d0", "title": "", "text": docs[0].text, "metadata": {"source": "card"}}),
        json!({"_id": "d1", "title": null, "text": docs[1].text}),
        json!({"_id": "d2", "title": " ", "text": docs[2].text}),
        json!({"_id": "d3", "title": "Jupiter", "text": docs[2].text}),
        json!({"_id": "d4", "title": null, "text": format!("title: Jupiter | text: {}", docs[2].text), "prompt_name": null}),
    ];
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&input, text).unwrap();
    let output = dir.path().join("out.jsonl");
    let model = model.to_str().unwrap();
    let titled = ["--id-column", "_id", "--title-column", "title"];
    let out = embed(model, &input, &output, &titled);
    // `d4` chooses its own prompt, which a title column does not allow: it is named.
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(
            "line 5: `prompt_name` and a title (--title-column `title`) both choose the prompt"
        ),
        "{}",
        stderr(&out)
    );
    let out = embed(
        model,
        &input,
        &output,
        &[&titled[..], &["--on-error", "skip"]].concat(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let rows = read_jsonl(&output);
    let ids: Vec<Value> = rows.iter().map(|r| r["id"].clone()).collect();
    assert_eq!(ids, [json!("d0"), json!("d1"), json!("d2"), json!("d3")]);
    let embedding =
        |row: &Value| -> Vec<f32> { serde_json::from_value(row["embedding"].clone()).unwrap() };
    for (row, doc) in rows.iter().zip(docs) {
        let cos = cosine(&embedding(row), &doc.embedding);
        assert!(cos >= 0.99999, "{}: cosine {cos}", doc.name);
    }

    // The titled document against its text written out with no prompt.
    let spelled_out = dir.path().join("spelled.jsonl");
    std::fs::write(&spelled_out, format!("{}\n", lines[4])).unwrap();
    let spelled_output = dir.path().join("spelled-out.jsonl");
    let out = embed(model, &spelled_out, &spelled_output, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let reference = embedding(&read_jsonl(&spelled_output)[0]);
    let cos = cosine(&embedding(&rows[3]), &reference);
    assert!(cos >= 0.999999, "titled: cosine {cos}");
    // The title changes the embedding.
    assert!(cosine(&embedding(&rows[3]), &docs[2].embedding) < 0.999);
}

#[test]
fn text_input_and_raw_prompt() {
    let Some(model) = common::real_model_dir() else {
        return;
    };
    let golden = golden();
    let query = case(&golden.cases, "card_query");
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    std::fs::write(&input, format!("{}\n", query.text)).unwrap();
    let output = dir.path().join("out.jsonl");
    let out = embed(
        model.to_str().unwrap(),
        &input,
        &output,
        &["--prompt", &query.prompt],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let rows = read_jsonl(&output);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["id"], json!(1));
    let embedding: Vec<f32> = serde_json::from_value(rows[0]["embedding"].clone()).unwrap();
    assert!(cosine(&embedding, &query.embedding) >= 0.99999);
}

#[test]
fn tokenize_writes_the_golden_ids() {
    let Some(model) = common::real_model_dir() else {
        return;
    };
    let golden = golden();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let text: String = golden
        .cases
        .iter()
        .map(|c| {
            format!(
                "{}\n",
                json!({"id": c.name, "text": c.text, "prompt_name": c.prompt_name})
            )
        })
        .collect();
    std::fs::write(&input, text).unwrap();
    let out = run(&[
        "tokenize",
        "--model",
        model.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let rows: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), golden.cases.len());
    for (row, case) in rows.iter().zip(&golden.cases) {
        assert_eq!(row["id"], json!(case.name));
        assert_eq!(row["ids"], json!(case.token_ids), "{}", case.name);
    }
}

#[test]
fn tokenize_reads_stdin() {
    let Some(model) = common::real_model_dir() else {
        return;
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_gemma-embed"))
        .args([
            "tokenize",
            "--model",
            model.to_str().unwrap(),
            "--input",
            "-",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"{\"text\": \"Hello world\"}\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    // model-semantics.md section 7: "Hello world" -> <bos>, `Hello`, `▁world`, <eos>.
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "{\"id\":1,\"ids\":[2,9259,1902,1]}\n"
    );
}

#[test]
fn tokenize_into_a_pipe_closed_early_stops_quietly() {
    // `gemma-embed tokenize ... | head`: the reader goes after a few lines.
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("many.jsonl");
    let lines: String = (0..20_000)
        .map(|i| format!("{{\"text\": \"line {i}\"}}\n"))
        .collect();
    std::fs::write(&input, lines).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_gemma-embed"))
        .args(["tokenize", "--model"])
        .arg(common::tiny_model_dir())
        .arg("--input")
        .arg(&input)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 15];
    std::io::Read::read_exact(&mut stdout, &mut first).unwrap();
    assert_eq!(&first, b"{\"id\":1,\"ids\":[");
    drop(stdout);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stderr(&out), "");

    // `gemma-embed info | head -0`, and the families' list: the pipe is closed before they
    // write (they print only after reading the model, or at once), no panic.
    for args in [
        vec!["info".into(), "--model".into(), common::tiny_model_dir()],
        vec!["check-kernels".into(), "--list-families".into()],
    ] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_gemma-embed"))
            .args(&args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        assert_eq!(stderr(&out), "", "{args:?}");
    }
}

#[test]
fn bad_input_names_the_line_and_writes_nothing() {
    let Some(model) = common::real_model_dir() else {
        return;
    };
    let model = model.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("out.npy");
    let check = |content: &str, extra: &[&str], expected: &[&str]| {
        let input = dir.path().join("in.jsonl");
        std::fs::write(&input, content).unwrap();
        let out = embed(model, &input, &output, extra);
        let message = stderr(&out);
        assert!(!out.status.success(), "{message}");
        for part in expected {
            assert!(message.contains(part), "expected `{part}` in: {message}");
        }
        std::fs::remove_file(&input).unwrap();
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "a file was left behind"
        );
    };
    check(
        "{\"text\": \"a\"}\n{\"text\": \"b\"\n",
        &[],
        &["in.jsonl: line 2: invalid JSON"],
    );
    check(
        "{\"text\": \"a\"}\n\n{\"text\": \"b\", \"prompt_name\": \"querry\"}\n",
        &[],
        &["line 3", "querry", "query"],
    );
    check("{\"ids\": [2, 262144, 1]}\n", &[], &["line 1", "262144"]);
    check(
        "{\"text\": \"<image_soft_token>\"}\n",
        &[],
        &["line 1", "<image_soft_token>"],
    );
    let long = format!(
        "{{\"text\": \"a\"}}\n{{\"text\": \"{}\"}}\n",
        "word ".repeat(3000)
    );
    check(
        &long,
        &["--no-truncate"],
        &["line 2", "max_seq_length = 2048"],
    );
    check(
        "{\"text\": \"a\"}\n",
        &["--dimensions", "769"],
        &["dimensions must be in 1..=768"],
    );
    check(
        "{\"text\": \"a\"}\n",
        &["--prompt-name", "nope"],
        &["unknown prompt name `nope`"],
    );
}

#[test]
fn info_describes_the_model() {
    let Some(model) = common::real_model_dir() else {
        return;
    };
    let out = run(&["info", "--model", model.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    for part in [
        "layers:         24",
        "SSSSSFSSSSSFSSSSSFSSSSSF",
        "|i - j| <= 256",
        "F32",
        "cpu",
    ] {
        assert!(text.contains(part), "expected `{part}` in:\n{text}");
    }
}

#[test]
fn missing_model_is_one_clear_error() {
    let out = run(&["info", "--model", "/no/such/dir"]);
    assert!(!out.status.success());
    let message = stderr(&out);
    assert!(
        message.starts_with("error: model `/no/such/dir` not found"),
        "{message}"
    );
}

#[test]
fn an_error_says_its_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.jsonl");
    let out = embed(
        common::tiny_model_dir().to_str().unwrap(),
        &missing,
        &dir.path().join("out.npy"),
        &["--backend", "cpu"],
    );
    assert!(!out.status.success());
    let message = stderr(&out);
    let last = message.lines().last().unwrap();
    assert_eq!(
        last,
        format!(
            "error: {}: No such file or directory (os error 2)",
            missing.display()
        )
    );
}

#[test]
fn tokenize_refuses_to_write_over_its_input_or_into_a_missing_folder() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, "{\"text\": \"w1 w2\"}\n").unwrap();
    let input = input.to_str().unwrap();
    let model = common::tiny_model_dir();
    let missing = dir.path().join("no-such-folder/ids.jsonl");
    for (output, message) in [
        (input, "is the input: the token ids would overwrite it"),
        // Named as given, not by its temporary name.
        (
            missing.to_str().unwrap(),
            "no-such-folder/ids.jsonl: its folder does not exist",
        ),
    ] {
        let out = run(&[
            "tokenize",
            "--model",
            model.to_str().unwrap(),
            "--input",
            input,
            "--output",
            output,
        ]);
        assert!(!out.status.success());
        assert!(stderr(&out).contains(message), "{}", stderr(&out));
    }
    assert_eq!(
        std::fs::read_to_string(input).unwrap(),
        "{\"text\": \"w1 w2\"}\n"
    );
}
