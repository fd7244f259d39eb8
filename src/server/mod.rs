//! `gemma-embed serve`: the HTTP front end of the engine, compatible with the clients of OpenAI's
//! embeddings API and of text-embeddings-inference (TEI).
//!
//! | route | body | answer |
//! | --- | --- | --- |
//! | `POST /v1/embeddings` | OpenAI: `input`, `model`, `encoding_format`, `dimensions`, `user`; extensions `prompt_name`, `truncate` | OpenAI's list of embeddings with `usage` |
//! | `GET /v1/models` | | OpenAI's model list: the one served model |
//! | `POST /embed` | TEI: `inputs`, `normalize`, `truncate`, `truncation_direction`, `prompt_name`, `dimensions` | `[[f32]]` |
//! | `POST /`, `POST /invocations` | as `/embed` (TEI's root, SageMaker) | as `/embed` |
//! | `POST /vertex` | TEI's Vertex AI route: `instances`, each an `/embed` body | `predictions`: an `/embed` answer each |
//! | `POST /similarity` | TEI: `inputs.source_sentence`, `inputs.sentences`, `parameters` (`truncate`, `truncation_direction`, `prompt_name`) | `[f32]`: each sentence's cosine similarity to the source |
//! | `POST /tokenize` | TEI: `inputs`, `add_special_tokens`, `prompt_name` | tokens with offsets |
//! | `POST /decode` | TEI: `ids` (one list or a list of lists), `skip_special_tokens` | `[string]` |
//! | `GET /health`, `GET /`, `GET /ping` | | 200 when the latest batch succeeded lately or a probe goes through the backend, else 503 |
//! | `GET /info` | | model, dims, prompts, backend, limits, version |
//! | `GET /metrics` | | Prometheus text |
//! | `GET /openapi.json`, `GET /api-doc/openapi.json` | | this API's OpenAPI 3.1 description (`openapi.json`) |
//!
//! Every embedding route submits to the shared [`Engine`] with [`Admission::Reject`]: a full
//! queue answers 429 at once. A client that disconnects drops its handler, hence its
//! [`crate::engine::Ticket`], and the engine skips its queued inputs. Responses carry
//! TEI's headers: `x-tokenization-time`, `x-queue-time`, `x-inference-time`, `x-compute-time`
//! and `x-total-time` (milliseconds), `x-compute-tokens`, `x-compute-characters` and
//! `x-compute-type` (the backend). `/embeddings` is an alias of `/v1/embeddings`, as in TEI.
//! With [`ServerConfig::cors`], CORS preflights are answered ahead of the API key check.

mod error;
mod linger;
mod metrics;
mod request;

pub use error::{ApiError, ErrorKind, Flavor, OpenAiError, TeiError};
pub use metrics::Metrics;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, MatchedPath, Request as HttpRequest, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use http_body_util::BodyExt as _;
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};

use crate::engine::{Admission, Embedded, Engine, Input, Request, Ticket, Timings};
use crate::tokenize::{Tokenizer, Truncation};
use crate::Error;

use request::{InputNames, RawInput};

/// The server's own limits and identity (the engine's are in its [`crate::engine::EngineConfig`]).
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// The name answered in `model` fields and `/info`.
    pub model_id: String,
    /// Inputs per request, at most (413 beyond).
    pub max_client_batch_size: usize,
    /// Request body bytes, at most (413 beyond).
    pub payload_limit: usize,
    /// Bearer token required on every route but the health checks (`/health`, `GET /`, `/ping`)
    /// and `/metrics`.
    pub api_key: Option<String>,
    /// Truncate over-long inputs of requests that do not say `truncate` (TEI's
    /// `--auto-truncate`); otherwise they are refused with 422.
    pub auto_truncate: bool,
    /// How long `/health` waits for its probe through the backend.
    pub health_timeout: Duration,
    /// Origins whose browser pages may call the server; none: no CORS headers at all.
    pub cors: Option<CorsOrigins>,
    /// Facts for `/info` that the engine does not know.
    pub info: ServerInfo,
}

/// What `/info` reports beyond the server's and the engine's limits.
#[derive(Clone, Debug)]
pub struct ServerInfo {
    pub model_dir: String,
    pub model_dtype: &'static str,
    pub device: Option<String>,
}

/// What every route shares.
pub struct AppState {
    engine: Engine,
    metrics: Arc<Metrics>,
    config: ServerConfig,
    /// `/tokenize` and `/decode` at once, at most as many as the engine has tokenizer workers:
    /// the others wait their turn (a multi-megabyte text's tokens take hundreds of megabytes).
    standalone_tokenizing: Arc<tokio::sync::Semaphore>,
}

impl AppState {
    /// `metrics` must be the one whose [`Metrics::batch_observer`] the engine was started with.
    pub fn new(engine: Engine, metrics: Arc<Metrics>, config: ServerConfig) -> Arc<Self> {
        let standalone_tokenizing = Arc::new(tokio::sync::Semaphore::new(
            engine.config().tokenizer_workers.max(1),
        ));
        Arc::new(Self {
            engine,
            metrics,
            config,
            standalone_tokenizing,
        })
    }

    /// Run `work` with the tokenizer on a blocking thread (tokenizing is CPU work, kept off the
    /// async workers), at most as many at once as the engine has tokenizer workers. The turn
    /// goes with the work, not with the request: one whose client left holds it until its work
    /// ends.
    async fn tokenizing<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Tokenizer) -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let turn = Arc::clone(&self.standalone_tokenizing)
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let tokenizer = Arc::clone(self.engine.tokenizer());
        tokio::task::spawn_blocking(move || {
            let _turn = turn;
            work(&tokenizer)
        })
        .await
        .map_err(|e| ApiError::new(ErrorKind::Backend, format!("tokenizing failed: {e}")))
    }

    /// Run a short text, then a longest-possible one, through the whole path (buffers at their
    /// largest) before the listener opens.
    pub fn warm_up(&self) -> crate::Result<()> {
        let longest = self.engine.tokenizer().max_seq_len();
        for text in ["warm-up".to_string(), "warm-up ".repeat(longest)] {
            let request = Request {
                inputs: vec![Input::Text { text, prompt: None }],
                dimensions: self.engine.embedding_dim(),
                truncation: Truncation::Truncate,
                normalize: true,
            };
            let response = self.engine.submit(request, Admission::Wait)?.wait()?;
            response.outputs.into_iter().try_for_each(|o| o.map(drop))?;
        }
        Ok(())
    }
}

/// The origins allowed to call the server from a browser (CORS, TEI's `--cors-allow-origin`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CorsOrigins {
    Any,
    List(Vec<HeaderValue>),
}

impl CorsOrigins {
    /// From the command line's origins (`*`: any); none when there are none.
    pub fn parse(origins: &[String]) -> crate::Result<Option<Self>> {
        if origins.is_empty() {
            return Ok(None);
        }
        if origins.iter().any(|o| o == "*") {
            return Ok(Some(Self::Any));
        }
        let values = origins
            .iter()
            .map(|origin| {
                // What browsers send: `scheme://host[:port]`, lower case, no path.
                let host = origin
                    .strip_prefix("https://")
                    .or_else(|| origin.strip_prefix("http://"));
                let shaped = host.is_some_and(|h| !h.is_empty() && !h.contains('/'))
                    && *origin == origin.to_ascii_lowercase();
                let value = HeaderValue::from_str(origin).ok().filter(|_| shaped);
                value.ok_or_else(|| {
                    Error::ServerConfig(format!(
                        "CORS origin {origin:?} is not an origin as browsers send it: \
                         http:// or https://, a lower-case host, an optional port, no path \
                         (or `*` for any)"
                    ))
                })
            })
            .collect::<crate::Result<Vec<_>>>()?;
        Ok(Some(Self::List(values)))
    }

    /// Browsers may send any header (the JSON and API-key ones among them) and read TEI's timing
    /// headers.
    fn layer(&self) -> CorsLayer {
        let allow_origin = match self {
            Self::Any => AllowOrigin::any(),
            Self::List(values) => AllowOrigin::list(values.iter().cloned()),
        };
        let exposed = [
            "x-tokenization-time",
            "x-queue-time",
            "x-inference-time",
            "x-compute-time",
            "x-total-time",
            "x-compute-tokens",
            "x-compute-characters",
            "x-compute-type",
        ]
        .map(HeaderName::from_static);
        CorsLayer::new()
            .allow_origin(allow_origin)
            .allow_methods([Method::GET, Method::POST])
            // Whatever the preflight asks for: clients add their own headers (OpenAI's SDKs
            // send `x-stainless-*`); no credentials are involved, and the API key is still
            // checked on the request itself.
            .allow_headers(AllowHeaders::mirror_request())
            .expose_headers(exposed)
    }
}

/// The routes, their limits and their metrics, and CORS where origins are allowed.
pub fn router(state: Arc<AppState>) -> Router {
    let cors = state.config.cors.as_ref().map(CorsOrigins::layer);
    let protected = Router::new()
        .route("/v1/embeddings", post(openai_embeddings))
        .route("/embeddings", post(openai_embeddings))
        .route("/v1/models", get(openai_models))
        .route("/embed", post(tei_embed))
        // TEI's other doors to /embed: its root (Hugging Face inference clients) and
        // SageMaker's `/invocations`; its Vertex AI route.
        .route("/", post(tei_embed))
        .route("/invocations", post(tei_embed))
        .route("/vertex", post(tei_vertex))
        .route("/similarity", post(tei_similarity))
        .route("/tokenize", post(tei_tokenize))
        .route("/decode", post(tei_decode))
        .route("/info", get(info))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            read_limited_body,
        ))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            require_api_key,
        ));
    let router = Router::new()
        .merge(protected)
        .route("/health", get(health))
        // TEI's other health doors: `GET /` and SageMaker's `/ping`.
        .route("/", get(health))
        .route("/ping", get(health))
        .route("/metrics", get(metrics))
        // The API's description (TEI serves its own at `/api-doc/openapi.json`).
        .route("/openapi.json", get(openapi))
        .route("/api-doc/openapi.json", get(openapi))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            record_request,
        ))
        // `read_limited_body` enforces `payload_limit` and hands the handlers a read body.
        .layer(DefaultBodyLimit::disable())
        .with_state(state);
    // Outermost: a preflight is answered before the API key is asked for.
    match cors {
        Some(cors) => router.layer(cors),
        None => router,
    }
}

/// The OpenAPI 3.1 description of these routes (`openapi.json` beside this file), with this
/// build's version, serialized once.
async fn openapi() -> Response {
    static DOCUMENT: std::sync::LazyLock<Bytes> = std::sync::LazyLock::new(|| {
        let mut document: Value = serde_json::from_str(include_str!("openapi.json"))
            .expect("src/server/openapi.json is JSON (checked by the server tests)");
        document["info"]["version"] = Value::from(env!("CARGO_PKG_VERSION"));
        Bytes::from(serde_json::to_vec(&document).expect("a JSON value serializes"))
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        DOCUMENT.clone(),
    )
        .into_response()
}

/// Serve on `listener` until `shutdown` resolves; then stop accepting, let in-flight requests
/// finish for at most `deadline`, and return. A connection is closed when its client takes
/// longer than `header_time` to send a request's headers or to start its next request, so that
/// clients that never finish (or never start) one do not hold the server's file descriptors.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    deadline: Duration,
    header_time: Duration,
) -> std::io::Result<()> {
    let app = router(state);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_time);
    let connections = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                // One client's connection gone before it was taken: the next.
                Err(e) if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionRefused
                        | std::io::ErrorKind::ConnectionAborted
                        | std::io::ErrorKind::ConnectionReset
                ) => continue,
                // Out of file descriptors, say: the connections being served go on; try again.
                Err(e) => {
                    eprintln!("cannot accept a connection: {e} (trying again in 1 s)");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        () = &mut shutdown => break,
                    }
                }
            },
            () = &mut shutdown => break,
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let connection = connections.watch(http.serve_connection(
            hyper_util::rt::TokioIo::new(linger::LingeringClose::new(stream)),
            service,
        ));
        tokio::spawn(async move {
            // A connection ends in an error when its client goes away or times out: nothing to do.
            let _ = connection.await;
        });
    }
    drop(listener);
    eprintln!(
        "shutting down: no new connections; waiting up to {:.1} s for requests in flight",
        deadline.as_secs_f64()
    );
    tokio::select! {
        () = connections.shutdown() => {}
        () = tokio::time::sleep(deadline) => {
            eprintln!("shutdown deadline reached: closing the connections still open");
        }
    }
    Ok(())
}

async fn require_api_key(
    State(state): State<Arc<AppState>>,
    request: HttpRequest,
    next: Next,
) -> Response {
    let Some(key) = &state.config.api_key else {
        return next.run(request).await;
    };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given.is_some_and(|g| constant_time_eq(g.as_bytes(), key.as_bytes())) {
        return next.run(request).await;
    }
    ApiError::new(
        ErrorKind::Unauthorized,
        "missing or wrong API key: send `Authorization: Bearer <key>`",
    )
    .respond(flavor_of(request.uri().path()))
}

/// How much of a body past the payload limit is read on and thrown away before the 413 answer,
/// and for how long: a client still writing its body then reads the answer instead of a reset
/// connection. Past either bound (or declared past the first) the answer goes at once and the
/// connection is closed.
const REFUSED_BODY_DRAIN_BYTES: u64 = 64 << 20;
const REFUSED_BODY_DRAIN_TIME: Duration = Duration::from_secs(10);
/// How long a body may go without a byte arriving (408 beyond).
const BODY_IDLE_TIME: Duration = Duration::from_secs(30);

/// Reads an API request's body, at most [`ServerConfig::payload_limit`] bytes, before its
/// handler runs. A longer body (by its Content-Length, or counted as it arrives when chunked) is
/// refused with 413 once the client has finished sending it, within the drain bounds above; a
/// client that asked `Expect: 100-continue` is refused before it sends anything.
async fn read_limited_body(
    State(state): State<Arc<AppState>>,
    request: HttpRequest,
    next: Next,
) -> Response {
    let limit = state.config.payload_limit;
    let flavor = flavor_of(request.uri().path());
    let (parts, mut body) = request.into_parts();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(length) = declared.filter(|&length| length > limit as u64) {
        let awaits_continue = parts
            .headers
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        let drain = !awaits_continue && length - limit as u64 <= REFUSED_BODY_DRAIN_BYTES;
        return refuse_oversized_body(drain.then_some(body), limit, flavor).await;
    }
    // Grown as bytes come, not reserved on the client's word.
    let mut read = Vec::with_capacity(declared.map_or(0, |length| length.min(64 << 10) as usize));
    loop {
        let frame = match tokio::time::timeout(BODY_IDLE_TIME, body.frame()).await {
            Ok(None) => break,
            Ok(Some(Ok(frame))) => frame,
            Ok(Some(Err(error))) => {
                return ApiError::new(
                    ErrorKind::Malformed,
                    format!("cannot read the body: {error}"),
                )
                .respond(flavor)
            }
            Err(_) => {
                return closing(
                    ApiError::new(
                        ErrorKind::Timeout,
                        format!(
                            "the body stopped coming: no byte for {} s after {} bytes",
                            BODY_IDLE_TIME.as_secs(),
                            read.len()
                        ),
                    )
                    .respond(flavor),
                )
            }
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if read.len() + data.len() > limit {
            return refuse_oversized_body(Some(body), limit, flavor).await;
        }
        read.extend_from_slice(&data);
    }
    next.run(HttpRequest::from_parts(parts, Body::from(read)))
        .await
}

/// The 413 answer to a body past `limit`. The rest of `body` is read and dropped first, within
/// the drain bounds; without one the answer goes at once and closes the connection.
async fn refuse_oversized_body(body: Option<Body>, limit: usize, flavor: Flavor) -> Response {
    let drained = match body {
        Some(mut body) => tokio::time::timeout(REFUSED_BODY_DRAIN_TIME, async {
            let mut drained = 0u64;
            while let Some(Ok(frame)) = body.frame().await {
                drained += frame.data_ref().map_or(0, |data| data.len() as u64);
                if drained > REFUSED_BODY_DRAIN_BYTES {
                    return false;
                }
            }
            true
        })
        .await
        .unwrap_or(false),
        None => false,
    };
    let response = ApiError::new(
        ErrorKind::TooLarge,
        format!(
            "the request body is larger than the payload limit of {limit} bytes (the server's \
             --payload-limit)"
        ),
    )
    .respond(flavor);
    if drained {
        response
    } else {
        closing(response)
    }
}

/// `response` with `Connection: close`: the rest of the request's body was not read, so the
/// connection cannot carry another request.
fn closing(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Compare without an early exit on the first differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The error shape of a path that no typed handler answers (a refused API key, no route).
fn flavor_of(path: &str) -> Flavor {
    if path.starts_with("/v1/") || path == "/embeddings" {
        Flavor::OpenAi
    } else {
        Flavor::Tei
    }
}

async fn record_request(
    State(state): State<Arc<AppState>>,
    request: HttpRequest,
    next: Next,
) -> Response {
    // A shared handle to the route's pattern: no copy of the string per request.
    let route = request.extensions().get::<MatchedPath>().cloned();
    let mut record = RequestRecord {
        state: &state,
        method: method_label(request.method()),
        route,
        start: Instant::now(),
        status: CLIENT_CLOSED_REQUEST,
    };
    let response = next.run(request).await;
    record.status = response.status().as_u16();
    response
}

/// The status counted for a request whose client went away before its answer (its handler
/// dropped mid-way), as nginx logs it.
const CLIENT_CLOSED_REQUEST: u16 = 499;

/// One request's line in the metrics, written when the request ends: answered, or dropped
/// with its connection ([`CLIENT_CLOSED_REQUEST`]).
struct RequestRecord<'a> {
    state: &'a AppState,
    method: &'static str,
    route: Option<MatchedPath>,
    start: Instant,
    status: u16,
}

impl Drop for RequestRecord<'_> {
    fn drop(&mut self) {
        self.state.metrics.record_request(
            self.method,
            self.route.as_ref().map_or("unmatched", MatchedPath::as_str),
            self.status,
            self.start.elapsed(),
        );
    }
}

/// The metrics label of a request's method: the methods of RFC 9110 and PATCH by name, any
/// other as `OTHER` (a client inventing methods must not add series without end).
fn method_label(method: &Method) -> &'static str {
    const KNOWN: [Method; 9] = [
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::CONNECT,
        Method::OPTIONS,
        Method::TRACE,
        Method::PATCH,
    ];
    KNOWN
        .iter()
        .find(|known| *known == method)
        .map_or("OTHER", Method::as_str)
}

/// A route asked with another method (the `Allow` header, which axum adds, lists its methods).
async fn method_not_allowed(request: HttpRequest) -> Response {
    let path = request.uri().path();
    ApiError::new(
        ErrorKind::MethodNotAllowed,
        format!(
            "{path} does not answer {} (see the Allow header)",
            request.method()
        ),
    )
    .respond(flavor_of(path))
}

async fn not_found(request: HttpRequest) -> Response {
    let path = request.uri().path();
    ApiError::new(ErrorKind::NotFound, format!("no route {path}")).respond(flavor_of(path))
}

/// What an embedding route asks of the engine.
struct EmbedQuery {
    inputs: Vec<RawInput>,
    /// How errors that concern one input name it.
    input_names: InputNames,
    prompt_name: Option<String>,
    dimensions: Option<usize>,
    truncation: Truncation,
    /// TEI's `normalize` (default true; OpenAI's route always normalizes).
    normalize: bool,
}

impl EmbedQuery {
    /// Whether `other` asks for the same kind of embedding (its inputs aside).
    fn same_embedding(&self, other: &Self) -> bool {
        (
            &self.prompt_name,
            self.dimensions,
            self.truncation,
            self.normalize,
        ) == (
            &other.prompt_name,
            other.dimensions,
            other.truncation,
            other.normalize,
        )
    }
}

/// The engine's answer: one embedding per input, in order.
struct Answer {
    embeddings: Vec<Embedded>,
    timings: Timings,
    elapsed: Duration,
    /// Characters of the text inputs.
    characters: usize,
    backend: &'static str,
}

impl Answer {
    fn tokens(&self) -> usize {
        self.embeddings.iter().map(|e| e.tokens).sum()
    }

    /// The timing headers of TEI (in milliseconds).
    fn headers(&self) -> HeaderMap {
        let ms = |d: Duration| {
            HeaderValue::from_str(&format!("{:.3}", d.as_secs_f64() * 1e3))
                .expect("a number is a valid header value")
        };
        let mut headers = HeaderMap::new();
        headers.insert("x-tokenization-time", ms(self.timings.tokenization));
        headers.insert("x-queue-time", ms(self.timings.queue));
        headers.insert("x-inference-time", ms(self.timings.inference));
        headers.insert("x-total-time", ms(self.elapsed));
        let compute = self.timings.tokenization + self.timings.queue + self.timings.inference;
        headers.insert("x-compute-time", ms(compute));
        headers.insert("x-compute-tokens", HeaderValue::from(self.tokens()));
        headers.insert("x-compute-characters", HeaderValue::from(self.characters));
        headers.insert("x-compute-type", HeaderValue::from_static(self.backend));
        headers
    }
}

async fn embed(state: &AppState, query: EmbedQuery) -> Result<Answer, ApiError> {
    let (request, answering) = engine_request(state, query)?;
    let ticket = state.engine.submit(request, Admission::Reject)?;
    answer(state, ticket, answering).await
}

/// What an answer needs of its query besides the engine's response.
struct Answering {
    input_names: InputNames,
    characters: usize,
    start: Instant,
}

/// The engine request of a query, and what its answer needs.
fn engine_request(state: &AppState, query: EmbedQuery) -> Result<(Request, Answering), ApiError> {
    let start = Instant::now();
    let tokenizer = state.engine.tokenizer();
    let prompt = tokenizer
        .named_or_default_prompt(query.prompt_name.as_deref())?
        .map(str::to_string);
    let characters = query
        .inputs
        .iter()
        .map(|input| match input {
            RawInput::Text(text) => text.chars().count(),
            RawInput::Ids(_) => 0,
        })
        .sum();
    let inputs = query
        .inputs
        .into_iter()
        .map(|input| match input {
            RawInput::Text(text) => Input::Text {
                text,
                prompt: prompt.clone(),
            },
            RawInput::Ids(ids) => Input::Ids(ids),
        })
        .collect();
    let request = Request {
        inputs,
        dimensions: query
            .dimensions
            .unwrap_or_else(|| state.engine.embedding_dim()),
        truncation: query.truncation,
        normalize: query.normalize,
    };
    let answering = Answering {
        input_names: query.input_names,
        characters,
        start,
    };
    Ok((request, answering))
}

async fn answer(
    state: &AppState,
    ticket: Ticket,
    answering: Answering,
) -> Result<Answer, ApiError> {
    let Answering {
        input_names,
        characters,
        start,
    } = answering;
    let response = ticket.await?;
    let embeddings = response
        .outputs
        .into_iter()
        .collect::<Result<Vec<_>, Error>>()
        .map_err(|error| ApiError::naming_input(error, |index| input_names.name(index)))?;
    let answer = Answer {
        embeddings,
        timings: response.timings,
        elapsed: start.elapsed(),
        characters,
        backend: state.engine.backend_name(),
    };
    state
        .metrics
        .record_embedding(answer.embeddings.len(), answer.tokens(), &answer.timings);
    Ok(answer)
}

/// `truncate` (bool, default `--auto-truncate`) and TEI's `truncation_direction` (`Right` |
/// `Left`).
fn truncation(
    body: &Map<String, Value>,
    auto_truncate: bool,
    with_direction: bool,
) -> Result<Truncation, ApiError> {
    // The direction is checked even where nothing is truncated: a bad one is never ignored.
    let direction = if with_direction {
        request::optional_str(body, "truncation_direction")?
    } else {
        None
    };
    let truncation = match direction {
        None => Truncation::Truncate,
        Some(given) if given.eq_ignore_ascii_case("right") => Truncation::Truncate,
        Some(given) if given.eq_ignore_ascii_case("left") => Truncation::TruncateLeft,
        Some(other) => {
            return Err(ApiError::field(
                "truncation_direction",
                format!("must be `Right` or `Left`, got `{other}`"),
            ))
        }
    };
    if request::optional_bool(body, "truncate")?.unwrap_or(auto_truncate) {
        Ok(truncation)
    } else {
        Ok(Truncation::Refuse)
    }
}

fn prompt_name(body: &Map<String, Value>) -> Result<Option<String>, ApiError> {
    Ok(request::optional_str(body, "prompt_name")?.map(str::to_string))
}

async fn openai_embeddings(
    State(state): State<Arc<AppState>>,
    body: Bytes,
) -> Result<Response, OpenAiError> {
    let mut body = request::object(body)?;
    let as_base64 = match request::optional_str(&body, "encoding_format")? {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::field(
                "encoding_format",
                format!("must be `float` or `base64`, got `{other}`"),
            )
            .into())
        }
    };
    // Accepted for compatibility; this server has one model.
    request::optional_str(&body, "model")?;
    request::optional_str(&body, "user")?;
    let (inputs, input_names) =
        request::inputs(&mut body, "input", state.config.max_client_batch_size)?;
    let query = EmbedQuery {
        inputs,
        input_names,
        prompt_name: prompt_name(&body)?,
        dimensions: request::optional_count(&body, "dimensions")?,
        truncation: truncation(&body, state.config.auto_truncate, false)?,
        normalize: true,
    };
    let answer = embed(&state, query).await?;
    let tokens = answer.tokens();
    let data = answer
        .embeddings
        .iter()
        .enumerate()
        .map(|(index, e)| OpenAiEmbedding {
            object: "embedding",
            index,
            embedding: if as_base64 {
                let bytes: Vec<u8> = e.embedding.iter().flat_map(|x| x.to_le_bytes()).collect();
                OpenAiVector::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                OpenAiVector::Float(&e.embedding)
            },
        })
        .collect();
    let body = OpenAiList {
        object: "list",
        data,
        model: &state.config.model_id,
        usage: OpenAiUsage {
            prompt_tokens: tokens,
            total_tokens: tokens,
        },
    };
    Ok((answer.headers(), Json(body)).into_response())
}

/// OpenAI's embeddings response (f32 written in their shortest form).
#[derive(serde::Serialize)]
struct OpenAiList<'a> {
    object: &'static str,
    data: Vec<OpenAiEmbedding<'a>>,
    model: &'a str,
    usage: OpenAiUsage,
}

#[derive(serde::Serialize)]
struct OpenAiEmbedding<'a> {
    object: &'static str,
    index: usize,
    embedding: OpenAiVector<'a>,
}

#[derive(serde::Serialize)]
#[serde(untagged)]
enum OpenAiVector<'a> {
    Float(&'a [f32]),
    /// Little-endian f32 bytes.
    Base64(String),
}

#[derive(serde::Serialize)]
struct OpenAiUsage {
    prompt_tokens: usize,
    total_tokens: usize,
}

async fn openai_models(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({
        "object": "list",
        "data": [{
            "id": state.config.model_id,
            "object": "model",
            "created": 0,
            "owned_by": "gemma-embed",
        }],
    }))
}

/// What a TEI `/embed` body (also `POST /`, `/invocations` and each of `/vertex`'s instances)
/// asks for.
fn tei_embed_query(
    body: &mut Map<String, Value>,
    config: &ServerConfig,
) -> Result<EmbedQuery, ApiError> {
    let (inputs, input_names) = request::inputs(body, "inputs", config.max_client_batch_size)?;
    Ok(EmbedQuery {
        inputs,
        input_names,
        prompt_name: prompt_name(body)?,
        dimensions: request::optional_count(body, "dimensions")?,
        truncation: truncation(body, config.auto_truncate, true)?,
        normalize: request::optional_bool(body, "normalize")?.unwrap_or(true),
    })
}

async fn tei_embed(State(state): State<Arc<AppState>>, body: Bytes) -> Result<Response, TeiError> {
    let query = tei_embed_query(&mut request::object(body)?, &state.config)?;
    let answer = embed(&state, query).await?;
    let vectors: Vec<&[f32]> = answer
        .embeddings
        .iter()
        .map(|e| e.embedding.as_slice())
        .collect();
    Ok((answer.headers(), Json(vectors)).into_response())
}

/// TEI's Vertex AI route: `{"instances": [EMBED BODY, ...]}`, answered with
/// `{"predictions": [EMBEDDINGS, ...]}`, one `/embed` answer per instance. The instances go to
/// the engine together.
async fn tei_vertex(State(state): State<Arc<AppState>>, body: Bytes) -> Result<Response, TeiError> {
    let mut body = request::object(body)?;
    let instances = match body.remove("instances").filter(|v| !v.is_null()) {
        Some(Value::Array(items)) if !items.is_empty() => items,
        Some(Value::Array(_)) => {
            return Err(ApiError::field("instances", "must not be an empty array").into())
        }
        Some(_) => {
            return Err(ApiError::field("instances", "must be an array of /embed bodies").into())
        }
        None => return Err(ApiError::field("instances", "is required").into()),
    };
    let limit = state.config.max_client_batch_size;
    request::within_client_limit(instances.len(), limit, || {
        format!("`instances` holds {} instances", instances.len())
    })?;
    let total_instances = instances.len();
    let mut queries = Vec::with_capacity(total_instances);
    for (i, instance) in instances.into_iter().enumerate() {
        let field = format!("instances[{i}]");
        let Value::Object(mut instance) = instance else {
            return Err(ApiError::field(&field, "must be an object (an /embed body)").into());
        };
        let query = tei_embed_query(&mut instance, &state.config).map_err(|e| e.within(&field))?;
        // Checked here, where the instance is known (instances are embedded in groups).
        state
            .engine
            .tokenizer()
            .named_or_default_prompt(query.prompt_name.as_deref())
            .map_err(|e| ApiError::from(e).within(&field))?;
        if let Some(dimensions) = query.dimensions {
            state
                .engine
                .check_dimensions(dimensions)
                .map_err(|e| ApiError::from(e).within(&field))?;
        }
        queries.push(query);
    }
    let total: usize = queries.iter().map(|q| q.inputs.len()).sum();
    request::within_client_limit(total, limit, || {
        format!("the instances hold {total} inputs in all")
    })?;
    // Instances asking for the same embedding go to the engine as one request.
    let mut groups: Vec<VertexGroup> = Vec::new();
    for (i, query) in queries.into_iter().enumerate() {
        let names: Vec<String> = (0..query.inputs.len())
            .map(|j| format!("instances[{i}].{}", query.input_names.name(j)))
            .collect();
        let member = (i, query.inputs.len());
        match groups.iter_mut().find(|g| g.query.same_embedding(&query)) {
            Some(group) => {
                group.query.inputs.extend(query.inputs);
                group.names.extend(names);
                group.members.push(member);
            }
            None => groups.push(VertexGroup {
                query,
                names,
                members: vec![member],
            }),
        }
    }
    let mut requests = Vec::with_capacity(groups.len());
    let mut answers = Vec::with_capacity(groups.len());
    for group in groups {
        let query = EmbedQuery {
            input_names: InputNames::Each(group.names),
            ..group.query
        };
        let (request, answering) = engine_request(&state, query)?;
        requests.push(request);
        answers.push((group.members, answering));
    }
    // Answered together, so admitted together: all of them fit the queue at once, or none goes.
    let tickets = state
        .engine
        .submit_together(requests, Admission::Reject)
        .map_err(ApiError::from)?;
    // The engine runs every group's ticket already; their answers are taken in turn.
    let mut predictions = vec![Vec::new(); total_instances];
    for ((members, answering), ticket) in answers.into_iter().zip(tickets) {
        let answer = answer(&state, ticket, answering).await?;
        let mut embeddings = answer.embeddings.into_iter().map(|e| e.embedding);
        for (i, count) in members {
            predictions[i] = embeddings.by_ref().take(count).collect();
        }
    }
    Ok(Json(VertexResponse { predictions }).into_response())
}

/// Instances of one `/vertex` body that ask for the same embedding.
struct VertexGroup {
    /// The first instance's query, with every instance's inputs.
    query: EmbedQuery,
    /// Each input's name (`instances[i].inputs[j]`).
    names: Vec<String>,
    /// (instance, its number of inputs), in order.
    members: Vec<(usize, usize)>,
}

/// `/vertex`'s answer (f32 written in their shortest form, as `/embed` writes them).
#[derive(serde::Serialize)]
struct VertexResponse {
    predictions: Vec<Vec<Vec<f32>>>,
}

/// TEI's sentence similarity: the source sentence and the sentences embedded in one request
/// (with `parameters.prompt_name`, if any, on all of them), answered with each sentence's cosine
/// similarity to the source, as sentence-transformers' `similarity` computes it for this model.
async fn tei_similarity(
    State(state): State<Arc<AppState>>,
    body: Bytes,
) -> Result<Response, TeiError> {
    let mut body = request::object(body)?;
    let (source, sentences) =
        request::similarity_inputs(&mut body, state.config.max_client_batch_size)?;
    let parameters = request::optional_object(&body, "parameters")?.unwrap_or_default();
    let query = EmbedQuery {
        inputs: std::iter::once(source).chain(sentences).collect(),
        input_names: InputNames::Similarity,
        prompt_name: prompt_name(&parameters).map_err(|e| e.within("parameters"))?,
        dimensions: None,
        truncation: truncation(&parameters, state.config.auto_truncate, true)
            .map_err(|e| e.within("parameters"))?,
        // Cosine similarity is the dot product of unit vectors.
        normalize: true,
    };
    let answer = embed(&state, query).await?;
    let (source, sentences) = answer
        .embeddings
        .split_first()
        .expect("one embedding per input, the source first");
    // Unit vectors: the dot product is the cosine.
    let scores: Vec<f32> = sentences
        .iter()
        .map(|s| {
            let dot: f64 = (source.embedding.iter().zip(&s.embedding))
                .map(|(&a, &b)| f64::from(a) * f64::from(b))
                .sum();
            dot as f32
        })
        .collect();
    Ok((answer.headers(), Json(scores)).into_response())
}

async fn tei_tokenize(
    State(state): State<Arc<AppState>>,
    body: Bytes,
) -> Result<Response, TeiError> {
    let mut body = request::object(body)?;
    let (inputs, input_names) =
        request::inputs(&mut body, "inputs", state.config.max_client_batch_size)?;
    let add_special_tokens = request::optional_bool(&body, "add_special_tokens")?.unwrap_or(true);
    let prompt_name = prompt_name(&body)?;
    let tokens = state
        .tokenizing(move |tokenizer| {
            let prompt = tokenizer.named_or_default_prompt(prompt_name.as_deref())?;
            inputs
                .iter()
                .enumerate()
                .map(|(i, input)| match input {
                    RawInput::Text(text) => tokenizer
                        .tokens(prompt, text, add_special_tokens)
                        .map_err(ApiError::from),
                    RawInput::Ids(_) => Err(ApiError::field(
                        &input_names.name(i),
                        "must be a string (token ids are already tokenized)",
                    )),
                })
                .collect::<Result<Vec<_>, ApiError>>()
        })
        .await??;
    Ok(Json(tokens).into_response())
}

/// TEI's `/decode`: the text of each list of token ids.
async fn tei_decode(State(state): State<Arc<AppState>>, body: Bytes) -> Result<Response, TeiError> {
    let body = request::object(body)?;
    let lists = request::id_lists(&body, "ids", state.config.max_client_batch_size)?;
    let skip_special_tokens = request::optional_bool(&body, "skip_special_tokens")?.unwrap_or(true);
    let texts = state
        .tokenizing(move |tokenizer| {
            lists
                .iter()
                .enumerate()
                .map(|(i, (field, ids))| {
                    tokenizer
                        .decode(i, ids, skip_special_tokens)
                        .map_err(|error| ApiError::naming_input(error, |_| field.clone()))
                })
                .collect::<Result<Vec<String>, ApiError>>()
        })
        .await??;
    Ok(Json(texts).into_response())
}

/// 200 when the backend shows it works within the health timeout (see [`Engine::health`]):
/// a busy server stays healthy while its batches keep succeeding.
async fn health(State(state): State<Arc<AppState>>) -> Result<StatusCode, TeiError> {
    let message = match state.engine.health(state.config.health_timeout).await {
        Ok(()) => return Ok(StatusCode::OK),
        Err(Error::Unhealthy(message)) => message,
        Err(error) => format!("probe failed: {error}"),
    };
    Err(TeiError(ApiError::new(ErrorKind::Unhealthy, message)))
}

async fn info(State(state): State<Arc<AppState>>) -> Json<Value> {
    let tokenizer = state.engine.tokenizer();
    let engine = state.engine.config();
    let config = &state.config;
    Json(json!({
        "model_id": config.model_id,
        "model_dir": config.info.model_dir,
        "model_dtype": config.info.model_dtype,
        "model_type": {"embedding": {"pooling": "mean"}},
        "embedding_dim": state.engine.embedding_dim(),
        "prompts": tokenizer.prompts(),
        "default_prompt_name": tokenizer.default_prompt_name(),
        "default_prompt": tokenizer.default_prompt(),
        "backend": state.engine.backend_name(),
        "device": config.info.device,
        "max_input_length": tokenizer.max_seq_len(),
        "max_batch_tokens": engine.max_batch_tokens,
        "max_batch_requests": engine.max_batch_sequences,
        "max_client_batch_size": config.max_client_batch_size,
        "max_queued_inputs": engine.max_queued_inputs,
        "max_queued_tokens": engine.max_queued_tokens,
        "payload_limit": config.payload_limit,
        "tokenization_workers": engine.tokenizer_workers,
        "auth": config.api_key.is_some(),
        "auto_truncate": config.auto_truncate,
        "version": env!("CARGO_PKG_VERSION"),
    }))
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let text = state.metrics.render(&state.engine.stats());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}
