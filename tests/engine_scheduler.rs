//! The engine's scheduler: packing properties with a recording backend, bit-identical results
//! through the scheduler with the CPU backend on the tiny fixture, overload and cancellation.

mod common;

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gemma_embed::backend::cpu::CpuBackend;
use gemma_embed::backend::{Backend, Batch, Embeddings};
use gemma_embed::engine::{Admission, BatchReport, Engine, EngineConfig, Input, Request, Response};
use gemma_embed::model::{Model, ModelConfig};
use gemma_embed::tokenize::{Tokenizer, Truncation};
use gemma_embed::{Error, Result};

fn tiny_tokenizer() -> (Tokenizer, ModelConfig) {
    let config = ModelConfig::load(&common::tiny_model_dir()).unwrap();
    (
        Tokenizer::load(&common::tiny_model_dir(), &config).unwrap(),
        config,
    )
}

/// xorshift64*: a small deterministic generator for the randomized cases.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn ids(&mut self, max_len: usize, vocab: usize) -> Vec<u32> {
        let len = 1 + self.below(max_len);
        (0..len).map(|_| self.below(vocab) as u32).collect()
    }
}

/// The reference "embedding" of a sequence for the recording backend: a function of its own
/// ids only, `dimensions` long.
fn signature(ids: &[u32], dimensions: usize) -> Vec<f32> {
    let sum: u64 = ids.iter().map(|&i| i as u64).sum();
    let weighted: u64 = ids
        .iter()
        .enumerate()
        .map(|(p, &i)| (p as u64 + 1) * i as u64)
        .sum();
    (0..dimensions)
        .map(|d| match d % 4 {
            0 => ids.len() as f32,
            1 => sum as f32,
            2 => weighted as f32,
            _ => ids[0] as f32 + d as f32,
        })
        .collect()
}

/// A backend that records every batch it gets and answers with [`signature`].
struct Recording {
    batches: Arc<Mutex<Vec<Batch>>>,
    /// When set, every forward first waits for one message (lets a test hold the backend).
    gate: Option<mpsc::Receiver<()>>,
}

impl Backend for Recording {
    fn name(&self) -> &'static str {
        "recording"
    }

    fn forward(&mut self, batch: &Batch, dimensions: usize) -> Result<Embeddings> {
        if let Some(gate) = &self.gate {
            gate.recv()
                .map_err(|_| Error::Backend("gate closed".into()))?;
        }
        self.batches.lock().unwrap().push(batch.clone());
        let data = (0..batch.num_sequences())
            .flat_map(|s| signature(batch.sequence(s), dimensions))
            .collect();
        Ok(Embeddings {
            dim: dimensions,
            data,
            // The sequence's length: what an un-normalized answer is scaled by.
            norms: (0..batch.num_sequences())
                .map(|s| batch.sequence(s).len() as f32)
                .collect(),
        })
    }
}

/// One request of a client thread: its inputs, dimensions and whether it normalizes.
type ClientRequest = (Vec<Vec<u32>>, usize, bool);

fn ids_request(inputs: &[Vec<u32>], dimensions: usize) -> Request {
    Request {
        inputs: inputs.iter().cloned().map(Input::Ids).collect(),
        dimensions,
        truncation: Truncation::Truncate,
        normalize: true,
    }
}

fn embeddings(response: Response) -> Vec<Vec<f32>> {
    response
        .outputs
        .into_iter()
        .map(|o| o.expect("embedded").embedding)
        .collect()
}

#[test]
fn packing_answers_every_input_once_within_budgets() {
    let (_, config) = tiny_tokenizer();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for case in 0..40 {
        let (tokenizer, _) = tiny_tokenizer();
        let max_batch_tokens = 1 + rng.below(150);
        let max_batch_sequences = 1 + rng.below(12);
        let engine_config = EngineConfig {
            max_batch_tokens,
            max_batch_sequences,
            max_wait: Duration::from_micros(rng.below(3000) as u64),
            max_queued_inputs: 64,
            max_queued_tokens: 64 * config.max_seq_len,
            tokenizer_workers: 1 + rng.below(3),
        };
        let batches = Arc::new(Mutex::new(Vec::new()));
        let backend = Recording {
            batches: Arc::clone(&batches),
            gate: None,
        };
        let observed = Arc::new(Mutex::new(Vec::new()));
        let observer = {
            let observed = Arc::clone(&observed);
            Box::new(move |report: &BatchReport| observed.lock().unwrap().push(*report))
        };
        let engine = Engine::start_observed(
            Box::new(backend),
            tokenizer,
            8,
            engine_config,
            Some(observer),
        )
        .unwrap();
        // Several client threads, each with a few requests of 1..10 inputs, mixed dimensions,
        // normalized or not.
        let requests: Vec<Vec<ClientRequest>> = (0..1 + rng.below(4))
            .map(|_| {
                (0..1 + rng.below(5))
                    .map(|_| {
                        let inputs = (0..1 + rng.below(10))
                            .map(|_| rng.ids(config.max_seq_len, config.vocab_size))
                            .collect();
                        (inputs, [8, 4][rng.below(2)], rng.below(2) == 0)
                    })
                    .collect()
            })
            .collect();
        std::thread::scope(|scope| {
            for client in &requests {
                let engine = &engine;
                scope.spawn(move || {
                    let tickets: Vec<_> = client
                        .iter()
                        .map(|(inputs, dims, normalize)| {
                            let request = Request {
                                normalize: *normalize,
                                ..ids_request(inputs, *dims)
                            };
                            engine.submit(request, Admission::Wait).unwrap()
                        })
                        .collect();
                    for (ticket, (inputs, dims, normalize)) in tickets.into_iter().zip(client) {
                        let got = embeddings(ticket.wait().unwrap());
                        // Un-normalized: the row times its norm (the recording backend's is
                        // the sequence's length).
                        let want: Vec<_> = inputs
                            .iter()
                            .map(|ids| {
                                let scale = if *normalize { 1.0 } else { ids.len() as f32 };
                                signature(ids, *dims)
                                    .iter()
                                    .map(|v| v * scale)
                                    .collect::<Vec<_>>()
                            })
                            .collect();
                        assert_eq!(got, want, "case {case}: answers out of order or misrouted");
                    }
                });
            }
        });
        let stats = engine.stats();
        drop(engine);
        let batches = batches.lock().unwrap();
        let total_inputs: usize = requests.iter().flatten().map(|(i, _, _)| i.len()).sum();
        let run: usize = batches.iter().map(Batch::num_sequences).sum();
        assert_eq!(
            run, total_inputs,
            "case {case}: every input runs exactly once"
        );
        assert_eq!(stats.batches as usize, batches.len());
        let observed: Vec<(usize, usize)> = observed
            .lock()
            .unwrap()
            .iter()
            .map(|r| (r.sequences, r.tokens))
            .collect();
        let recorded: Vec<(usize, usize)> = batches
            .iter()
            .map(|b| (b.num_sequences(), b.num_tokens()))
            .collect();
        assert_eq!(
            observed, recorded,
            "case {case}: the observer saw every batch"
        );
        assert_eq!((stats.queued_inputs, stats.queued_tokens), (0, 0));
        for batch in batches.iter() {
            assert!(batch.num_sequences() <= max_batch_sequences, "case {case}");
            assert!(
                batch.num_tokens() <= max_batch_tokens || batch.num_sequences() == 1,
                "case {case}: {} tokens in {} sequences over a budget of {max_batch_tokens}",
                batch.num_tokens(),
                batch.num_sequences()
            );
        }
    }
}

#[test]
fn results_are_bit_identical_whatever_the_packing() {
    let dir = common::tiny_model_dir();
    let model = Arc::new(Model::load_dir(&dir).unwrap());
    let config = model.config.clone();
    let mut rng = Rng(42);
    let inputs: Vec<Vec<u32>> = (0..60)
        .map(|_| rng.ids(config.max_seq_len, config.vocab_size))
        .collect();
    // Reference: every sequence alone, straight through the backend.
    let mut alone = CpuBackend::new(Arc::clone(&model)).unwrap();
    let reference: Vec<Vec<f32>> = inputs
        .iter()
        .map(|ids| {
            alone
                .forward(&Batch::from_sequences(&[ids]), config.embedding_dim)
                .unwrap()
                .data
        })
        .collect();
    for (max_batch_tokens, max_batch_sequences) in [(1, 1), (70, 3), (200, 64), (5000, 1000)] {
        let engine = Engine::start(
            Box::new(CpuBackend::new(Arc::clone(&model)).unwrap()),
            Tokenizer::load(&dir, &config).unwrap(),
            config.embedding_dim,
            EngineConfig {
                max_batch_tokens,
                max_batch_sequences,
                ..EngineConfig::default()
            },
        )
        .unwrap();
        let tickets: Vec<_> = inputs
            .chunks(7)
            .map(|chunk| {
                engine
                    .submit(ids_request(chunk, config.embedding_dim), Admission::Wait)
                    .unwrap()
            })
            .collect();
        let got: Vec<Vec<f32>> = tickets
            .into_iter()
            .flat_map(|t| embeddings(t.wait().unwrap()))
            .collect();
        let batches = engine.stats().batches;
        assert_eq!(got.len(), reference.len());
        for (i, (got, want)) in got.iter().zip(&reference).enumerate() {
            let same = got
                .iter()
                .zip(want)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(
                same,
                "input {i} differs packed ({max_batch_tokens} tokens, \
                 {max_batch_sequences} sequences per batch, {batches} batches) vs alone"
            );
        }
    }
}

#[test]
fn text_inputs_are_tokenized_with_their_prompt_and_errors_stay_per_input() {
    let dir = common::tiny_model_dir();
    let model = Arc::new(Model::load_dir(&dir).unwrap());
    let config = model.config.clone();
    let tokenizer = Tokenizer::load(&dir, &config).unwrap();
    let prompt = tokenizer.prompt("query").unwrap().to_string();
    let with_prompt = tokenizer
        .encode(0, Some(&prompt), "hello world", Truncation::Truncate)
        .unwrap();
    let plain = tokenizer
        .encode(0, None, "hello world", Truncation::Truncate)
        .unwrap();
    let engine = Engine::start(
        Box::new(CpuBackend::new(Arc::clone(&model)).unwrap()),
        tokenizer,
        config.embedding_dim,
        EngineConfig::default(),
    )
    .unwrap();
    let text = |text: &str, prompt: Option<&str>| Input::Text {
        text: text.into(),
        prompt: prompt.map(String::from),
    };
    let response = engine
        .submit(
            Request {
                inputs: vec![
                    text("hello world", Some(&prompt)),
                    Input::Ids(vec![2, 5000, 1]),
                    text("hello world", None),
                    Input::Ids(Vec::new()),
                ],
                dimensions: 16,
                truncation: Truncation::Truncate,
                normalize: true,
            },
            Admission::Reject,
        )
        .unwrap()
        .wait()
        .unwrap();
    let mut backend = CpuBackend::new(model).unwrap();
    let mut expect = |ids: &[u32]| {
        backend
            .forward(&Batch::from_sequences(&[ids]), 16)
            .unwrap()
            .data
    };
    let outputs = response.outputs;
    let first = outputs[0].as_ref().unwrap();
    assert_eq!(first.tokens, with_prompt.len());
    assert_eq!(first.embedding, expect(&with_prompt));
    assert_eq!(outputs[2].as_ref().unwrap().embedding, expect(&plain));
    let bad_id = outputs[1].as_ref().unwrap_err().to_string();
    assert!(
        bad_id.contains("input 1") && bad_id.contains("5000"),
        "{bad_id}"
    );
    let empty = outputs[3].as_ref().unwrap_err().to_string();
    assert!(
        empty.contains("input 3") && empty.contains("no tokens"),
        "{empty}"
    );
    let too_wide = config.embedding_dim + 1;
    assert!(matches!(
        engine.submit(ids_request(&[vec![2, 1]], too_wide), Admission::Reject),
        Err(Error::Dimensions { got, max }) if got == too_wide && max == config.embedding_dim
    ));
    assert!(matches!(
        engine.submit(ids_request(&[], 16), Admission::Reject),
        Err(Error::EmptyRequest)
    ));
}

/// An engine of 4 dimensions on a [`Recording`] backend held by a gate (each message lets one
/// batch through): batches of one sequence, sent at once, and room for three queued inputs.
fn gated_engine() -> (Engine, mpsc::Sender<()>, Arc<Mutex<Vec<Batch>>>) {
    let (tokenizer, _) = tiny_tokenizer();
    let batches = Arc::new(Mutex::new(Vec::new()));
    let (open_gate, gate) = mpsc::channel();
    let backend = Recording {
        batches: Arc::clone(&batches),
        gate: Some(gate),
    };
    let engine = Engine::start(
        Box::new(backend),
        tokenizer,
        4,
        EngineConfig {
            max_batch_tokens: 100,
            max_batch_sequences: 1,
            max_wait: Duration::ZERO,
            max_queued_inputs: 3,
            max_queued_tokens: 1000,
            tokenizer_workers: 1,
        },
    )
    .unwrap();
    (engine, open_gate, batches)
}

/// A recording engine of the tiny tokenizer with one tokenizer worker (jobs tokenized in order),
/// batches of up to 1000 tokens, and these queue budgets.
fn one_worker_engine(
    max_queued_inputs: usize,
    max_queued_tokens: usize,
) -> (Engine, Arc<Mutex<Vec<Batch>>>) {
    let (tokenizer, _) = tiny_tokenizer();
    let batches = Arc::new(Mutex::new(Vec::new()));
    let backend = Recording {
        batches: Arc::clone(&batches),
        gate: None,
    };
    let config = EngineConfig {
        max_batch_tokens: 1000,
        max_batch_sequences: 64,
        max_wait: Duration::ZERO,
        max_queued_inputs,
        max_queued_tokens,
        tokenizer_workers: 1,
    };
    let engine = Engine::start(Box::new(backend), tokenizer, 4, config).unwrap();
    (engine, batches)
}

/// `inputs` copies of `text`, without a prompt, embedded in 4 dimensions.
fn texts(inputs: usize, text: &str, truncation: Truncation) -> Request {
    Request {
        inputs: (0..inputs)
            .map(|_| Input::Text {
                text: text.into(),
                prompt: None,
            })
            .collect(),
        dimensions: 4,
        truncation,
        normalize: true,
    }
}

#[test]
fn a_full_queue_is_an_overload_error_and_dropped_requests_are_skipped() {
    let (engine, open_gate, batches) = gated_engine();
    let first = engine
        .submit(ids_request(&[vec![2, 10, 1]], 4), Admission::Reject)
        .unwrap();
    let second = engine
        .submit(ids_request(&[vec![2, 11, 1]], 4), Admission::Reject)
        .unwrap();
    // The backend holds the first input, the scheduler the second: let both get there.
    std::thread::sleep(Duration::from_millis(300));
    let dropped = engine
        .submit(ids_request(&[vec![2, 12, 1]], 4), Admission::Reject)
        .unwrap();
    let overloaded = engine.submit(ids_request(&[vec![2, 13, 1]], 4), Admission::Reject);
    assert!(
        matches!(&overloaded, Err(Error::Overloaded(m)) if m.contains("3 of 3 inputs")),
        "{:?}",
        overloaded.err()
    );
    let too_big = engine.submit(ids_request(&vec![vec![2, 1]; 4], 4), Admission::Wait);
    assert!(
        matches!(&too_big, Err(Error::BeyondQueueCapacity(m)) if m.contains("max_queued_inputs = 3")),
        "{:?}",
        too_big.err()
    );
    drop(dropped);
    for _ in 0..3 {
        open_gate.send(()).unwrap();
    }
    assert_eq!(
        embeddings(first.wait().unwrap()),
        [signature(&[2, 10, 1], 4)]
    );
    assert_eq!(
        embeddings(second.wait().unwrap()),
        [signature(&[2, 11, 1], 4)]
    );
    // Room again once answered.
    let after = engine
        .submit(ids_request(&[vec![2, 14, 1]], 4), Admission::Reject)
        .unwrap();
    assert_eq!(
        embeddings(after.wait().unwrap()),
        [signature(&[2, 14, 1], 4)]
    );
    drop(open_gate);
    drop(engine);
    let ran: Vec<u32> = batches
        .lock()
        .unwrap()
        .iter()
        .map(|b| b.sequence(0)[1])
        .collect();
    assert_eq!(
        ran,
        [10, 11, 14],
        "the dropped request never reached the backend"
    );
}

#[test]
fn requests_submitted_together_are_admitted_together_or_not_at_all() {
    let (engine, open_gate, _) = gated_engine();
    let held = engine
        .submit(
            ids_request(&[vec![2, 10, 1], vec![2, 11, 1]], 4),
            Admission::Reject,
        )
        .unwrap();
    // One of the three inputs is free: neither of two one-input requests goes in alone.
    let pair = || {
        vec![
            ids_request(&[vec![2, 12, 1]], 4),
            ids_request(&[vec![2, 13, 1]], 2),
        ]
    };
    let refused = engine.submit_together(pair(), Admission::Reject);
    assert!(
        matches!(&refused, Err(Error::Overloaded(_))),
        "{:?}",
        refused.err()
    );
    assert_eq!(engine.stats().queued_inputs, 2);
    // More than the whole queue in all: never admitted.
    let four = [pair(), pair()].concat();
    let too_big = engine.submit_together(four, Admission::Wait);
    assert!(
        matches!(&too_big, Err(Error::BeyondQueueCapacity(m)) if m.contains("a request of 4 inputs")),
        "{:?}",
        too_big.err()
    );
    for _ in 0..4 {
        open_gate.send(()).unwrap();
    }
    assert!(held.wait().unwrap().outputs.iter().all(Result::is_ok));
    let tickets = engine.submit_together(pair(), Admission::Reject).unwrap();
    let lengths: Vec<usize> = tickets
        .into_iter()
        .map(|t| embeddings(t.wait().unwrap())[0].len())
        .collect();
    assert_eq!(lengths, [4, 2]);
}

#[test]
fn a_busy_engine_is_healthy_while_batches_succeed_and_a_failing_one_is_not() {
    let (engine, open_gate, _) = gated_engine();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let backlog = engine
        .submit(
            ids_request(&[vec![2, 10, 1], vec![2, 11, 1], vec![2, 12, 1]], 4),
            Admission::Reject,
        )
        .unwrap();
    // A full queue and a held backend: no probe is admitted and nothing finishes.
    let held = runtime.block_on(engine.health(Duration::from_millis(200)));
    assert!(
        matches!(&held, Err(Error::Unhealthy(m))
            if m == "the queue is full and no batch succeeded within 0.2 s"),
        "{held:?}"
    );
    // One batch succeeding shows the backend works, with the queue still full.
    let release_one = || async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        open_gate.send(()).unwrap();
    };
    let (full, ()) = runtime
        .block_on(async { tokio::join!(engine.health(Duration::from_secs(60)), release_one()) });
    assert!(full.is_ok(), "{full:?}");
    // Within the timeout of that success: healthy at once, with nothing more run.
    let recent = runtime.block_on(async {
        tokio::time::timeout(
            Duration::from_millis(100),
            engine.health(Duration::from_secs(60)),
        )
        .await
        .expect("healthy at once, not after a probe")
    });
    assert!(recent.is_ok(), "{recent:?}");
    // Once it is older than the timeout, a probe is admitted behind the two inputs left, and
    // the next batch to succeed answers first (the probe never runs: the gate holds it).
    // (A second for the batch to run once released: time for a stalled thread on a loaded
    // machine.)
    std::thread::sleep(Duration::from_millis(1200));
    let (busy, ()) = runtime
        .block_on(async { tokio::join!(engine.health(Duration::from_secs(1)), release_one()) });
    assert!(busy.is_ok(), "{busy:?}");
    // The backend fails from now on: its latest batch failed, so a success a moment ago no
    // longer answers, and the probe's own failure does.
    drop(open_gate);
    let answers = backlog.wait().unwrap().outputs;
    assert!(answers[0].is_ok() && answers[1].is_ok() && answers[2].is_err());
    let failing = runtime.block_on(engine.health(Duration::from_secs(60)));
    assert!(
        matches!(&failing, Err(Error::Backend(m)) if m.contains("gate closed")),
        "{failing:?}"
    );
}

#[test]
fn a_request_dropped_before_its_tokenization_gives_its_budget_back_unrun() {
    let (engine, batches) = one_worker_engine(1000, 10_000_000);
    // A second of tokenizing or more on the one worker (every byte of a text truncated from the
    // left is tokenized): the next request is dropped before its turn, as a client leaves.
    let started = Instant::now();
    let slow = engine
        .submit(
            texts(1, &"abc def ghi ".repeat(300_000), Truncation::TruncateLeft),
            Admission::Reject,
        )
        .unwrap();
    let left = engine
        .submit(
            texts(3, &"abc def ghi ".repeat(200_000), Truncation::TruncateLeft),
            Admission::Reject,
        )
        .unwrap();
    drop(left);
    assert!(slow.wait().unwrap().outputs[0].is_ok());
    let slow_took = started.elapsed();
    let started = Instant::now();
    let after = engine
        .submit(ids_request(&[vec![2, 7, 1]], 4), Admission::Reject)
        .unwrap();
    assert!(after.wait().unwrap().outputs[0].is_ok());
    // Its texts (twice the slow one's bytes) were not tokenized: had they been, the worker would
    // still be at them, and the last request would wait longer than the slow one took.
    let after_took = started.elapsed();
    assert!(
        after_took < slow_took / 2,
        "the last request took {after_took:?}, the slow one {slow_took:?}"
    );
    // The worker takes jobs in order: the dropped one's turn came before the last one's.
    let stats = engine.stats();
    assert_eq!((stats.queued_inputs, stats.queued_tokens), (0, 0));
    drop(engine);
    let sequences: usize = batches
        .lock()
        .unwrap()
        .iter()
        .map(Batch::num_sequences)
        .sum();
    assert_eq!(sequences, 2, "only the slow request and the last one ran");
}

#[test]
fn a_batch_tokenization_error_names_the_first_bad_text() {
    let (tokenizer, config) = tiny_tokenizer();
    // The first bad text is slow to tokenize, the later ones are quick: another thread meets a
    // later error first.
    let slow = "word ".repeat(200_000);
    let quick = "word ".repeat(config.max_seq_len * 2);
    let texts: Vec<&str> = (0..64)
        .map(|i| match i {
            3 => slow.as_str(),
            i if i >= 32 => quick.as_str(),
            _ => "short",
        })
        .collect();
    for _ in 0..5 {
        match tokenizer.encode_batch(&texts, Truncation::Refuse) {
            Err(Error::Input { index, .. }) => assert_eq!(index, 3),
            other => panic!("expected an Input error, got {other:?}"),
        }
    }
}

#[test]
fn the_token_budget_is_settled_on_real_counts_once_tokenized() {
    let (_, config) = tiny_tokenizer();
    let max_queued_tokens = 2 * config.max_seq_len;
    let (engine, _) = one_worker_engine(64, max_queued_tokens);
    // 8 texts of 5 words in 50 bytes: bounded by 8 · (50 + 2) bytes, past the whole budget,
    // but 8 · 7 tokens once tokenized.
    let padded = format!("{:<50}", "word word word word word");
    let fits = engine
        .submit(texts(8, &padded, Truncation::Truncate), Admission::Reject)
        .unwrap()
        .wait()
        .unwrap();
    assert!(fits.outputs.iter().all(|o| o.is_ok()));
    assert_eq!(engine.stats().queued_tokens, 0);
    // 64 inputs truncated to max_seq_len tokens each: really past the budget, refused as a whole
    // once counted, and the reservation is given back.
    let long = "word ".repeat(4 * config.max_seq_len);
    let response = engine
        .submit(texts(64, &long, Truncation::Truncate), Admission::Reject)
        .unwrap()
        .wait()
        .unwrap();
    let expected = format!(
        "a request of 64 inputs and {} tokens is more than the whole queue holds \
         (max_queued_tokens = {max_queued_tokens})",
        64 * config.max_seq_len
    );
    for output in response.outputs {
        assert!(
            matches!(&output, Err(Error::BeyondQueueCapacity(m)) if *m == expected),
            "{:?}",
            output.err()
        );
    }
    let stats = engine.stats();
    assert_eq!((stats.queued_inputs, stats.queued_tokens), (0, 0));
}
