//! Parquet input: the text column (and the id and title columns) read record batch by record
//! batch, only those columns decoded, resumable at any row (whole row groups before it are skipped).
//!
//! Columns are typed from the Parquet schema alone (an embedded Arrow schema is ignored), so
//! string columns read as utf8 whether a writer stored them as large strings, string views or
//! dictionaries (pandas categoricals). Codecs: uncompressed, snappy and gzip; zstd with the
//! `parquet-zstd` feature.

use std::fs::File;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Int16Type, Int32Type, Int64Type, Int8Type, UInt16Type, UInt32Type, UInt64Type, UInt8Type,
};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::DataType;
use parquet::arrow::arrow_reader::{
    ArrowReaderOptions, ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder,
};
use parquet::arrow::ProjectionMask;
use parquet::basic::Compression;
use serde_json::Value;

use super::InputColumns;
use crate::{Error, Result};

/// Rows decoded at a time.
const BATCH_ROWS: usize = 1024;

/// One row's values.
#[derive(Clone, Debug, PartialEq)]
pub struct ParquetRow {
    pub text: String,
    /// The id column's value (with an id column).
    pub id: Option<Value>,
    /// With a title column: its value (`None` for a null).
    pub title: Option<Option<String>>,
}

/// Why a row cannot be used, with its id where the id column could be read.
#[derive(Clone, Debug, PartialEq)]
pub struct RowError {
    pub id: Option<Value>,
    pub message: String,
}

/// One row, or why it cannot be used.
pub type Row = std::result::Result<ParquetRow, RowError>;

/// Reads the text (and id and title) of each row of a Parquet file, in order.
pub struct ParquetInput {
    path: String,
    batches: ParquetRecordBatchReader,
    columns: InputColumns,
    batch: Option<BatchColumns>,
    next_in_batch: usize,
    total_rows: u64,
}

/// The text (and id and title) columns of the record batch being read, looked up once per
/// batch.
struct BatchColumns {
    text: ArrayRef,
    id: Option<ArrayRef>,
    title: Option<ArrayRef>,
    rows: usize,
}

impl BatchColumns {
    fn of(batch: &RecordBatch, columns: &InputColumns) -> std::result::Result<Self, String> {
        let column = |name: &str| {
            batch
                .column_by_name(name)
                .cloned()
                .ok_or_else(|| format!("column `{name}` missing from a record batch"))
        };
        Ok(Self {
            text: column(&columns.text)?,
            id: columns.id.as_deref().map(column).transpose()?,
            title: columns.title.as_deref().map(column).transpose()?,
            rows: batch.num_rows(),
        })
    }
}

fn is_string(data_type: &DataType) -> bool {
    data_type == &DataType::Utf8
}

/// The name of `codec` if this build cannot decode it.
fn undecodable(codec: Compression) -> Option<&'static str> {
    match codec {
        Compression::UNCOMPRESSED | Compression::SNAPPY | Compression::GZIP(_) => None,
        Compression::ZSTD(_) => (!cfg!(feature = "parquet-zstd")).then_some("zstd"),
        Compression::LZO => Some("lzo"),
        Compression::BROTLI(_) => Some("brotli"),
        Compression::LZ4 | Compression::LZ4_RAW => Some("lz4"),
    }
}

impl ParquetInput {
    /// Open `path` and position it at row `start_row` (0-based).
    pub fn open(path: &str, columns: &InputColumns, start_row: u64) -> Result<Self> {
        let file_error = |message: String| Error::File {
            path: path.into(),
            message,
        };
        let file = File::open(path).map_err(|source| Error::Io {
            path: path.into(),
            source,
        })?;
        let options = ArrowReaderOptions::new().with_skip_arrow_metadata(true);
        let builder = ParquetRecordBatchReaderBuilder::try_new_with_options(file, options)
            .map_err(|e| file_error(format!("not a readable Parquet file: {e}")))?;
        let schema = Arc::clone(builder.schema());
        let find = |name: &str, flag: &str, wanted: &str, fits: fn(&DataType) -> bool| {
            let index = schema.index_of(name).map_err(|_| {
                let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                file_error(format!(
                    "no column `{name}` ({flag}); the file has: {}",
                    names.join(", ")
                ))
            })?;
            let data_type = schema.field(index).data_type();
            if !fits(data_type) {
                return Err(file_error(format!(
                    "column `{name}` ({flag}) holds {data_type}, not {wanted}"
                )));
            }
            Ok(index)
        };
        let text = find(&columns.text, "--text-column", "strings", is_string)?;
        let id = columns
            .id
            .as_deref()
            .map(|name| {
                find(name, "--id-column", "strings or integers", |t| {
                    is_string(t) || t.is_integer()
                })
            })
            .transpose()?;
        let title = columns
            .title
            .as_deref()
            .map(|name| find(name, "--title-column", "strings", is_string))
            .transpose()?;
        let decoded = |root: usize| root == text || Some(root) == id || Some(root) == title;

        let metadata = Arc::clone(builder.metadata());
        let parquet_schema = builder.parquet_schema();
        for group in metadata.row_groups() {
            for (leaf, chunk) in group.columns().iter().enumerate() {
                let root = parquet_schema.get_column_root_idx(leaf);
                let codec = undecodable(chunk.compression());
                if let Some(codec) = codec.filter(|_| decoded(root)) {
                    return Err(file_error(format!(
                        "column `{}` is compressed with {codec}, which this build cannot read \
                         (it reads uncompressed, snappy and gzip; zstd when built with \
                         `--features parquet-zstd`)",
                        schema.field(root).name(),
                    )));
                }
            }
        }
        let total_rows = metadata.file_metadata().num_rows().max(0) as u64;
        if start_row > total_rows {
            return Err(file_error(format!(
                "cannot resume at row {start_row}: the file has {total_rows} rows"
            )));
        }
        // Skip the row groups that end before `start_row`, then the rows before it in the next.
        let mut groups = Vec::new();
        let mut skip_in_groups = 0;
        let mut group_start = 0u64;
        for (g, group) in metadata.row_groups().iter().enumerate() {
            let group_end = group_start + group.num_rows().max(0) as u64;
            if group_end > start_row {
                if groups.is_empty() {
                    skip_in_groups = start_row - group_start;
                }
                groups.push(g);
            }
            group_start = group_end;
        }
        let roots = std::iter::once(text).chain(id).chain(title);
        let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
        let batches = builder
            .with_projection(mask)
            .with_row_groups(groups)
            .with_offset(skip_in_groups as usize)
            .with_batch_size(BATCH_ROWS)
            .build()
            .map_err(|e| file_error(format!("Parquet: {e}")))?;
        Ok(Self {
            path: path.into(),
            batches,
            columns: columns.clone(),
            batch: None,
            next_in_batch: 0,
            total_rows,
        })
    }

    /// Rows in the whole file.
    pub fn total_rows(&self) -> u64 {
        self.total_rows
    }

    /// The next row, `None` at the end. An error is a file that cannot be decoded; a row
    /// that cannot be used (a null text or id) is an `Err` inside; a null title is no title.
    pub fn next_row(&mut self) -> Result<Option<Row>> {
        let file_error = |message: String| Error::File {
            path: self.path.clone().into(),
            message,
        };
        loop {
            if let Some(batch) = &self.batch {
                if self.next_in_batch < batch.rows {
                    let i = self.next_in_batch;
                    self.next_in_batch += 1;
                    return Ok(Some(self.row(batch, i)));
                }
            }
            match self.batches.next() {
                None => return Ok(None),
                Some(Err(e)) => return Err(file_error(format!("Parquet: {e}"))),
                Some(Ok(batch)) => {
                    let columns = BatchColumns::of(&batch, &self.columns)
                        .map_err(|e| file_error(format!("Parquet: {e}")))?;
                    self.batch = Some(columns);
                    self.next_in_batch = 0;
                }
            }
        }
    }

    fn row(&self, batch: &BatchColumns, i: usize) -> Row {
        let id = self
            .id(batch, i)
            .map_err(|message| RowError { id: None, message })?;
        // A row refused for its text or title still names itself by its id.
        let refuse = |message: String| RowError {
            id: id.clone(),
            message,
        };
        let text = match string_at(&batch.text, i) {
            Some(Some(text)) => text.to_string(),
            Some(None) => {
                return Err(refuse(format!(
                    "null text (--text-column `{}`)",
                    self.columns.text
                )))
            }
            None => {
                return Err(refuse(format!(
                    "column `{}` is not a string",
                    self.columns.text
                )))
            }
        };
        let title = match (&self.columns.title, &batch.title) {
            (Some(name), Some(titles)) => match string_at(titles, i) {
                Some(title) => Some(title.map(String::from)),
                None => return Err(refuse(format!("column `{name}` is not a string"))),
            },
            _ => None,
        };
        Ok(ParquetRow { text, id, title })
    }

    /// The id column's value at row `i` (with an id column).
    fn id(&self, batch: &BatchColumns, i: usize) -> std::result::Result<Option<Value>, String> {
        Ok(match (&self.columns.id, &batch.id) {
            (Some(name), Some(ids)) => {
                if ids.is_null(i) {
                    return Err(format!("null id (--id-column `{name}`)"));
                }
                let id = match string_at(ids, i) {
                    Some(id) => id.map(Value::from),
                    None => integer_at(ids, i),
                };
                Some(id.ok_or_else(|| format!("column `{name}` is not a string or integer"))?)
            }
            _ => None,
        })
    }
}

/// `Some(None)` for a null, `None` when `array` holds no strings.
fn string_at(array: &ArrayRef, i: usize) -> Option<Option<&str>> {
    let value = array.as_string_opt::<i32>()?.value(i);
    Some((!array.is_null(i)).then_some(value))
}

/// The integer at `i` (not null) as a JSON number; `None` when `array` holds no integers.
fn integer_at(array: &ArrayRef, i: usize) -> Option<Value> {
    Some(match array.data_type() {
        DataType::Int8 => array.as_primitive_opt::<Int8Type>()?.value(i).into(),
        DataType::Int16 => array.as_primitive_opt::<Int16Type>()?.value(i).into(),
        DataType::Int32 => array.as_primitive_opt::<Int32Type>()?.value(i).into(),
        DataType::Int64 => array.as_primitive_opt::<Int64Type>()?.value(i).into(),
        DataType::UInt8 => array.as_primitive_opt::<UInt8Type>()?.value(i).into(),
        DataType::UInt16 => array.as_primitive_opt::<UInt16Type>()?.value(i).into(),
        DataType::UInt32 => array.as_primitive_opt::<UInt32Type>()?.value(i).into(),
        DataType::UInt64 => array.as_primitive_opt::<UInt64Type>()?.value(i).into(),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    use arrow_array::types::Int32Type;
    use arrow_array::{
        DictionaryArray, Float64Array, Int64Array, LargeStringArray, StringArray, StringViewArray,
    };
    use arrow_schema::{Field, Schema};
    use parquet::arrow::ArrowWriter;
    use parquet::file::properties::WriterProperties;

    /// A Parquet file of `columns`, row groups of 3 rows.
    fn write(path: &Path, columns: Vec<(&str, ArrayRef)>) {
        let fields: Vec<Field> = columns
            .iter()
            .map(|(name, a)| Field::new(*name, a.data_type().clone(), true))
            .collect();
        let schema = Arc::new(Schema::new(fields));
        let batch =
            RecordBatch::try_new(schema.clone(), columns.into_iter().map(|c| c.1).collect())
                .unwrap();
        let props = WriterProperties::builder()
            .set_max_row_group_row_count(Some(3))
            .build();
        let mut writer =
            ArrowWriter::try_new(File::create(path).unwrap(), schema, Some(props)).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
    }

    fn columns(text: &str, id: Option<&str>) -> InputColumns {
        InputColumns {
            text: text.into(),
            id: id.map(String::from),
            title: None,
        }
    }

    /// A good row without a title column.
    fn row(text: &str, id: Option<Value>) -> Row {
        Ok(ParquetRow {
            text: text.into(),
            id,
            title: None,
        })
    }

    fn read_from(path: &Path, columns: &InputColumns, start: u64) -> Vec<Row> {
        let mut input = ParquetInput::open(path.to_str().unwrap(), columns, start).unwrap();
        let mut rows = Vec::new();
        while let Some(row) = input.next_row().unwrap() {
            rows.push(row);
        }
        rows
    }

    #[test]
    fn reads_string_columns_and_resumes_at_any_row() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.parquet");
        let texts: Vec<String> = (0..8).map(|i| format!("text {i}")).collect();
        write(
            &path,
            vec![
                ("n", Arc::new(Int64Array::from_iter_values(100..108))),
                ("body", Arc::new(LargeStringArray::from_iter_values(&texts))),
                (
                    "view",
                    Arc::new(StringViewArray::from_iter_values(texts.iter().rev())),
                ),
                (
                    "category",
                    Arc::new(DictionaryArray::<Int32Type>::from_iter(
                        (0..8).map(|i| ["x", "y", "z"][i % 3]),
                    )),
                ),
            ],
        );
        let all = read_from(&path, &columns("body", Some("n")), 0);
        let want: Vec<Row> = (0..8)
            .map(|i| row(&texts[i], Some(Value::from(100 + i as i64))))
            .collect();
        assert_eq!(all, want);
        // Row groups of 3: every start, inside a group, at a boundary and at the end.
        for start in 0..=8 {
            let rest = read_from(&path, &columns("body", Some("n")), start);
            assert_eq!(rest, want[start as usize..], "from row {start}");
        }
        let views = read_from(&path, &columns("view", Some("body")), 6);
        assert_eq!(
            views,
            [
                row("text 1", Some(Value::from("text 6"))),
                row("text 0", Some(Value::from("text 7")))
            ]
        );
        let categories = read_from(&path, &columns("category", None), 2);
        let want: Vec<Row> = ["z", "x", "y", "z", "x", "y"]
            .iter()
            .map(|c| row(c, None))
            .collect();
        assert_eq!(categories, want);
        assert_eq!(
            ParquetInput::open(path.to_str().unwrap(), &columns("body", None), 0)
                .unwrap()
                .total_rows(),
            8
        );
        let err = ParquetInput::open(path.to_str().unwrap(), &columns("body", None), 9)
            .err()
            .unwrap();
        assert!(err.to_string().contains("has 8 rows"), "{err}");
    }

    #[test]
    fn bad_columns_and_nulls_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.parquet");
        write(
            &path,
            vec![
                (
                    "text",
                    Arc::new(StringArray::from(vec![Some("a"), None, Some("c")])),
                ),
                ("score", Arc::new(Float64Array::from(vec![1.0, 2.0, 3.0]))),
                (
                    "key",
                    Arc::new(StringArray::from(vec![Some("k1"), Some("k2"), None])),
                ),
            ],
        );
        let open_error = |columns: InputColumns| {
            ParquetInput::open(path.to_str().unwrap(), &columns, 0)
                .err()
                .unwrap()
                .to_string()
        };
        let err = open_error(columns("body", None));
        assert!(
            err.contains(
                "in.parquet: no column `body` (--text-column); the file has: text, score, key"
            ),
            "{err}"
        );
        let err = open_error(columns("score", None));
        assert!(
            err.contains("column `score` (--text-column) holds Float64, not strings"),
            "{err}"
        );
        let err = open_error(columns("text", Some("score")));
        assert!(
            err.contains("column `score` (--id-column) holds Float64, not strings or integers"),
            "{err}"
        );
        let titled = |title: &str| InputColumns {
            title: Some(title.into()),
            ..columns("text", None)
        };
        let err = open_error(titled("score"));
        assert!(
            err.contains("column `score` (--title-column) holds Float64, not strings"),
            "{err}"
        );
        // A null title is no title (the row is still good); resuming past a group keeps titles.
        let rows = read_from(&path, &titled("key"), 0);
        assert_eq!(
            rows[0],
            Ok(ParquetRow {
                text: "a".into(),
                id: None,
                title: Some(Some("k1".into()))
            })
        );
        assert_eq!(
            read_from(&path, &titled("key"), 2),
            [Ok(ParquetRow {
                text: "c".into(),
                id: None,
                title: Some(None)
            })]
        );
        let rows = read_from(&path, &columns("text", Some("key")), 0);
        assert_eq!(
            rows,
            [
                row("a", Some(Value::from("k1"))),
                // Refused for its text, the row keeps its id.
                Err(RowError {
                    id: Some(Value::from("k2")),
                    message: "null text (--text-column `text`)".into()
                }),
                Err(RowError {
                    id: None,
                    message: "null id (--id-column `key`)".into()
                }),
            ]
        );
        let not_parquet = dir.path().join("not.parquet");
        std::fs::write(&not_parquet, "text\nhello\n").unwrap();
        let err = ParquetInput::open(not_parquet.to_str().unwrap(), &columns("text", None), 0)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("not.parquet: not a readable Parquet file"),
            "{err}"
        );
    }
}
