//! `gemma-embed-loadgen`: a bounded HTTP load test of a running `gemma-embed serve`, or of any
//! server of OpenAI's embeddings API or TEI's `/embed` (text-embeddings-inference, vLLM), for
//! side-by-side numbers on the same texts.
//!
//! ```text
//! gemma-embed-loadgen --url http://127.0.0.1:8080 [--requests 3000] [--concurrency 64]
//!                     [--inputs-per-request 1] [--route openai|tei] [--max-seconds 120]
//!                     [--model google/embeddinggemma-300m]
//! ```
//!
//! 1. Reference: every distinct text is embedded once, alone, with no other load.
//! 2. Load: `--concurrency` clients (one keep-alive connection each) send `--requests` requests
//!    in all, each of `--inputs-per-request` texts picked deterministically from the set, and
//!    stop early after `--max-seconds`.
//!    Texts longer than the model's limit are truncated (`truncate: true`).
//! 3. Every 200 answer is compared with the reference embeddings of its texts (max absolute
//!    difference at most `--tolerance`; the CPU backend is bit-exact whatever the packing).
//!
//! Prints one JSON summary (statuses, throughput, latency percentiles, mismatches) and exits
//! non-zero when any answer was neither 200 nor 429, a connection failed, or an embedding
//! differed from its reference.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use gemma_embed::bench::stats::percentile;
use serde_json::{json, Value};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Route {
    /// POST /v1/embeddings
    Openai,
    /// POST /embed
    Tei,
}

#[derive(Parser)]
#[command(
    about = "A bounded HTTP load test of gemma-embed serve (or of another OpenAI or TEI embeddings server)"
)]
struct Args {
    /// The server's base URL.
    #[arg(long)]
    url: String,
    #[arg(long, default_value_t = 3000)]
    requests: usize,
    /// Concurrent clients, one connection each.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    #[arg(long, default_value_t = 1)]
    inputs_per_request: usize,
    #[arg(long, value_enum, default_value = "openai")]
    route: Route,
    /// Distinct texts (lengths from a few to a few hundred tokens).
    #[arg(long, default_value_t = 48)]
    texts: usize,
    /// Stop sending after this long (requests not sent are reported).
    #[arg(long, default_value_t = 120.0)]
    max_seconds: f64,
    /// The `model` field of OpenAI requests (a vLLM server answers 404 to a name it does not
    /// serve; gemma-embed and TEI take any).
    #[arg(long, default_value = "google/embeddinggemma-300m")]
    model: String,
    /// Largest absolute difference from the reference embedding allowed.
    #[arg(long, default_value_t = 0.0)]
    tolerance: f32,
    #[arg(long, env = "GEMMA_EMBED_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
}

/// Text `i` of the set: a prefix that makes it unique and 1 to 120 words after it.
fn text(i: usize) -> String {
    const WORDS: [&str; 12] = [
        "the",
        "engine",
        "packs",
        "variable",
        "length",
        "sequences",
        "into",
        "token",
        "budget",
        "batches",
        "without",
        "padding",
    ];
    let words = 1 + (i * 37) % 120;
    let body: Vec<&str> = (0..words)
        .map(|w| WORDS[(i + w * 5) % WORDS.len()])
        .collect();
    format!("document {i}: {}", body.join(" "))
}

/// The texts of request `r`.
fn request_texts(r: usize, per_request: usize, texts: usize) -> Vec<usize> {
    (0..per_request).map(|k| (r * 7 + k * 13) % texts).collect()
}

struct Client {
    agent: ureq::Agent,
    url: String,
    route: Route,
    model: String,
    api_key: Option<String>,
}

/// What one request got back.
struct Answer {
    status: u16,
    /// The embeddings of a 200 answer, and its token count (OpenAI's usage).
    embeddings: Vec<Vec<f32>>,
    tokens: usize,
}

impl Client {
    fn new(args: &Args) -> Self {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(300)))
            .build()
            .into();
        let path = match args.route {
            Route::Openai => "/v1/embeddings",
            Route::Tei => "/embed",
        };
        Self {
            agent,
            url: format!("{}{path}", args.url.trim_end_matches('/')),
            route: args.route,
            model: args.model.clone(),
            api_key: args.api_key.clone(),
        }
    }

    fn embed(&self, texts: &[String]) -> Result<Answer> {
        let body = match self.route {
            Route::Openai => json!({"input": texts, "model": self.model, "truncate": true}),
            Route::Tei => json!({"inputs": texts, "truncate": true}),
        };
        let mut request = self.agent.post(&self.url);
        if let Some(key) = &self.api_key {
            request = request.header("authorization", &format!("Bearer {key}"));
        }
        let mut response = request
            .header("content-type", "application/json")
            .send(body.to_string())?;
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .with_config()
            .limit(1 << 30)
            .read_to_string()?;
        if status != 200 {
            return Ok(Answer {
                status,
                embeddings: Vec::new(),
                tokens: 0,
            });
        }
        let value: Value = serde_json::from_str(&text).context("a 200 answer is not JSON")?;
        let vectors: Vec<&Value> = match self.route {
            Route::Openai => value["data"]
                .as_array()
                .context("no `data` array")?
                .iter()
                .map(|d| &d["embedding"])
                .collect(),
            Route::Tei => value.as_array().context("not an array")?.iter().collect(),
        };
        let embeddings = vectors
            .into_iter()
            .map(|v| {
                v.as_array()
                    .context("an embedding is not an array")?
                    .iter()
                    .map(|x| x.as_f64().map(|x| x as f32).context("not a number"))
                    .collect::<Result<Vec<f32>>>()
            })
            .collect::<Result<Vec<_>>>()?;
        let tokens = value["usage"]["prompt_tokens"].as_u64().unwrap_or(0) as usize;
        Ok(Answer {
            status,
            embeddings,
            tokens,
        })
    }
}

#[derive(Default)]
struct Tally {
    statuses: std::collections::BTreeMap<u16, usize>,
    transport_errors: Vec<String>,
    mismatches: Vec<String>,
    latencies_ok: Vec<f64>,
    /// The largest absolute difference from a reference seen in any 200 answer.
    max_abs_diff: f32,
    inputs_ok: usize,
    tokens_ok: usize,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.requests == 0
        || args.concurrency == 0
        || args.inputs_per_request == 0
        || args.texts == 0
    {
        bail!("--requests, --concurrency, --inputs-per-request and --texts must be at least 1");
    }
    let texts: Vec<String> = (0..args.texts).map(text).collect();

    let client = Client::new(&args);
    let mut reference = Vec::with_capacity(texts.len());
    for (i, t) in texts.iter().enumerate() {
        let answer = client
            .embed(std::slice::from_ref(t))
            .with_context(|| format!("reference for text {i}"))?;
        if answer.status != 200 {
            bail!("reference for text {i}: status {}", answer.status);
        }
        reference.extend(answer.embeddings);
    }

    let next = AtomicUsize::new(0);
    let tally = Mutex::new(Tally::default());
    let deadline = Duration::from_secs_f64(args.max_seconds);
    let start = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..args.concurrency {
            scope.spawn(|| {
                let client = Client::new(&args);
                loop {
                    let r = next.fetch_add(1, Ordering::Relaxed);
                    if r >= args.requests || start.elapsed() > deadline {
                        return;
                    }
                    let picked = request_texts(r, args.inputs_per_request, texts.len());
                    let batch: Vec<String> = picked.iter().map(|&i| texts[i].clone()).collect();
                    let sent = Instant::now();
                    let outcome = client.embed(&batch);
                    let latency = sent.elapsed().as_secs_f64();
                    let mut tally = tally.lock().unwrap_or_else(|e| e.into_inner());
                    match outcome {
                        Err(e) => tally.transport_errors.push(format!("request {r}: {e:#}")),
                        Ok(answer) => {
                            *tally.statuses.entry(answer.status).or_default() += 1;
                            if answer.status != 200 {
                                continue;
                            }
                            tally.latencies_ok.push(latency);
                            tally.inputs_ok += batch.len();
                            tally.tokens_ok += answer.tokens;
                            if answer.embeddings.len() != picked.len() {
                                tally.mismatches.push(format!(
                                    "request {r}: {} embeddings for {} inputs",
                                    answer.embeddings.len(),
                                    picked.len()
                                ));
                                continue;
                            }
                            for (&i, got) in picked.iter().zip(&answer.embeddings) {
                                let worst = reference[i]
                                    .iter()
                                    .zip(got)
                                    .map(|(a, b)| (a - b).abs())
                                    .fold(0.0f32, f32::max);
                                tally.max_abs_diff = tally.max_abs_diff.max(worst);
                                if got.len() != reference[i].len() || worst > args.tolerance {
                                    tally.mismatches.push(format!(
                                        "request {r}, text {i}: max |difference| {worst}"
                                    ));
                                }
                            }
                        }
                    }
                }
            });
        }
    });
    let seconds = start.elapsed().as_secs_f64();
    let mut tally = tally.into_inner().unwrap_or_else(|e| e.into_inner());
    tally.latencies_ok.sort_by(f64::total_cmp);
    let latency_ms = |p: f64| {
        if tally.latencies_ok.is_empty() {
            0.0
        } else {
            percentile(&tally.latencies_ok, p) * 1e3
        }
    };
    let answered: usize = tally.statuses.values().sum();
    let ok = tally.statuses.get(&200).copied().unwrap_or(0);
    let summary = json!({
        "requests_planned": args.requests,
        "requests_sent": answered + tally.transport_errors.len(),
        "concurrency": args.concurrency,
        "inputs_per_request": args.inputs_per_request,
        "statuses": tally.statuses.iter().map(|(s, n)| (s.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
        "transport_errors": tally.transport_errors.len(),
        "mismatches": tally.mismatches.len(),
        "max_abs_diff": tally.max_abs_diff,
        "tolerance": args.tolerance,
        "seconds": seconds,
        "ok_requests_per_s": ok as f64 / seconds,
        "ok_inputs_per_s": tally.inputs_ok as f64 / seconds,
        "ok_tokens_per_s": tally.tokens_ok as f64 / seconds,
        "latency_ms": {
            "p50": latency_ms(50.0),
            "p90": latency_ms(90.0),
            "p99": latency_ms(99.0),
            "max": tally.latencies_ok.last().copied().unwrap_or(0.0) * 1e3,
        },
    });
    println!("{}", serde_json::to_string_pretty(&summary)?);
    for line in tally
        .transport_errors
        .iter()
        .chain(&tally.mismatches)
        .take(10)
    {
        eprintln!("{line}");
    }
    let unexpected: usize = tally
        .statuses
        .iter()
        .filter(|(s, _)| **s != 200 && **s != 429)
        .map(|(_, n)| n)
        .sum();
    if unexpected + tally.transport_errors.len() + tally.mismatches.len() > 0 {
        bail!(
            "{unexpected} answers other than 200/429, {} connection errors, {} wrong embeddings",
            tally.transport_errors.len(),
            tally.mismatches.len()
        );
    }
    Ok(())
}
