//! The official `openai` Python client against `gemma-embed serve` (real model, CPU), compared
//! with the CLI's embeddings of the same texts (tools/openai_client_check.py). Python comes from
//! `GEMMA_EMBED_PYTHON` (else `python3`); without the `openai` package the test skips loudly,
//! and fails under `CI=true` (.ci/run installs it).

mod common;

use std::path::Path;
use std::process::Command;

use common::Server;

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
fn the_openai_python_client_gets_the_clis_embeddings() {
    let Some(model) = common::real_model_dir() else {
        return;
    };
    let Some(python) = python_with_openai() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("texts.jsonl");
    // The golden cases without a prompt anchor the CLI's rows to sentence-transformers; the
    // script then holds the server's answers to the CLI's rows.
    let golden = common::golden();
    let anchors: Vec<_> = golden
        .cases
        .iter()
        .filter(|c| c.prompt_name.is_none() && !c.text.is_empty())
        .collect();
    assert!(!anchors.is_empty(), "golden cases without a prompt");
    let mut texts: Vec<&str> = anchors.iter().map(|c| c.text.as_str()).collect();
    texts.extend([
        "The quick brown fox jumps over the lazy dog.",
        "EmbeddingGemma turns text into 768-dimensional vectors.",
        "Wie spät ist es?",
        "def add(a, b): return a + b",
    ]);
    let lines: String = texts
        .iter()
        .map(|t| serde_json::json!({ "text": t }).to_string() + "\n")
        .collect();
    std::fs::write(&input, lines).unwrap();
    let expected = dir.path().join("cli.jsonl");
    let cli = Command::new(env!("CARGO_BIN_EXE_gemma-embed"))
        .args(["embed", "--backend", "cpu", "--quiet", "--model"])
        .arg(&model)
        .arg("--input")
        .arg(&input)
        .arg("--output")
        .arg(&expected)
        .output()
        .unwrap();
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    let rows = std::fs::read_to_string(&expected).unwrap();
    assert_eq!(rows.lines().count(), texts.len());
    for (case, line) in anchors.iter().zip(rows.lines()) {
        let row: serde_json::Value = serde_json::from_str(line).unwrap();
        let got: Vec<f32> = serde_json::from_value(row["embedding"].clone()).unwrap();
        let cos = common::cosine(&got, &case.embedding);
        let diff = common::max_abs_diff(&got, &case.embedding);
        assert!(
            cos >= 0.99999 && diff <= 1e-4,
            "{}: cos {cos}, max diff {diff}",
            case.name
        );
    }

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
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&check.stdout);
    let stderr = String::from_utf8_lossy(&check.stderr);
    println!("{stdout}");
    assert!(check.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!(
            "default encoding: {} embeddings match the CLI",
            texts.len()
        )),
        "{stdout}"
    );
}
