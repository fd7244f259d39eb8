//! The model: configuration (Hugging Face + sentence-transformers files), weights, prompts,
//! the layer schedule and the FLOP count. Knows nothing of devices, threads or HTTP.

mod config;
mod flops;
mod resolve;
mod weights;

pub use config::{LayerKind, ModelConfig};
pub use resolve::{hub_cache_dir, resolve_model_dir, DEFAULT_MODEL_ID};
pub use weights::{weight_files, LayerWeights, Linear, ModelWeights, OutputMajorProjections};

use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// A Matryoshka size a model of `embedding_dim` has: 1 to `embedding_dim`.
pub fn check_dimensions(dimensions: usize, embedding_dim: usize) -> Result<()> {
    if (1..=embedding_dim).contains(&dimensions) {
        Ok(())
    } else {
        Err(Error::Dimensions {
            got: dimensions,
            max: embedding_dim,
        })
    }
}

/// A loaded EmbeddingGemma model: everything a backend needs, in float32 on the host.
pub struct Model {
    pub dir: PathBuf,
    pub config: ModelConfig,
    pub weights: ModelWeights,
}

impl Model {
    /// Load a model from a local directory or a Hugging Face id (see [`resolve_model_dir`]).
    pub fn load(model: &str) -> Result<Self> {
        let dir = resolve_model_dir(model)?;
        Self::load_dir(&dir)
    }

    pub fn load_dir(dir: &Path) -> Result<Self> {
        let config = ModelConfig::load(dir)?;
        let weights = ModelWeights::load(dir, &config)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            config,
            weights,
        })
    }
}
