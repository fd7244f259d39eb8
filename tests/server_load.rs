//! A bounded load test on loopback: `gemma-embed-loadgen` sends 3000 requests from 64
//! concurrent connections to a server (tiny model) whose queue is smaller than the load, so
//! some answers are 429. Everything else must be a 200 whose embeddings equal the ones each text
//! got alone, and the server's memory must stay bounded. The load generator also drives another
//! OpenAI-style server under the model name that server wants.

mod common;

use std::process::Command;

use common::Server;

#[test]
fn many_concurrent_clients_get_correct_answers_or_429_and_memory_stays_bounded() {
    let server = Server::tiny_on_cpu(&["--max-queued-inputs", "96"]);
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
    let summary = common::json_stdout("loadgen", &output);
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

/// A stand-in for another OpenAI-style embeddings server that, as vLLM does, answers 404 to a
/// `model` it does not serve: one deterministic vector per text. Prints its port.
const STRICT_SERVER: &str = r#"
import hashlib, json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *args):
        pass
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        if self.path != "/v1/embeddings" or body.get("model") != sys.argv[1]:
            status, answer = 404, {"error": {"message": "no such model"}}
        else:
            vectors = [list(hashlib.sha256(t.encode()).digest()[:4]) for t in body["input"]]
            status = 200
            answer = {"object": "list", "model": sys.argv[1],
                      "data": [{"object": "embedding", "index": i, "embedding": v}
                               for i, v in enumerate(vectors)],
                      "usage": {"prompt_tokens": 3 * len(vectors), "total_tokens": 3 * len(vectors)}}
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;

#[test]
fn the_load_generator_drives_another_server_under_its_model_name() {
    use std::io::BufRead;
    let python = common::python();
    /// Kills the stand-in server however the test ends.
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut fake = Killed(
        Command::new(python)
            .args(["-c", STRICT_SERVER, "served/model"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start the stand-in server"),
    );
    let mut port = String::new();
    std::io::BufReader::new(fake.0.stdout.take().unwrap())
        .read_line(&mut port)
        .unwrap();
    let url = format!("http://127.0.0.1:{}", port.trim());
    let loadgen = |model: Option<&str>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_gemma-embed-loadgen"));
        command.args([
            "--url",
            &url,
            "--requests",
            "40",
            "--concurrency",
            "4",
            "--texts",
            "8",
        ]);
        if let Some(model) = model {
            command.args(["--model", model]);
        }
        command.output().expect("run gemma-embed-loadgen")
    };
    let served = loadgen(Some("served/model"));
    let summary = common::json_stdout("loadgen", &served);
    assert_eq!(summary["statuses"]["200"], 40, "{summary}");
    assert_eq!(summary["mismatches"], 0, "{summary}");
    // Under the default name the reference embeddings are refused.
    let refused = loadgen(None);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("status 404"), "{stderr}");
}
