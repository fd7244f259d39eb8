//! Resumable Parquet output: `id` (utf8) and `embedding` (fixed-size list of D float32, or
//! float16 with `--dtype f16`), one row group every `row_group_rows` rows, snappy-compressed.
//!
//! A Parquet file ends with a footer describing every row group, so it cannot be truncated and
//! appended to like `.npy` or `.jsonl`. While the job runs, its partial output is a directory
//! (`out.parquet.partial/`) holding
//! - `part-G.parquet`: row group `G` as a complete one-row-group Parquet file, written once the
//!   group is full (to a temporary name, fsync'd, renamed, directory fsync'd);
//! - `rows-G.bin`: the rows of the group being filled (`u32` little-endian id length, id bytes,
//!   D float32 little-endian values per row), appended like the other formats.
//!
//! A checkpoint records `rows` and the length of `rows-G.bin` with `G = rows / row_group_rows`
//! (a group is written out the moment it fills, so every earlier group has its part file). A
//! resumed run keeps parts `0..G`, truncates `rows-G.bin` to the checkpointed length, reads its
//! rows back into the group being filled, and removes everything else (a part or rows file
//! written after the checkpoint). A rows file stays until a later checkpoint no longer needs it.
//!
//! At the end the last, shorter group is written and the parts are spliced into the final file
//! (their encoded column chunks copied as they are, footer written once) under a temporary
//! name, fsync'd and renamed over the destination. The directory is left for the caller to
//! remove once nothing says the output is unfinished: a run killed while removing it (a large
//! directory takes a while) must not leave a checkpoint beside a half-removed directory. Row-group
//! boundaries are fixed row counts and encoding is deterministic, so a run killed at any moment
//! and rerun writes the same bytes as an uninterrupted run. The cost: the final file is copied
//! once at the end, and the disk holds the output twice for that moment.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::{ArrayBuilder, StringBuilder};
use arrow_array::{ArrayRef, FixedSizeListArray, Float16Array, Float32Array, RecordBatch};
use arrow_schema::{DataType, Field, FieldRef, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::column::writer::ColumnCloseResult;
use parquet::file::metadata::{KeyValue, PageIndexPolicy, ParquetMetaDataReader};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use serde_json::Value;

use super::checkpoint::{remove_if_there, sync_dir};
use super::output::{open_resumable, Dtype};
use super::AtomicFile;
use crate::{Error, Result};

/// Rows per row group unless told otherwise (25 MB of 768-d float32 embeddings).
pub const DEFAULT_ROW_GROUP_ROWS: usize = 8192;

/// The key of the file metadata entry that records the row-group size, so that `merge` writes
/// its output with the row groups of the shards' job.
pub const ROW_GROUP_ROWS_KEY: &str = "gemma-embed.row_group_rows";

/// The element of the `embedding` lists.
fn item_field(dtype: Dtype) -> FieldRef {
    let item = match dtype {
        Dtype::F32 => DataType::Float32,
        Dtype::F16 => DataType::Float16,
    };
    Arc::new(Field::new("item", item, false))
}

/// The Arrow schema of the output.
pub fn schema(dtype: Dtype, dim: usize) -> Result<SchemaRef> {
    let size = i32::try_from(dim).map_err(|_| Error::Dimensions {
        got: dim,
        max: i32::MAX as usize,
    })?;
    Ok(Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new(
            "embedding",
            DataType::FixedSizeList(item_field(dtype), size),
            false,
        ),
    ])))
}

/// What a Parquet output written here holds: its embeddings' type and width, and its rows per
/// row group (from its metadata).
pub fn describe(
    path: &Path,
    metadata: &parquet::file::metadata::FileMetaData,
    schema: &Schema,
) -> Result<(Dtype, usize, usize)> {
    let not_ours = || Error::File {
        path: path.into(),
        message: "not a Parquet output of gemma-embed (`id` and a fixed-size `embedding` list)"
            .into(),
    };
    let (_, embedding) = schema.column_with_name("embedding").ok_or_else(not_ours)?;
    let DataType::FixedSizeList(item, size) = embedding.data_type() else {
        return Err(not_ours());
    };
    let dtype = match item.data_type() {
        DataType::Float32 => Dtype::F32,
        DataType::Float16 => Dtype::F16,
        _ => return Err(not_ours()),
    };
    if schema.column_with_name("id").map(|(_, f)| f.data_type()) != Some(&DataType::Utf8) {
        return Err(not_ours());
    }
    let row_group_rows = metadata
        .key_value_metadata()
        .and_then(|kv| kv.iter().find(|kv| kv.key == ROW_GROUP_ROWS_KEY))
        .and_then(|kv| kv.value.as_deref()?.parse().ok())
        .ok_or_else(not_ours)?;
    Ok((dtype, *size as usize, row_group_rows))
}

fn properties(row_group_rows: usize) -> WriterProperties {
    WriterProperties::builder()
        // Embeddings hardly compress; snappy costs little and is what readers expect.
        .set_compression(Compression::SNAPPY)
        // Embeddings and ids are all distinct: a dictionary would only be built and dropped,
        // and min/max statistics of embedding values help no query.
        .set_dictionary_enabled(false)
        .set_statistics_enabled(EnabledStatistics::None)
        .set_key_value_metadata(Some(vec![KeyValue::new(
            ROW_GROUP_ROWS_KEY.to_string(),
            row_group_rows.to_string(),
        )]))
        .build()
}

/// A Parquet error on `path`.
fn parquet_error(path: &Path, error: impl std::fmt::Display) -> Error {
    Error::File {
        path: path.into(),
        message: format!("Parquet: {error}"),
    }
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.into(),
        source,
    }
}

/// Appends rows, a part file per full row group (see the module documentation).
pub struct ParquetWriter {
    dir: PathBuf,
    schema: SchemaRef,
    row_group_rows: usize,
    dtype: Dtype,
    dim: usize,
    /// Rows written, those of the group being filled included.
    rows: u64,
    /// The group being filled, also in `rows-G.bin`.
    pending_ids: StringBuilder,
    pending_values: Vec<f32>,
    /// The text of a number id, and a row's `rows-G.bin` record (kept for the next row).
    id_text: String,
    record: Vec<u8>,
    staging: BufWriter<File>,
    staging_bytes: u64,
    /// Whether `rows-G.bin` was created since the last sync (its directory entry is not durable).
    staging_created: bool,
    /// The group of the last checkpoint: its rows file, not older ones, may still be needed.
    checkpointed_group: u64,
    /// Rows files below this group are already removed.
    removed_below: u64,
}

fn part_name(group: u64) -> String {
    format!("part-{group:06}.parquet")
}

fn rows_name(group: u64) -> String {
    format!("rows-{group:06}.bin")
}

impl ParquetWriter {
    /// Start the directory `dir` afresh, or (with `resume = Some((rows, bytes))`) continue it
    /// from a checkpoint of `rows` rows whose rows file held `bytes` bytes.
    pub fn open(
        dir: &Path,
        dtype: Dtype,
        dim: usize,
        row_group_rows: usize,
        resume: Option<(u64, u64)>,
    ) -> Result<Self> {
        let schema = schema(dtype, dim)?;
        let group_rows = row_group_rows.max(1) as u64;
        let (rows, bytes) = resume.unwrap_or((0, 0));
        let group = rows / group_rows;
        match resume {
            None => {
                if dir.exists() {
                    std::fs::remove_dir_all(dir).map_err(io_error(dir))?;
                }
                std::fs::create_dir_all(dir).map_err(io_error(dir))?;
                sync_dir(dir)?;
            }
            Some(_) => keep_checkpointed_files(dir, group)?,
        }
        let staging_path = dir.join(rows_name(group));
        let staging_created = !staging_path.exists();
        let mut file = open_resumable(&staging_path, Some(bytes))?;
        let pending = read_rows(&mut file, &staging_path, bytes)?;
        let mut writer = Self {
            dir: dir.into(),
            schema,
            row_group_rows: group_rows as usize,
            dtype,
            dim,
            rows,
            pending_ids: StringBuilder::new(),
            pending_values: Vec::new(),
            id_text: String::new(),
            record: Vec::new(),
            staging: BufWriter::with_capacity(1 << 20, file),
            staging_bytes: bytes,
            staging_created,
            checkpointed_group: group,
            removed_below: group,
        };
        writer.load_pending(&pending, &staging_path, rows % group_rows)?;
        Ok(writer)
    }

    /// Load `data`, the durable bytes of the rows file `path`, which must hold `expected` rows.
    fn load_pending(&mut self, data: &[u8], path: &Path, expected: u64) -> Result<()> {
        let bytes = data.len();
        let damaged = || Error::File {
            path: path.into(),
            message: format!("damaged: its first {bytes} bytes do not hold {expected} rows"),
        };
        let row_bytes = self.dim * 4;
        let mut rest = data;
        while !rest.is_empty() {
            let (len, tail) = rest.split_first_chunk::<4>().ok_or_else(damaged)?;
            let len = u32::from_le_bytes(*len) as usize;
            if tail.len() < len + row_bytes {
                return Err(damaged());
            }
            let id = std::str::from_utf8(&tail[..len]).map_err(|_| damaged())?;
            self.pending_ids.append_value(id);
            self.pending_values.extend(
                tail[len..len + row_bytes]
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            );
            rest = &tail[len + row_bytes..];
        }
        if self.pending_ids.len() as u64 != expected {
            return Err(damaged());
        }
        Ok(())
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    fn group(&self) -> u64 {
        self.rows / self.row_group_rows as u64
    }

    fn staging_path(&self) -> PathBuf {
        self.dir.join(rows_name(self.group()))
    }

    /// Append one row (`dim` values); a number id is written as its JSON text.
    pub fn write_row(&mut self, id: &Value, row: &[f32]) -> Result<()> {
        assert_eq!(row.len(), self.dim, "one full row");
        let id = match id {
            Value::String(s) => s,
            other => {
                self.id_text.clear();
                write!(self.id_text, "{other}").expect("a String takes any text");
                &self.id_text
            }
        };
        let id_len = u32::try_from(id.len()).map_err(|_| Error::File {
            path: self.staging_path(),
            message: format!("an id of {} bytes", id.len()),
        })?;
        self.record.clear();
        self.record.extend_from_slice(&id_len.to_le_bytes());
        self.record.extend_from_slice(id.as_bytes());
        self.record.extend(row.iter().flat_map(|x| x.to_le_bytes()));
        self.staging
            .write_all(&self.record)
            .map_err(|source| Error::Io {
                path: self.staging_path(),
                source,
            })?;
        self.staging_bytes += self.record.len() as u64;
        self.pending_ids.append_value(id);
        self.pending_values.extend_from_slice(row);
        self.rows += 1;
        if self.pending_ids.len() == self.row_group_rows {
            self.write_part(self.group() - 1)?;
            // The next group's rows file; the full one stays until a checkpoint is past it.
            let path = self.staging_path();
            let file = open_resumable(&path, None)?;
            self.staging = BufWriter::with_capacity(1 << 20, file);
            self.staging_bytes = 0;
            self.staging_created = true;
        }
        Ok(())
    }

    /// Write the pending rows as `part-G.parquet`, durably.
    fn write_part(&mut self, group: u64) -> Result<()> {
        let path = self.dir.join(part_name(group));
        let tmp = self.dir.join(format!("{}.tmp", part_name(group)));
        let values: ArrayRef = match self.dtype {
            Dtype::F32 => Arc::new(Float32Array::from(std::mem::take(&mut self.pending_values))),
            Dtype::F16 => Arc::new(Float16Array::from_iter_values(
                self.pending_values.drain(..).map(half::f16::from_f32),
            )),
        };
        let embeddings =
            FixedSizeListArray::try_new(item_field(self.dtype), self.dim as i32, values, None)
                .map_err(|e| parquet_error(&tmp, e))?;
        let ids = self.pending_ids.finish();
        let batch = RecordBatch::try_new(
            Arc::clone(&self.schema),
            vec![Arc::new(ids), Arc::new(embeddings)],
        )
        .map_err(|e| parquet_error(&tmp, e))?;
        let mut file = AtomicFile::create_at(&path, tmp.clone())?;
        let mut writer = ArrowWriter::try_new(
            file.writer(),
            Arc::clone(&self.schema),
            Some(properties(self.row_group_rows)),
        )
        .map_err(|e| parquet_error(&tmp, e))?;
        writer.write(&batch).map_err(|e| parquet_error(&tmp, e))?;
        writer.close().map_err(|e| parquet_error(&tmp, e))?;
        file.commit()
    }

    /// Make every row written so far durable; returns `(rows, bytes)` for a checkpoint. Called
    /// once the previous checkpoint is stored: rows files older than its group go.
    pub fn sync(&mut self) -> Result<(u64, u64)> {
        let staging_path = self.staging_path();
        self.staging.flush().map_err(io_error(&staging_path))?;
        self.staging
            .get_ref()
            .sync_data()
            .map_err(io_error(&staging_path))?;
        if self.staging_created {
            sync_dir(&staging_path)?;
            self.staging_created = false;
        }
        for group in self.removed_below..self.checkpointed_group {
            remove_if_there(&self.dir.join(rows_name(group)))?;
        }
        self.removed_below = self.checkpointed_group;
        self.checkpointed_group = self.group();
        Ok((self.rows, self.staging_bytes))
    }

    /// Write the last group and splice the parts into `dest`; the directory stays (for
    /// [`super::output::remove_partial`]).
    pub fn finish(mut self, dest: &Path) -> Result<u64> {
        if !self.pending_ids.is_empty() {
            self.write_part(self.group())?;
        }
        let parts = self.rows.div_ceil(self.row_group_rows as u64);
        let tmp = self.dir.join("assembled.parquet");
        let mut file = AtomicFile::create_at(dest, tmp.clone())?;
        let writer = ArrowWriter::try_new(
            file.writer(),
            Arc::clone(&self.schema),
            Some(properties(self.row_group_rows)),
        )
        .map_err(|e| parquet_error(&tmp, e))?;
        let (mut file_writer, _) = writer
            .into_serialized_writer()
            .map_err(|e| parquet_error(&tmp, e))?;
        for group in 0..parts {
            let path = self.dir.join(part_name(group));
            let part = File::open(&path).map_err(io_error(&path))?;
            let metadata = ParquetMetaDataReader::new()
                .with_page_index_policy(PageIndexPolicy::Optional)
                .parse_and_finish(&part)
                .map_err(|e| parquet_error(&path, e))?;
            let page_index = metadata.page_index();
            for (g, row_group) in metadata.row_groups().iter().enumerate() {
                let mut out = file_writer
                    .next_row_group()
                    .map_err(|e| parquet_error(&tmp, e))?;
                for (c, column) in row_group.columns().iter().enumerate() {
                    let close = ColumnCloseResult {
                        bytes_written: column.compressed_size() as u64,
                        rows_written: row_group.num_rows() as u64,
                        metadata: column.clone(),
                        bloom_filter: None,
                        column_index: page_index.and_then(|p| p.column_index(g, c)).cloned(),
                        offset_index: page_index.and_then(|p| p.offset_index(g, c)).cloned(),
                    };
                    out.append_column(&part, close)
                        .map_err(|e| parquet_error(&path, e))?;
                }
                out.close().map_err(|e| parquet_error(&tmp, e))?;
            }
        }
        file_writer.close().map_err(|e| parquet_error(&tmp, e))?;
        file.commit()?;
        Ok(self.rows)
    }
}

/// The first `bytes` bytes of `file` (`path`), read back from its start; `file` is left
/// positioned after them (where [`open_resumable`] put it).
fn read_rows(file: &mut File, path: &Path, bytes: u64) -> Result<Vec<u8>> {
    let mut data = Vec::new();
    if bytes > 0 {
        file.seek(SeekFrom::Start(0))
            .and_then(|_| (&*file).take(bytes).read_to_end(&mut data))
            .map_err(io_error(path))?;
    }
    Ok(data)
}

/// Keep what a checkpoint at group `group` needs in `dir` (parts `0..group`, `rows-group.bin`),
/// remove the rest, and check that no part is missing.
fn keep_checkpointed_files(dir: &Path, group: u64) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(io_error(dir))?;
    let mut parts = 0u64;
    for entry in entries {
        let entry = entry.map_err(io_error(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let part = name
            .strip_prefix("part-")
            .and_then(|n| n.strip_suffix(".parquet"))
            .and_then(|n| n.parse::<u64>().ok());
        match part {
            Some(g) if g < group => parts += 1,
            _ if name == rows_name(group) => {}
            _ => {
                let path = entry.path();
                std::fs::remove_file(&path).map_err(io_error(&path))?;
            }
        }
    }
    if parts != group {
        return Err(Error::File {
            path: dir.into(),
            message: format!("holds {parts} of the {group} row groups its checkpoint recorded"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::cast::AsArray;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    const DIM: usize = 3;

    fn row(i: u64) -> Vec<f32> {
        (0..DIM).map(|j| i as f32 + j as f32 / 8.0 - 0.3).collect()
    }

    fn id(i: u64) -> Value {
        if i.is_multiple_of(3) {
            Value::from(i)
        } else {
            Value::from(format!("doc-{i}"))
        }
    }

    /// Write rows `0..total` in one go.
    fn uninterrupted(dir: &Path, dtype: Dtype, total: u64) -> Vec<u8> {
        let partial = dir.join("whole.parquet.partial");
        let dest = dir.join("whole.parquet");
        let mut writer = ParquetWriter::open(&partial, dtype, DIM, 4, None).unwrap();
        for i in 0..total {
            writer.write_row(&id(i), &row(i)).unwrap();
        }
        assert_eq!(writer.finish(&dest).unwrap(), total);
        super::super::output::remove_partial(&partial).unwrap();
        std::fs::read(dest).unwrap()
    }

    #[test]
    fn a_crash_after_any_checkpoint_resumes_to_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let total = 11;
        for dtype in [Dtype::F32, Dtype::F16] {
            let whole = uninterrupted(dir.path(), dtype, total);
            // Checkpoint after `at` rows, then `lost` more rows (across a row group or not)
            // written before the crash.
            for at in 0..=total {
                for lost in [0, 1, 5] {
                    let partial = dir.path().join("killed.parquet.partial");
                    let dest = dir.path().join("killed.parquet");
                    let mut writer = ParquetWriter::open(&partial, dtype, DIM, 4, None).unwrap();
                    let mut checkpoint = (0, 0);
                    for i in 0..at {
                        writer.write_row(&id(i), &row(i)).unwrap();
                        // Checkpoints along the way (their stale rows files go).
                        if i % 3 == 1 {
                            checkpoint = writer.sync().unwrap();
                        }
                    }
                    checkpoint = if at > 0 {
                        writer.sync().unwrap()
                    } else {
                        checkpoint
                    };
                    for i in at..(at + lost).min(total) {
                        writer.write_row(&id(i), &row(i)).unwrap();
                    }
                    writer.sync().unwrap();
                    drop(writer);
                    let mut writer =
                        ParquetWriter::open(&partial, dtype, DIM, 4, Some(checkpoint)).unwrap();
                    assert_eq!(writer.rows(), at);
                    for i in at..total {
                        writer.write_row(&id(i), &row(i)).unwrap();
                    }
                    writer.finish(&dest).unwrap();
                    assert!(
                        std::fs::read(&dest).unwrap() == whole,
                        "{dtype:?}: checkpoint at {at}, {lost} rows lost"
                    );
                }
            }
        }
    }

    #[test]
    fn rows_read_back_with_row_groups_of_the_given_size() {
        let dir = tempfile::tempdir().unwrap();
        uninterrupted(dir.path(), Dtype::F32, 10);
        let file = File::open(dir.path().join("whole.parquet")).unwrap();
        let reader = ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
        let groups: Vec<i64> = reader
            .metadata()
            .row_groups()
            .iter()
            .map(|g| g.num_rows())
            .collect();
        assert_eq!(groups, [4, 4, 2]);
        let (dtype, dim, group_rows) = describe(
            Path::new("x"),
            reader.metadata().file_metadata(),
            reader.schema(),
        )
        .unwrap();
        assert_eq!((dtype, dim, group_rows), (Dtype::F32, DIM, 4));
        let mut i = 0u64;
        for batch in reader.build().unwrap() {
            let batch = batch.unwrap();
            let ids = batch.column(0).as_string::<i32>();
            let lists = batch.column(1).as_fixed_size_list();
            for r in 0..batch.num_rows() {
                let want_id = match id(i) {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                assert_eq!(ids.value(r), want_id);
                let values = lists.value(r);
                let values = values.as_primitive::<arrow_array::types::Float32Type>();
                assert_eq!(values.values().to_vec(), row(i));
                i += 1;
            }
        }
        assert_eq!(i, 10);
    }

    #[test]
    fn leftovers_of_an_interrupted_finish_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let whole = uninterrupted(dir.path(), Dtype::F32, 10);
        let partial = dir.path().join("out.parquet.partial");
        let dest = dir.path().join("out.parquet");
        let mut writer = ParquetWriter::open(&partial, Dtype::F32, DIM, 4, None).unwrap();
        for i in 0..10 {
            writer.write_row(&id(i), &row(i)).unwrap();
        }
        let checkpoint = writer.sync().unwrap();
        drop(writer);
        // A kill inside `finish`: the last group's part, half a splice, a part being written.
        std::fs::write(partial.join(part_name(2)), b"PAR1").unwrap();
        std::fs::write(partial.join("assembled.parquet"), b"PAR1...").unwrap();
        std::fs::write(partial.join(format!("{}.tmp", part_name(3))), b"").unwrap();
        let writer = ParquetWriter::open(&partial, Dtype::F32, DIM, 4, Some(checkpoint)).unwrap();
        assert_eq!(writer.rows(), 10);
        writer.finish(&dest).unwrap();
        assert!(std::fs::read(&dest).unwrap() == whole);
    }

    /// The sorted file names in `dir`.
    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn failed_writes_leave_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        // Each rename fails onto a directory that is not empty.
        let blocker = |path: &Path| {
            std::fs::create_dir(path).unwrap();
            std::fs::write(path.join("keep"), b"").unwrap();
        };
        let partial = dir.path().join("a.parquet.partial");
        let mut writer = ParquetWriter::open(&partial, Dtype::F32, DIM, 2, None).unwrap();
        writer.write_row(&id(0), &row(0)).unwrap();
        blocker(&partial.join(part_name(0)));
        assert!(writer.write_row(&id(1), &row(1)).is_err());
        assert_eq!(names(&partial), [part_name(0), rows_name(0)]);

        let partial = dir.path().join("b.parquet.partial");
        let dest = dir.path().join("b.parquet");
        blocker(&dest);
        let mut writer = ParquetWriter::open(&partial, Dtype::F32, DIM, 2, None).unwrap();
        for i in 0..3 {
            writer.write_row(&id(i), &row(i)).unwrap();
        }
        assert!(writer.finish(&dest).is_err());
        assert_eq!(
            names(&partial),
            [part_name(0), part_name(1), rows_name(0), rows_name(1)]
        );
        assert_eq!(
            names(dir.path()),
            ["a.parquet.partial", "b.parquet", "b.parquet.partial"]
        );
    }

    #[test]
    fn a_missing_part_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let partial = dir.path().join("out.parquet.partial");
        let mut writer = ParquetWriter::open(&partial, Dtype::F32, DIM, 2, None).unwrap();
        for i in 0..5 {
            writer.write_row(&id(i), &row(i)).unwrap();
        }
        let checkpoint = writer.sync().unwrap();
        drop(writer);
        std::fs::remove_file(partial.join(part_name(1))).unwrap();
        let err = ParquetWriter::open(&partial, Dtype::F32, DIM, 2, Some(checkpoint))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("holds 1 of the 2 row groups"), "{err}");
    }
}
