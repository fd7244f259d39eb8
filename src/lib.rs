//! gemma-embed: an inference engine for EmbeddingGemma-300m.
//!
//! Data flows one way: text or ids -> [`tokenize`] -> packed [`backend::Batch`] ->
//! [`backend::Backend::forward`] -> `[n_seq, D]` embeddings.

pub mod backend;
pub mod bench;
pub mod engine;
pub mod error;
pub mod index;
pub mod model;
pub mod rng;
pub mod server;
pub mod tokenize;

pub use error::{Error, Result};
