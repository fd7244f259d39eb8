//! A corpus in many files (`embed --input F1 F2 ... --output DIR`): one output per input file
//! in DIR, each written by a job of its own (its own checkpoint, so an interrupted file resumes
//! where it stopped); a file whose output is already there is passed over. `DIR/.gemma-embed.json`
//! records what shapes every output (model, prompt, dimensions, ...), so that a rerun with other
//! parameters is refused instead of leaving outputs of two kinds side by side. Runs started on
//! the same files share them: each passes over the one another is writing ([`FileTurn`]).

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::Value;

use super::output::remove_partial;
use super::{checkpoint, InputFormat, OutputFormat};
use crate::{Error, Result};

/// The record of what shaped a directory's outputs.
pub const MANIFEST_NAME: &str = ".gemma-embed.json";

/// One input file and the output written for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileJob {
    pub input: String,
    pub output: PathBuf,
}

impl FileJob {
    /// Whether the output is complete: there, and no unfinished run of it beside it (a
    /// checkpoint and its partial output). A job renames its output into place, then removes
    /// its checkpoint: a checkpoint without a partial output beside a finished one is what a
    /// crash between the two leaves, and is removed here.
    pub fn is_done(&self) -> Result<bool> {
        output_is_done(&self.output)
    }
}

/// [`FileJob::is_done`] for `output`.
pub fn output_is_done(output: &Path) -> Result<bool> {
    if !output.exists() {
        return Ok(false);
    }
    let checkpoint = checkpoint::checkpoint_path(output);
    if !checkpoint.exists() {
        return Ok(true);
    }
    if checkpoint::partial_path(output).exists() {
        return Ok(false);
    }
    checkpoint::remove_if_there(&checkpoint)?;
    Ok(true)
}

/// What a run of several files does with one of them. Runs sharing the directory (one per GPU,
/// say) share its files: each embeds the files no other is writing.
pub enum FileTurn {
    /// Embed it, holding its output's lock.
    Embed(checkpoint::OutputLock),
    /// Its output is complete (from an earlier run, or another run just now).
    Done,
    /// Another run holds its output's lock: passed over.
    TakenByAnother,
}

impl FileTurn {
    pub fn of(job: &FileJob) -> Result<Self> {
        let done = job.is_done()?;
        Ok(
            match super::job::try_lock_output(&job.input, &job.output)? {
                // Done before the lock, or finished by another run between the look and the lock.
                Some(_lock) if done || job.is_done()? => {
                    // A run killed while removing a Parquet output's partial directory, its last
                    // step, left the rest of it.
                    remove_partial(&checkpoint::partial_path(&job.output))?;
                    Self::Done
                }
                Some(lock) => Self::Embed(lock),
                None if done => Self::Done,
                None => Self::TakenByAnother,
            },
        )
    }
}

/// Each input's output in `dir`: its file name without a compression suffix (`.gz`, `.zst`) and
/// its format's extension, with `format`'s extension instead (`c4-00000.json.gz` ->
/// `c4-00000.npy`). Standard input, directories and two inputs of one output name are refused.
pub fn plan(inputs: &[String], dir: &Path, format: OutputFormat) -> Result<Vec<FileJob>> {
    if dir.exists() && !dir.is_dir() {
        return Err(Error::File {
            path: dir.into(),
            message: "is a file: with several inputs --output names a directory (one output \
                      per input in it)"
                .into(),
        });
    }
    let mut jobs: Vec<FileJob> = Vec::with_capacity(inputs.len());
    // Each input's resolved path, and each output's input: one look-up per input, not a scan.
    let mut resolved_inputs: HashMap<PathBuf, &str> = HashMap::with_capacity(inputs.len());
    // Keyed by the output name in lower case: names that differ only in case would be one file
    // on a case-insensitive file system (macOS, Windows), the second passed over as done.
    let mut output_inputs: HashMap<String, &str> = HashMap::with_capacity(inputs.len());
    for input in inputs {
        let refuse = |message: &str| Error::File {
            path: input.into(),
            message: message.into(),
        };
        if input == "-" {
            return Err(refuse("standard input cannot be one of several inputs"));
        }
        if Path::new(input).is_dir() {
            return Err(refuse(
                "a directory (each file one document) is an input of its own, not one of several",
            ));
        }
        // Every input is there before any is embedded: a misspelt one is not found hours in.
        let resolved = Path::new(input)
            .canonicalize()
            .map_err(|source| Error::Io {
                path: input.into(),
                source,
            })?;
        if resolved_inputs.insert(resolved, input).is_some() {
            return Err(refuse("given twice"));
        }
        let name = output_name(input, format)?;
        let output = dir.join(&name);
        if let Some(other) = output_inputs.insert(name.to_lowercase(), input) {
            return Err(refuse(&format!(
                "its output would be {}, as {other}'s is (names are compared regardless of case, \
                 as macOS and Windows do): inputs need distinct names, whatever their folders",
                output.display(),
            )));
        }
        jobs.push(FileJob {
            input: input.clone(),
            output,
        });
    }
    // An output named as another's checkpoint, rejects, ... file would be taken for it.
    for job in &jobs {
        for side in super::checkpoint::side_files(&job.output) {
            let name = side.file_name().unwrap_or_default().to_string_lossy();
            if let Some(other) = output_inputs.get(&name.to_lowercase()) {
                return Err(Error::File {
                    path: (*other).into(),
                    message: format!(
                        "its output would be {}, a file the job of {} writes beside its own \
                         output: inputs need names that are not another's plus a suffix",
                        side.display(),
                        job.input
                    ),
                });
            }
        }
    }
    // An input in `dir` named as its own output would pass for done (or be overwritten). A
    // directory not made yet holds no input.
    let dir = dir.canonicalize().ok();
    for job in &jobs {
        let output = dir
            .as_ref()
            .zip(job.output.file_name())
            .map(|(dir, name)| dir.join(name));
        if let Some(input) = output.and_then(|path| resolved_inputs.get(&path)) {
            return Err(Error::File {
                path: job.input.clone().into(),
                message: format!(
                    "its output {} would be the input {input}: choose another --output directory",
                    job.output.display()
                ),
            });
        }
    }
    // Shards take every N-th file of one order whatever the command line's (a glob's order
    // follows the locale): the outputs' names.
    jobs.sort_by(|a, b| a.output.cmp(&b.output));
    Ok(jobs)
}

/// `path` with its folder resolved (the file need not exist); `None` where the folder does not
/// exist.
fn resolved(path: &Path) -> Option<PathBuf> {
    let folder = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    Some(folder.canonicalize().ok()?.join(path.file_name()?))
}

/// Whether the paths `a` and `b` name one file (their folders resolved; the files need not
/// exist).
pub fn same_file(a: &Path, b: &Path) -> bool {
    resolved(a).is_some_and(|a| resolved(b) == Some(a))
}

/// The output file name of `input`.
fn output_name(input: &str, format: OutputFormat) -> Result<String> {
    let name = Path::new(input)
        .file_name()
        .and_then(|name| name.to_str())
        .ok_or_else(|| Error::File {
            path: input.into(),
            message: "no file name (or not UTF-8) to name its output by".into(),
        })?;
    let name = super::strip_compression_suffix(name).unwrap_or(name);
    let stem = match name.rsplit_once('.') {
        Some((stem, extension)) if InputFormat::of_extension(extension).is_some() => stem,
        _ => name,
    };
    let extension = match format {
        OutputFormat::Npy => "npy",
        OutputFormat::Jsonl => "jsonl",
        OutputFormat::Parquet => "parquet",
    };
    Ok(format!("{stem}.{extension}"))
}

/// Make `dir` if need be and check its manifest against `params` (writing it when absent): a
/// directory of outputs made with other parameters is refused, naming the differences. Jobs
/// started together on one directory (the shards of its files) agree on one manifest: it is
/// published without replacing one already there. Whether this call wrote it.
pub fn claim_directory(dir: &Path, params: &Value) -> Result<bool> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        path: dir.into(),
        source,
    })?;
    let path = dir.join(MANIFEST_NAME);
    loop {
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let recorded: Value =
                    serde_json::from_str(&text).map_err(|source| Error::Json {
                        path: path.clone(),
                        source,
                    })?;
                if &recorded != params {
                    return Err(Error::File {
                        path,
                        message: format!(
                            "the outputs here were made with other parameters ({}); use another \
                             output directory, or empty this one to start over",
                            super::job::differences(&recorded, params)
                        ),
                    });
                }
                return Ok(false);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if publish(&path, params)? {
                    return Ok(true);
                }
                // Another job published one first: compare with it.
            }
            Err(source) => return Err(Error::Io { path, source }),
        }
    }
}

/// Remove `dir`'s manifest where it is all that `dir` holds, after a run that failed before
/// leaving any output, checkpoint or partial output there (a CSV without the `--text-column`):
/// the rerun that fixes its flags is not refused as one of other parameters. Whether it was
/// removed.
pub fn release_directory(dir: &Path) -> Result<bool> {
    let io_error = |source| Error::Io {
        path: dir.into(),
        source,
    };
    let temporary = format!("{MANIFEST_NAME}.tmp-");
    for entry in std::fs::read_dir(dir).map_err(io_error)? {
        let name = entry.map_err(io_error)?.file_name();
        let name = name.to_string_lossy();
        if name != MANIFEST_NAME && !name.starts_with(&temporary) {
            return Ok(false);
        }
    }
    checkpoint::remove_if_there(&dir.join(MANIFEST_NAME))
}

/// Write `params` to `path` unless a file is there already (written whole under a temporary
/// name, then linked into place, which fails when the name is taken); whether it was written.
fn publish(path: &Path, params: &Value) -> Result<bool> {
    let io_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    // Unique to this process and call (jobs of one directory may also be threads of one).
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let tmp = path.with_file_name(format!(
        "{MANIFEST_NAME}.tmp-{}-{}",
        std::process::id(),
        CALLS.fetch_add(1, Ordering::Relaxed)
    ));
    let text = serde_json::to_string_pretty(params).expect("a JSON value serializes");
    std::fs::File::create(&tmp)
        .and_then(|mut file| {
            file.write_all(text.as_bytes())?;
            file.sync_all()
        })
        .map_err(io_error(&tmp))?;
    let linked = std::fs::hard_link(&tmp, path);
    std::fs::remove_file(&tmp).map_err(io_error(&tmp))?;
    let written = match linked {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
            // A file system without hard links (some FUSE and network mounts): create the name
            // exclusively and write it in place, one small write.
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
                .and_then(|mut file| {
                    file.write_all(text.as_bytes())?;
                    file.sync_all()
                })
        }
        linked => linked,
    };
    match written {
        Ok(()) => {
            checkpoint::sync_dir(path)?;
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(source) => Err(Error::Io {
            path: path.into(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Empty files at `names` below `root`, as input paths.
    fn files(root: &Path, names: &[&str]) -> Vec<String> {
        names
            .iter()
            .map(|name| {
                let path = root.join(name);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, b"").unwrap();
                path.to_str().unwrap().to_string()
            })
            .collect()
    }

    #[test]
    fn outputs_are_named_after_their_inputs() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        let inputs = files(
            root,
            &[
                "data/c4-train.00000-of-01024.json.gz",
                "data/part.jsonl.zst",
                "dump.ndjson",
                "other/notes.txt",
                "table.csv",
                "rows.parquet",
                "plain",
            ],
        );
        let jobs = plan(&inputs, Path::new("out"), OutputFormat::Npy).unwrap();
        let outputs: Vec<&Path> = jobs.iter().map(|job| job.output.as_path()).collect();
        assert_eq!(
            outputs,
            // In the order of their names, whatever the command line's.
            [
                "out/c4-train.00000-of-01024.npy",
                "out/dump.npy",
                "out/notes.npy",
                "out/part.npy",
                "out/plain.npy",
                "out/rows.npy",
                "out/table.npy"
            ]
            .map(Path::new)
        );
        let jsonl = plan(&inputs[..1], Path::new("out"), OutputFormat::Jsonl).unwrap();
        assert_eq!(
            jsonl[0].output,
            Path::new("out/c4-train.00000-of-01024.jsonl")
        );

        let clash = files(root, &["a/x.jsonl", "b/x.jsonl.gz"]);
        let err = plan(&clash, Path::new("out"), OutputFormat::Npy)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!(
                "{}: its output would be out/x.npy, as {}'s is",
                clash[1], clash[0]
            )),
            "{err}"
        );
        let case = files(root, &["a/Data.jsonl", "b/data.txt"]);
        let err = plan(&case, Path::new("out"), OutputFormat::Npy)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("its output would be out/data.npy, as") && err.contains("Data.jsonl's is"),
            "{err}"
        );
        // A missing input is named before anything is embedded; one given twice is refused.
        let missing = [
            inputs[0].clone(),
            root.join("nope.jsonl").display().to_string(),
        ];
        let err = plan(&missing, Path::new("out"), OutputFormat::Npy)
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope.jsonl: No such file"), "{err}");
        let twice = [inputs[2].clone(), inputs[2].clone()];
        let err = plan(&twice, Path::new("out"), OutputFormat::Npy)
            .unwrap_err()
            .to_string();
        assert!(err.ends_with("dump.ndjson: given twice"), "{err}");
        // An input in the output directory named as its own output.
        let own = files(root, &["out/p.jsonl"]);
        let err = plan(&own, &root.join("out"), OutputFormat::Jsonl)
            .unwrap_err()
            .to_string();
        assert!(err.contains("would be the input"), "{err}");
        assert!(plan(&own, &root.join("out"), OutputFormat::Npy).is_ok());
        let file = files(root, &["taken"]);
        let err = plan(&inputs[..1], Path::new(&file[0]), OutputFormat::Npy)
            .unwrap_err()
            .to_string();
        assert!(err.contains("taken: is a file"), "{err}");
        let err = plan(&["-".into()], Path::new("out"), OutputFormat::Npy)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("standard input cannot be one of several inputs"),
            "{err}"
        );
    }

    #[test]
    fn a_directory_of_other_parameters_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let params = serde_json::json!({"dimensions": 768, "prompt": null});
        assert!(claim_directory(&out, &params).unwrap(), "written");
        assert!(out.join(MANIFEST_NAME).is_file());
        // The same parameters again: a rerun goes on.
        assert!(!claim_directory(&out, &params).unwrap(), "found");
        // Jobs claiming a fresh directory at once agree on one manifest: the first one's.
        let fresh = dir.path().join("fresh");
        let claims: Vec<bool> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|i| {
                    let fresh = &fresh;
                    scope.spawn(move || {
                        let params = serde_json::json!({"dimensions": 768 - 128 * (i % 2)});
                        claim_directory(fresh, &params).is_ok()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let kept: Value =
            serde_json::from_str(&std::fs::read_to_string(fresh.join(MANIFEST_NAME)).unwrap())
                .unwrap();
        for (i, claimed) in claims.iter().enumerate() {
            let params = serde_json::json!({"dimensions": 768 - 128 * (i % 2)});
            assert_eq!(*claimed, params == kept, "claim {i}");
        }
        assert_eq!(
            std::fs::read_dir(&fresh).unwrap().count(),
            1,
            "no temporary left"
        );

        let other = serde_json::json!({"dimensions": 256, "prompt": null});
        let err = claim_directory(&out, &other).unwrap_err().to_string();
        assert!(
            err.contains("made with other parameters (dimensions: 768 -> 256)"),
            "{err}"
        );
    }

    #[test]
    fn a_directory_left_with_nothing_but_its_manifest_is_released() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        claim_directory(&out, &serde_json::json!({"csv_columns": ["text", null]})).unwrap();
        std::fs::write(out.join("a.npy.partial"), b"").unwrap();
        assert!(
            !release_directory(&out).unwrap(),
            "a partial output stays claimed"
        );
        std::fs::remove_file(out.join("a.npy.partial")).unwrap();
        std::fs::write(out.join(format!("{MANIFEST_NAME}.tmp-1-0")), b"").unwrap();
        assert!(release_directory(&out).unwrap());
        assert!(!out.join(MANIFEST_NAME).exists());
        // The rerun with the fixed flags claims it.
        claim_directory(&out, &serde_json::json!({"csv_columns": ["body", null]})).unwrap();
    }

    #[test]
    fn a_finished_output_is_done_whatever_checkpoint_a_crash_left_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let job = FileJob {
            input: "a.jsonl".into(),
            output: dir.path().join("a.npy"),
        };
        let checkpoint = dir.path().join("a.npy.checkpoint");
        let partial = dir.path().join("a.npy.partial");
        assert!(!job.is_done().unwrap());
        // Interrupted: a partial output and its checkpoint (an older output beside them).
        for path in [&job.output, &checkpoint, &partial] {
            std::fs::write(path, b"").unwrap();
        }
        assert!(!job.is_done().unwrap());
        assert!(checkpoint.exists());
        // Renamed into place, the process gone before removing the checkpoint.
        std::fs::remove_file(&partial).unwrap();
        assert!(job.is_done().unwrap());
        assert!(!checkpoint.exists(), "the stale checkpoint is removed");
        assert!(job.is_done().unwrap());
    }
}
