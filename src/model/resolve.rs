//! Model directory resolution: a local directory, or a Hugging Face id through the standard
//! cache (`$HF_HOME/hub`, default `~/.cache/huggingface/hub`), downloading when missing.

use std::path::PathBuf;

use crate::Result;

pub fn resolve_model_dir(model: &str) -> Result<PathBuf> {
    todo!("foundation: resolve {model}")
}
