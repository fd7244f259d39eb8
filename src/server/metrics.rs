//! Prometheus metrics, rendered in the text exposition format at `GET /metrics`.
//!
//! Counters and histograms are plain atomics: requests by method, route and status, the batches
//! the backend ran (sequences and tokens per batch, time in `forward`), and where each request's
//! time went (tokenization, queue, inference, total). Queue depth is read from the engine when
//! the page is rendered.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::engine::{BatchObserver, BatchReport, EngineStats, Timings};

/// Upper bounds of the latency buckets, in seconds.
const SECONDS_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Upper bounds of the batch size buckets, in sequences.
const SEQUENCE_BUCKETS: [f64; 11] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];
/// Upper bounds of the batch size buckets, in tokens.
const TOKEN_BUCKETS: [f64; 10] = [
    64.0, 256.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0, 32768.0, 65536.0, 131072.0,
];

/// A cumulative histogram with fixed bucket bounds; the sum is kept in millionths.
struct Histogram {
    bounds: &'static [f64],
    /// Per bucket (not cumulative), with the +Inf bucket last.
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    fn observe(&self, value: f64) {
        let bucket = self
            .bounds
            .iter()
            .position(|&b| value <= b)
            .unwrap_or(self.bounds.len());
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((value * 1e6).round() as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, count) in self.counts.iter().enumerate() {
            cumulative += count.load(Ordering::Relaxed);
            let le = self
                .bounds
                .get(i)
                .map_or_else(|| "+Inf".to_string(), |b| b.to_string());
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}"
            );
        }
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {cumulative}");
    }
}

/// The requests answered on one route with one method.
struct RouteMetrics {
    /// status -> requests.
    statuses: BTreeMap<u16, u64>,
    seconds: Histogram,
}

/// Everything `/metrics` shows; shared by the routes and the engine's batch observer.
pub struct Metrics {
    /// (method, route) -> its requests (`GET /` is a health check, `POST /` an embedding).
    routes: Mutex<BTreeMap<(String, String), RouteMetrics>>,
    batch_sequences: Histogram,
    batch_tokens: Histogram,
    forward_seconds: Histogram,
    failed_batches: AtomicU64,
    tokenization_seconds: Histogram,
    queue_seconds: Histogram,
    inference_seconds: Histogram,
    embedded_inputs: AtomicU64,
    embedded_tokens: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            routes: Mutex::default(),
            batch_sequences: Histogram::new(&SEQUENCE_BUCKETS),
            batch_tokens: Histogram::new(&TOKEN_BUCKETS),
            forward_seconds: Histogram::new(&SECONDS_BUCKETS),
            failed_batches: AtomicU64::new(0),
            tokenization_seconds: Histogram::new(&SECONDS_BUCKETS),
            queue_seconds: Histogram::new(&SECONDS_BUCKETS),
            inference_seconds: Histogram::new(&SECONDS_BUCKETS),
            embedded_inputs: AtomicU64::new(0),
            embedded_tokens: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    /// The observer to hand to [`crate::engine::Engine::start_observed`].
    pub fn batch_observer(self: &Arc<Self>) -> BatchObserver {
        let metrics = Arc::clone(self);
        Box::new(move |report: &BatchReport| {
            metrics.batch_sequences.observe(report.sequences as f64);
            metrics.batch_tokens.observe(report.tokens as f64);
            metrics
                .forward_seconds
                .observe(report.forward.as_secs_f64());
            if report.failed {
                metrics.failed_batches.fetch_add(1, Ordering::Relaxed);
            }
        })
    }

    /// One answered HTTP request (the method and route are copied only the first time they are
    /// seen together).
    pub fn record_request(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        let mut routes = self.routes.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (method.to_string(), route.to_string());
        let metrics = routes.entry(key).or_insert_with(|| RouteMetrics {
            statuses: BTreeMap::new(),
            seconds: Histogram::new(&SECONDS_BUCKETS),
        });
        *metrics.statuses.entry(status).or_default() += 1;
        metrics.seconds.observe(elapsed.as_secs_f64());
    }

    /// One embedding request answered by the engine.
    pub fn record_embedding(&self, inputs: usize, tokens: usize, timings: &Timings) {
        self.embedded_inputs
            .fetch_add(inputs as u64, Ordering::Relaxed);
        self.embedded_tokens
            .fetch_add(tokens as u64, Ordering::Relaxed);
        self.tokenization_seconds
            .observe(timings.tokenization.as_secs_f64());
        self.queue_seconds.observe(timings.queue.as_secs_f64());
        self.inference_seconds
            .observe(timings.inference.as_secs_f64());
    }

    /// The exposition text, with the engine's current queue depth.
    pub fn render(&self, engine: &EngineStats) -> String {
        let mut out = String::new();
        let header = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };

        header(
            &mut out,
            "gemma_embed_requests_total",
            "counter",
            "HTTP requests answered, by method, route and status.",
        );
        let routes = self.routes.lock().unwrap_or_else(PoisonError::into_inner);
        for ((method, route), metrics) in routes.iter() {
            for (status, count) in &metrics.statuses {
                let _ = writeln!(
                    out,
                    "gemma_embed_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}} {count}"
                );
            }
        }
        header(
            &mut out,
            "gemma_embed_request_duration_seconds",
            "histogram",
            "Time from request to response, by method and route.",
        );
        for ((method, route), metrics) in routes.iter() {
            metrics.seconds.render(
                &mut out,
                "gemma_embed_request_duration_seconds",
                &format!("method=\"{method}\",route=\"{route}\""),
            );
        }
        drop(routes);

        let gauges = [
            (
                "gemma_embed_queue_inputs",
                "Inputs admitted and not yet answered.",
                engine.queued_inputs as f64,
            ),
            (
                "gemma_embed_queue_tokens",
                "Tokens reserved by the inputs admitted and not yet answered.",
                engine.queued_tokens as f64,
            ),
            (
                "gemma_embed_forward_tokens_per_second",
                "Tokens per second of backend forward time, over the server's life.",
                match engine.forward_time.as_secs_f64() {
                    s if s > 0.0 => engine.batch_tokens as f64 / s,
                    _ => 0.0,
                },
            ),
        ];
        for (name, help, value) in gauges {
            header(&mut out, name, "gauge", help);
            let _ = writeln!(out, "{name} {value}");
        }

        let counters = [
            (
                "gemma_embed_batches_total",
                "Batches the backend ran.",
                engine.batches,
            ),
            (
                "gemma_embed_batched_tokens_total",
                "Tokens in the batches the backend ran.",
                engine.batch_tokens,
            ),
            (
                "gemma_embed_failed_batches_total",
                "Batches the backend failed on.",
                self.failed_batches.load(Ordering::Relaxed),
            ),
            (
                "gemma_embed_embedded_inputs_total",
                "Inputs embedded for clients.",
                self.embedded_inputs.load(Ordering::Relaxed),
            ),
            (
                "gemma_embed_embedded_tokens_total",
                "Tokens embedded for clients (prompts and special tokens included).",
                self.embedded_tokens.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, value) in counters {
            header(&mut out, name, "counter", help);
            let _ = writeln!(out, "{name} {value}");
        }

        let histograms = [
            (
                "gemma_embed_batch_sequences",
                "Sequences per backend batch.",
                &self.batch_sequences,
            ),
            (
                "gemma_embed_batch_tokens",
                "Tokens per backend batch.",
                &self.batch_tokens,
            ),
            (
                "gemma_embed_forward_seconds",
                "Backend forward time per batch.",
                &self.forward_seconds,
            ),
            (
                "gemma_embed_tokenization_seconds",
                "Time per request from admission to the end of its tokenization (the wait for a tokenizer worker included).",
                &self.tokenization_seconds,
            ),
            (
                "gemma_embed_queue_seconds",
                "Time per request from tokenized to its first batch.",
                &self.queue_seconds,
            ),
            (
                "gemma_embed_inference_seconds",
                "Time per request from its first batch to the end of its last.",
                &self.inference_seconds,
            ),
        ];
        for (name, help, histogram) in histograms {
            header(&mut out, name, "histogram", help);
            histogram.render(&mut out, name, "");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_count_everything() {
        let h = Histogram::new(&TOKEN_BUCKETS);
        for v in [10.0, 64.0, 65.0, 5000.0, 1e9] {
            h.observe(v);
        }
        let mut out = String::new();
        h.render(&mut out, "x", "");
        assert!(out.contains("x_bucket{le=\"64\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"256\"} 3\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"4096\"} 3\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"8192\"} 4\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 5\n"), "{out}");
        assert!(out.contains("x_count 5\n"), "{out}");
        assert!(out.contains("x_sum 1000005139\n"), "{out}");
    }
}
