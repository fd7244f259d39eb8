//! A bounded load test on loopback: `gemma-embed-loadgen` sends 3000 requests from 64
//! concurrent connections to a server (tiny model) whose queue is smaller than the load, so
//! some answers are 429. Everything else must be a 200 whose embeddings equal the ones each text
//! got alone, and the server's memory must stay bounded.

mod common;

use std::process::Command;

use common::Server;

#[test]
fn many_concurrent_clients_get_correct_answers_or_429_and_memory_stays_bounded() {
    let server = Server::start(
        &common::tiny_model_dir(),
        &["--backend", "cpu", "--max-queued-inputs", "96"],
    );
    let rss_before_kb = server.memory_kb("VmRSS");
    let requests = 3000;
    let output = Command::new(env!("CARGO_BIN_EXE_gemma-embed-loadgen"))
        .args([
            "--url",
            &server.url,
            "--concurrency",
            "64",
            "--inputs-per-request",
            "4",
        ])
        .args(["--requests", &requests.to_string(), "--max-seconds", "300"])
        .output()
        .expect("run gemma-embed-loadgen");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "loadgen failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: serde_json::Value = serde_json::from_str(&stdout).expect("JSON summary");
    let statuses = summary["statuses"].as_object().unwrap();
    let answered: u64 = statuses.values().map(|n| n.as_u64().unwrap()).sum();
    assert_eq!(answered, requests, "{summary}");
    assert!(
        statuses.keys().all(|s| s == "200" || s == "429"),
        "{summary}"
    );
    assert!(
        statuses.get("200").is_some_and(|n| n.as_u64() > Some(0)),
        "{summary}"
    );
    assert_eq!(summary["mismatches"], 0);
    assert_eq!(summary["transport_errors"], 0);

    let peak_kb = server.memory_kb("VmHWM");
    assert!(
        peak_kb < rss_before_kb + 256 * 1024,
        "peak RSS {peak_kb} kB grew by more than 256 MiB over {rss_before_kb} kB"
    );
    assert_eq!(server.get("/health", &[]).status, 200);
    let metrics = server.get("/metrics", &[]).body;
    assert!(
        metrics.contains("gemma_embed_queue_inputs 0\n"),
        "{metrics}"
    );
}
