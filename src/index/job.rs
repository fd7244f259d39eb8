//! The corpus job: stream documents from the input, embed them through the [`Engine`] and
//! append the rows in input order, checkpointing as it goes so that a rerun of the same
//! command after a crash or a kill continues where the durable output stops.
//!
//! Files, for an output `out.npy`: `out.npy.partial` (rows so far), `out.npy.checkpoint` (how
//! many rows and bytes of it are durable, where the input continues, and the parameters that
//! shape the output) and, with `--on-error skip`, `out.npy.rejects.jsonl`. At the end the
//! partial file gets its final header and is renamed to `out.npy`; the checkpoint goes. A
//! Parquet output's partial is a directory of row groups (see [`super::parquet_output`]).
//!
//! A resumed run truncates the partial file to the checkpointed length and reads the input from
//! the checkpointed offset; embeddings do not depend on batching, so the final file is the one
//! an uninterrupted run writes.

use std::fs::File;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::mpsc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use serde_json::{json, Value};

use super::checkpoint::{self, remove_if_there, sync_dir, Checkpoint};
use super::many::output_is_done;
use super::merge::ShardRecord;
use super::output::{open_resumable, remove_partial, Dtype, OutputWriter};
use super::reader::{DirectoryListing, ReadPosition, RecordReader};
use super::{Content, InputColumns, InputFormat, OutputFormat, Record};
use crate::engine::{Admission, Engine, Input, Request, Ticket};
use crate::tokenize::Truncation;
use crate::{Error, Result};

/// Chunks submitted and not yet written, at most.
const CHUNKS_IN_FLIGHT: usize = 8;

/// What to do with a document that cannot be embedded (bad line, unknown prompt, too long
/// without truncation, token id out of range).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnError {
    Fail,
    /// Log its line, document index, id and error to the rejects file and go on.
    Skip,
}

impl FromStr for OnError {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "fail" => Ok(Self::Fail),
            "skip" => Ok(Self::Skip),
            _ => Err(format!("`{s}` is not an error policy (fail or skip)")),
        }
    }
}

/// `I/N`: every N-th document starting at document I (0-based).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: u64,
    pub count: u64,
}

impl Default for Shard {
    fn default() -> Self {
        Self { index: 0, count: 1 }
    }
}

impl Shard {
    /// Whether the document with 0-based index `doc` belongs to this shard.
    pub fn holds(self, doc: u64) -> bool {
        doc % self.count == self.index
    }
}

impl FromStr for Shard {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let parsed = s
            .split_once('/')
            .and_then(|(i, n)| Some((i.parse().ok()?, n.parse().ok()?)));
        match parsed {
            Some((index, count)) if index < count => Ok(Self { index, count }),
            _ => Err(format!(
                "`{s}` is not a shard: give I/N with 0 <= I < N, e.g. 0/4"
            )),
        }
    }
}

/// How progress is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressMode {
    /// One line redrawn in place (stderr is a terminal).
    Bar,
    /// A plain line every interval.
    Lines(Duration),
    Off,
}

impl ProgressMode {
    /// A bar on a terminal, else a line every 10 s.
    pub fn for_stderr() -> Self {
        if std::io::stderr().is_terminal() {
            Self::Bar
        } else {
            Self::Lines(Duration::from_secs(10))
        }
    }
}

#[derive(Clone)]
pub struct JobOptions {
    /// Input path, `-` for stdin (not resumable).
    pub input: String,
    pub input_format: InputFormat,
    /// Where the text, id and title are (CSV and Parquet columns, JSON fields).
    pub columns: InputColumns,
    pub output: PathBuf,
    pub output_format: OutputFormat,
    pub dtype: Dtype,
    pub dimensions: usize,
    /// Rows per row group of a Parquet output.
    pub row_group_rows: usize,
    /// Prompt string for documents without `prompt_name`.
    pub job_prompt: Option<String>,
    pub truncation: Truncation,
    pub shard: Shard,
    pub on_error: OnError,
    /// Documents per engine request.
    pub docs_per_request: usize,
    /// The least time between two checkpoints (zero: after every request): a kill loses the
    /// batches in flight and at most this much of finished work.
    pub checkpoint_interval: Duration,
    pub progress: ProgressMode,
    /// What else shapes the output (model, backend, ...), recorded in the checkpoint.
    pub params: Value,
}

impl JobOptions {
    pub fn partial_path(&self) -> PathBuf {
        checkpoint::partial_path(&self.output)
    }

    pub fn checkpoint_path(&self) -> PathBuf {
        checkpoint::checkpoint_path(&self.output)
    }

    pub fn rejects_path(&self) -> PathBuf {
        checkpoint::rejects_path(&self.output)
    }

    /// What shapes the rows whatever the input: model (by its weights' CRC, not its path, so
    /// that machines that keep it in other places share one job), backend, prompt, columns,
    /// format, dimensions, ... (one record for the many outputs of a job over many files).
    pub fn output_params(&self) -> Value {
        let row_group_rows =
            (self.output_format == OutputFormat::Parquet).then_some(self.row_group_rows);
        let mut params = json!({
            "csv_columns": [&self.columns.text, &self.columns.id],
            "output_format": format!("{:?}", self.output_format),
            "dtype": format!("{:?}", self.dtype),
            "dimensions": self.dimensions,
            "row_group_rows": row_group_rows,
            "prompt": self.job_prompt,
            "truncation": format!("{:?}", self.truncation),
            "shard": format!("{}/{}", self.shard.index, self.shard.count),
            "job": self.params,
        });
        // Only when set, so that checkpoints written before titles existed still resume.
        if let Some(title) = &self.columns.title {
            params["title_column"] = json!(title);
        }
        params
    }

    /// What every shard of one `--shard I/N` job shares ([`ShardRecord::params`]): the
    /// manifest's parameters and the input's format, size and content sample
    /// ([`super::content_sample`]; a directory's file count only); no paths.
    fn shard_params(&self, fingerprint: &Value) -> Result<Value> {
        let mut params = self.output_params();
        let fields = params
            .as_object_mut()
            .expect("output parameters are an object");
        fields.remove("shard");
        for field in ["input_len", "input_format", "line_ends"] {
            if let Some(value) = fingerprint.get(field) {
                fields.insert(field.into(), value.clone());
            }
        }
        if self.input_format != InputFormat::Directory && self.input != "-" {
            fields.insert(
                "input_sample".into(),
                json!(super::content_sample(&[PathBuf::from(&self.input)])?),
            );
        }
        Ok(params)
    }

    /// What a rerun of this run must share to pass over its finished shard
    /// ([`ShardRecord::rerun`]): the whole `fingerprint` (the input's path, size and modification
    /// time, or a directory's listing) and `--on-error` (a `fail` run must not pass over a
    /// `skip` run's rejects). `None` for standard input, which no rerun can tell apart.
    fn rerun_key(&self, fingerprint: &Value) -> Option<Value> {
        (self.input != "-").then(|| {
            json!({
                "fingerprint": fingerprint,
                "on_error": format!("{:?}", self.on_error),
            })
        })
    }

    /// Everything that shapes the output, the input file's size and modification time included.
    fn fingerprint(&self, listing: Option<&DirectoryListing>) -> Result<Value> {
        let (len, modified) = if let Some(listing) = listing {
            let (files, hash) = listing.fingerprint()?;
            (Some(files), Some(hash))
        } else if self.input == "-" {
            (None, None)
        } else {
            let meta = std::fs::metadata(&self.input).map_err(|source| Error::Io {
                path: self.input.clone().into(),
                source,
            })?;
            let modified = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_nanos().to_string());
            (Some(meta.len()), modified)
        };
        let mut params = self.output_params();
        params["input"] = json!(std::fs::canonicalize(&self.input)
            .map_or_else(|_| self.input.clone(), |p| p.display().to_string()));
        params["input_len"] = json!(len);
        params["input_modified"] = json!(modified);
        params["input_format"] = json!(format!("{:?}", self.input_format));
        if let Some(line_ends) = super::reader::line_ends(self.input_format) {
            params["line_ends"] = json!(line_ends);
        }
        Ok(params)
    }
}

/// What a job did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JobSummary {
    /// Rows in the output and rejected documents, in total.
    pub rows: u64,
    pub rejected: u64,
    /// Rows that were already durable from an earlier, interrupted run.
    pub resumed_rows: u64,
    /// Documents embedded and their tokens in this run, and its wall time.
    pub docs: u64,
    pub tokens: u64,
    pub seconds: f64,
    /// A `--shard I/N` output finished by an earlier run of the same job: nothing was done.
    pub done_before: bool,
}

/// One document's place in a chunk.
enum Slot {
    Embed {
        line: usize,
        doc: u64,
        id: Value,
    },
    Reject {
        line: usize,
        doc: u64,
        id: Option<Value>,
        error: String,
    },
}

/// Consecutive documents of the shard, their request, and where the input continues after them.
struct Chunk {
    slots: Vec<Slot>,
    ticket: Option<Ticket>,
    end: ReadPosition,
    /// [`RecordReader::progress`] at `end`.
    progress: u64,
}

/// The lock of the job writing `output` from `input`: refused when another run holds it, or
/// when the input is one of the files the job keeps beside its output (it would be removed).
pub fn lock_output(input: &str, output: &Path) -> Result<checkpoint::OutputLock> {
    check_side_files(input, output)?;
    checkpoint::OutputLock::acquire(output)
}

/// [`lock_output`], with `None` when another run holds the lock.
pub fn try_lock_output(input: &str, output: &Path) -> Result<Option<checkpoint::OutputLock>> {
    check_side_files(input, output)?;
    checkpoint::OutputLock::try_acquire(output)
}

/// Refuse an input that is one of the files the job writing `output` keeps beside it.
fn check_side_files(input: &str, output: &Path) -> Result<()> {
    if let Some(side) = checkpoint::side_files(output)
        .into_iter()
        .find(|side| super::many::same_file(Path::new(input), side))
    {
        return Err(Error::File {
            path: input.into(),
            message: format!(
                "it is where the job writing {} keeps its own files ({}): rename the input or \
                 choose another --output",
                output.display(),
                side.display()
            ),
        });
    }
    Ok(())
}

/// Run the job to its end (resuming if a checkpoint of the same parameters exists).
pub fn run(engine: &Engine, options: &JobOptions) -> Result<JobSummary> {
    // Held until the job ends: a second run on this output is refused, not interleaved.
    let lock = lock_output(&options.input, &options.output)?;
    run_holding(engine, options, &lock)
}

/// [`run`] for a caller that holds the output's lock already ([`try_lock_output`]).
pub fn run_holding(
    engine: &Engine,
    options: &JobOptions,
    _lock: &checkpoint::OutputLock,
) -> Result<JobSummary> {
    options
        .columns
        .check_fit(&options.input, options.input_format)?;
    let checkpoint_path = options.checkpoint_path();
    let partial_path = options.partial_path();
    // A directory is listed once: the fingerprint and the reader see the same files.
    let listing = (options.input_format == InputFormat::Directory)
        .then(|| DirectoryListing::read(Path::new(&options.input)))
        .transpose()?;
    let params = options.fingerprint(listing.as_ref())?;
    // A shard's finished output, with the record of this run's shard beside it: rerunning the
    // loop that started N shards redoes only those that did not finish.
    if let Some(rerun) = options.rerun_key(&params) {
        if options.shard.count > 1 && output_is_done(&options.output)? {
            if let Some(record) = ShardRecord::of_finished(&options.output, &rerun) {
                // A kill while a Parquet output's partial directory went left the rest of it.
                remove_partial(&partial_path)?;
                return Ok(JobSummary {
                    rows: record.rows,
                    rejected: record.rejected,
                    done_before: true,
                    ..JobSummary::default()
                });
            }
        }
    }
    let loaded = Checkpoint::load(&checkpoint_path).map_err(|e| match e {
        Error::Json { path, source } => Error::File {
            path,
            message: format!(
                "not a checkpoint ({source}): delete it and {} to start over",
                partial_path.display()
            ),
        },
        other => other,
    })?;
    let resume = match loaded {
        Some(checkpoint) if checkpoint.params != params => {
            let input_only = match checkpoint.params.clone() {
                Value::Object(mut old) => {
                    for key in ["input_len", "input_modified"] {
                        old.insert(key.into(), params[key].clone());
                    }
                    Value::Object(old) == params
                }
                _ => false,
            };
            // Before the model was named by its weights' CRC (it was by path and sample), or
            // before a lone CR ended a line.
            let earlier_version = checkpoint.params["job"].as_object().is_some_and(|job| {
                !job.contains_key("model_crc32")
                    || (params.get("line_ends").is_some()
                        && checkpoint.params.get("line_ends").is_none())
            });
            let partial = partial_path.display();
            let remedy = if earlier_version {
                format!(
                    "it was written by an earlier gemma-embed: finish it with that version, or \
                     delete this file and {partial} to start over"
                )
            } else if input_only {
                format!(
                    "the input changed since, and its rows are the old input's: delete this file \
                     and {partial} to start over"
                )
            } else {
                format!("rerun that command to finish it, or delete this file and {partial} to start over")
            };
            return Err(Error::File {
                path: checkpoint_path,
                message: format!(
                    "a checkpoint of another command ({}); {remedy}",
                    differences(&checkpoint.params, &params),
                ),
            });
        }
        Some(checkpoint) if partial_path.exists() => Some(checkpoint),
        Some(_) => {
            // Its partial output is gone: start over, without a checkpoint that no longer
            // describes the file being written.
            std::fs::remove_file(&checkpoint_path).map_err(|source| Error::Io {
                path: checkpoint_path.clone(),
                source,
            })?;
            None
        }
        None => None,
    };
    let mut result = run_from(engine, options, params, resume.as_ref(), listing);
    if let Err(
        Error::Line { message, .. }
        | Error::Row { message, .. }
        | Error::DirectoryFile { message, .. },
    ) = &mut result
    {
        // A bad document under --on-error fail. What its last checkpoint holds is kept, with
        // the rejects it counts (of an earlier run under skip): the same command with
        // --on-error skip goes on from there (a fixed input is another command).
        match Checkpoint::load(&checkpoint_path) {
            Ok(Some(checkpoint)) if checkpoint.rows > 0 => {
                message.push_str(&format!(
                    " ({} rows before it are kept: rerun with --on-error skip to go on from them)",
                    checkpoint.rows
                ));
            }
            _ => {
                for path in [checkpoint_path, partial_path, options.rejects_path()] {
                    let _ = remove_partial(&path);
                }
            }
        }
    }
    result
}

/// `a: x -> y` for every top-level field that differs, one only side has included (`null` on
/// the other: a `--title-column` given once and not again).
pub(super) fn differences(old: &Value, new: &Value) -> String {
    let (Value::Object(old), Value::Object(new)) = (old, new) else {
        return "different parameters".into();
    };
    let gone = old.keys().filter(|k| !new.contains_key(*k));
    let fields: Vec<String> = new
        .keys()
        .chain(gone)
        .filter_map(|k| {
            let (was, is) = (old.get(k), new.get(k));
            (was != is).then(|| {
                format!(
                    "{k}: {} -> {}",
                    was.unwrap_or(&Value::Null),
                    is.unwrap_or(&Value::Null)
                )
            })
        })
        .collect();
    fields.join(", ")
}

fn run_from(
    engine: &Engine,
    options: &JobOptions,
    params: Value,
    resume: Option<&Checkpoint>,
    listing: Option<DirectoryListing>,
) -> Result<JobSummary> {
    let start_position = resume.map(Checkpoint::position).unwrap_or_default();
    let mut reader = match listing {
        Some(listing) => RecordReader::open_directory(listing, start_position)?,
        None => RecordReader::open(
            &options.input,
            options.input_format,
            &options.columns,
            start_position,
        )?,
    };
    let output = OutputWriter::open(
        &options.partial_path(),
        options.output_format,
        options.dtype,
        options.dimensions,
        options.row_group_rows,
        resume.map(|c| (c.rows, c.output_bytes)),
    )?;
    // Under fail, a resumed run still carries the documents an interrupted run under skip
    // rejected: their rows are missing from the output, and the rejects file says which.
    let carried_rejects = resume.is_some_and(|c| c.rejects > 0);
    let rejects = match options.on_error {
        OnError::Fail if !carried_rejects => None,
        OnError::Skip | OnError::Fail => Some(Rejects::open(
            &options.rejects_path(),
            resume.map(|c| (c.rejects, c.rejects_bytes)),
        )?),
    };
    let input_len = reader.extent(&options.input);
    let mut writer = Writer {
        options,
        params,
        input_docs: start_position.docs,
        output,
        rejects,
        summary: JobSummary {
            resumed_rows: resume.map_or(0, |c| c.rows),
            ..JobSummary::default()
        },
        progress: Progress {
            mode: options.progress,
            start: Instant::now(),
            last: Instant::now(),
            start_progress: reader.progress(),
            input_len,
            drawn: false,
        },
        last_checkpoint: Instant::now(),
    };
    if let Some(c) = resume {
        let unit = match options.input_format {
            InputFormat::Directory => "file",
            InputFormat::Parquet => "row",
            InputFormat::Jsonl | InputFormat::Text | InputFormat::Csv => "line",
        };
        eprintln!(
            "resuming: {} rows already written, input from {unit} {}",
            c.rows,
            c.input_line + 1
        );
    }

    let (chunks, chunk_receiver) = mpsc::sync_channel::<Chunk>(CHUNKS_IN_FLIGHT);
    std::thread::scope(|scope| {
        let write = scope.spawn(move || -> Result<Writer> {
            for chunk in chunk_receiver {
                writer.write_chunk(chunk)?;
            }
            Ok(writer)
        });
        let read = read_chunks(engine, options, &mut reader, &chunks);
        drop(chunks);
        let writer = write.join().expect("the writer thread does not panic");
        // A writer error ends the reading (its channel closes): report the writer's error.
        let writer = writer?;
        read?;
        writer.finish()
    })
}

/// Read the shard's documents into chunks, submit them, and pass them on in order.
fn read_chunks(
    engine: &Engine,
    options: &JobOptions,
    reader: &mut RecordReader,
    chunks: &mpsc::SyncSender<Chunk>,
) -> Result<()> {
    let mut slots = Vec::new();
    let mut inputs = Vec::new();
    let send = |slots: Vec<Slot>, inputs: Vec<Input>, reader: &RecordReader| -> Result<bool> {
        let ticket = if inputs.is_empty() {
            None
        } else {
            Some(engine.submit(
                Request {
                    inputs,
                    dimensions: options.dimensions,
                    truncation: options.truncation,
                    normalize: true,
                },
                Admission::Wait,
            )?)
        };
        let chunk = Chunk {
            slots,
            ticket,
            end: reader.position(),
            progress: reader.progress(),
        };
        Ok(chunks.send(chunk).is_ok())
    };
    reader.keep_only(options.shard);
    while let Some(document) = reader.next_document()? {
        let (line, doc) = (document.line, document.doc);
        // A document that cannot be read is named in the rejects by what is known of it; one
        // read but refused (an unknown prompt) by the id its row would have had.
        let outcome = match document.record {
            Ok(record) => {
                let id = record.output_id();
                match to_input(engine, options, record) {
                    Ok(input) => Ok((id, input)),
                    Err(err) => Err((Some(id), err)),
                }
            }
            Err(err) => Err((document.known_id, err)),
        };
        match outcome {
            Ok((id, input)) => {
                slots.push(Slot::Embed { line, doc, id });
                inputs.push(input);
            }
            Err((id, err)) => match options.on_error {
                OnError::Fail => return Err(err),
                OnError::Skip => slots.push(Slot::Reject {
                    line,
                    doc,
                    id,
                    error: line_message(err),
                }),
            },
        }
        if slots.len() >= options.docs_per_request
            && !send(
                std::mem::take(&mut slots),
                std::mem::take(&mut inputs),
                reader,
            )?
        {
            return Ok(());
        }
    }
    send(slots, inputs, reader)?;
    Ok(())
}

/// The engine input of a record.
fn to_input(engine: &Engine, options: &JobOptions, record: Record) -> Result<Input> {
    Ok(match record.content {
        Content::Ids(ids) => Input::Ids(ids),
        Content::Text(text) => {
            let prompt = record
                .prompt
                .resolve(engine.tokenizer(), options.job_prompt.as_deref())
                .map_err(|e| document_error(options, record.line, e.to_string()))?
                .map(String::from);
            Input::Text { text, prompt }
        }
    })
}

/// An error about the document at 1-based `line` (a row number in Parquet).
fn document_error(options: &JobOptions, line: usize, message: String) -> Error {
    super::document_error(&options.input, options.input_format, line, message)
}

/// The message of a line error without its `file: line N:` prefix.
fn line_message(err: Error) -> String {
    match err {
        Error::Line { message, .. }
        | Error::Row { message, .. }
        | Error::DirectoryFile { message, .. }
        | Error::Input { message, .. } => message,
        other => other.to_string(),
    }
}

/// The rejects file: `{"line", "doc", "id", "error"}` per skipped document.
struct Rejects {
    path: PathBuf,
    file: File,
    lines: u64,
    bytes: u64,
}

impl Rejects {
    fn open(path: &Path, resume: Option<(u64, u64)>) -> Result<Self> {
        let (lines, bytes) = resume.unwrap_or((0, 0));
        let file = open_resumable(path, resume.map(|(_, bytes)| bytes))?;
        Ok(Self {
            path: path.into(),
            file,
            lines,
            bytes,
        })
    }

    fn write(&mut self, line: usize, doc: u64, id: Option<&Value>, error: &str) -> Result<()> {
        let text = json!({ "line": line, "doc": doc, "id": id, "error": error }).to_string() + "\n";
        self.file
            .write_all(text.as_bytes())
            .map_err(|source| Error::Io {
                path: self.path.clone(),
                source,
            })?;
        self.lines += 1;
        self.bytes += text.len() as u64;
        Ok(())
    }

    fn sync(&self) -> Result<()> {
        self.file.sync_data().map_err(|source| Error::Io {
            path: self.path.clone(),
            source,
        })
    }
}

struct Writer<'a> {
    options: &'a JobOptions,
    params: Value,
    /// Documents of the input read so far, every shard's (the whole input's at the end).
    input_docs: u64,
    output: OutputWriter,
    /// Under skip; under fail, only when resuming a run that rejected documents under skip
    /// (they are kept, and no more are added).
    rejects: Option<Rejects>,
    summary: JobSummary,
    progress: Progress,
    last_checkpoint: Instant,
}

impl Writer<'_> {
    fn write_chunk(&mut self, chunk: Chunk) -> Result<()> {
        let mut outputs = match chunk.ticket {
            Some(ticket) => ticket.wait()?.outputs.into_iter(),
            None => Vec::new().into_iter(),
        };
        for slot in chunk.slots {
            match slot {
                Slot::Embed { line, doc, id } => {
                    let outcome = outputs.next().expect("one output per embedded slot");
                    match outcome {
                        Ok(embedded) => {
                            self.output.write_row(&id, &embedded.embedding)?;
                            self.summary.docs += 1;
                            self.summary.tokens += embedded.tokens as u64;
                        }
                        // A bad input; backend failures fail the job whatever the policy.
                        Err(Error::Input { message, .. }) => {
                            match (&mut self.rejects, self.options.on_error) {
                                (Some(rejects), OnError::Skip) => {
                                    rejects.write(line, doc, Some(&id), &message)?
                                }
                                _ => return Err(document_error(self.options, line, message)),
                            }
                        }
                        Err(other) => return Err(other),
                    }
                }
                Slot::Reject {
                    line,
                    doc,
                    id,
                    error,
                } => {
                    let rejects = self.rejects.as_mut().expect("rejects only when skipping");
                    rejects.write(line, doc, id.as_ref(), &error)?;
                }
            }
        }
        self.input_docs = chunk.end.docs;
        if self.last_checkpoint.elapsed() >= self.options.checkpoint_interval {
            self.checkpoint(chunk.end)?;
        }
        self.progress
            .update(&self.summary, self.output.rows(), chunk.progress);
        Ok(())
    }

    fn checkpoint(&mut self, position: ReadPosition) -> Result<()> {
        let (rows, output_bytes) = self.output.sync()?;
        let (rejects, rejects_bytes) = match &self.rejects {
            Some(r) => {
                r.sync()?;
                (r.lines, r.bytes)
            }
            None => (0, 0),
        };
        Checkpoint {
            params: self.params.clone(),
            rows,
            output_bytes,
            rejects,
            rejects_bytes,
            input_offset: position.offset,
            input_line: position.line,
            input_docs: position.docs,
        }
        .store(&self.options.checkpoint_path())?;
        self.last_checkpoint = Instant::now();
        Ok(())
    }

    fn finish(mut self) -> Result<JobSummary> {
        let mut summary = self.summary;
        summary.seconds = self.progress.start.elapsed().as_secs_f64();
        self.progress.done();
        let output = &self.options.output;
        // The rejects are complete before the output is in place: an output that is there has
        // all of its rejects. Under `fail` there are none, whatever an earlier run left.
        match &self.rejects {
            Some(rejects) => {
                rejects.sync()?;
                summary.rejected = rejects.lines;
                if rejects.lines == 0 {
                    remove_if_there(&rejects.path)?;
                }
            }
            None => {
                remove_if_there(&self.options.rejects_path())?;
            }
        }
        // The shard record goes before the output it describes comes, and is written after:
        // a crash between the two leaves an output without a record, which merge refuses,
        // never a record describing another output.
        let record = ShardRecord::path(output);
        if remove_if_there(&record)? {
            sync_dir(&record)?;
        }
        summary.rows = self.output.finish(&self.options.partial_path(), output)?;
        let shard = self.options.shard;
        if shard.count > 1 {
            ShardRecord {
                index: shard.index,
                count: shard.count,
                input_docs: self.input_docs,
                rows: summary.rows,
                rejected: summary.rejected,
                params: self.options.shard_params(&self.params)?,
                rerun: self.options.rerun_key(&self.params),
            }
            .store(output)?;
        }
        remove_if_there(&self.options.checkpoint_path())?;
        // Last: a kill while a Parquet output's directory goes leaves a finished output beside
        // its leftovers (removed by the next run of it), not beside its checkpoint.
        remove_partial(&self.options.partial_path())?;
        Ok(summary)
    }
}

struct Progress {
    mode: ProgressMode,
    start: Instant,
    last: Instant,
    /// Where the reader stood when this run started.
    start_progress: u64,
    input_len: Option<u64>,
    drawn: bool,
}

impl Progress {
    /// Show the rate and, with the input's extent, how far into it `progress` is.
    fn update(&mut self, summary: &JobSummary, rows: u64, progress: u64) {
        let interval = match self.mode {
            ProgressMode::Off => return,
            ProgressMode::Bar => Duration::from_millis(200),
            ProgressMode::Lines(interval) => interval,
        };
        if self.last.elapsed() < interval {
            return;
        }
        self.last = Instant::now();
        let seconds = self.start.elapsed().as_secs_f64().max(1e-9);
        // Short, for a bar within 80 columns at a billion rows.
        let mut line = format!(
            "{rows} docs, {:.0} docs/s, {:.0} tokens/s",
            summary.docs as f64 / seconds,
            summary.tokens as f64 / seconds
        );
        if let Some(len) = self.input_len.filter(|&l| l > 0) {
            let done = progress.saturating_sub(self.start_progress) as f64;
            let left = len.saturating_sub(progress) as f64;
            line += &format!(", {:.1}%", 100.0 * progress as f64 / len as f64);
            if done > 0.0 {
                line += &format!(", ETA {}", clock(seconds * left / done));
            }
        }
        if self.mode == ProgressMode::Bar {
            // A line wider than the terminal wraps, and `\r` goes back to its last row only:
            // each redraw would leave the rows above behind.
            let columns = stderr_columns().unwrap_or(80);
            eprint!("\r{}\x1b[K", fit_to_columns(&line, columns));
            self.drawn = true;
        } else {
            eprintln!("{line}");
        }
    }

    /// End the bar's line, so that what comes next (the summary, or an error) has its own.
    fn done(&mut self) {
        if self.drawn {
            eprintln!();
            self.drawn = false;
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.done();
    }
}

/// The width of the terminal on stderr, where it is one and says.
fn stderr_columns() -> Option<usize> {
    let mut size = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `winsize` through the pointer, which points at one; on a
    // descriptor that is not a terminal it fails and writes nothing.
    let status = unsafe { libc::ioctl(libc::STDERR_FILENO, libc::TIOCGWINSZ, &mut size) };
    (status == 0 && size.ws_col > 0).then_some(usize::from(size.ws_col))
}

/// The start of `line` that fits in `columns` columns with one to spare (a character in the
/// last column wraps on some terminals).
fn fit_to_columns(line: &str, columns: usize) -> &str {
    let keep = columns.saturating_sub(1);
    line.char_indices()
        .nth(keep)
        .map_or(line, |(end, _)| &line[..end])
}

/// `1h02m03s`, `2m03s`, `3s`.
fn clock(seconds: f64) -> String {
    let s = seconds.round() as u64;
    match (s / 3600, s / 60 % 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m{s:02}s"),
        (h, m, s) => format!("{h}h{m:02}m{s:02}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_parse() {
        assert_eq!("1/4".parse(), Ok(Shard { index: 1, count: 4 }));
        assert!("4/4".parse::<Shard>().is_err());
        assert!("1".parse::<Shard>().is_err());
        assert!("a/2".parse::<Shard>().is_err());
    }

    #[test]
    fn differences_name_fields_on_either_side() {
        let old = json!({"dimensions": 768, "title_column": "title", "prompt": null});
        let new = json!({"dimensions": 256, "prompt": null, "dtype": "F16"});
        assert_eq!(
            differences(&old, &new),
            "dimensions: 768 -> 256, dtype: null -> \"F16\", title_column: \"title\" -> null"
        );
        assert_eq!(differences(&old, &old), "");
    }

    #[test]
    fn the_progress_line_fits_the_terminal() {
        let line = "1048576 docs, 2100 docs/s, 520000 tokens/s, 10.5%, ETA 1h23m45s";
        assert_eq!(fit_to_columns(line, 200), line);
        assert_eq!(fit_to_columns(line, line.len() + 1), line);
        assert_eq!(fit_to_columns(line, 40).len(), 39);
        assert_eq!(fit_to_columns(line, 14), "1048576 docs,");
        assert_eq!(fit_to_columns("é€x", 3), "é€");
        assert_eq!(fit_to_columns(line, 0), "");
    }

    #[test]
    fn clock_reads_well() {
        assert_eq!(clock(3.4), "3s");
        assert_eq!(clock(123.0), "2m03s");
        assert_eq!(clock(3723.0), "1h02m03s");
    }
}
