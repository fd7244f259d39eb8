//! The job's checkpoint: a small JSON sidecar saying how much of the output is durable and
//! where the input continues, replaced atomically (write, fsync, rename, fsync the directory).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::reader::ReadPosition;
use super::AtomicFile;
use crate::{Error, Result};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Everything that shapes the output (model, input, prompt, dims, dtype, shard, ...): a
    /// rerun with other parameters must not continue this file.
    pub params: Value,
    /// Rows durably in the output, and its length in bytes (Parquet: the length of the rows
    /// file of the row group being filled; see `parquet_output`).
    pub rows: u64,
    pub output_bytes: u64,
    /// Lines durably in the rejects file, and its length in bytes.
    pub rejects: u64,
    pub rejects_bytes: u64,
    /// Where the input continues.
    pub input_offset: u64,
    pub input_line: usize,
    pub input_docs: u64,
}

impl Checkpoint {
    pub fn position(&self) -> ReadPosition {
        ReadPosition {
            offset: self.input_offset,
            line: self.input_line,
            docs: self.input_docs,
        }
    }

    /// The checkpoint at `path`, if there is one.
    pub fn load(path: &Path) -> Result<Option<Self>> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(Error::Io {
                    path: path.into(),
                    source,
                })
            }
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|source| Error::Json {
                path: path.into(),
                source,
            })
    }

    /// Replace the checkpoint at `path` (written as `PATH.tmp` first).
    pub fn store(&self, path: &Path) -> Result<()> {
        let mut file = AtomicFile::create_at(path, sibling(path, ".tmp"))?;
        let text = serde_json::to_string(self).expect("a checkpoint serializes");
        file.writer()
            .write_all(text.as_bytes())
            .map_err(|e| file.io_error(e))?;
        file.commit()
    }
}

/// Where a job writes output `OUT` until it is complete (`OUT.partial`).
pub fn partial_path(output: &Path) -> PathBuf {
    sibling(output, ".partial")
}

/// The checkpoint of the job writing `output` (`OUT.checkpoint`).
pub fn checkpoint_path(output: &Path) -> PathBuf {
    sibling(output, ".checkpoint")
}

/// The documents skipped under `--on-error skip` (`OUT.rejects.jsonl`).
pub fn rejects_path(output: &Path) -> PathBuf {
    sibling(output, ".rejects.jsonl")
}

/// Held by the job writing `OUT` (`OUT.lock`, locked with `flock`): a second run on the same
/// output is refused instead of writing the same partial file. The kernel drops the lock when
/// its process dies, so a killed run never blocks the next one.
pub fn lock_path(output: &Path) -> PathBuf {
    sibling(output, ".lock")
}

/// The files a job writes beside its output `OUT` while and after it runs.
pub fn side_files(output: &Path) -> [PathBuf; 6] {
    [
        partial_path(output),
        checkpoint_path(output),
        sibling(&checkpoint_path(output), ".tmp"),
        rejects_path(output),
        super::merge::ShardRecord::path(output),
        lock_path(output),
    ]
}

/// The lock of one job's output, released (and its file removed) when dropped.
pub struct OutputLock {
    path: PathBuf,
    _file: File,
}

impl OutputLock {
    /// Lock `output`'s lock file, or fail at once when another run holds it.
    pub fn acquire(output: &Path) -> Result<Self> {
        Self::try_acquire(output)?.ok_or_else(|| Error::File {
            path: output.into(),
            message: format!(
                "another gemma-embed run is writing it (it holds {}): wait for that run, or stop \
                 it and rerun this command to resume its work",
                lock_path(output).display()
            ),
        })
    }

    /// Lock `output`'s lock file; `None` at once when another run holds it.
    pub fn try_acquire(output: &Path) -> Result<Option<Self>> {
        let path = lock_path(output);
        let io_error = |source| Error::Io {
            path: path.clone(),
            source,
        };
        loop {
            let file = match File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
            {
                Ok(file) => file,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(super::folder_missing(output))
                }
                Err(source) => return Err(io_error(source)),
            };
            match file.try_lock() {
                Ok(()) => {}
                Err(std::fs::TryLockError::WouldBlock) => return Ok(None),
                // A file system without locks (some network mounts): run, and say what is lost.
                Err(std::fs::TryLockError::Error(e))
                    if e.kind() == std::io::ErrorKind::Unsupported =>
                {
                    eprintln!(
                        "warning: {}: cannot lock ({e}); a second run on this output would not be \
                         refused, nor would runs sharing several files keep apart (split them \
                         with --shard)",
                        path.display()
                    );
                    return Ok(Some(Self { path, _file: file }));
                }
                Err(std::fs::TryLockError::Error(source)) => return Err(io_error(source)),
            }
            // The run that held it may have finished and removed the file between the open and
            // the lock: then this lock is on a file no longer there, and the next open makes a
            // new one.
            let held = file.metadata().map_err(io_error)?;
            match std::fs::metadata(&path) {
                Ok(there) if same_inode(&held, &there) => {
                    return Ok(Some(Self { path, _file: file }))
                }
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => return Err(io_error(source)),
            }
        }
    }
}

fn same_inode(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    (a.dev(), a.ino()) == (b.dev(), b.ino())
}

impl Drop for OutputLock {
    fn drop(&mut self) {
        // Removed while still locked: a run waiting on this file finds it gone and retries.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Remove the file at `path` if there is one; whether there was.
pub fn remove_if_there(path: &Path) -> Result<bool> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(Error::Io {
            path: path.into(),
            source,
        }),
    }
}

/// `path` with `suffix` appended to its file name.
pub fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

/// Make a rename or creation in `path`'s directory durable.
pub fn sync_dir(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| Error::Io {
            path: dir.into(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_and_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.npy.checkpoint");
        assert_eq!(Checkpoint::load(&path).unwrap(), None);
        let checkpoint = Checkpoint {
            params: serde_json::json!({"dimensions": 768}),
            rows: 10,
            output_bytes: 128 + 10 * 768 * 4,
            rejects: 1,
            rejects_bytes: 80,
            input_offset: 4096,
            input_line: 12,
            input_docs: 11,
        };
        checkpoint.store(&path).unwrap();
        assert_eq!(Checkpoint::load(&path).unwrap(), Some(checkpoint));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_failed_store_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        // The rename fails: the checkpoint path is a directory that is not empty.
        let path = dir.path().join("out.npy.checkpoint");
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("keep"), b"").unwrap();
        let checkpoint = Checkpoint {
            params: Value::Null,
            rows: 0,
            output_bytes: 0,
            rejects: 0,
            rejects_bytes: 0,
            input_offset: 0,
            input_line: 0,
            input_docs: 0,
        };
        assert!(checkpoint.store(&path).is_err());
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["out.npy.checkpoint"]);
    }
}
