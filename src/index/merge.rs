//! `gemma-embed merge`: put the outputs of `--shard 0/N` .. `--shard N-1/N` back into input
//! order. Document `k` of the input went to shard `k % N`, so rows are taken round robin; a
//! document a shard skipped (listed in its `.rejects.jsonl`) has no row there and is passed over.
//! Each shard's job records which shard it is and of how many documents ([`ShardRecord`]), so
//! shards are taken in their order whatever the command line's, and a missing, repeated or
//! foreign shard is refused before anything is written. The shards' rejects merge too.
//! Parquet shards merge into row groups of the shards' size, as the unsharded job writes them.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::types::{Float16Type, Float32Type};
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::checkpoint::{checkpoint_path, partial_path, rejects_path, remove_if_there, sibling};
use super::output::{remove_partial, Dtype, OutputWriter, NPY_HEADER_LEN};
use super::parquet_output::{self, DEFAULT_ROW_GROUP_ROWS};
use super::{AtomicFile, OutputFormat};
use crate::{Error, Result};

/// What a `--shard I/N` job writes beside its output (`OUT.shard.json`, before the output is put
/// in place) for `merge` to check its shards by.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShardRecord {
    pub index: u64,
    pub count: u64,
    /// Documents in the whole input, every shard's, bad ones included.
    pub input_docs: u64,
    /// The shard's rows, and its documents rejected (`--on-error skip`).
    pub rows: u64,
    pub rejected: u64,
    /// What shapes the rows, and the input's size: equal in every shard of one job. Paths are
    /// left out (the machines that split a corpus may keep it and the model in other places).
    pub params: Value,
    /// What a rerun of this shard's command on this machine must share to pass over it (the
    /// input's path, size and modification time, `--on-error`, ...); none for standard input.
    /// Not compared by merge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rerun: Option<Value>,
}

impl ShardRecord {
    /// Where the record of `output` is.
    pub fn path(output: &Path) -> PathBuf {
        sibling(output, ".shard.json")
    }

    /// Write the record of `output` (whole, under a temporary name first).
    pub fn store(&self, output: &Path) -> Result<()> {
        let mut file = AtomicFile::create(&Self::path(output))?;
        let text = serde_json::to_string_pretty(self).expect("a shard record serializes") + "\n";
        file.writer()
            .write_all(text.as_bytes())
            .map_err(|e| file.io_error(e))?;
        file.commit()
    }

    fn load(output: &Path) -> Result<Self> {
        let path = Self::path(output);
        let text = std::fs::read_to_string(&path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                Error::File {
                    path: output.into(),
                    message: format!(
                        "no {} beside it: merge takes the outputs of `embed --shard I/N` jobs, \
                         each with the record of its shard",
                        path.display()
                    ),
                }
            } else {
                Error::Io {
                    path: path.clone(),
                    source,
                }
            }
        })?;
        serde_json::from_str(&text).map_err(|source| Error::Json { path, source })
    }

    /// The record of the finished `output` where it says a run like this one made it: its
    /// [`Self::rerun`] is `rerun` (what it would be now, the shard and every parameter of the
    /// job included).
    pub fn of_finished(output: &Path, rerun: &Value) -> Option<Self> {
        let text = std::fs::read_to_string(Self::path(output)).ok()?;
        let record: Self = serde_json::from_str(&text).ok()?;
        (record.rerun.as_ref() == Some(rerun)).then_some(record)
    }

    /// The documents shard `index` of `count` holds: `index`, `index + count`, ... below
    /// `input_docs`.
    fn expected_docs(&self) -> u64 {
        self.input_docs
            .saturating_sub(self.index)
            .div_ceil(self.count)
    }

    fn name(&self) -> String {
        format!("{}/{}", self.index, self.count)
    }
}

/// What [`merge`] wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Merged {
    pub rows: u64,
    /// Rejected documents, listed in the output's `.rejects.jsonl`.
    pub rejected: u64,
}

/// One shard's rows, read one at a time.
enum ShardRows {
    Npy {
        file: BufReader<File>,
        rows_left: u64,
        /// One row's bytes, reused for every row.
        bytes: Vec<u8>,
    },
    Jsonl {
        lines: std::io::Lines<BufReader<File>>,
        /// Lines read so far (the 1-based number of the last).
        line: usize,
    },
    Parquet {
        batches: ParquetRecordBatchReader,
        ids: Vec<String>,
        values: Vec<f32>,
        next: usize,
    },
}

struct ShardFile {
    path: PathBuf,
    record: ShardRecord,
    rows: ShardRows,
    /// The lines of its rejects file by document index.
    rejected: BTreeMap<u64, String>,
    dim: usize,
    dtype: Dtype,
    row_group_rows: usize,
}

impl ShardFile {
    fn open(path: &Path, format: OutputFormat) -> Result<Self> {
        let file_error = |message: String| Error::File {
            path: path.into(),
            message,
        };
        if checkpoint_path(path).exists() {
            return Err(file_error(
                "this shard's job has not finished (its checkpoint is still there)".into(),
            ));
        }
        let io_error = |source| Error::Io {
            path: path.into(),
            source,
        };
        let file = File::open(path).map_err(io_error)?;
        let (rows, dim, dtype, row_group_rows) = match format {
            OutputFormat::Parquet => {
                let parquet_error = |e| file_error(format!("Parquet: {e}"));
                let builder =
                    ParquetRecordBatchReaderBuilder::try_new(file).map_err(parquet_error)?;
                let (dtype, dim, group_rows) = parquet_output::describe(
                    path,
                    builder.metadata().file_metadata(),
                    builder.schema(),
                )?;
                let rows = ShardRows::Parquet {
                    batches: builder.build().map_err(parquet_error)?,
                    ids: Vec::new(),
                    values: Vec::new(),
                    next: 0,
                };
                (rows, dim, dtype, group_rows)
            }
            OutputFormat::Npy => {
                let mut file = BufReader::new(file);
                let mut header = [0u8; NPY_HEADER_LEN];
                file.read_exact(&mut header).map_err(io_error)?;
                let (rows, dim, dtype) = parse_npy_header(&header)
                    .ok_or_else(|| file_error("not a .npy file written by gemma-embed (rows of float32 or float16, C order)".into()))?;
                let rows = ShardRows::Npy {
                    file,
                    rows_left: rows,
                    bytes: vec![0u8; dim * dtype.size()],
                };
                (rows, dim, dtype, DEFAULT_ROW_GROUP_ROWS)
            }
            OutputFormat::Jsonl => {
                let lines = BufReader::new(file).lines();
                (
                    ShardRows::Jsonl { lines, line: 0 },
                    0,
                    Dtype::F32,
                    DEFAULT_ROW_GROUP_ROWS,
                )
            }
        };
        Ok(Self {
            path: path.into(),
            record: ShardRecord::load(path)?,
            rows,
            rejected: read_rejected(&rejects_path(path))?,
            dim,
            dtype,
            row_group_rows,
        })
    }

    /// The next row's values into `row` (cleared first) and its id (`Value::Null` in `.npy`),
    /// or `None` at the end of the shard.
    fn next_row(&mut self, row: &mut Vec<f32>) -> Result<Option<Value>> {
        row.clear();
        let io_error = |source| Error::Io {
            path: self.path.clone(),
            source,
        };
        match &mut self.rows {
            ShardRows::Npy {
                file,
                rows_left,
                bytes,
            } => {
                if *rows_left == 0 {
                    return Ok(None);
                }
                *rows_left -= 1;
                file.read_exact(bytes).map_err(io_error)?;
                match self.dtype {
                    Dtype::F32 => row.extend(
                        bytes
                            .chunks_exact(4)
                            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                    ),
                    Dtype::F16 => row.extend(
                        bytes
                            .chunks_exact(2)
                            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()),
                    ),
                }
                Ok(Some(Value::Null))
            }
            ShardRows::Jsonl { lines, line } => {
                let Some(text) = lines.next() else {
                    return Ok(None);
                };
                let text = text.map_err(io_error)?;
                *line += 1;
                let line_error = |message: String| Error::Line {
                    source_name: self.path.display().to_string(),
                    line: *line,
                    message,
                };
                let mut value: Value = serde_json::from_str(&text)
                    .map_err(|e| line_error(format!("invalid JSON: {e}")))?;
                let no_embedding = || line_error("no `embedding` array of numbers".into());
                for v in value["embedding"].as_array().ok_or_else(no_embedding)? {
                    row.push(v.as_f64().ok_or_else(no_embedding)? as f32);
                }
                Ok(Some(value["id"].take()))
            }
            ShardRows::Parquet {
                batches,
                ids,
                values,
                next,
            } => {
                while *next == ids.len() {
                    let Some(batch) = batches.next() else {
                        return Ok(None);
                    };
                    let parquet_error = |e: String| Error::File {
                        path: self.path.clone(),
                        message: format!("Parquet: {e}"),
                    };
                    let batch = batch.map_err(|e| parquet_error(e.to_string()))?;
                    let (Some(id_column), Some(embeddings)) = (
                        batch
                            .column_by_name("id")
                            .and_then(|c| c.as_string_opt::<i32>()),
                        batch
                            .column_by_name("embedding")
                            .and_then(|c| c.as_fixed_size_list_opt()),
                    ) else {
                        return Err(parquet_error("a batch without `id` or `embedding`".into()));
                    };
                    *ids = id_column
                        .iter()
                        .map(|id| id.unwrap_or("").to_string())
                        .collect();
                    let items = embeddings.values();
                    *values = match self.dtype {
                        Dtype::F32 => items
                            .as_primitive_opt::<Float32Type>()
                            .map(|a| a.values().to_vec()),
                        Dtype::F16 => items
                            .as_primitive_opt::<Float16Type>()
                            .map(|a| a.values().iter().map(|x| x.to_f32()).collect()),
                    }
                    .ok_or_else(|| parquet_error("embeddings of another type".into()))?;
                    if values.len() != ids.len() * self.dim {
                        return Err(parquet_error(format!(
                            "{} values for {} rows of {}",
                            values.len(),
                            ids.len(),
                            self.dim
                        )));
                    }
                    *next = 0;
                }
                row.extend_from_slice(&values[*next * self.dim..(*next + 1) * self.dim]);
                // Each id is read once: move it out instead of copying it.
                let id = Value::from(std::mem::take(&mut ids[*next]));
                *next += 1;
                Ok(Some(id))
            }
        }
    }
}

/// `(rows, dim, dtype)` from a header written by [`super::output::npy_header`].
fn parse_npy_header(header: &[u8]) -> Option<(u64, usize, Dtype)> {
    let text = std::str::from_utf8(header.strip_prefix(b"\x93NUMPY\x01\x00")?.get(2..)?).ok()?;
    let descr = text.split("'descr': '").nth(1)?.split('\'').next()?;
    // Rows stored column by column would be read as other rows.
    if !text.contains("'fortran_order': False") {
        return None;
    }
    let shape = text.split("'shape': (").nth(1)?.split(')').next()?;
    let (rows, dim) = shape.split_once(',')?;
    Some((
        rows.trim().parse().ok()?,
        dim.trim().parse().ok()?,
        Dtype::from_descr(descr)?,
    ))
}

/// The lines of a rejects file by their document index (none if there is no such file).
fn read_rejected(path: &Path) -> Result<BTreeMap<u64, String>> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(source) => {
            return Err(Error::Io {
                path: path.into(),
                source,
            })
        }
    };
    BufReader::new(file)
        .lines()
        .enumerate()
        .map(|(i, line)| {
            let line = line.map_err(|source| Error::Io {
                path: path.into(),
                source,
            })?;
            let doc = serde_json::from_str::<Value>(&line)
                .ok()
                .and_then(|v| v["doc"].as_u64())
                .ok_or_else(|| Error::Line {
                    source_name: path.display().to_string(),
                    line: i + 1,
                    message: "expected a JSON object with a `doc` index".into(),
                })?;
            Ok((doc, line))
        })
        .collect()
}

/// Check that `files` are the shards 0/N .. N-1/N of one job, each once and whole, and put
/// them in shard order.
fn put_in_shard_order(files: &mut [ShardFile], output: &Path) -> Result<()> {
    let first = files[0].record.clone();
    if first.count > files.len() as u64 {
        let given: std::collections::HashSet<u64> =
            files.iter().map(|file| file.record.index).collect();
        let missing: Vec<String> = (0..first.count)
            .filter(|i| !given.contains(i))
            .take(8)
            .map(|i| format!("{i}/{}", first.count))
            .collect();
        return Err(Error::File {
            path: output.into(),
            message: format!(
                "shards missing: {} given of {} ({}{})",
                files.len(),
                first.count,
                missing.join(", "),
                if first.count - (files.len() as u64) > 8 {
                    ", ..."
                } else {
                    ""
                }
            ),
        });
    }
    let mut taken: Vec<Option<&Path>> = vec![None; first.count as usize];
    for file in files.iter() {
        let refuse = |message: String| Error::File {
            path: file.path.clone(),
            message,
        };
        let record = &file.record;
        if record.count != first.count || record.input_docs != first.input_docs {
            return Err(refuse(format!(
                "shard {} of an input of {} documents, the first shard is {} of {}",
                record.name(),
                record.input_docs,
                first.name(),
                first.input_docs
            )));
        }
        if record.params != first.params {
            return Err(refuse(format!(
                "a shard of another job than the first shard's ({})",
                super::job::differences(&first.params, &record.params)
            )));
        }
        let slot = taken
            .get_mut(record.index as usize)
            .ok_or_else(|| refuse(format!("shard {} is not a shard", record.name())))?;
        if let Some(other) = slot.replace(&file.path) {
            return Err(refuse(format!(
                "shard {}, as {} is",
                record.name(),
                other.display()
            )));
        }
        if record.rows + record.rejected != record.expected_docs()
            || file.rejected.len() as u64 != record.rejected
        {
            return Err(refuse(format!(
                "shard {} of {} documents holds {}, but its record says {} rows and {} rejected \
                 and its rejects file lists {}",
                record.name(),
                record.input_docs,
                record.expected_docs(),
                record.rows,
                record.rejected,
                file.rejected.len()
            )));
        }
        if let Some(doc) = file
            .rejected
            .keys()
            .find(|&&doc| doc % record.count != record.index || doc >= record.input_docs)
        {
            return Err(refuse(format!(
                "its rejects file lists document {doc}, not one of shard {}",
                record.name()
            )));
        }
    }
    // As many shards as the count, none twice: every one is there.
    files.sort_by_key(|file| file.record.index);
    Ok(())
}

/// Merge the outputs of one job's shards (in any order) into `output`, and their rejects into
/// its `.rejects.jsonl`.
pub fn merge(shards: &[PathBuf], output: &Path) -> Result<Merged> {
    let format = OutputFormat::from_path(output)?;
    let mut files = shards
        .iter()
        .map(|path| {
            if super::many::same_file(path, output) {
                return Err(Error::File {
                    path: path.clone(),
                    message: "is the --output: the merged rows would overwrite it".into(),
                });
            }
            // The merge writes its output and the output's rejects file: neither may be a file
            // a shard keeps beside it (its rejects, its record).
            for written in [output.to_path_buf(), rejects_path(output)] {
                if let Some(side) = super::checkpoint::side_files(path)
                    .into_iter()
                    .find(|side| super::many::same_file(&written, side))
                {
                    return Err(Error::File {
                        path: output.into(),
                        message: format!(
                            "the merge would write {}, which shard {} keeps beside it: choose \
                             another --output",
                            side.display(),
                            path.display()
                        ),
                    });
                }
            }
            if OutputFormat::from_path(path)? != format {
                return Err(Error::File {
                    path: path.clone(),
                    message: format!("not the format of {}", output.display()),
                });
            }
            ShardFile::open(path, format)
        })
        .collect::<Result<Vec<_>>>()?;
    let Some(first) = files.first() else {
        return Err(Error::File {
            path: output.into(),
            message: "no shards to merge".into(),
        });
    };
    let (dim, dtype, row_group_rows) = (first.dim, first.dtype, first.row_group_rows);
    if let Some(other) = files.iter().find(|f| (f.dim, f.dtype) != (dim, dtype)) {
        return Err(Error::File {
            path: other.path.clone(),
            message: format!(
                "{} columns of {:?}, the first shard has {dim} of {dtype:?}",
                other.dim, other.dtype
            ),
        });
    }
    put_in_shard_order(&mut files, output)?;
    let partial = partial_path(output);
    let merged =
        merge_rows(&mut files, &partial, format, dtype, dim, row_group_rows).and_then(|writer| {
            let rejected = write_rejects(&files, output)?;
            Ok(Merged {
                rows: writer.finish(&partial, output)?,
                rejected,
            })
        });
    // A Parquet output's partial directory is left by `finish`, whatever became of it.
    let removed = remove_partial(&partial);
    let merged = merged?;
    removed?;
    Ok(merged)
}

/// The shards' rows round robin into an output writer at `partial`.
fn merge_rows(
    files: &mut [ShardFile],
    partial: &Path,
    format: OutputFormat,
    dtype: Dtype,
    dim: usize,
    row_group_rows: usize,
) -> Result<OutputWriter> {
    let count = files.len() as u64;
    let input_docs = files[0].record.input_docs;
    let mut writer: Option<OutputWriter> = None;
    let mut row = Vec::with_capacity(dim);
    for doc in 0..input_docs {
        let file = &mut files[(doc % count) as usize];
        if file.rejected.contains_key(&doc) {
            continue;
        }
        let Some(id) = file.next_row(&mut row)? else {
            return Err(Error::File {
                path: file.path.clone(),
                message: format!(
                    "fewer rows than its record's {} (it ends before document {doc})",
                    file.record.rows
                ),
            });
        };
        let writer = match &mut writer {
            Some(w) => w,
            None => writer.insert(OutputWriter::open(
                partial,
                format,
                dtype,
                row.len(),
                row_group_rows,
                None,
            )?),
        };
        write_row(writer, &id, &row, &file.path)?;
    }
    for file in files.iter_mut() {
        if file.next_row(&mut row)?.is_some() {
            return Err(Error::File {
                path: file.path.clone(),
                message: format!("more rows than its record's {}", file.record.rows),
            });
        }
    }
    match writer {
        Some(w) => Ok(w),
        None => OutputWriter::open(partial, format, dtype, dim, row_group_rows, None),
    }
}

/// Every shard's rejects, in document order, into `output`'s `.rejects.jsonl` (none left there
/// when there are none, as a job leaves none); how many.
fn write_rejects(files: &[ShardFile], output: &Path) -> Result<u64> {
    let path = rejects_path(output);
    let rejected: BTreeMap<u64, &str> = files
        .iter()
        .flat_map(|file| {
            file.rejected
                .iter()
                .map(|(&doc, line)| (doc, line.as_str()))
        })
        .collect();
    if rejected.is_empty() {
        remove_if_there(&path)?;
        return Ok(0);
    }
    let mut file = AtomicFile::create(&path)?;
    for line in rejected.values() {
        writeln!(file.writer(), "{line}").map_err(|e| file.io_error(e))?;
    }
    file.commit()?;
    Ok(rejected.len() as u64)
}

fn write_row(writer: &mut OutputWriter, id: &Value, row: &[f32], path: &Path) -> Result<()> {
    if row.len() != writer.dim() {
        return Err(Error::File {
            path: path.into(),
            message: format!(
                "a row of {} values among rows of {}",
                row.len(),
                writer.dim()
            ),
        });
    }
    writer.write_row(id, row)
}
