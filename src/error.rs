//! Typed library errors: each variant carries what was wrong and where.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// A model file holds something the engine does not implement or that is inconsistent.
    #[error("{path}: field `{field}`: {message}")]
    Config {
        path: PathBuf,
        field: String,
        message: String,
    },
    #[error("model `{model}` not found: {message}")]
    ModelNotFound { model: String, message: String },
    #[error("{path}: tensor `{name}`: {message}")]
    Tensor {
        path: PathBuf,
        name: String,
        message: String,
    },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("unknown prompt name `{name}`; the model defines: {known}")]
    UnknownPrompt { name: String, known: String },
    /// A line of an input file that cannot be used (1-based line number).
    #[error("{source_name}: line {line}: {message}")]
    Line {
        source_name: String,
        line: usize,
        message: String,
    },
    /// A row of a Parquet input that cannot be used (1-based row number).
    #[error("{source_name}: row {row}: {message}")]
    Row {
        source_name: String,
        row: u64,
        message: String,
    },
    /// A file of a directory input that cannot be used (1-based number in the sorted listing).
    #[error("{source_name}: file {file}: {message}")]
    DirectoryFile {
        source_name: String,
        file: usize,
        message: String,
    },
    /// An input file or output path the corpus job cannot use.
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("input {index}: {message}")]
    Input { index: usize, message: String },
    #[error("invalid batch: {0}")]
    Batch(String),
    #[error("bench: {0}")]
    Bench(String),
    #[error("dimensions must be in 1..={max}, got {got}")]
    Dimensions { got: usize, max: usize },
    /// The engine's queue budgets are full (a server answers 429).
    #[error("overloaded: {0}")]
    Overloaded(String),
    /// A request larger than the engine's whole queue budgets: it can never be admitted (a
    /// server answers 413).
    #[error("too large: {0}")]
    BeyondQueueCapacity(String),
    #[error("the engine has stopped")]
    EngineStopped,
    /// The backend did not show it works within the health timeout.
    #[error("unhealthy: {0}")]
    Unhealthy(String),
    #[error("engine configuration: {0}")]
    EngineConfig(String),
    #[error("server configuration: {0}")]
    ServerConfig(String),
    #[error("a request needs at least one input")]
    EmptyRequest,
    /// The backend failed on the batch an input was in.
    #[error("backend: {0}")]
    Backend(String),
    #[error("CUDA: {0}")]
    Cuda(String),
    #[error(
        "this binary has no CUDA kernels (it was built without nvcc): install nvcc with \
         tools/install-cuda-toolchain.sh, set NVCC to the path it prints and rebuild"
    )]
    NoCudaKernels,
    #[error("CUDA driver: {what}: {source}")]
    CudaDriver {
        what: String,
        #[source]
        source: cudarc::driver::DriverError,
    },
    #[error("cuBLAS: {what}: {source}")]
    Cublas {
        what: String,
        #[source]
        source: cudarc::cublas::result::CublasError,
    },
}
