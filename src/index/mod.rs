//! The corpus job and its files: JSON Lines, plain-text, CSV and Parquet records ([`reader`]
//! streams them, [`parquet_input`] decodes Parquet), ordered `.npy`/`.jsonl` writers
//! ([`output`]) and the resumable Parquet writer ([`parquet_output`]), checkpoints
//! ([`checkpoint`]), the job itself ([`job`]), jobs over many files ([`many`]) and the merge of
//! shard outputs ([`merge`]).

pub mod checkpoint;
pub mod job;
mod json_line;
pub mod many;
pub mod merge;
pub mod output;
pub mod parquet_input;
pub mod parquet_output;
pub mod reader;

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde_json::Value;

use crate::tokenize::{Tokenizer, Truncation};
use crate::{Error, Result};

/// How input lines are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputFormat {
    /// One JSON object per line: `text` (or the field `--text-column` names) or `ids`, optional
    /// `id` (or `--id-column`'s field) and `prompt_name`; other fields are left alone.
    Jsonl,
    /// One document per line, taken as is.
    Text,
    /// Comma-separated values with a header row; the text (and id) come from named columns.
    Csv,
    /// Apache Parquet; the text (and id) come from named columns.
    Parquet,
    /// A directory: every file below it one document (its whole text), id its relative path,
    /// in the order of those paths; hidden entries (`.name`) left out.
    Directory,
}

/// Where a document's text, id and title are: columns of a CSV or Parquet input, fields of a
/// JSON line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputColumns {
    pub text: String,
    /// The id's column (JSON Lines: `None` is the field `id`); without one the id is the line
    /// (row) number.
    pub id: Option<String>,
    /// The title's column: each document's prompt is then EmbeddingGemma's document prompt with
    /// its title ([`titled_prompt`]).
    pub title: Option<String>,
}

impl Default for InputColumns {
    fn default() -> Self {
        Self {
            text: "text".into(),
            id: None,
            title: None,
        }
    }
}

impl InputColumns {
    /// Refuse columns the input format has no place for (a title beside a text line or file,
    /// a text or id column in one).
    pub fn check_fit(&self, path: &str, format: InputFormat) -> Result<()> {
        if !matches!(format, InputFormat::Text | InputFormat::Directory) {
            return Ok(());
        }
        let refuse = |message: &str| {
            Err(Error::File {
                path: source_name(path).into(),
                message: message.into(),
            })
        };
        if self.title.is_some() {
            return refuse(
                "--title-column needs JSON Lines, CSV or Parquet input (a title field or column \
                 beside the text)",
            );
        }
        if self.text != Self::default().text || self.id.is_some() {
            return refuse(
                "--text-column and --id-column need JSON Lines, CSV or Parquet input (a text \
                 line or file is the text; its id is its line number or path)",
            );
        }
        Ok(())
    }
}

/// EmbeddingGemma's prompt for a document with a title, from its model card:
/// `title: {title | "none"} | text: `, so that an untitled (null, empty or blank) document
/// gets the model's `document` prompt, `title: none | text: `.
pub fn titled_prompt(title: Option<&str>) -> String {
    let title = title.filter(|t| !t.trim().is_empty()).unwrap_or("none");
    format!("title: {title} | text: ")
}

impl InputFormat {
    /// `.jsonl`, `.ndjson`, `.json` and `-` (stdin) are JSON Lines; `.txt` is plain text; `.csv` is CSV
    /// (each also compressed: `.jsonl.gz`, `.jsonl.zst`, ...); `.parquet` is Parquet; a
    /// directory is a directory of documents.
    pub fn from_path(path: &str) -> Result<Self> {
        if path == "-" {
            return Ok(Self::Jsonl);
        }
        if Path::new(path).is_dir() {
            return Ok(Self::Directory);
        }
        let compressed = strip_compression_suffix(path);
        let extension = Path::new(compressed.unwrap_or(path))
            .extension()
            .and_then(|e| e.to_str());
        match (extension.and_then(Self::of_extension), compressed.is_some()) {
            (Some(Self::Parquet), true) | (None, _) => Err(Error::File {
                path: path.into(),
                message: "cannot tell the input format from the extension \
                          (.jsonl, .ndjson, .json, .txt, .csv, each perhaps .gz or .zst, or \
                          .parquet); pass --input-format jsonl|text|csv|parquet|dir"
                    .into(),
            }),
            (Some(format), _) => Ok(format),
        }
    }

    /// The format of a file extension (without its dot): `jsonl`, `ndjson` and `json` are JSON
    /// Lines, `txt` is text, `csv` and `parquet` are themselves.
    pub fn of_extension(extension: &str) -> Option<Self> {
        match extension {
            "jsonl" | "ndjson" | "json" => Some(Self::Jsonl),
            "txt" => Some(Self::Text),
            "csv" => Some(Self::Csv),
            "parquet" => Some(Self::Parquet),
            _ => None,
        }
    }
}

/// `path` without its compression suffix (`.gz`, `.zst`), or `None` where it has none.
pub fn strip_compression_suffix(path: &str) -> Option<&str> {
    path.strip_suffix(".gz")
        .or_else(|| path.strip_suffix(".zst"))
}

impl FromStr for InputFormat {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "jsonl" => Ok(Self::Jsonl),
            "text" => Ok(Self::Text),
            "csv" => Ok(Self::Csv),
            "parquet" => Ok(Self::Parquet),
            "dir" => Ok(Self::Directory),
            _ => Err(format!(
                "`{s}` is not an input format (jsonl, text, csv, parquet or dir)"
            )),
        }
    }
}

/// What a record holds: text to tokenize, or token ids used as is.
#[derive(Clone, Debug, PartialEq)]
pub enum Content {
    Text(String),
    Ids(Vec<u32>),
}

/// The prompt a record asks for.
#[derive(Clone, Debug, PartialEq)]
pub enum PromptChoice {
    /// No `prompt_name` field: the job's prompt (command line or the model's default).
    Inherit,
    /// `"prompt_name": null`: no prompt.
    NoPrompt,
    Named(String),
    /// The document's own prompt: [`titled_prompt`] of its title (`--title-column`).
    Titled(String),
}

impl PromptChoice {
    /// The prompt text of this choice: `job_prompt`, none, or the model's named prompt.
    pub fn resolve<'a>(
        &'a self,
        tokenizer: &'a Tokenizer,
        job_prompt: Option<&'a str>,
    ) -> Result<Option<&'a str>> {
        match self {
            Self::Inherit => Ok(job_prompt),
            Self::NoPrompt => Ok(None),
            Self::Named(name) => tokenizer.prompt(name).map(Some),
            Self::Titled(prompt) => Ok(Some(prompt)),
        }
    }
}

/// The prompt of the documents that do not choose their own: the raw `prompt` string, else the
/// model's prompt named `prompt_name`, else the model's default prompt.
pub fn job_prompt<'a>(
    tokenizer: &'a Tokenizer,
    prompt: Option<&'a str>,
    prompt_name: Option<&str>,
) -> Result<Option<&'a str>> {
    match prompt {
        Some(prompt) => Ok(Some(prompt)),
        None => tokenizer.named_or_default_prompt(prompt_name),
    }
}

/// One input document.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    /// 1-based line number in the input.
    pub line: usize,
    /// The `id` field (a string or a number), if given.
    pub id: Option<Value>,
    pub content: Content,
    pub prompt: PromptChoice,
}

impl Record {
    /// The id written with the output: the record's `id`, else its 1-based line number.
    pub fn output_id(&self) -> Value {
        self.id.clone().unwrap_or_else(|| Value::from(self.line))
    }
}

/// A cheap identity of the content of `paths`, not of where they are (the machines that split a
/// corpus keep it and the model in other places): a CRC-32 over each file's length and its first
/// and last MiB, `crc32:XXXXXXXX`.
pub fn content_sample(paths: &[PathBuf]) -> Result<String> {
    const SAMPLE: u64 = 1 << 20;
    crc32_of(paths, |file, len, crc| {
        let mut buffer = Vec::new();
        // The first MiB, then the last one: the rest of a file under 2 MiB, nothing of one
        // under 1 MiB (a read past the end is empty).
        for start in [0, len.saturating_sub(SAMPLE).max(SAMPLE)] {
            buffer.clear();
            file.seek(SeekFrom::Start(start))?;
            file.take(SAMPLE).read_to_end(&mut buffer)?;
            crc.update(&buffer);
        }
        Ok(())
    })
}

/// The identity of the content of `paths`, every byte of it: a CRC-32 over each file's length
/// and bytes, `crc32:XXXXXXXX`. For the model's weights, which a job names by content (a
/// fine-tune of the same size differs somewhere in the middle, where [`content_sample`] does not
/// look); they are read at load anyway.
pub fn content_crc32(paths: &[PathBuf]) -> Result<String> {
    let mut buffer = vec![0u8; 1 << 20];
    crc32_of(paths, |file, _, crc| loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            return Ok(());
        }
        crc.update(&buffer[..read]);
    })
}

/// `crc32:XXXXXXXX` over each file's length and what `read` feeds the CRC of it.
fn crc32_of(
    paths: &[PathBuf],
    mut read: impl FnMut(&mut File, u64, &mut crc32fast::Hasher) -> std::io::Result<()>,
) -> Result<String> {
    let mut crc = crc32fast::Hasher::new();
    for path in paths {
        let io_error = |source| Error::Io {
            path: path.clone(),
            source,
        };
        let mut file = File::open(path).map_err(io_error)?;
        let len = file.metadata().map_err(io_error)?.len();
        crc.update(&len.to_le_bytes());
        read(&mut file, len, &mut crc).map_err(io_error)?;
    }
    Ok(format!("crc32:{:08x}", crc.finalize()))
}

/// A file the caller named cannot be made because its folder is not there (named as given:
/// the lock or temporary file beside it means nothing to them).
fn folder_missing(file: &Path) -> Error {
    Error::File {
        path: file.into(),
        message: "its folder does not exist".into(),
    }
}

/// The display name of an input path (`<stdin>` for `-`).
pub fn source_name(path: &str) -> &str {
    if path == "-" {
        "<stdin>"
    } else {
        path
    }
}

/// Read every record of `path` (`-` is stdin) with a [`reader::RecordReader`]: blank JSON Lines
/// are skipped; in text format every line is a document, an empty one included. The first
/// document that cannot be used is the error, naming its line (row).
pub fn read_records(
    path: &str,
    format: InputFormat,
    columns: &InputColumns,
) -> Result<Vec<Record>> {
    read_first_records(path, format, columns, None)
}

/// [`read_records`], stopping after the first `limit` documents (`None`: all of them); the
/// rest of the input is not read.
pub fn read_first_records(
    path: &str,
    format: InputFormat,
    columns: &InputColumns,
    limit: Option<usize>,
) -> Result<Vec<Record>> {
    let mut reader =
        reader::RecordReader::open(path, format, columns, reader::ReadPosition::default())?;
    let mut records = Vec::new();
    while limit.is_none_or(|limit| records.len() < limit) {
        let Some(document) = reader.next_document()? else {
            break;
        };
        records.push(document.record?);
    }
    Ok(records)
}

/// An error about the document at 1-based `line` of the input `path` (a row in Parquet, a
/// file's number in a directory).
pub fn document_error(path: &str, format: InputFormat, line: usize, message: String) -> Error {
    let source_name = source_name(path).into();
    match format {
        InputFormat::Parquet => Error::Row {
            source_name,
            row: line as u64,
            message,
        },
        InputFormat::Directory => Error::DirectoryFile {
            source_name,
            file: line,
            message,
        },
        InputFormat::Jsonl | InputFormat::Text | InputFormat::Csv => Error::Line {
            source_name,
            line,
            message,
        },
    }
}

/// Token ids of every record of the input `path` (read as `format`), in order: text gets its
/// prompt prepended (the record's `prompt_name`, else `job_prompt`) and is tokenized in
/// parallel; ids are validated. Errors name the input line (row).
pub fn tokenize_records(
    tokenizer: &Tokenizer,
    records: &[Record],
    (path, format): (&str, InputFormat),
    job_prompt: Option<&str>,
    truncation: Truncation,
) -> Result<Vec<Vec<u32>>> {
    let line_error = |line: usize, err: Error| {
        let message = match err {
            Error::Input { message, .. } => message,
            other => other.to_string(),
        };
        document_error(path, format, line, message)
    };
    let mut texts = Vec::new();
    let mut text_records = Vec::new();
    for (r, record) in records.iter().enumerate() {
        if let Content::Text(text) = &record.content {
            let prompt = record
                .prompt
                .resolve(tokenizer, job_prompt)
                .map_err(|e| line_error(record.line, e))?;
            texts.push(format!("{}{text}", prompt.unwrap_or("")));
            text_records.push(r);
        }
    }
    let mut encoded = tokenizer
        .encode_batch(&texts, truncation)
        .map_err(|e| match e {
            Error::Input { index, .. } => line_error(records[text_records[index]].line, e),
            other => other,
        })?
        .into_iter();
    records
        .iter()
        .map(|record| match &record.content {
            Content::Text(_) => Ok(encoded.next().expect("one encoding per text record")),
            Content::Ids(ids) => {
                tokenizer
                    .check_ids(0, ids)
                    .map_err(|e| line_error(record.line, e))?;
                Ok(ids.clone())
            }
        })
        .collect()
}

/// Split `lengths` (sequence lengths, in order) into consecutive groups of at most `max_tokens`
/// tokens; a sequence longer than the budget forms a group of its own (the offline packing of
/// `bench`; the engine's scheduler also fills a batch with later inputs that fit).
pub fn pack_batches(lengths: &[usize], max_tokens: usize) -> Vec<Range<usize>> {
    let mut groups = Vec::new();
    let (mut start, mut tokens) = (0, 0);
    for (i, &len) in lengths.iter().enumerate() {
        if i > start && tokens + len > max_tokens {
            groups.push(start..i);
            (start, tokens) = (i, 0);
        }
        tokens += len;
    }
    if start < lengths.len() {
        groups.push(start..lengths.len());
    }
    groups
}

/// What an output file holds, by extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    /// `{"id": ..., "embedding": [...]}` per input line.
    Jsonl,
    /// `[N, D]` float32 (or float16).
    Npy,
    /// Apache Parquet: `id` (utf8) and `embedding` (fixed-size list of D float32 or float16).
    Parquet,
}

impl FromStr for OutputFormat {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "npy" => Ok(Self::Npy),
            "jsonl" => Ok(Self::Jsonl),
            "parquet" => Ok(Self::Parquet),
            _ => Err(format!(
                "`{s}` is not an output format (npy, jsonl or parquet)"
            )),
        }
    }
}

impl OutputFormat {
    pub fn from_path(path: &Path) -> Result<Self> {
        match path.extension().and_then(|e| e.to_str()) {
            Some("jsonl") => Ok(Self::Jsonl),
            Some("npy") => Ok(Self::Npy),
            Some("parquet") => Ok(Self::Parquet),
            _ => Err(Error::File {
                path: path.into(),
                message: "the output must end in .jsonl, .npy or .parquet".into(),
            }),
        }
    }
}

/// A file written under a temporary name in its destination's directory and renamed onto it
/// by [`AtomicFile::commit`], which syncs the file and the directory. Dropped without a
/// successful commit (an error on the way, a failed commit included), the temporary file is
/// removed.
pub struct AtomicFile {
    dest: PathBuf,
    tmp: PathBuf,
    writer: Option<BufWriter<File>>,
    committed: bool,
}

impl AtomicFile {
    /// Written as `.NAME.tmp-PID` next to `dest`.
    pub fn create(dest: &Path) -> Result<Self> {
        let file_name = dest.file_name().ok_or_else(|| Error::File {
            path: dest.into(),
            message: "not a file name".into(),
        })?;
        let tmp = dest.with_file_name(format!(
            ".{}.tmp-{}",
            file_name.to_string_lossy(),
            std::process::id()
        ));
        Self::create_at(dest, tmp)
    }

    /// Written as `tmp`, which must be on the file system of `dest` (for the rename).
    pub fn create_at(dest: &Path, tmp: PathBuf) -> Result<Self> {
        let file = File::create(&tmp).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => folder_missing(dest),
            _ => Error::Io {
                path: tmp.clone(),
                source,
            },
        })?;
        Ok(Self {
            dest: dest.into(),
            tmp,
            writer: Some(BufWriter::with_capacity(1 << 20, file)),
            committed: false,
        })
    }

    pub fn writer(&mut self) -> &mut BufWriter<File> {
        self.writer.as_mut().expect("writer lives until commit")
    }

    /// An I/O error on the temporary file.
    pub fn io_error(&self, source: std::io::Error) -> Error {
        Error::Io {
            path: self.tmp.clone(),
            source,
        }
    }

    /// Flush, sync, rename onto the destination and sync its directory.
    pub fn commit(mut self) -> Result<()> {
        let writer = self.writer.take().expect("committed once");
        let file = writer
            .into_inner()
            .map_err(|e| self.io_error(e.into_error()))?;
        file.sync_all().map_err(|e| self.io_error(e))?;
        std::fs::rename(&self.tmp, &self.dest).map_err(|source| Error::Io {
            path: self.dest.clone(),
            source,
        })?;
        self.committed = true;
        checkpoint::sync_dir(&self.dest)
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.committed {
            // Drop the buffered bytes unwritten: the file goes anyway.
            drop(self.writer.take().map(BufWriter::into_parts));
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn content_identities_follow_content_not_place() {
        let dir = tempfile::tempdir().unwrap();
        let sample = |name: &str, bytes: &[u8]| {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            content_sample(&[path]).unwrap()
        };
        // 3 MiB: a first, a middle and a last MiB.
        let base: Vec<u8> = (0..3u32 << 20).map(|i| (i % 251) as u8).collect();
        let changed = |at: usize| {
            let mut bytes = base.clone();
            bytes[at] ^= 1;
            bytes
        };
        let whole = sample("a", &base);
        assert!(whole.starts_with("crc32:") && whole.len() == 14, "{whole}");
        assert_eq!(sample("elsewhere", &base), whole);
        assert_ne!(sample("first", &changed(10)), whole);
        assert_ne!(sample("last", &changed(base.len() - 10)), whole);
        assert_ne!(sample("longer", &[&base[..], b"x"].concat()), whole);
        // The middle MiB is not read: the price of a cheap identity.
        assert_eq!(sample("middle", &changed(base.len() / 2)), whole);
        // A small file is read whole.
        assert_ne!(
            sample("small", &base[..1000]),
            sample("small2", &changed(500)[..1000])
        );
        // The whole content's CRC sees the middle too.
        let crc = |name: &str, bytes: &[u8]| {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            content_crc32(&[path]).unwrap()
        };
        let whole_crc = crc("crc-a", &base);
        assert_eq!(crc("crc-elsewhere", &base), whole_crc);
        assert_ne!(crc("crc-middle", &changed(3 << 19)), whole_crc);
    }

    #[test]
    fn formats_follow_the_extension() {
        assert_eq!(
            InputFormat::from_path("a.jsonl").unwrap(),
            InputFormat::Jsonl
        );
        assert_eq!(InputFormat::from_path("-").unwrap(), InputFormat::Jsonl);
        assert_eq!(InputFormat::from_path("a.txt").unwrap(), InputFormat::Text);
        assert_eq!(InputFormat::from_path("a.csv").unwrap(), InputFormat::Csv);
        assert_eq!(
            InputFormat::from_path("a.parquet").unwrap(),
            InputFormat::Parquet
        );
        assert_eq!("parquet".parse(), Ok(InputFormat::Parquet));
        assert!(InputFormat::from_path("a.tsv").is_err());
        assert_eq!(
            InputFormat::from_path("c4-train.00000-of-01024.json.gz").unwrap(),
            InputFormat::Jsonl
        );
        assert_eq!(
            InputFormat::from_path("a.txt.gz").unwrap(),
            InputFormat::Text
        );
        assert_eq!(
            InputFormat::from_path("a.csv.gz").unwrap(),
            InputFormat::Csv
        );
        assert_eq!(
            InputFormat::from_path("00.jsonl.zst").unwrap(),
            InputFormat::Jsonl
        );
        assert_eq!(
            InputFormat::from_path("dump.ndjson.gz").unwrap(),
            InputFormat::Jsonl
        );
        // Parquet compresses its own pages.
        assert!(InputFormat::from_path("a.parquet.gz").is_err());
        assert!(InputFormat::from_path("a.gz").is_err());
        let dir = std::env::temp_dir();
        let dir = dir.to_str().unwrap();
        assert_eq!(InputFormat::from_path(dir).unwrap(), InputFormat::Directory);
        assert_eq!("dir".parse(), Ok(InputFormat::Directory));
        assert_eq!(
            OutputFormat::from_path(Path::new("o.npy")).unwrap(),
            OutputFormat::Npy
        );
        assert_eq!(
            OutputFormat::from_path(Path::new("o.parquet")).unwrap(),
            OutputFormat::Parquet
        );
        assert!(OutputFormat::from_path(Path::new("o.bin")).is_err());
    }

    #[test]
    fn prompts_resolve_raw_then_named_then_default() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny");
        let config = crate::model::ModelConfig::load(&dir).unwrap();
        let tokenizer = Tokenizer::load(&dir, &config).unwrap();
        let st_config: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join("config_sentence_transformers.json")).unwrap(),
        )
        .unwrap();
        let prompt = |name: &str| st_config["prompts"][name].as_str().unwrap();
        // The fixture has no default prompt.
        assert_eq!(st_config["default_prompt_name"], Value::Null);

        let job = |raw, name| job_prompt(&tokenizer, raw, name);
        assert_eq!(job(Some("raw: "), Some("query")).unwrap(), Some("raw: "));
        assert_eq!(job(None, Some("query")).unwrap(), Some(prompt("query")));
        assert_eq!(job(None, None).unwrap(), None);
        let err = job(None, Some("querry")).unwrap_err().to_string();
        assert!(err.contains("unknown prompt name `querry`"), "{err}");

        // A model with a default prompt: it applies when neither `prompt` nor a name is given.
        let mut with_default = config.clone();
        with_default.default_prompt_name = Some("query".into());
        let defaulted = Tokenizer::load(&dir, &with_default).unwrap();
        let job = |raw, name| job_prompt(&defaulted, raw, name);
        assert_eq!(job(None, None).unwrap(), Some(prompt("query")));
        assert_eq!(
            job(None, Some("document")).unwrap(),
            Some(prompt("document"))
        );
        assert_eq!(job(Some("raw: "), None).unwrap(), Some("raw: "));

        let choice = |choice: PromptChoice| {
            choice
                .resolve(&tokenizer, Some("job: "))
                .map(|p| p.map(String::from))
        };
        assert_eq!(
            choice(PromptChoice::Inherit).unwrap().as_deref(),
            Some("job: ")
        );
        assert_eq!(choice(PromptChoice::NoPrompt).unwrap(), None);
        assert_eq!(
            choice(PromptChoice::Named("document".into()))
                .unwrap()
                .as_deref(),
            Some(prompt("document"))
        );
        assert!(choice(PromptChoice::Named("nope".into())).is_err());
        let titled = titled_prompt(Some("Gemma"));
        assert_eq!(
            choice(PromptChoice::Titled(titled.clone())).unwrap(),
            Some(titled)
        );

        // An untitled document gets the model's document prompt (the model card's format).
        for untitled in [None, Some(""), Some(" \t")] {
            assert_eq!(titled_prompt(untitled), prompt("document"));
        }
        assert_eq!(titled_prompt(Some("Gemma")), "title: Gemma | text: ");
    }

    #[test]
    fn packing_is_greedy_in_order() {
        assert_eq!(pack_batches(&[3, 3, 3, 5, 1], 6), [0..2, 2..3, 3..5]);
        assert_eq!(pack_batches(&[9, 2], 6), [0..1, 1..2]);
        assert_eq!(pack_batches(&[], 6), Vec::<Range<usize>>::new());
    }

    #[test]
    fn uncommitted_output_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.npy");
        {
            let mut file = AtomicFile::create(&dest).unwrap();
            file.writer().write_all(b"partial").unwrap();
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let mut file = AtomicFile::create(&dest).unwrap();
        file.writer().write_all(b"whole").unwrap();
        file.commit().unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        assert_eq!(std::fs::read(&dest).unwrap(), b"whole");
    }

    #[test]
    fn a_failed_commit_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        // The rename fails: the destination is a directory that is not empty.
        let dest = dir.path().join("out.npy");
        std::fs::create_dir(&dest).unwrap();
        std::fs::write(dest.join("keep"), b"").unwrap();
        for tmp in [None, Some(dir.path().join("out.npy.tmp"))] {
            let mut file = match tmp {
                None => AtomicFile::create(&dest).unwrap(),
                Some(tmp) => AtomicFile::create_at(&dest, tmp).unwrap(),
            };
            file.writer().write_all(b"rows").unwrap();
            let err = file.commit().unwrap_err().to_string();
            assert!(err.contains("out.npy"), "{err}");
            let names: Vec<_> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(names, ["out.npy"], "a temporary file was left behind");
        }
    }
}
