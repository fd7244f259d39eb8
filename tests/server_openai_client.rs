//! The official `openai` Python client against `gemma-embed serve` (real model, CPU), compared
//! with sentence-transformers' embeddings of the golden texts (tools/openai_client_check.py).
//! Python comes from
//! `GEMMA_EMBED_PYTHON` (else `python3`); without the `openai` package the test skips loudly,
//! and fails under `CI=true` (.ci/run installs it).

mod common;

use std::path::Path;
use std::process::Command;

use common::Server;
use serde_json::json;

fn python_with_openai() -> Option<String> {
    let python = std::env::var("GEMMA_EMBED_PYTHON").unwrap_or_else(|_| "python3".to_string());
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
    let input = write_jsonl(
        "texts.jsonl",
        cases.iter().map(|c| json!({ "text": c.text })).collect(),
    );
    let expected = write_jsonl(
        "golden.jsonl",
        cases
            .iter()
            .map(|c| json!({ "embedding": c.embedding, "n_tokens": c.n_tokens }))
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
            cases.len()
        )),
        "{stdout}"
    );
}
