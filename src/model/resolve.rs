//! Model directory resolution: a local directory, or a Hugging Face id through the standard
//! cache (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, default `~/.cache/huggingface/hub`),
//! downloading when missing (with the `hub` cargo feature).

use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// The Hub id used when none is given.
pub const DEFAULT_MODEL_ID: &str = "google/embeddinggemma-300m";

/// An existing local directory is used as is; anything else is a Hugging Face model id
/// (`org/name`), looked up in the local cache and downloaded when missing.
pub fn resolve_model_dir(model: &str) -> Result<PathBuf> {
    let local = Path::new(model);
    if local.is_dir() {
        return Ok(local.to_path_buf());
    }
    if local.is_file() {
        return Err(Error::ModelNotFound {
            model: model.into(),
            message: "a file, not a model directory (the folder holding config.json, the \
                      tokenizer and the safetensors weights)"
                .into(),
        });
    }
    let Some((org, name)) = model.split_once('/').filter(|(org, name)| {
        !org.is_empty() && !name.is_empty() && !name.contains('/') && !model.starts_with('.')
    }) else {
        return Err(Error::ModelNotFound {
            model: model.into(),
            message: "no such directory, and not a Hugging Face id of the form `org/name`".into(),
        });
    };
    let hub = hub_cache_dir();
    if let Some(dir) = cached_snapshot(&hub, org, name) {
        return Ok(dir);
    }
    download(model, org, name, &hub)
}

/// `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`.
pub fn hub_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("HF_HUB_CACHE") {
        return PathBuf::from(dir);
    }
    if let Some(home) = std::env::var_os("HF_HOME") {
        return PathBuf::from(home).join("hub");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".cache").join("huggingface").join("hub")
}

/// `models--{org}--{name}/snapshots/<refs/main>` when it holds a `config.json`.
fn cached_snapshot(hub: &Path, org: &str, name: &str) -> Option<PathBuf> {
    let repo = hub.join(format!("models--{org}--{name}"));
    let revision = std::fs::read_to_string(repo.join("refs").join("main")).ok()?;
    let snapshot = repo.join("snapshots").join(revision.trim());
    snapshot.join("config.json").is_file().then_some(snapshot)
}

fn not_found_help(hub: &Path) -> String {
    format!(
        "it is not in the Hugging Face cache {}. Get it with one of: \
         (1) a build with `--features hub`, network access and HF_TOKEN set to a token that \
         accepted the model's licence (the model is gated); \
         (2) `--model /path/to/model/dir` pointing at a local copy; \
         (3) `bash ../shared/models/fetch-embeddinggemma-300m.sh` (for {DEFAULT_MODEL_ID}), \
         which also links it into the cache",
        hub.display()
    )
}

#[cfg(feature = "hub")]
fn download(model: &str, org: &str, name: &str, hub: &Path) -> Result<PathBuf> {
    let failed = |e: hf_hub::HFError| Error::ModelNotFound {
        model: model.into(),
        message: format!("download failed ({e}); {}", not_found_help(hub)),
    };
    let client = hf_hub::HFClient::builder()
        .cache_dir(hub)
        .build_sync()
        .map_err(failed)?;
    eprintln!("downloading {model} into {} ...", hub.display());
    // Globs match across `/`, so these also select `2_Dense/config.json` etc.
    client
        .model(org, name)
        .snapshot_download()
        .allow_patterns(vec!["*.json".to_string(), "*.safetensors".to_string()])
        .send()
        .map_err(failed)
}

#[cfg(not(feature = "hub"))]
fn download(model: &str, _org: &str, _name: &str, hub: &Path) -> Result<PathBuf> {
    Err(Error::ModelNotFound {
        model: model.into(),
        message: format!(
            "this build cannot download (no `hub` feature); {}",
            not_found_help(hub)
        ),
    })
}
