//! Model resolution through a Hugging Face cache laid out by hand. One test in its own binary:
//! it sets `HF_HUB_CACHE` for the whole process.

use gemma_embed::model::resolve_model_dir;
use gemma_embed::Error;

#[test]
fn resolves_local_dirs_and_cached_hub_ids() {
    let hub = tempfile::tempdir().unwrap();
    std::env::set_var("HF_HUB_CACHE", hub.path());

    // A local directory is used as is.
    let local = tempfile::tempdir().unwrap();
    assert_eq!(
        resolve_model_dir(local.path().to_str().unwrap()).unwrap(),
        local.path()
    );

    // Not cached: a clear error that names the cache and the ways to get the model.
    let err = resolve_model_dir("some-org/some-model").unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, Error::ModelNotFound { .. }), "{message}");
    assert!(message.contains(hub.path().to_str().unwrap()), "{message}");

    // refs/main names the snapshot that holds the files.
    let repo = hub.path().join("models--some-org--some-model");
    let snapshot = repo.join("snapshots").join("0123abcd");
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "0123abcd").unwrap();
    // A snapshot without config.json is incomplete, not a model.
    assert!(resolve_model_dir("some-org/some-model").is_err());
    std::fs::write(snapshot.join("config.json"), "{}").unwrap();
    assert_eq!(resolve_model_dir("some-org/some-model").unwrap(), snapshot);

    let err = resolve_model_dir("not an id").unwrap_err();
    assert!(err.to_string().contains("not a Hugging Face id"), "{err}");

    // A file (a corpus given as --model by mistake) is named as one.
    let file = local.path().join("corpus.jsonl");
    std::fs::write(&file, "{}").unwrap();
    let err = resolve_model_dir(file.to_str().unwrap()).unwrap_err();
    assert!(
        err.to_string().contains("a file, not a model directory"),
        "{err}"
    );
}
