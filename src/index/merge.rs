//! `gemma-embed merge`: put the outputs of `--shard 0/N` .. `--shard N-1/N` back into input
//! order. Document `k` of the input went to shard `k % N`, so rows are taken round robin; a
//! document a shard skipped (listed in its `.rejects.jsonl`) has no row there and is passed over.
//! Parquet shards merge into row groups of the shards' size, as the unsharded job writes them.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::types::{Float16Type, Float32Type};
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use serde_json::Value;

use super::checkpoint::sibling;
use super::output::{Dtype, OutputWriter, NPY_HEADER_LEN};
use super::parquet_output::{self, DEFAULT_ROW_GROUP_ROWS};
use super::OutputFormat;
use crate::{Error, Result};

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
    rows: ShardRows,
    rejected: HashSet<u64>,
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
        if sibling(path, ".checkpoint").exists() {
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
                    .ok_or_else(|| file_error("not a .npy file written by gemma-embed".into()))?;
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
                    ShardRows::Jsonl { lines },
                    0,
                    Dtype::F32,
                    DEFAULT_ROW_GROUP_ROWS,
                )
            }
        };
        Ok(Self {
            path: path.into(),
            rows,
            rejected: read_rejected(&sibling(path, ".rejects.jsonl"))?,
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
            ShardRows::Jsonl { lines } => {
                let Some(line) = lines.next() else {
                    return Ok(None);
                };
                let line = line.map_err(io_error)?;
                let mut value: Value =
                    serde_json::from_str(&line).map_err(|source| Error::Json {
                        path: self.path.clone(),
                        source,
                    })?;
                let no_embedding = || Error::File {
                    path: self.path.clone(),
                    message: "a line without an `embedding` array".into(),
                };
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
    let shape = text.split("'shape': (").nth(1)?.split(')').next()?;
    let (rows, dim) = shape.split_once(',')?;
    Some((
        rows.trim().parse().ok()?,
        dim.trim().parse().ok()?,
        Dtype::from_descr(descr)?,
    ))
}

/// Document indices listed in a rejects file (none if there is no such file).
fn read_rejected(path: &Path) -> Result<HashSet<u64>> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashSet::new()),
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
            serde_json::from_str::<Value>(&line)
                .ok()
                .and_then(|v| v["doc"].as_u64())
                .ok_or_else(|| Error::Line {
                    source_name: path.display().to_string(),
                    line: i + 1,
                    message: "expected a JSON object with a `doc` index".into(),
                })
        })
        .collect()
}

/// Merge `shards` (in shard order 0..N) into `output`; returns the rows written.
pub fn merge(shards: &[PathBuf], output: &Path) -> Result<u64> {
    let format = OutputFormat::from_path(output)?;
    let mut files = shards
        .iter()
        .map(|path| {
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
    let partial = sibling(output, ".partial");
    let mut writer: Option<OutputWriter> = None;
    let count = files.len() as u64;
    let mut exhausted = vec![false; files.len()];
    let mut live = files.len();
    let mut row = Vec::with_capacity(dim);
    let mut doc = 0u64;
    while live > 0 {
        let shard = (doc % count) as usize;
        let file = &mut files[shard];
        if !exhausted[shard] && !file.rejected.contains(&doc) {
            match file.next_row(&mut row)? {
                Some(id) => {
                    let writer = match &mut writer {
                        Some(w) => w,
                        None => writer.insert(OutputWriter::open(
                            &partial,
                            format,
                            dtype,
                            row.len(),
                            row_group_rows,
                            None,
                        )?),
                    };
                    write_row(writer, &id, &row, &file.path)?;
                }
                None => {
                    exhausted[shard] = true;
                    live -= 1;
                }
            }
        }
        doc += 1;
    }
    let writer = match writer {
        Some(w) => w,
        None => OutputWriter::open(&partial, format, dtype, dim, row_group_rows, None)?,
    };
    writer.finish(&partial, output)
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
