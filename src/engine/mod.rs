//! The engine every front end drives: requests (one or many inputs) are admitted against bounded
//! budgets, tokenized on a worker pool, queued, packed into token-budget batches by one
//! scheduler thread and run by one backend worker thread that owns the device.
//!
//! ```text
//! submit ─▶ admission ─▶ tokenizer pool ─▶ queue ─▶ scheduler ─▶ [batch N+1] ─▶ backend worker
//!   ▲                                                                                     │
//!   └──────────────────────────── Ticket (oneshot) ◀── result routing ◀────────────────────┘
//! ```
//!
//! - Admission is counted in inputs and in tokens. Before tokenization a text's token count is
//!   bounded from above (one token per byte plus the special tokens, capped at `max_seq_len`);
//!   a request reserves at most the whole token budget, settles on the real count once
//!   tokenized, and releases it when its batches have run. A request larger than a whole budget
//!   (inputs at admission, tokens once tokenized) fails with [`Error::BeyondQueueCapacity`]. A
//!   full budget either fails at once with [`Error::Overloaded`] ([`Admission::Reject`], for
//!   servers) or waits for room ([`Admission::Wait`], for jobs). Requests answered together
//!   ([`Engine::submit_together`]) are admitted as one.
//! - The scheduler packs by `max_batch_tokens` and `max_batch_sequences`, without padding. The
//!   oldest queued input always goes into the next batch (no starvation, even for an input longer
//!   than the budget: it runs alone); later inputs that fit fill the rest. When the queue holds
//!   less than a full batch, it waits at most `max_wait` after the oldest input arrived.
//! - The scheduler hands batches over a rendezvous channel, so batch N+1 is built (and waits)
//!   while the backend computes batch N.
//! - A request's answers come back in its input order, whatever the packing; each input's
//!   embedding depends only on its own tokens (the backend guarantees per-sequence independence).
//! - A request whose [`Ticket`] is dropped is skipped: by its tokenizer worker (between two inputs)
//!   and when its inputs reach the scheduler.

mod queue;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};

use crate::backend::{Backend, Batch};
use crate::tokenize::{Tokenizer, Truncation};
use crate::{Error, Result};

use queue::{Entry, Queue};

/// Limits and knobs of an engine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineConfig {
    /// Token budget of one forward batch (a longer single input runs alone).
    pub max_batch_tokens: usize,
    /// Sequence cap of one forward batch.
    pub max_batch_sequences: usize,
    /// How long a thin queue waits for more inputs before a partial batch goes.
    pub max_wait: Duration,
    /// Inputs admitted and not yet answered, at most.
    pub max_queued_inputs: usize,
    /// Tokens admitted and not yet answered, at most (upper bounds for inputs not yet tokenized).
    pub max_queued_tokens: usize,
    /// Tokenization threads.
    pub tokenizer_workers: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_batch_tokens: 16384,
            max_batch_sequences: 1024,
            max_wait: Duration::from_millis(2),
            max_queued_inputs: 16384,
            max_queued_tokens: 1 << 22,
            tokenizer_workers: std::thread::available_parallelism()
                .map_or(1, |n| n.get().saturating_sub(1).max(1)),
        }
    }
}

impl EngineConfig {
    fn validate(&self) -> Result<()> {
        let positive = [
            ("max_batch_tokens", self.max_batch_tokens),
            ("max_batch_sequences", self.max_batch_sequences),
            ("max_queued_inputs", self.max_queued_inputs),
            ("max_queued_tokens", self.max_queued_tokens),
            ("tokenizer_workers", self.tokenizer_workers),
        ];
        match positive.iter().find(|(_, v)| *v == 0) {
            Some((name, _)) => Err(Error::EngineConfig(format!("{name} must be at least 1"))),
            None => Ok(()),
        }
    }
}

/// One input of a request.
#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    /// Text tokenized by the engine, `prompt` (already resolved to its string) prepended.
    Text {
        text: String,
        prompt: Option<String>,
    },
    /// Token ids used as is (validated against the vocabulary and `max_seq_len`).
    Ids(Vec<u32>),
}

/// Inputs embedded together; their answers come back together, in order.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    pub inputs: Vec<Input>,
    /// Matryoshka size of the embeddings (the model's full size when it is the embedding dim).
    pub dimensions: usize,
    pub truncation: Truncation,
    /// L2-normalize the embeddings, as the model's sentence-transformers pipeline ends; when
    /// false, the Dense projection's first `dimensions` components as they are (TEI's
    /// `normalize: false`).
    pub normalize: bool,
}

/// What [`Engine::submit`] does when the queue budgets are full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Fail at once with [`Error::Overloaded`].
    Reject,
    /// Block the caller until there is room.
    Wait,
}

/// The embedding of one input.
#[derive(Clone, Debug, PartialEq)]
pub struct Embedded {
    /// Tokens the input ran with (prompt and special tokens included).
    pub tokens: usize,
    /// `dimensions` long; L2-normalized unless the request said otherwise.
    pub embedding: Vec<f32>,
}

/// Where a request's time went.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timings {
    /// From admission to the end of tokenization of all its inputs, the wait for a tokenizer
    /// worker included (behind a long text, it is most of it).
    pub tokenization: Duration,
    /// From the end of tokenization to the start of its first batch.
    pub queue: Duration,
    /// From the start of its first batch to the end of its last.
    pub inference: Duration,
}

/// The answer to a request: one outcome per input, in input order. An input fails alone
/// (tokenizer error, too long, bad id) or with its batch (backend error).
#[derive(Debug)]
pub struct Response {
    pub outputs: Vec<Result<Embedded>>,
    pub timings: Timings,
}

/// The pending answer to a submitted request: [`Ticket::wait`] from plain threads, or `.await`.
pub struct Ticket {
    receiver: oneshot::Receiver<Response>,
}

impl Ticket {
    /// Block until the answer arrives. Not for use inside an async runtime (await instead).
    pub fn wait(self) -> Result<Response> {
        self.receiver
            .blocking_recv()
            .map_err(|_| Error::EngineStopped)
    }
}

impl Future for Ticket {
    type Output = Result<Response>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.receiver)
            .poll(cx)
            .map(|r| r.map_err(|_| Error::EngineStopped))
    }
}

/// A snapshot of the engine's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Inputs admitted and not yet answered.
    pub queued_inputs: usize,
    /// Tokens reserved by those inputs.
    pub queued_tokens: usize,
    /// Batches run so far, and their sequences and tokens.
    pub batches: u64,
    pub batch_sequences: u64,
    pub batch_tokens: u64,
    /// Time the backend spent in `forward`, in total.
    pub forward_time: Duration,
}

/// One batch the backend ran, as reported to a [`BatchObserver`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchReport {
    pub sequences: usize,
    pub tokens: usize,
    /// Time in `forward`.
    pub forward: Duration,
    pub failed: bool,
}

/// Called by the backend worker after every batch (for metrics such as batch-size histograms);
/// it runs on the backend's thread, so it must be quick.
pub type BatchObserver = Box<dyn Fn(&BatchReport) + Send>;

/// Lock a mutex, going on with its data if another thread panicked while holding it (every
/// critical section here leaves the data consistent).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Inputs and tokens admitted and not yet released.
#[derive(Default)]
struct Usage {
    inputs: usize,
    tokens: usize,
}

struct Budget {
    max_inputs: usize,
    max_tokens: usize,
    usage: Mutex<Usage>,
    freed: Condvar,
}

impl Budget {
    /// Admit `inputs` inputs and `tokens` tokens (one request's are at most the whole budget:
    /// see [`Engine::submit`]), failing or waiting while they do not fit.
    fn reserve(&self, inputs: usize, tokens: usize, admission: Admission) -> Result<()> {
        if inputs > self.max_inputs {
            return Err(Error::BeyondQueueCapacity(format!(
                "a request of {inputs} inputs is more than the whole queue holds \
                 (max_queued_inputs = {})",
                self.max_inputs
            )));
        }
        debug_assert!(tokens <= self.max_tokens, "reservations are capped");
        let mut usage = lock(&self.usage);
        loop {
            let fits = usage.inputs + inputs <= self.max_inputs
                && usage.tokens + tokens <= self.max_tokens;
            if fits {
                usage.inputs += inputs;
                usage.tokens += tokens;
                return Ok(());
            }
            match admission {
                Admission::Reject => {
                    return Err(Error::Overloaded(format!(
                        "the queue is full ({} of {} inputs, {} of {} tokens)",
                        usage.inputs, self.max_inputs, usage.tokens, self.max_tokens
                    )))
                }
                Admission::Wait => {
                    usage = self
                        .freed
                        .wait(usage)
                        .unwrap_or_else(PoisonError::into_inner)
                }
            }
        }
    }

    fn release(&self, inputs: usize, tokens: usize) {
        self.settle(inputs, tokens, 0);
    }

    /// Release `inputs` inputs, and settle a token reservation of `reserved` on the `real`
    /// count: give back what it reserved beyond it, or take what the real count needs beyond
    /// it without waiting (the request was admitted already; a tokenizer worker that waited
    /// could wait on reservations of jobs queued behind it).
    fn settle(&self, inputs: usize, reserved: usize, real: usize) {
        let mut usage = lock(&self.usage);
        usage.inputs -= inputs;
        // The usage holds the reservation: no underflow.
        usage.tokens = usage.tokens + real - reserved;
        drop(usage);
        self.freed.notify_all();
    }
}

/// A request between submission and its answer.
struct Pending {
    /// The request's [`Request::normalize`].
    normalize: bool,
    outputs: Mutex<Vec<Option<Result<Embedded>>>>,
    remaining: AtomicUsize,
    sender: Mutex<Option<oneshot::Sender<Response>>>,
    times: Mutex<PendingTimes>,
}

#[derive(Default)]
struct PendingTimes {
    tokenization: Duration,
    tokenized_at: Option<Instant>,
    first_batch: Option<Instant>,
    last_batch_end: Option<Instant>,
}

impl Pending {
    fn cancelled(&self) -> bool {
        lock(&self.sender).as_ref().is_none_or(|s| s.is_closed())
    }

    /// Record the outcome of input `index`; the last one sends the response.
    fn finish(&self, index: usize, outcome: Result<Embedded>) {
        lock(&self.outputs)[index] = Some(outcome);
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.send();
        }
    }

    fn send(&self) {
        let outputs = std::mem::take(&mut *lock(&self.outputs))
            .into_iter()
            .map(|o| o.expect("every input has an outcome"))
            .collect();
        let times = lock(&self.times);
        let since = |a: Option<Instant>, b: Option<Instant>| match (a, b) {
            (Some(a), Some(b)) => b.saturating_duration_since(a),
            _ => Duration::ZERO,
        };
        let timings = Timings {
            tokenization: times.tokenization,
            queue: since(times.tokenized_at, times.first_batch),
            inference: since(times.first_batch, times.last_batch_end),
        };
        drop(times);
        if let Some(sender) = lock(&self.sender).take() {
            // The receiver may be gone (client left): nothing to do then.
            let _ = sender.send(Response { outputs, timings });
        }
    }
}

/// A request handed to the tokenizer pool.
struct Job {
    pending: Arc<Pending>,
    inputs: Vec<Input>,
    dimensions: usize,
    truncation: Truncation,
    /// Tokens reserved at admission (an upper bound, capped at the whole budget).
    reserved_tokens: usize,
    admitted: Instant,
}

/// A batch built for the backend and where its rows go.
struct PreparedBatch {
    batch: Batch,
    dimensions: usize,
    entries: Vec<Entry>,
}

struct Shared {
    budget: Budget,
    queue: Mutex<Queue>,
    queue_changed: Condvar,
    batches: AtomicU64,
    batch_sequences: AtomicU64,
    batch_tokens: AtomicU64,
    forward_nanos: AtomicU64,
    /// How the backend's latest batch ended, for [`Engine::health`].
    last_batch: watch::Sender<Option<BatchOutcome>>,
}

impl Shared {
    /// Give back the budget of entries that leave the engine, in one release.
    fn release_entries(&self, entries: &[Entry]) {
        if !entries.is_empty() {
            let tokens = entries.iter().map(|e| e.ids.len()).sum();
            self.budget.release(entries.len(), tokens);
        }
    }
}

/// How a batch ended, and when.
#[derive(Clone, Copy, Debug)]
struct BatchOutcome {
    ended: Instant,
    succeeded: bool,
}

/// The running engine. Dropping it drains what was submitted, then stops its threads.
pub struct Engine {
    shared: Arc<Shared>,
    tokenizer: Arc<Tokenizer>,
    jobs: Option<Sender<Job>>,
    tokenizer_threads: Vec<JoinHandle<()>>,
    scheduler_thread: Option<JoinHandle<()>>,
    backend_thread: Option<JoinHandle<()>>,
    backend_name: &'static str,
    embedding_dim: usize,
    config: EngineConfig,
}

impl Engine {
    /// Start the threads around `backend`. `embedding_dim` is the model's full embedding size
    /// (the largest `dimensions` a request may ask for).
    pub fn start(
        backend: Box<dyn Backend>,
        tokenizer: Tokenizer,
        embedding_dim: usize,
        config: EngineConfig,
    ) -> Result<Self> {
        Self::start_observed(backend, tokenizer, embedding_dim, config, None)
    }

    /// [`Engine::start`] with an observer told about every batch.
    pub fn start_observed(
        backend: Box<dyn Backend>,
        tokenizer: Tokenizer,
        embedding_dim: usize,
        config: EngineConfig,
        observer: Option<BatchObserver>,
    ) -> Result<Self> {
        config.validate()?;
        let shared = Arc::new(Shared {
            budget: Budget {
                max_inputs: config.max_queued_inputs,
                max_tokens: config.max_queued_tokens,
                usage: Mutex::default(),
                freed: Condvar::new(),
            },
            queue: Mutex::new(Queue::default()),
            queue_changed: Condvar::new(),
            batches: AtomicU64::new(0),
            batch_sequences: AtomicU64::new(0),
            batch_tokens: AtomicU64::new(0),
            forward_nanos: AtomicU64::new(0),
            last_batch: watch::Sender::new(None),
        });
        let tokenizer = Arc::new(tokenizer);
        let backend_name = backend.name();

        // Admission bounds the requests in flight (each holds an input of the budget), so this
        // channel needs no bound of its own (a bounded one would allocate all its slots now).
        let (jobs, job_receiver) = mpsc::channel::<Job>();
        let job_receiver = Arc::new(Mutex::new(job_receiver));
        let tokenizer_threads = (0..config.tokenizer_workers)
            .map(|i| {
                let (shared, tokenizer, receiver) = (
                    Arc::clone(&shared),
                    Arc::clone(&tokenizer),
                    Arc::clone(&job_receiver),
                );
                spawn(&format!("tokenize-{i}"), move || {
                    tokenizer_worker(&shared, &tokenizer, &receiver)
                })
            })
            .collect::<Result<Vec<_>>>()?;

        // A rendezvous: the scheduler holds batch N+1, built, while the backend computes batch N.
        let (batches, batch_receiver) = mpsc::sync_channel::<PreparedBatch>(0);
        let scheduler_shared = Arc::clone(&shared);
        let scheduler_config = config.clone();
        let scheduler_thread = spawn("scheduler", move || {
            scheduler(&scheduler_shared, &scheduler_config, &batches)
        })?;
        let backend_shared = Arc::clone(&shared);
        let backend_thread = spawn("backend", move || {
            backend_worker(&backend_shared, backend, &batch_receiver, observer)
        })?;
        Ok(Self {
            shared,
            tokenizer,
            jobs: Some(jobs),
            tokenizer_threads,
            scheduler_thread: Some(scheduler_thread),
            backend_thread: Some(backend_thread),
            backend_name,
            embedding_dim,
            config,
        })
    }

    /// The limits the engine was started with.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// The tokenizer the engine uses (for prompts, limits and standalone tokenization).
    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.tokenizer
    }

    pub fn backend_name(&self) -> &'static str {
        self.backend_name
    }

    pub fn embedding_dim(&self) -> usize {
        self.embedding_dim
    }

    /// A Matryoshka size the model has: 1 to its embedding dimension.
    pub fn check_dimensions(&self, dimensions: usize) -> Result<()> {
        crate::model::check_dimensions(dimensions, self.embedding_dim)
    }

    pub fn stats(&self) -> EngineStats {
        let usage = lock(&self.shared.budget.usage);
        EngineStats {
            queued_inputs: usage.inputs,
            queued_tokens: usage.tokens,
            batches: self.shared.batches.load(Ordering::Relaxed),
            batch_sequences: self.shared.batch_sequences.load(Ordering::Relaxed),
            batch_tokens: self.shared.batch_tokens.load(Ordering::Relaxed),
            forward_time: Duration::from_nanos(self.shared.forward_nanos.load(Ordering::Relaxed)),
        }
    }

    /// Whether the backend works: `Ok` at once if its latest batch succeeded within the last
    /// `timeout`; else once a one-input probe has gone through the whole path (tokenizer,
    /// queue, backend), or as soon as any batch succeeds. Behind a long queue the probe would
    /// wait for all of it, while any batch succeeding proves as much; a full queue, where the
    /// probe is not admitted, is healthy on the same terms. So a busy engine answers at once;
    /// one whose latest batch failed answers with its probe, and one whose batches stop
    /// finishing turns unhealthy at most `timeout` after the last. Fails with the probe's error,
    /// or when nothing succeeded within `timeout`.
    pub async fn health(&self, timeout: Duration) -> Result<()> {
        // Marks the latest outcome as seen: `changed` waits for the next.
        let mut outcomes = self.shared.last_batch.subscribe();
        let succeeded_lately = |outcome: &Option<BatchOutcome>| {
            outcome.is_some_and(|b| b.succeeded && b.ended.elapsed() <= timeout)
        };
        if succeeded_lately(&outcomes.borrow()) {
            return Ok(());
        }
        let probe = Request {
            inputs: vec![Input::Text {
                text: "health".to_string(),
                prompt: None,
            }],
            dimensions: self.embedding_dim,
            truncation: Truncation::Truncate,
            normalize: true,
        };
        let ticket = match self.submit(probe, Admission::Reject) {
            Ok(ticket) => Some(ticket),
            Err(Error::Overloaded(_)) => None,
            Err(error) => return Err(error),
        };
        let queued = ticket.is_some();
        // Resolves at the next batch that succeeds (never while the engine runs, if none does).
        let next_success = async {
            while outcomes.changed().await.is_ok() {
                if outcomes.borrow().is_some_and(|b| b.succeeded) {
                    return;
                }
            }
            std::future::pending().await
        };
        // The probe's own answer; never, where the full queue admitted none.
        let probed = async {
            match ticket {
                Some(ticket) => match ticket.await?.outputs.into_iter().next() {
                    Some(outcome) => outcome.map(|_| ()),
                    None => Err(Error::EngineStopped),
                },
                None => std::future::pending().await,
            }
        };
        let answered = async {
            tokio::select! {
                result = probed => result,
                () = next_success => Ok(()),
            }
        };
        let seconds = timeout.as_secs_f64();
        tokio::time::timeout(timeout, answered).await.map_err(|_| {
            Error::Unhealthy(if queued {
                format!("no batch succeeded and the probe got no answer within {seconds:.1} s")
            } else {
                format!("the queue is full and no batch succeeded within {seconds:.1} s")
            })
        })?
    }

    /// The tokens a request of `inputs` reserves of the queue's budget at admission, until it is
    /// tokenized: an upper bound of their count, at most the whole budget.
    fn tokens_reserved(&self, inputs: &[Input]) -> usize {
        let max_len = self.tokenizer.max_seq_len();
        let upper_bound: usize = inputs
            .iter()
            .map(|input| match input {
                Input::Ids(ids) => ids.len().min(max_len),
                // Every token covers at least one byte; the special tokens come on top.
                Input::Text { text, prompt } => {
                    let bytes = text.len() + prompt.as_ref().map_or(0, String::len);
                    (bytes + self.tokenizer.added_tokens()).min(max_len)
                }
            })
            .sum();
        // One token per byte is about four times too many for English text: a bound past the
        // whole budget may still fit once tokenized, which settles it (and refuses a request
        // whose real count is past the budget).
        upper_bound.min(self.shared.budget.max_tokens)
    }

    /// Admit a request and queue it for tokenization. Fails at once on an empty request, bad
    /// `dimensions`, or (with [`Admission::Reject`]) a full queue.
    pub fn submit(&self, request: Request, admission: Admission) -> Result<Ticket> {
        let mut tickets = self.submit_together(vec![request], admission)?;
        Ok(tickets.remove(0))
    }

    /// Admit several requests as one, or none of them: their inputs and reserved tokens together
    /// must fit the queue (a request larger than the whole of it fails with
    /// [`Error::BeyondQueueCapacity`]). For requests answered together, such as `/vertex`'s
    /// instances of several sets of options: admitted apart, a later one could be refused with
    /// the earlier ones queued.
    pub fn submit_together(
        &self,
        requests: Vec<Request>,
        admission: Admission,
    ) -> Result<Vec<Ticket>> {
        let mut reserved = Vec::with_capacity(requests.len());
        // Together as one request: their bounds are capped at the whole budget between them,
        // and each settles on its real count once tokenized.
        let mut budget_left = self.shared.budget.max_tokens;
        for request in &requests {
            if request.inputs.is_empty() {
                return Err(Error::EmptyRequest);
            }
            self.check_dimensions(request.dimensions)?;
            let tokens = self.tokens_reserved(&request.inputs).min(budget_left);
            budget_left -= tokens;
            reserved.push(tokens);
        }
        let inputs = requests.iter().map(|r| r.inputs.len()).sum();
        self.shared
            .budget
            .reserve(inputs, reserved.iter().sum(), admission)?;
        // Every one is queued or gives its reservation back, whatever happens to the others.
        let queued: Vec<Result<Ticket>> = requests
            .into_iter()
            .zip(reserved)
            .map(|(request, reserved_tokens)| self.queue(request, reserved_tokens))
            .collect();
        queued.into_iter().collect()
    }

    /// Queue an admitted request, holding `reserved_tokens`, for tokenization.
    fn queue(&self, request: Request, reserved_tokens: usize) -> Result<Ticket> {
        let Request {
            inputs,
            dimensions,
            truncation,
            normalize,
        } = request;
        let (sender, receiver) = oneshot::channel();
        let pending = Arc::new(Pending {
            normalize,
            outputs: Mutex::new((0..inputs.len()).map(|_| None).collect()),
            remaining: AtomicUsize::new(inputs.len()),
            sender: Mutex::new(Some(sender)),
            times: Mutex::default(),
        });
        let job = Job {
            pending,
            inputs,
            dimensions,
            truncation,
            reserved_tokens,
            admitted: Instant::now(),
        };
        let jobs = self.jobs.as_ref().expect("open until drop");
        if let Err(mpsc::SendError(job)) = jobs.send(job) {
            self.shared
                .budget
                .release(job.inputs.len(), job.reserved_tokens);
            return Err(Error::EngineStopped);
        }
        Ok(Ticket { receiver })
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // Closing the job channel lets the tokenizers finish what is queued and exit; then the
        // scheduler drains the queue, and the backend worker runs the last batches.
        self.jobs.take();
        for thread in self.tokenizer_threads.drain(..) {
            let _ = thread.join();
        }
        lock(&self.shared.queue).closed = true;
        self.shared.queue_changed.notify_all();
        for thread in [self.scheduler_thread.take(), self.backend_thread.take()]
            .into_iter()
            .flatten()
        {
            let _ = thread.join();
        }
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("engine-{name}"))
        .spawn(f)
        .map_err(|e| Error::EngineConfig(format!("cannot start thread {name}: {e}")))
}

fn tokenizer_worker(shared: &Shared, tokenizer: &Tokenizer, receiver: &Mutex<Receiver<Job>>) {
    'jobs: loop {
        // Hold the lock only while taking one job.
        let job = lock(receiver).recv();
        let Ok(job) = job else { return };
        let mut tokenized = Vec::with_capacity(job.inputs.len());
        let mut failures = Vec::new();
        for (index, input) in job.inputs.iter().enumerate() {
            // A request whose client left (or an engine shutting down, whose server dropped
            // it) costs no more tokenizing: its budget goes back, its texts with the job.
            if job.pending.cancelled() {
                shared.budget.release(job.inputs.len(), job.reserved_tokens);
                continue 'jobs;
            }
            let ids = match input {
                Input::Text { text, prompt } => {
                    tokenizer.encode(index, prompt.as_deref(), text, job.truncation)
                }
                Input::Ids(ids) => tokenizer.check_ids(index, ids).map(|()| ids.clone()),
            };
            match ids {
                Ok(ids) => tokenized.push((index, ids)),
                Err(err) => failures.push((index, err)),
            }
        }
        let mut tokens: usize = tokenized.iter().map(|(_, ids)| ids.len()).sum();
        if tokens > shared.budget.max_tokens {
            let message = format!(
                "a request of {} inputs and {tokens} tokens is more than the whole queue holds \
                 (max_queued_tokens = {})",
                job.inputs.len(),
                shared.budget.max_tokens
            );
            failures.extend(
                tokenized
                    .drain(..)
                    .map(|(index, _)| (index, Error::BeyondQueueCapacity(message.clone()))),
            );
            tokens = 0;
        }
        let now = Instant::now();
        {
            let mut times = lock(&job.pending.times);
            times.tokenization = now - job.admitted;
            times.tokenized_at = Some(now);
        }
        shared
            .budget
            .settle(failures.len(), job.reserved_tokens, tokens);
        for (index, err) in failures {
            job.pending.finish(index, Err(err));
        }
        if !tokenized.is_empty() {
            let mut queue = lock(&shared.queue);
            for (index, ids) in tokenized {
                queue.push(Entry {
                    pending: Arc::clone(&job.pending),
                    index,
                    ids,
                    dimensions: job.dimensions,
                    enqueued: now,
                });
            }
            drop(queue);
            shared.queue_changed.notify_all();
        }
    }
}

fn scheduler(shared: &Shared, config: &EngineConfig, batches: &SyncSender<PreparedBatch>) {
    loop {
        let (entries, cancelled) = {
            let mut queue = lock(&shared.queue);
            loop {
                let Some(oldest) = queue.oldest_enqueued() else {
                    if queue.closed {
                        return;
                    }
                    queue = shared
                        .queue_changed
                        .wait(queue)
                        .unwrap_or_else(PoisonError::into_inner);
                    continue;
                };
                let full = queue.tokens() >= config.max_batch_tokens
                    || queue.len() >= config.max_batch_sequences;
                let waited = oldest.elapsed();
                if full || queue.closed || waited >= config.max_wait {
                    break queue.take_batch(config.max_batch_tokens, config.max_batch_sequences);
                }
                queue = shared
                    .queue_changed
                    .wait_timeout(queue, config.max_wait - waited)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
        };
        shared.release_entries(&cancelled);
        drop(cancelled);
        if entries.is_empty() {
            continue;
        }
        let mut batch = Batch {
            ids: Vec::with_capacity(entries.iter().map(|e| e.ids.len()).sum()),
            seq_offsets: Vec::with_capacity(entries.len() + 1),
        };
        for entry in &entries {
            batch.push(&entry.ids);
        }
        let prepared = PreparedBatch {
            batch,
            dimensions: entries[0].dimensions,
            entries,
        };
        if let Err(mpsc::SendError(prepared)) = batches.send(prepared) {
            // The backend worker is gone (it panicked): fail what this batch held.
            shared.release_entries(&prepared.entries);
            for entry in prepared.entries {
                entry.pending.finish(entry.index, Err(Error::EngineStopped));
            }
        }
    }
}

fn backend_worker(
    shared: &Shared,
    mut backend: Box<dyn Backend>,
    batches: &Receiver<PreparedBatch>,
    observer: Option<BatchObserver>,
) {
    while let Ok(PreparedBatch {
        batch,
        dimensions,
        entries,
    }) = batches.recv()
    {
        let start = Instant::now();
        let result = backend.forward(&batch, dimensions);
        let end = Instant::now();
        if let Some(observe) = &observer {
            observe(&BatchReport {
                sequences: entries.len(),
                tokens: batch.num_tokens(),
                forward: end - start,
                failed: result.is_err(),
            });
        }
        shared.batches.fetch_add(1, Ordering::Relaxed);
        shared
            .forward_nanos
            .fetch_add((end - start).as_nanos() as u64, Ordering::Relaxed);
        shared
            .batch_sequences
            .fetch_add(entries.len() as u64, Ordering::Relaxed);
        shared
            .batch_tokens
            .fetch_add(batch.num_tokens() as u64, Ordering::Relaxed);
        // One release (and one wake-up of waiting submitters) for the whole batch.
        shared.budget.release(entries.len(), batch.num_tokens());
        // Told before the answers go out: whoever holds an answer sees its batch's outcome.
        shared.last_batch.send_replace(Some(BatchOutcome {
            ended: end,
            succeeded: result.is_ok(),
        }));
        for (s, entry) in entries.into_iter().enumerate() {
            {
                let mut times = lock(&entry.pending.times);
                times.first_batch.get_or_insert(start);
                times.last_batch_end = Some(end);
            }
            let outcome = match &result {
                Ok(embeddings) => {
                    let mut embedding = embeddings.row(s).to_vec();
                    if !entry.pending.normalize {
                        let norm = embeddings.norms[s];
                        embedding.iter_mut().for_each(|v| *v *= norm);
                    }
                    Ok(Embedded {
                        tokens: entry.ids.len(),
                        embedding,
                    })
                }
                Err(err) => Err(Error::Backend(err.to_string())),
            };
            entry.pending.finish(entry.index, outcome);
        }
    }
}
