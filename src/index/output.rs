//! Incremental, resumable output: rows appended in input order to a `.npy` (whose header is
//! rewritten with the final row count at the end) or a `.jsonl` file, or written by row groups
//! to Parquet ([`ParquetWriter`]); [`OutputWriter`] is either.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Serialize, Serializer};
use serde_json::Value;

use super::checkpoint::sync_dir;
use super::parquet_output::ParquetWriter;
use super::OutputFormat;
use crate::{Error, Result};

/// Element type of `.npy` and Parquet rows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Dtype {
    #[default]
    F32,
    F16,
}

impl Dtype {
    fn descr(self) -> &'static str {
        match self {
            Self::F32 => "<f4",
            Self::F16 => "<f2",
        }
    }

    pub fn size(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 => 2,
        }
    }

    /// Parse a `.npy` `descr`.
    pub fn from_descr(descr: &str) -> Option<Self> {
        match descr {
            "<f4" => Some(Self::F32),
            "<f2" => Some(Self::F16),
            _ => None,
        }
    }
}

impl FromStr for Dtype {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "f32" => Ok(Self::F32),
            "f16" => Ok(Self::F16),
            _ => Err(format!("`{s}` is not an output dtype (f32 or f16)")),
        }
    }
}

/// Bytes of every `.npy` header written here: what NumPy itself writes for any 2-D shape below
/// 10^40 rows (magic, version, length, dict padded with spaces and a newline to 64-byte lines).
pub const NPY_HEADER_LEN: usize = 128;

/// NumPy `.npy` version 1.0 header for a C-order `(rows, dim)` array.
pub fn npy_header(rows: u64, dim: usize, dtype: Dtype) -> Vec<u8> {
    let dict = format!(
        "{{'descr': '{}', 'fortran_order': False, 'shape': ({rows}, {dim}), }}",
        dtype.descr()
    );
    let mut header = b"\x93NUMPY\x01\x00".to_vec();
    header.extend_from_slice(&((NPY_HEADER_LEN - 10) as u16).to_le_bytes());
    header.extend_from_slice(dict.as_bytes());
    header.resize(NPY_HEADER_LEN - 1, b' ');
    header.push(b'\n');
    header
}

/// The formats a [`RowWriter`] appends to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowFormat {
    Jsonl,
    Npy,
}

/// Appends rows to a file, tracking how many rows and bytes are in it.
pub struct RowWriter {
    path: PathBuf,
    file: BufWriter<File>,
    format: RowFormat,
    dtype: Dtype,
    dim: usize,
    rows: u64,
    bytes: u64,
    /// The encoded row being written (kept for the next one).
    encoded: Vec<u8>,
}

/// A `.jsonl` output line as `serde_json` writes `json!({"id": id, "embedding": row})`: keys
/// in sorted order, every value the `f64` of its `f32` (non-finite ones `null`), encoded
/// without building that `Value`.
#[derive(Serialize)]
struct JsonlRow<'a> {
    embedding: WidenedFloats<'a>,
    id: &'a Value,
}

struct WidenedFloats<'a>(&'a [f32]);

impl Serialize for WidenedFloats<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(|&x| f64::from(x)))
    }
}

/// Open an output file of the job: afresh (`durable_bytes = None`), or keeping its first
/// `durable_bytes` bytes (what a checkpoint recorded) and positioned right after them. A file
/// shorter than its checkpoint is an error: nothing may be silently zero-filled.
pub(crate) fn open_resumable(path: &Path, durable_bytes: Option<u64>) -> Result<File> {
    let io_error = |source| Error::Io {
        path: path.into(),
        source,
    };
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(durable_bytes.is_none())
        .read(true)
        .write(true)
        .open(path)
        .map_err(io_error)?;
    if let Some(bytes) = durable_bytes {
        let len = file.metadata().map_err(io_error)?.len();
        if len < bytes {
            return Err(Error::File {
                path: path.into(),
                message: format!(
                    "holds {len} bytes, fewer than the {bytes} its checkpoint recorded"
                ),
            });
        }
        file.set_len(bytes).map_err(io_error)?;
        file.seek(SeekFrom::Start(bytes)).map_err(io_error)?;
    }
    Ok(file)
}

impl RowWriter {
    /// Start `path` afresh, or (with `resume = Some((rows, bytes))`) keep its first `bytes`
    /// bytes, which hold `rows` rows, and append after them.
    pub fn open(
        path: &Path,
        format: RowFormat,
        dtype: Dtype,
        dim: usize,
        resume: Option<(u64, u64)>,
    ) -> Result<Self> {
        let (file, rows, bytes) = match resume {
            Some((rows, bytes)) => (open_resumable(path, Some(bytes))?, rows, bytes),
            None => {
                let mut file = open_resumable(path, None)?;
                let header = match format {
                    RowFormat::Npy => npy_header(0, dim, dtype),
                    RowFormat::Jsonl => Vec::new(),
                };
                file.write_all(&header).map_err(|source| Error::Io {
                    path: path.into(),
                    source,
                })?;
                (file, 0, header.len() as u64)
            }
        };
        Ok(Self {
            path: path.into(),
            file: BufWriter::with_capacity(1 << 20, file),
            format,
            dtype,
            dim,
            rows,
            bytes,
            encoded: Vec::new(),
        })
    }

    fn io_error(&self, source: std::io::Error) -> Error {
        Error::Io {
            path: self.path.clone(),
            source,
        }
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Append one row (`dim` values; `id` goes into `.jsonl` lines).
    pub fn write_row(&mut self, id: &Value, row: &[f32]) -> Result<()> {
        assert_eq!(row.len(), self.dim, "one full row");
        self.encoded.clear();
        match (self.format, self.dtype) {
            (RowFormat::Npy, Dtype::F32) => {
                self.encoded
                    .extend(row.iter().flat_map(|x| x.to_le_bytes()));
            }
            (RowFormat::Npy, Dtype::F16) => {
                self.encoded.extend(
                    row.iter()
                        .flat_map(|&x| half::f16::from_f32(x).to_le_bytes()),
                );
            }
            (RowFormat::Jsonl, _) => {
                let line = JsonlRow {
                    embedding: WidenedFloats(row),
                    id,
                };
                serde_json::to_writer(&mut self.encoded, &line)
                    .map_err(|e| self.io_error(e.into()))?;
                self.encoded.push(b'\n');
            }
        }
        self.file
            .write_all(&self.encoded)
            .map_err(|e| self.io_error(e))?;
        self.rows += 1;
        self.bytes += self.encoded.len() as u64;
        Ok(())
    }

    /// Make every row written so far durable; returns `(rows, bytes)` for a checkpoint.
    pub fn sync(&mut self) -> Result<(u64, u64)> {
        self.file.flush().map_err(|e| self.io_error(e))?;
        self.file
            .get_ref()
            .sync_data()
            .map_err(|e| self.io_error(e))?;
        Ok((self.rows, self.bytes))
    }

    /// Write the final `.npy` header and sync.
    pub fn finish(mut self) -> Result<u64> {
        self.file.flush().map_err(|e| self.io_error(e))?;
        if self.format == RowFormat::Npy {
            let header = npy_header(self.rows, self.dim, self.dtype);
            let file = self.file.get_mut();
            file.seek(SeekFrom::Start(0))
                .and_then(|_| file.write_all(&header))
                .map_err(|e| self.io_error(e))?;
        }
        self.file
            .get_ref()
            .sync_all()
            .map_err(|e| self.io_error(e))?;
        Ok(self.rows)
    }
}

/// The writer of a job's or a merge's output, written under a partial path (a file, or a
/// directory for Parquet) and moved onto its destination by [`OutputWriter::finish`].
pub enum OutputWriter {
    Rows(RowWriter),
    Parquet(ParquetWriter),
}

impl OutputWriter {
    /// Open the partial output afresh or from a checkpoint's `(rows, bytes)` (see
    /// [`RowWriter::open`] and [`ParquetWriter::open`]); `row_group_rows` is for Parquet.
    pub fn open(
        partial: &Path,
        format: OutputFormat,
        dtype: Dtype,
        dim: usize,
        row_group_rows: usize,
        resume: Option<(u64, u64)>,
    ) -> Result<Self> {
        let rows = |format| RowWriter::open(partial, format, dtype, dim, resume);
        Ok(match format {
            OutputFormat::Jsonl => Self::Rows(rows(RowFormat::Jsonl)?),
            OutputFormat::Npy => Self::Rows(rows(RowFormat::Npy)?),
            OutputFormat::Parquet => Self::Parquet(ParquetWriter::open(
                partial,
                dtype,
                dim,
                row_group_rows,
                resume,
            )?),
        })
    }

    pub fn dim(&self) -> usize {
        match self {
            Self::Rows(w) => w.dim(),
            Self::Parquet(w) => w.dim(),
        }
    }

    pub fn rows(&self) -> u64 {
        match self {
            Self::Rows(w) => w.rows(),
            Self::Parquet(w) => w.rows(),
        }
    }

    pub fn write_row(&mut self, id: &Value, row: &[f32]) -> Result<()> {
        match self {
            Self::Rows(w) => w.write_row(id, row),
            Self::Parquet(w) => w.write_row(id, row),
        }
    }

    /// Make every row written so far durable; returns `(rows, bytes)` for a checkpoint.
    pub fn sync(&mut self) -> Result<(u64, u64)> {
        match self {
            Self::Rows(w) => w.sync(),
            Self::Parquet(w) => w.sync(),
        }
    }

    /// Complete the output at `partial` and move it onto `dest`; returns the rows. A Parquet
    /// output's partial directory is left for [`remove_partial`], once the caller has removed
    /// what says the output is unfinished.
    pub fn finish(self, partial: &Path, dest: &Path) -> Result<u64> {
        let rows = match self {
            Self::Rows(w) => {
                let rows = w.finish()?;
                std::fs::rename(partial, dest).map_err(|source| Error::Io {
                    path: dest.into(),
                    source,
                })?;
                rows
            }
            Self::Parquet(w) => w.finish(dest)?,
        };
        sync_dir(dest)?;
        Ok(rows)
    }
}

/// Remove a partial output (a file, or a Parquet output's directory), if there is one.
pub fn remove_partial(path: &Path) -> Result<()> {
    let removed = match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    removed.map_err(|source| Error::Io {
        path: path.into(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_header_matches_numpy() {
        // What NumPy 1.x/2.x writes for np.zeros((2, 3), '<f4'), byte for byte.
        let dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
        let mut expected = b"\x93NUMPY\x01\x00\x76\x00".to_vec();
        expected.extend_from_slice(dict.as_bytes());
        expected.extend(std::iter::repeat_n(b' ', 128 - 10 - dict.len() - 1));
        expected.push(b'\n');
        assert_eq!(npy_header(2, 3, Dtype::F32), expected);
        let f16 = npy_header(123_456_789_012, 768, Dtype::F16);
        assert_eq!(f16.len(), NPY_HEADER_LEN);
        assert!(String::from_utf8_lossy(&f16).contains("'<f2'"));
    }

    #[test]
    fn rows_append_and_resume_after_the_recorded_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.npy");
        let mut writer = RowWriter::open(&path, RowFormat::Npy, Dtype::F32, 2, None).unwrap();
        writer.write_row(&Value::Null, &[1.0, 2.0]).unwrap();
        let checkpoint = writer.sync().unwrap();
        assert_eq!(checkpoint, (1, 136));
        writer.write_row(&Value::Null, &[9.0, 9.0]).unwrap();
        writer.sync().unwrap();
        drop(writer);
        // A crash after the checkpoint: the second row is dropped and rewritten.
        let mut writer =
            RowWriter::open(&path, RowFormat::Npy, Dtype::F32, 2, Some(checkpoint)).unwrap();
        writer.write_row(&Value::Null, &[3.0, -0.5]).unwrap();
        assert_eq!(writer.finish().unwrap(), 2);
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..128], &npy_header(2, 2, Dtype::F32)[..]);
        let values: Vec<f32> = bytes[128..]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(values, [1.0, 2.0, 3.0, -0.5]);
    }

    #[test]
    fn jsonl_rows_are_the_json_of_id_and_embedding() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let rows = [
            (Value::from("a"), [0.5, -2.0, 0.0]),
            (Value::from(7), [0.1, -0.0, 1e-40]),
            (Value::from("q\"é\n"), [f32::MAX, f32::NAN, -1.5e-7]),
        ];
        let mut writer = RowWriter::open(&path, RowFormat::Jsonl, Dtype::F32, 3, None).unwrap();
        for (id, row) in &rows {
            writer.write_row(id, row).unwrap();
        }
        let (_, bytes) = writer.sync().unwrap();
        assert_eq!(writer.finish().unwrap(), 3);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(bytes, text.len() as u64);
        assert!(text.starts_with("{\"embedding\":[0.5,-2.0,0.0],\"id\":\"a\"}\n"));
        let lines: Vec<&str> = text.split_terminator('\n').collect();
        assert_eq!(lines.len(), rows.len());
        for (line, (id, row)) in lines.iter().zip(&rows) {
            // serde_json's text of the plain `Value`: keys sorted, each f32 widened to f64, NaN
            // as null.
            let expected = serde_json::json!({ "id": id, "embedding": row }).to_string();
            assert_eq!(*line, expected);
        }
    }

    #[test]
    fn f16_rows_round_to_half() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.npy");
        let mut writer = RowWriter::open(&path, RowFormat::Npy, Dtype::F16, 2, None).unwrap();
        writer.write_row(&Value::Null, &[0.1, -1.0]).unwrap();
        writer.finish().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        // IEEE half: 0.1 rounds to 0x2e66, -1.0 is 0xbc00.
        assert_eq!(&bytes[128..], &[0x66, 0x2e, 0x00, 0xbc]);
    }
}
