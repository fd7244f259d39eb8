//! The official `openai` Python client against `gemma-embed serve` (real model, CPU), compared
//! with sentence-transformers' embeddings of the golden texts, and with the CLI's embeddings of
//! texts the golden file lacks (the CLI held to the golden cases first)
//! (tools/openai_client_check.py).
//! Python comes from
//! `GEMMA_EMBED_PYTHON` (else `python3`); without the `openai` package the test skips loudly,
//! and fails under `CI=true` (.ci/run installs it).

mod common;

use std::path::Path;
use std::process::Command;

use common::Server;
use gemma_embed::model::ModelConfig;
use gemma_embed::tokenize::{Tokenizer, Truncation};
use serde_json::json;

fn python_with_openai() -> Option<String> {
    let python = common::python();
    let found = Command::new(&python)
        .args(["-c", "import openai"])
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return Some(python);
    }
    let message = format!(
        "SKIPPED: `{python}` cannot import openai (set GEMMA_EMBED_PYTHON to a Python that can)"
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{message} and CI=true");
    }
    eprintln!("\n{}\n{message}\n{}\n", "!".repeat(80), "!".repeat(80));
    None
}

#[test]
fn the_openai_python_client_gets_the_golden_embeddings() {
    let Some(model) = common::real_model_dir() else {
        return;
    };
    let Some(python) = python_with_openai() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // The golden cases without a prompt: the client sends plain texts.
    let golden = common::golden();
    let cases: Vec<_> = golden
        .cases
        .iter()
        .filter(|c| c.prompt_name.is_none() && !c.text.is_empty())
        .collect();
    assert!(!cases.is_empty(), "golden cases without a prompt");
    let write_jsonl = |name: &str, rows: Vec<serde_json::Value>| {
        let path = dir.path().join(name);
        let lines: String = rows.iter().map(|row| format!("{row}\n")).collect();
        std::fs::write(&path, lines).unwrap();
        path
    };
    // Texts the golden file lacks (German, code, ...) have no sentence-transformers reference
    // here: their expected rows are the CLI's, and the CLI is first held to the golden cases it
    // shares with them, so the server is held to sentence-transformers through it.
    let extras = [
        "The quick brown fox jumps over the lazy dog.",
        "EmbeddingGemma turns text into 768-dimensional vectors.",
        "Wie spät ist es?",
        "def add(a, b): return a + b",
    ];
    let texts: Vec<&str> = cases
        .iter()
        .map(|c| c.text.as_str())
        .chain(extras)
        .collect();
    let input = write_jsonl(
        "texts.jsonl",
        texts.iter().map(|t| json!({ "text": t })).collect(),
    );
    let cli_out = dir.path().join("cli.jsonl");
    let cli = Command::new(env!("CARGO_BIN_EXE_gemma-embed"))
        .args(["embed", "--backend", "cpu", "--quiet", "--model"])
        .arg(&model)
        .arg("--input")
        .arg(&input)
        .arg("--output")
        .arg(&cli_out)
        .output()
        .unwrap();
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    let cli_rows: Vec<Vec<f32>> = std::fs::read_to_string(&cli_out)
        .unwrap()
        .lines()
        .map(|line| {
            let row: serde_json::Value = serde_json::from_str(line).unwrap();
            serde_json::from_value(row["embedding"].clone()).unwrap()
        })
        .collect();
    assert_eq!(cli_rows.len(), texts.len());
    for (case, got) in cases.iter().zip(&cli_rows) {
        let cos = common::cosine(got, &case.embedding);
        let diff = common::max_abs_diff(got, &case.embedding);
        assert!(
            cos >= 0.99999 && diff <= 1e-4,
            "CLI {}: cos {cos}, max diff {diff}",
            case.name
        );
    }
    let config = ModelConfig::load(&model).unwrap();
    let tokenizer = Tokenizer::load(&model, &config).unwrap();
    let extra_rows = extras
        .iter()
        .zip(&cli_rows[cases.len()..])
        .map(|(text, row)| {
            let ids = tokenizer.encode(0, None, text, Truncation::Refuse).unwrap();
            json!({ "embedding": row, "n_tokens": ids.len() })
        });
    let expected = write_jsonl(
        "expected.jsonl",
        cases
            .iter()
            .map(|c| json!({ "embedding": c.embedding, "n_tokens": c.n_tokens }))
            .chain(extra_rows)
            .collect(),
    );

    let server = Server::start(
        &model,
        &[
            "--backend",
            "cpu",
            "--api-key",
            "test-key",
            "--served-model-name",
            "google/embeddinggemma-300m",
        ],
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/openai_client_check.py");
    let check = Command::new(python)
        .arg(script)
        .args(["--base-url", &format!("{}/v1", server.url)])
        .args(["--api-key", "test-key"])
        .arg("--input")
        .arg(&input)
        .arg("--expected")
        .arg(&expected)
        // As the other real-model tests hold the engine to sentence-transformers.
        .args(["--tolerance", "1e-4"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&check.stdout);
    let stderr = String::from_utf8_lossy(&check.stderr);
    println!("{stdout}");
    assert!(check.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!(
            "default encoding: {} embeddings match the expected ones",
            texts.len()
        )),
        "{stdout}"
    );
}
