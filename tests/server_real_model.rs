//! `gemma-embed serve` with the real EmbeddingGemma-300m on the CPU: embeddings equal to
//! sentence-transformers, work of a client that hung up is dropped, and SIGTERM lets requests in
//! flight finish. Skips loudly without the model; fails under `CI=true`.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::{cosine, max_abs_diff, Server};
use serde_json::json;

/// Texts of about 250 tokens each.
fn long_texts(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            format!(
                "document {i}: {}",
                ["the engine packs variable length sequences"; 40].join(" ")
            )
        })
        .collect()
}

/// A sample of Prometheus text.
fn metric(server: &Server, name: &str) -> f64 {
    let text = server.get("/metrics", &[]).body;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
        .parse()
        .unwrap()
}

fn wait_for(what: &str, within: Duration, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(start.elapsed() < within, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn golden_embeddings_over_http_and_a_disconnect_drops_queued_work() {
    let Some(model) = common::real_model_dir() else {
        return;
    };
    let server = Server::start(&model, &["--backend", "cpu", "--max-batch-tokens", "1024"]);

    let golden = common::golden();
    // Empty texts are refused over HTTP (as OpenAI and TEI do).
    let cases: Vec<_> = golden
        .cases
        .iter()
        .filter(|c| c.n_tokens <= 64 && !c.text.is_empty())
        .collect();
    assert!(cases.len() >= 4, "short golden cases");
    for case in &cases {
        let mut body = json!({"input": case.text, "model": "google/embeddinggemma-300m"});
        if let Some(name) = &case.prompt_name {
            body["prompt_name"] = json!(name);
        }
        let answer = server.post("/v1/embeddings", &body);
        assert_eq!(answer.status, 200, "{}: {}", case.name, answer.body);
        let answer = answer.json();
        assert_eq!(
            answer["usage"]["prompt_tokens"], case.n_tokens,
            "{}",
            case.name
        );
        let got: Vec<f32> = answer["data"][0]["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        let (cos, diff) = (
            cosine(&got, &case.embedding),
            max_abs_diff(&got, &case.embedding),
        );
        assert!(
            cos >= 0.99999 && diff <= 1e-4,
            "{}: cos {cos}, max diff {diff}",
            case.name
        );
    }

    // 48 inputs of ~250 tokens queue behind 1024-token batches; the client hangs up at once.
    let texts = long_texts(48);
    let body = json!({"input": texts}).to_string();
    let address = server.url.trim_start_matches("http://").to_string();
    let mut stream = std::net::TcpStream::connect(&address).unwrap();
    write!(
        stream,
        "POST /v1/embeddings HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    // Half of it or more still queued (the first batches finish about a second apart).
    wait_for("the request to be queued", Duration::from_secs(60), || {
        metric(&server, "gemma_embed_queue_inputs") >= 24.0
    });
    let tokens_before = metric(&server, "gemma_embed_batched_tokens_total");
    drop(stream);
    wait_for("the queue to empty", Duration::from_secs(120), || {
        metric(&server, "gemma_embed_queue_inputs") == 0.0
    });
    let computed = metric(&server, "gemma_embed_batched_tokens_total") - tokens_before;
    // Only the batch running and the one prepared behind it may still run (~2 x 1024 tokens of
    // the ~12000 the request holds).
    assert!(
        computed <= 3.0 * 1024.0,
        "{computed} tokens computed after the hang-up"
    );
    assert_eq!(
        metric(&server, "gemma_embed_embedded_inputs_total"),
        cases.len() as f64
    );
    assert_eq!(server.get("/health", &[]).status, 200);
}

/// `/similarity` against the cosines of sentence-transformers' embeddings, `/decode` against
/// the texts sentence-transformers tokenized.
#[test]
fn similarity_and_decode_match_sentence_transformers() {
    let Some(model) = common::real_model_dir() else {
        return;
    };
    let server = Server::start(&model, &["--backend", "cpu"]);
    let golden = common::golden();

    // One prompt per request: the short golden texts embedded with the `document` prompt.
    let documents: Vec<_> = golden
        .cases
        .iter()
        .filter(|c| c.prompt_name.as_deref() == Some("document") && c.n_tokens <= 64)
        .collect();
    assert!(documents.len() >= 5, "short golden documents");
    let (source, sentences) = documents.split_first().unwrap();
    let answer = server.post(
        "/similarity",
        &json!({
            "inputs": {
                "source_sentence": source.text,
                "sentences": sentences.iter().map(|c| &c.text).collect::<Vec<_>>(),
            },
            "parameters": {"prompt_name": "document"},
        }),
    );
    assert_eq!(answer.status, 200, "{}", answer.body);
    let scores: Vec<f64> = answer
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(scores.len(), sentences.len());
    for (case, score) in sentences.iter().zip(&scores) {
        let want = cosine(&source.embedding, &case.embedding);
        assert!(
            (score - want).abs() <= 1e-4,
            "{} against {}: {score}, sentence-transformers {want}",
            source.name,
            case.name
        );
    }

    let ids: Vec<&Vec<u32>> = golden.cases.iter().map(|c| &c.token_ids).collect();
    let answer = server.post("/decode", &json!({ "ids": ids }));
    assert_eq!(answer.status, 200, "{}", answer.body);
    let texts = answer.json();
    for (case, text) in golden.cases.iter().zip(texts.as_array().unwrap()) {
        let text = text.as_str().unwrap();
        let full = format!("{}{}", case.prompt, case.text);
        if case.n_tokens < 2048 {
            assert_eq!(text, full, "{}", case.name);
        } else {
            assert!(full.starts_with(text), "{}: truncated", case.name);
        }
    }
}

#[test]
fn sigterm_lets_a_request_in_flight_finish() {
    let Some(model) = common::real_model_dir() else {
        return;
    };
    let mut server = Server::start(
        &model,
        &[
            "--backend",
            "cpu",
            "--max-batch-tokens",
            "1024",
            "--shutdown-timeout",
            "300",
        ],
    );
    let texts = long_texts(16);
    let client = {
        let url = format!("{}/v1/embeddings", server.url);
        let body = json!({"input": texts}).to_string();
        std::thread::spawn(move || {
            let answer = common::http_post(&url, body.as_bytes(), &[]);
            (answer.status, answer.json())
        })
    };
    // In flight: admitted and not yet answered (about four batches of a second each).
    wait_for("the request to be queued", Duration::from_secs(60), || {
        metric(&server, "gemma_embed_queue_inputs") >= 1.0
    });
    let status = server.terminate(Duration::from_secs(300));
    let (code, body) = client.join().unwrap();
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["data"].as_array().unwrap().len(), 16);
    assert_eq!(status.code(), Some(0), "{}", server.log());
}
