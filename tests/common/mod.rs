//! Shared test helpers: the real model directory and the sentence-transformers golden file.
#![allow(dead_code)] // each test binary uses its own subset of these helpers

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The Python the tests run: `$GEMMA_EMBED_PYTHON`, else `python3`.
pub fn python() -> String {
    std::env::var("GEMMA_EMBED_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

/// The JSON a tool printed on stdout, once it has succeeded (else a failure with both its
/// streams; `what` names the tool).
pub fn json_stdout(what: &str, output: &std::process::Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{what} failed ({}): {stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {stdout}"))
}

const SKIP_MESSAGE: &str =
    "SKIPPED: real model not found (run ../shared/models/fetch-embeddinggemma-300m.sh)";

/// The real EmbeddingGemma-300m directory: `$GEMMA_EMBED_MODEL`, else
/// `google/embeddinggemma-300m` from the Hugging Face cache. `None` (after a loud message)
/// when it is missing; under `CI=true` a missing model fails the test instead.
pub fn real_model_dir() -> Option<PathBuf> {
    let found = match std::env::var_os("GEMMA_EMBED_MODEL") {
        Some(dir) => Some(PathBuf::from(dir)).filter(|d| d.join("config.json").is_file()),
        None => gemma_embed::model::resolve_model_dir(gemma_embed::model::DEFAULT_MODEL_ID).ok(),
    };
    if found.is_none() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{SKIP_MESSAGE} and CI=true");
        }
        eprintln!("\n{}\n{SKIP_MESSAGE}\n{}\n", "!".repeat(80), "!".repeat(80));
    }
    found
}

#[derive(Debug, Deserialize)]
pub struct Golden {
    pub meta: GoldenMeta,
    pub cases: Vec<GoldenCase>,
}

impl Golden {
    /// Every case's token ids, packed into one batch in file order.
    pub fn batch(&self) -> gemma_embed::backend::Batch {
        let sequences: Vec<&[u32]> = self.cases.iter().map(|c| &c.token_ids[..]).collect();
        gemma_embed::backend::Batch::from_sequences(&sequences)
    }

    /// The smallest cosine between `embeddings` (`[cases, dim]`, in file order) and the
    /// golden ones, after printing every case's cosine under `label`.
    pub fn worst_cosine(&self, label: &str, embeddings: &[f32], dim: usize) -> f64 {
        assert_eq!(
            embeddings.len(),
            self.cases.len() * dim,
            "{label}: embeddings"
        );
        let mut worst = 1.0f64;
        for (case, got) in self.cases.iter().zip(embeddings.chunks_exact(dim)) {
            let cos = cosine(got, &case.embedding);
            eprintln!(
                "{label} {:>16} {:>5} tokens: cosine {cos:.6}",
                case.name, case.n_tokens
            );
            worst = worst.min(cos);
        }
        eprintln!("{label}: worst cosine {worst:.6}");
        worst
    }
}

#[derive(Debug, Deserialize)]
pub struct GoldenMeta {
    pub model: String,
    pub reference: String,
    pub max_seq_length: usize,
}

/// One sentence-transformers reference: `prompt + text` tokenized to `token_ids` and embedded
/// to the 768-d L2-normalized `embedding`.
#[derive(Debug, Deserialize)]
pub struct GoldenCase {
    pub name: String,
    pub prompt_name: Option<String>,
    /// The prompt string; empty when `prompt_name` is null.
    pub prompt: String,
    pub text: String,
    pub n_tokens: usize,
    pub token_ids: Vec<u32>,
    pub embedding: Vec<f32>,
}

pub fn golden_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/golden/embeddinggemma-300m.json")
}

/// The golden file (`../shared/golden/embeddinggemma-300m.json`), parsed.
pub fn golden() -> Golden {
    let path = golden_path();
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read the golden file {}: {e}", path.display()));
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("cannot parse the golden file {}: {e}", path.display()))
}

/// `tests/fixtures/tiny`: a 4-layer random-weight EmbeddingGemma (tools/make_tiny_fixture.py).
pub fn tiny_model_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny")
}

/// The tiny fixture's `expected.json`: float32 sentence-transformers embeddings of token-id
/// sequences (some of them tokenized from a text).
#[derive(Debug, Deserialize)]
pub struct TinyExpected {
    pub meta: TinyMeta,
    pub cases: Vec<TinyCase>,
}

#[derive(Debug, Deserialize)]
pub struct TinyMeta {
    pub window_radius: usize,
}

#[derive(Debug, Deserialize)]
pub struct TinyCase {
    pub name: String,
    /// The text that tokenizes to `token_ids`, for the cases made from a text.
    pub text: Option<String>,
    pub token_ids: Vec<u32>,
    pub embedding: Vec<f32>,
    /// The L2 norm of the pipeline's output before its Normalize module (the Dense output).
    pub dense_norm: f32,
}

pub fn tiny_expected() -> TinyExpected {
    let path = tiny_model_dir().join("expected.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("cannot parse {}: {e}", path.display()))
}

pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum();
    let na: f64 = a.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
    dot / (na * nb)
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// A blocking HTTP/1.1 client that returns 4xx/5xx answers instead of failing on them.
fn http_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(300)))
        .build()
        .into()
}

/// POST raw JSON bytes to `url` (any thread; no [`Server`] needed) with optional extra headers.
pub fn http_post(url: &str, body: &[u8], headers: &[(&str, &str)]) -> HttpAnswer {
    let mut request = http_agent()
        .post(url)
        .header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    Server::answer(request.send(body))
}

/// A `gemma-embed serve` child process on a free loopback port, killed when dropped.
pub struct Server {
    child: std::process::Child,
    pub url: String,
    /// Everything the server wrote to stderr so far.
    log: std::sync::Arc<std::sync::Mutex<String>>,
    /// The thread filling `log`: it ends once the server's stderr closes.
    log_reader: Option<std::thread::JoinHandle<()>>,
}

/// One HTTP answer: status, body and headers (names lowercase).
pub struct HttpAnswer {
    pub status: u16,
    pub body: String,
    pub headers: Vec<(String, String)>,
}

impl HttpAnswer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

impl Server {
    /// A server of the tiny fixture model on the CPU backend, with `args` after.
    pub fn tiny_on_cpu(args: &[&str]) -> Self {
        Self::start(&tiny_model_dir(), &[&["--backend", "cpu"], args].concat())
    }

    /// Start `gemma-embed serve --model MODEL --port 0 ARGS...` and wait until it listens.
    pub fn start(model: &Path, args: &[&str]) -> Self {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_gemma-embed"))
            .args(["serve", "--host", "127.0.0.1", "--port", "0", "--model"])
            .arg(model)
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start gemma-embed serve");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (address_tx, address_rx) = std::sync::mpsc::channel();
        let log_writer = std::sync::Arc::clone(&log);
        let log_reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                if let Some(url) = line.strip_prefix("listening on ") {
                    let _ = address_tx.send(url.to_string());
                }
                let mut log = log_writer.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let url = match address_rx.recv_timeout(std::time::Duration::from_secs(300)) {
            Ok(url) => url,
            Err(_) => {
                let _ = child.kill();
                panic!("the server did not start: {}", log.lock().unwrap());
            }
        };
        Self {
            child,
            url,
            log,
            log_reader: Some(log_reader),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    fn answer(response: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> HttpAnswer {
        let mut response = response.expect("an HTTP answer");
        let headers = response
            .headers()
            .iter()
            .map(|(n, v)| (n.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(1 << 30)
            .read_to_string()
            .expect("a UTF-8 body");
        HttpAnswer {
            status,
            body,
            headers,
        }
    }

    /// POST raw bytes with optional extra headers.
    pub fn post_bytes(&self, path: &str, body: &[u8], headers: &[(&str, &str)]) -> HttpAnswer {
        http_post(&format!("{}{path}", self.url), body, headers)
    }

    /// POST raw bytes as a chunked body (no Content-Length).
    pub fn post_chunked(&self, path: &str, body: &[u8]) -> HttpAnswer {
        let request = http_agent()
            .post(format!("{}{path}", self.url))
            .header("content-type", "application/json");
        let mut reader = body;
        Self::answer(request.send(ureq::SendBody::from_reader(&mut reader)))
    }

    pub fn post(&self, path: &str, body: &serde_json::Value) -> HttpAnswer {
        self.post_bytes(path, body.to_string().as_bytes(), &[])
    }

    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> HttpAnswer {
        let mut request = http_agent().get(format!("{}{path}", self.url));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        Self::answer(request.call())
    }

    pub fn delete(&self, path: &str) -> HttpAnswer {
        Self::answer(http_agent().delete(format!("{}{path}", self.url)).call())
    }

    /// An OPTIONS request (a CORS preflight) with `headers`.
    pub fn options(&self, path: &str, headers: &[(&str, &str)]) -> HttpAnswer {
        let mut request = http_agent().options(format!("{}{path}", self.url));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        Self::answer(request.call())
    }

    /// Send SIGTERM and wait (at most `within`) for the exit status; [`Self::log`] then holds
    /// all the server wrote.
    pub fn terminate(&mut self, within: std::time::Duration) -> std::process::ExitStatus {
        self.send_sigterm();
        self.wait_for_exit(within)
    }

    pub fn send_sigterm(&self) {
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM failed");
    }

    /// Wait (at most `within`) for the exit status; [`Self::log`] then holds all the server
    /// wrote.
    pub fn wait_for_exit(&mut self, within: std::time::Duration) -> std::process::ExitStatus {
        let start = std::time::Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the server") {
                if let Some(reader) = self.log_reader.take() {
                    reader.join().expect("the log reader");
                }
                return status;
            }
            assert!(
                start.elapsed() < within,
                "the server did not exit within {within:?}: {}",
                self.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// A field of `/proc/PID/status` in kB (`VmRSS`, `VmHWM`).
    pub fn memory_kb(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc/PID/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc status"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
