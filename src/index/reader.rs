//! Streaming input: one record at a time with the byte offset (the row, for Parquet) after it,
//! so a job can resume by seeking (never holding the corpus in memory). Gzip- or
//! zstd-compressed JSON Lines, text and CSV are decompressed as they are read; their offsets
//! count decompressed bytes, and a resume decompresses up to its offset again.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use flate2::bufread::MultiGzDecoder;
use ruzstd::decoding::errors::{FrameDecoderError, ReadFrameHeaderError};
use ruzstd::decoding::{BlockDecodingStrategy, FrameDecoder};

use serde_json::Value;

use super::job::Shard;
use super::json_line;
use super::parquet_input::{ParquetInput, RowError};
use super::{source_name, titled_prompt, Content, InputColumns, InputFormat, PromptChoice, Record};
use crate::tokenize::TRUNCATED_TEXT_BYTES;
use crate::{Error, Result};

/// Where a reader stands: the next byte to read, the last line read, documents seen so far.
/// In a Parquet input all three are the number of rows read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadPosition {
    pub offset: u64,
    /// 1-based number of the last line (Parquet: row) read (0 before the first). In a CSV
    /// input, the line breaks before `offset`: a last line with none after it is not counted.
    pub line: usize,
    /// Documents (non-blank JSON lines, every text line) seen so far, bad ones included.
    pub docs: u64,
}

/// One document of the input: its 0-based document index and the record, or why its line
/// cannot be used (an [`Error::Line`]; an [`Error::Row`] in Parquet).
pub struct Document {
    pub doc: u64,
    /// The document's id when it is known without reading it (a directory's file path), so
    /// that a document that cannot be read is still named in the rejects file.
    pub known_id: Option<Value>,
    /// 1-based line (Parquet: row) number.
    pub line: usize,
    pub record: Result<Record>,
}

/// Reads documents from a file (or stdin, `-`, which cannot resume past its start).
pub struct RecordReader {
    source: Source,
    name: String,
    format: InputFormat,
    /// The fields of a JSON line (CSV and Parquet sources hold their columns' places).
    columns: InputColumns,
    position: ReadPosition,
    /// A compressed file's bytes read so far (by the decompressor, a buffer ahead).
    compressed_read: Option<Arc<AtomicU64>>,
    /// The documents returned; the others are passed over (not parsed, a file not read).
    shard: Shard,
    buf: Vec<u8>,
}

/// What an input's first bytes say it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// Gzip's magic bytes; a zstd frame's, or a skippable frame's (`pzstd` writes one first).
    fn of(start: &[u8]) -> Self {
        match start {
            [0x1f, 0x8b, ..] => Self::Gzip,
            [0x28, 0xb5, 0x2f, 0xfd, ..] => Self::Zstd,
            [first, 0x2a, 0x4d, 0x18, ..] if first & 0xf0 == 0x50 => Self::Zstd,
            _ => Self::None,
        }
    }
}

/// An input's bytes, decompressed when they are gzip (multi-member, as `cat a.gz b.gz` makes)
/// or zstd.
enum Decompressed<R> {
    Plain(R),
    Gzip(Box<MultiGzDecoder<R>>),
    Zstd(Box<ZstdFrames<R>>),
}

impl<R: BufRead> Decompressed<R> {
    /// `source`, decompressed as its first bytes say (looked at without consuming them, so a
    /// pipe works too).
    fn new(mut source: R) -> std::io::Result<(Self, Compression)> {
        let compression = Compression::of(source.fill_buf()?);
        let stream = match compression {
            Compression::None => Self::Plain(source),
            Compression::Gzip => Self::Gzip(Box::new(MultiGzDecoder::new(source))),
            Compression::Zstd => Self::Zstd(Box::new(ZstdFrames::new(source))),
        };
        Ok((stream, compression))
    }
}

impl<R: BufRead> Read for Decompressed<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Self::Plain(source) => source.read(buf),
            Self::Gzip(decoder) => decoder.read(buf),
            Self::Zstd(decoder) => decoder.read(buf),
        }
    }
}

/// Only a plain input seeks (a CSV reader resumes that way).
impl<R: BufRead + Seek> Seek for Decompressed<R> {
    fn seek(&mut self, position: SeekFrom) -> std::io::Result<u64> {
        match self {
            Self::Plain(source) => source.seek(position),
            Self::Gzip(_) | Self::Zstd(_) => Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "a compressed stream cannot seek",
            )),
        }
    }
}

/// An input file's bytes, decompressed.
type FileStream = Decompressed<BufReader<CountingReader>>;

/// A zstd stream of one or more frames (as `cat a.zst b.zst` or `pzstd` make; skippable frames
/// passed over), decompressed, each frame's checksum checked.
struct ZstdFrames<R> {
    source: R,
    frame: FrameDecoder,
    /// Whether `frame` holds a frame still to be read out.
    in_frame: bool,
}

impl<R: BufRead> ZstdFrames<R> {
    fn new(source: R) -> Self {
        Self {
            source,
            frame: FrameDecoder::new(),
            in_frame: false,
        }
    }
}

impl<R: BufRead> Read for ZstdFrames<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if self.in_frame {
                while self.frame.can_collect() == 0 && !self.frame.is_finished() {
                    self.frame
                        .decode_blocks(&mut self.source, BlockDecodingStrategy::UptoBlocks(1))
                        .map_err(std::io::Error::other)?;
                }
                let n = self.frame.read(buf)?;
                if n > 0 || buf.is_empty() {
                    return Ok(n);
                }
                if let (Some(stored), Some(computed)) = (
                    self.frame.get_checksum_from_data(),
                    self.frame.get_calculated_checksum(),
                ) {
                    if stored != computed {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            "zstd frame checksum mismatch (the file is damaged)",
                        ));
                    }
                }
                self.in_frame = false;
            }
            if self.source.fill_buf()?.is_empty() {
                return Ok(0);
            }
            match self.frame.init(&mut self.source) {
                Ok(()) => self.in_frame = true,
                Err(FrameDecoderError::ReadFrameHeaderError(ReadFrameHeaderError::SkipFrame {
                    length,
                    ..
                })) => {
                    let length = u64::from(length);
                    let skipped =
                        std::io::copy(&mut (&mut self.source).take(length), &mut std::io::sink())?;
                    if skipped < length {
                        return Err(std::io::ErrorKind::UnexpectedEof.into());
                    }
                }
                Err(e) => return Err(std::io::Error::other(e)),
            }
        }
    }
}

/// A file that counts the bytes read from it.
struct CountingReader {
    file: File,
    read: Arc<AtomicU64>,
}

impl Read for CountingReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read(buf)?;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

impl Seek for CountingReader {
    fn seek(&mut self, position: SeekFrom) -> std::io::Result<u64> {
        self.file.seek(position)
    }
}

impl FileStream {
    /// `path` opened and decompressed as its first bytes say; with the count of compressed
    /// bytes read when it is compressed.
    fn open(path: &str) -> Result<(Self, Option<Arc<AtomicU64>>)> {
        let io_error = |source| Error::Io {
            path: path.into(),
            source,
        };
        let read = Arc::new(AtomicU64::new(0));
        let counting = CountingReader {
            file: File::open(path).map_err(io_error)?,
            read: Arc::clone(&read),
        };
        let (stream, compression) =
            Self::new(BufReader::with_capacity(1 << 16, counting)).map_err(io_error)?;
        Ok((stream, (compression != Compression::None).then_some(read)))
    }

    /// Go to decompressed byte `offset`: a seek in a plain file, decompressing up to it in a
    /// compressed one.
    fn skip_to(&mut self, offset: u64, path: &str) -> Result<()> {
        let io_error = |source| Error::Io {
            path: path.into(),
            source,
        };
        match self {
            Self::Plain(_) if offset == 0 => {}
            Self::Plain(_) => {
                self.seek(SeekFrom::Start(offset)).map_err(io_error)?;
            }
            Self::Gzip(_) | Self::Zstd(_) => {
                let skipped = std::io::copy(&mut self.take(offset), &mut std::io::sink())
                    .map_err(io_error)?;
                if skipped < offset {
                    return Err(Error::File {
                        path: path.into(),
                        message: format!(
                            "cannot resume at byte {offset}: the decompressed input ends at \
                             byte {skipped}"
                        ),
                    });
                }
            }
        }
        Ok(())
    }
}

enum Source {
    Lines(Box<dyn BufRead + Send>),
    Csv {
        reader: csv::Reader<CsvInput>,
        record: csv::StringRecord,
        places: CsvPlaces,
    },
    Parquet(ParquetInput),
    /// A directory's files, relative to it, in order.
    Directory {
        root: PathBuf,
        files: Vec<PathBuf>,
    },
}

/// How much of a directory input's file is read: what the tokenizer would see of it anyway
/// (far more than the 2048 tokens the model keeps).
const DIRECTORY_FILE_PREFIX_BYTES: u64 = TRUNCATED_TEXT_BYTES as u64;

/// The text of the file at `path`, up to [`DIRECTORY_FILE_PREFIX_BYTES`] (cut after the last
/// whole character), or why it cannot be read.
fn read_text_prefix(path: &Path) -> std::result::Result<String, String> {
    use std::io::Read;
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|file| {
            file.take(DIRECTORY_FILE_PREFIX_BYTES)
                .read_to_end(&mut bytes)
        })
        .map_err(|e| e.to_string())?;
    let cut = bytes.len() as u64 == DIRECTORY_FILE_PREFIX_BYTES;
    match String::from_utf8(bytes) {
        Ok(text) => Ok(text),
        // A character split by the cut, and nothing wrong before it.
        Err(e) if cut && e.utf8_error().error_len().is_none() => {
            let whole = e.utf8_error().valid_up_to();
            let mut bytes = e.into_bytes();
            bytes.truncate(whole);
            Ok(String::from_utf8(bytes).expect("valid up to the cut"))
        }
        Err(e) => Err(format!("not UTF-8 ({})", e.utf8_error())),
    }
}

/// A directory input's documents: every file below `root`, listed once per job, so that the
/// checkpoint's fingerprint and the reader see the same files.
pub struct DirectoryListing {
    root: PathBuf,
    files: Vec<PathBuf>,
}

impl DirectoryListing {
    pub fn read(root: &Path) -> Result<Self> {
        Ok(Self {
            root: root.to_path_buf(),
            files: directory_files(root)?,
        })
    }

    /// What a resumed job must find again: the number of files and a hash of their paths,
    /// sizes, modification and change times and inodes (FNV-1a, stable across builds).
    pub fn fingerprint(&self) -> Result<(u64, String)> {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        let mut feed = |bytes: &[u8]| {
            for &b in bytes {
                hash = (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
            }
        };
        for file in &self.files {
            let path = self.root.join(file);
            let meta = std::fs::metadata(&path).map_err(|source| Error::Io { path, source })?;
            let modified = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            feed(file.as_os_str().as_encoded_bytes());
            feed(&[0]);
            feed(&meta.len().to_le_bytes());
            feed(&modified.to_le_bytes());
            // A rewrite that kept the size and set the time back still moves the change time.
            feed(&meta.ctime().to_le_bytes());
            feed(&meta.ctime_nsec().to_le_bytes());
            feed(&meta.ino().to_le_bytes());
        }
        Ok((self.files.len() as u64, format!("{hash:016x}")))
    }
}

/// Every file below `root` (hidden entries, `.name`, left out; symbolic links to directories
/// not followed), relative to it, sorted by path.
fn directory_files(root: &Path) -> Result<Vec<PathBuf>> {
    let io_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    let mut files = Vec::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(relative) = pending.pop() {
        let dir = root.join(&relative);
        for entry in std::fs::read_dir(&dir).map_err(io_error(&dir))? {
            let entry = entry.map_err(io_error(&dir))?;
            if entry.file_name().as_encoded_bytes().starts_with(b".") {
                continue;
            }
            let kind = entry.file_type().map_err(io_error(&entry.path()))?;
            let path = relative.join(entry.file_name());
            if kind.is_dir() {
                pending.push(path);
            } else if kind.is_file() || (kind.is_symlink() && entry.path().is_file()) {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// A CSV input as the `csv` reader takes it, keeping the bytes taken since the last record so
/// that the reader can count their lines itself. The `csv` crate's own count lags behind
/// blank lines and behind the `\n` of a CRLF, which it takes only with the next record
/// (BurntSushi/rust-csv#395). Lines end at `\n`, `\r\n` or a lone `\r`, as the `csv` reader's
/// records do.
struct CsvInput {
    stream: FileStream,
    /// Bytes taken from `stream` and not yet counted, from byte `counted_to` on.
    uncounted: Vec<u8>,
    counted_to: u64,
    /// The last byte counted is a `\r`: a `\n` right after it ends the same line.
    after_cr: bool,
}

/// The line breaks in a stretch of CSV input that begins a record: before the record's first
/// byte (blank lines, the end of a CRLF), and in all of it.
struct LineBreaks {
    leading: usize,
    all: usize,
}

impl CsvInput {
    fn new(stream: FileStream) -> Self {
        Self {
            stream,
            uncounted: Vec::new(),
            counted_to: 0,
            after_cr: false,
        }
    }

    /// Count the line breaks in the bytes from the last count up to byte `end` (where the
    /// `csv` reader stands after a record), and forget those bytes.
    fn count_to(&mut self, end: u64) -> LineBreaks {
        let taken = (end.saturating_sub(self.counted_to) as usize).min(self.uncounted.len());
        let mut breaks = LineBreaks { leading: 0, all: 0 };
        let mut in_leading = true;
        for &byte in &self.uncounted[..taken] {
            let is_break = byte == b'\r' || (byte == b'\n' && !self.after_cr);
            in_leading &= byte == b'\r' || byte == b'\n';
            breaks.all += usize::from(is_break);
            breaks.leading += usize::from(is_break && in_leading);
            self.after_cr = byte == b'\r';
        }
        self.uncounted.drain(..taken);
        self.counted_to += taken as u64;
        breaks
    }
}

impl Read for CsvInput {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let read = self.stream.read(buf)?;
        self.uncounted.extend_from_slice(&buf[..read]);
        Ok(read)
    }
}

/// A seek to byte `p` reads the byte before it, so that a `\n` at `p` is known to end a CRLF
/// or a line of its own.
impl Seek for CsvInput {
    fn seek(&mut self, position: SeekFrom) -> std::io::Result<u64> {
        let SeekFrom::Start(offset) = position else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "a CSV input seeks only to an offset from its start",
            ));
        };
        self.after_cr = false;
        if offset > 0 {
            self.stream.seek(SeekFrom::Start(offset - 1))?;
            let mut before = [0u8];
            self.stream.read_exact(&mut before)?;
            self.after_cr = before[0] == b'\r';
        } else {
            self.stream.seek(SeekFrom::Start(0))?;
        }
        self.uncounted.clear();
        self.counted_to = offset;
        Ok(offset)
    }
}

/// The indices of a CSV input's text, id and title columns.
struct CsvPlaces {
    text: usize,
    id: Option<usize>,
    title: Option<usize>,
}

/// A CSV reader on `stream` (the file `path`) past its header, with the places of the columns
/// and the header's lines.
fn open_csv(
    stream: FileStream,
    path: &str,
    columns: &InputColumns,
) -> Result<(csv::Reader<CsvInput>, CsvPlaces, usize)> {
    let file_error = |message: String| Error::File {
        path: path.into(),
        message,
    };
    let mut reader = csv::ReaderBuilder::new().from_reader(CsvInput::new(stream));
    let headers = reader
        .headers()
        .map_err(|e| file_error(format!("CSV header: {e}")))?
        .clone();
    let header_end = reader.position().byte();
    let header_lines = reader.get_mut().count_to(header_end).all;
    let find = |name: &str, flag: &str| {
        headers.iter().position(|h| h == name).ok_or_else(|| {
            file_error(format!(
                "no column `{name}` ({flag}); the header has: {}",
                headers.iter().collect::<Vec<_>>().join(", ")
            ))
        })
    };
    let places = CsvPlaces {
        text: find(&columns.text, "--text-column")?,
        id: columns
            .id
            .as_deref()
            .map(|name| find(name, "--id-column"))
            .transpose()?,
        title: columns
            .title
            .as_deref()
            .map(|name| find(name, "--title-column"))
            .transpose()?,
    };
    Ok((reader, places, header_lines))
}

/// Move a CSV reader past its header to `start`: a seek in a plain file; in a compressed one,
/// reading the records before it again.
fn resume_csv(reader: &mut csv::Reader<CsvInput>, path: &str, start: ReadPosition) -> Result<()> {
    let resume_error = |message: String| Error::File {
        path: path.into(),
        message: format!("cannot resume at byte {}: {message}", start.offset),
    };
    if matches!(reader.get_ref().stream, FileStream::Plain(_)) {
        let mut position = csv::Position::new();
        position.set_byte(start.offset).set_record(start.docs + 1);
        return reader
            .seek(position)
            .map_err(|e| resume_error(e.to_string()));
    }
    let mut record = csv::ByteRecord::new();
    while reader.position().byte() < start.offset {
        let read = reader.read_byte_record(&mut record);
        let end = reader.position().byte();
        reader.get_mut().count_to(end);
        match read {
            Ok(true) => {}
            Ok(false) => return Err(resume_error("the decompressed input ends before it".into())),
            // A bad row before the resume point was a bad document then: read on.
            Err(e) if !matches!(e.kind(), csv::ErrorKind::Io(_)) => {}
            Err(e) => return Err(resume_error(e.to_string())),
        }
    }
    if reader.position().byte() != start.offset {
        return Err(resume_error("no record starts there".into()));
    }
    Ok(())
}

impl RecordReader {
    pub fn open(
        path: &str,
        format: InputFormat,
        columns: &InputColumns,
        start: ReadPosition,
    ) -> Result<Self> {
        let name = source_name(path).to_string();
        columns.check_fit(path, format)?;
        if format == InputFormat::Directory {
            return Self::open_directory(DirectoryListing::read(Path::new(path))?, start);
        }
        if format == InputFormat::Parquet {
            if path == "-" {
                return Err(Error::File {
                    path: name.into(),
                    message: "Parquet input must be a file".into(),
                });
            }
            return Ok(Self {
                source: Source::Parquet(ParquetInput::open(path, columns, start.offset)?),
                name,
                format,
                columns: columns.clone(),
                position: start,
                compressed_read: None,
                shard: Shard::default(),
                buf: Vec::new(),
            });
        }
        if format == InputFormat::Csv {
            if path == "-" {
                return Err(Error::File {
                    path: name.into(),
                    message: "CSV input must be a file".into(),
                });
            }
            let (stream, compressed_read) = FileStream::open(path)?;
            let (mut reader, places, header_lines) = open_csv(stream, path, columns)?;
            let position = if start.offset > 0 {
                resume_csv(&mut reader, path, start)?;
                start
            } else {
                ReadPosition {
                    line: header_lines,
                    ..start
                }
            };
            return Ok(Self {
                source: Source::Csv {
                    reader,
                    record: csv::StringRecord::new(),
                    places,
                },
                name,
                format,
                columns: columns.clone(),
                position,
                compressed_read,
                shard: Shard::default(),
                buf: Vec::new(),
            });
        }
        let (input, compressed_read): (Box<dyn BufRead + Send>, _) = if path == "-" {
            if start.offset != 0 {
                return Err(Error::File {
                    path: name.into(),
                    message: "standard input cannot be resumed: give a file, or delete the job's \
                              checkpoint to start over"
                        .into(),
                });
            }
            let stdin = BufReader::with_capacity(1 << 20, std::io::stdin());
            let (stream, _) = Decompressed::new(stdin).map_err(|source| Error::Io {
                path: name.clone().into(),
                source,
            })?;
            match stream {
                Decompressed::Plain(stdin) => (Box::new(stdin), None),
                compressed => (
                    Box::new(BufReader::with_capacity(1 << 20, compressed)),
                    None,
                ),
            }
        } else {
            let (mut stream, compressed_read) = FileStream::open(path)?;
            stream.skip_to(start.offset, path)?;
            (
                Box::new(BufReader::with_capacity(1 << 20, stream)),
                compressed_read,
            )
        };
        Ok(Self {
            source: Source::Lines(input),
            name,
            format,
            columns: columns.clone(),
            position: start,
            compressed_read,
            shard: Shard::default(),
            buf: Vec::new(),
        })
    }

    /// A directory input's reader over the files `listing` found.
    pub fn open_directory(listing: DirectoryListing, start: ReadPosition) -> Result<Self> {
        let DirectoryListing { root, files } = listing;
        if start.offset > files.len() as u64 {
            return Err(Error::File {
                path: root,
                message: format!(
                    "cannot resume at file {}: the directory has {} files",
                    start.offset,
                    files.len()
                ),
            });
        }
        Ok(Self {
            name: root.display().to_string(),
            source: Source::Directory { root, files },
            format: InputFormat::Directory,
            columns: InputColumns::default(),
            position: start,
            compressed_read: None,
            shard: Shard::default(),
            buf: Vec::new(),
        })
    }

    /// Return only `shard`'s documents from now on (their indices, lines and the position
    /// still count every document).
    pub fn keep_only(&mut self, shard: Shard) {
        self.shard = shard;
    }

    /// Where the next document starts.
    pub fn position(&self) -> ReadPosition {
        self.position
    }

    /// How far into [`Self::extent`] the reader is: the position's offset, but the compressed
    /// bytes read in a compressed file.
    pub fn progress(&self) -> u64 {
        self.compressed_read
            .as_ref()
            .map_or(self.position.offset, |read| read.load(Ordering::Relaxed))
    }

    /// Where [`Self::progress`] ends: the file's length, or its rows for Parquet; `None` for
    /// stdin.
    pub fn extent(&self, path: &str) -> Option<u64> {
        match &self.source {
            Source::Parquet(input) => Some(input.total_rows()),
            Source::Directory { files, .. } => Some(files.len() as u64),
            Source::Lines(_) | Source::Csv { .. } => std::fs::metadata(path).ok().map(|m| m.len()),
        }
    }

    /// The next document, `None` at the end of the input.
    pub fn next_document(&mut self) -> Result<Option<Document>> {
        let input = match &mut self.source {
            Source::Lines(input) => input,
            Source::Csv { .. } | Source::Parquet(_) => loop {
                let document = match self.source {
                    Source::Csv { .. } => self.next_csv_document()?,
                    _ => self.next_parquet_document()?,
                };
                match document {
                    Some(document) if !self.shard.holds(document.doc) => continue,
                    document => return Ok(document),
                }
            },
            Source::Directory { .. } => return self.next_directory_document(),
        };
        loop {
            self.buf.clear();
            let read = read_line(input, &mut self.buf).map_err(|source| Error::Io {
                path: self.name.clone().into(),
                source,
            })?;
            if read == 0 {
                return Ok(None);
            }
            self.position.offset += read as u64;
            self.position.line += 1;
            let line = self.position.line;
            let raw = self.buf.strip_suffix(b"\n").unwrap_or(&self.buf);
            let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
            // A byte-order mark opening the file (as Windows tools write UTF-8) is no text, as
            // the CSV reader and pandas take it.
            let raw = match line {
                1 => raw.strip_prefix(b"\xef\xbb\xbf").unwrap_or(raw),
                _ => raw,
            };
            let error = |message: String| Error::Line {
                source_name: self.name.clone(),
                line,
                message,
            };
            let text = std::str::from_utf8(raw);
            // A blank JSON line is no document (CSV, Parquet and directories have sources of
            // their own).
            if self.format != InputFormat::Text && text.is_ok_and(|t| t.trim().is_empty()) {
                continue;
            }
            let doc = self.position.docs;
            self.position.docs += 1;
            if !self.shard.holds(doc) {
                continue;
            }
            let record = match text {
                Err(e) => Err(error(format!("not UTF-8 ({e})"))),
                Ok(text) if self.format == InputFormat::Text => Ok(Record {
                    line,
                    id: None,
                    content: Content::Text(text.to_string()),
                    prompt: PromptChoice::Inherit,
                }),
                Ok(text) => parse_json_line(line, text, &self.columns).map_err(error),
            };
            // A line refused for its text still names itself by the id its row would have had,
            // where that is known.
            let known_id = match (&record, text) {
                (Err(_), Ok(text)) if self.format == InputFormat::Jsonl => {
                    json_line_id(line, text, &self.columns)
                }
                (Err(_), _) if self.format == InputFormat::Text => place_id(&self.columns, line),
                _ => None,
            };
            return Ok(Some(Document {
                doc,
                known_id,
                line,
                record,
            }));
        }
    }
}

impl RecordReader {
    fn next_directory_document(&mut self) -> Result<Option<Document>> {
        let Source::Directory { root, files } = &self.source else {
            return Ok(None);
        };
        // Other shards' files are passed over unread.
        let mut doc = self.position.docs;
        while !self.shard.holds(doc) && (doc as usize) < files.len() {
            doc += 1;
        }
        let Some(file) = files.get(doc as usize) else {
            // The end: past the files other shards hold too.
            self.position = ReadPosition {
                offset: files.len() as u64,
                line: files.len(),
                docs: files.len() as u64,
            };
            return Ok(None);
        };
        let number = doc as usize + 1;
        let id = file.to_string_lossy().into_owned();
        let error = |message: String| Error::DirectoryFile {
            source_name: self.name.clone(),
            file: number,
            message: format!("{id}: {message}"),
        };
        let text = match file.to_str() {
            // Its id could not be written as it is (and could match another's).
            None => Err(error("the file name is not UTF-8".into())),
            Some(_) => read_text_prefix(&root.join(file)).map_err(error),
        };
        let record = text.map(|text| Record {
            line: number,
            id: Some(Value::from(id.clone())),
            content: Content::Text(text),
            prompt: PromptChoice::Inherit,
        });
        self.position = ReadPosition {
            offset: number as u64,
            line: number,
            docs: number as u64,
        };
        Ok(Some(Document {
            doc,
            known_id: Some(Value::from(id)),
            line: number,
            record,
        }))
    }

    fn next_parquet_document(&mut self) -> Result<Option<Document>> {
        let Source::Parquet(input) = &mut self.source else {
            return Ok(None);
        };
        let Some(row) = input.next_row()? else {
            return Ok(None);
        };
        let doc = self.position.docs;
        let number = doc + 1;
        let mut known_id = None;
        let record = match row {
            Ok(row) => Ok(Record {
                line: number as usize,
                id: row.id,
                content: Content::Text(row.text),
                prompt: match row.title {
                    Some(title) => PromptChoice::Titled(titled_prompt(title.as_deref())),
                    None => PromptChoice::Inherit,
                },
            }),
            Err(RowError { id, message }) => {
                // Without an id column, the id its row would have had is its number.
                known_id = id.or_else(|| place_id(&self.columns, number as usize));
                Err(Error::Row {
                    source_name: self.name.clone(),
                    row: number,
                    message,
                })
            }
        };
        self.position = ReadPosition {
            offset: number,
            line: number as usize,
            docs: number,
        };
        Ok(Some(Document {
            doc,
            known_id,
            line: number as usize,
            record,
        }))
    }

    fn next_csv_document(&mut self) -> Result<Option<Document>> {
        let Source::Csv {
            reader,
            record,
            places,
        } = &mut self.source
        else {
            return Ok(None);
        };
        let read = reader.read_record(record);
        let next = reader.position().byte();
        let breaks = reader.get_mut().count_to(next);
        let line = self.position.line + breaks.leading + 1;
        let line_error = |message: String| Error::Line {
            source_name: self.name.clone(),
            line,
            message,
        };
        let record = match read {
            Ok(false) => return Ok(None),
            // Unreadable bytes in the file, not a bad row: the job cannot go on.
            Err(e) if matches!(e.kind(), csv::ErrorKind::Io(_)) => {
                return Err(Error::File {
                    path: self.name.clone().into(),
                    message: e.to_string(),
                })
            }
            Err(e) => Err(line_error(format!("CSV: {}", csv_row_problem(&e)))),
            // Every record has the header's fields (a row of another length is a CSV error).
            Ok(true) => Ok(Record {
                line,
                id: places.id.and_then(|i| record.get(i)).map(Value::from),
                content: Content::Text(record.get(places.text).unwrap_or_default().to_string()),
                prompt: match places.title {
                    Some(i) => PromptChoice::Titled(titled_prompt(record.get(i))),
                    None => PromptChoice::Inherit,
                },
            }),
        };
        // A bad row is named by the id its row would have had where that is its line number.
        let known_id = record
            .is_err()
            .then(|| place_id(&self.columns, line))
            .flatten();
        self.position.offset = next;
        self.position.line += breaks.all;
        let doc = self.position.docs;
        self.position.docs += 1;
        Ok(Some(Document {
            doc,
            known_id,
            line,
            record,
        }))
    }
}

/// What is wrong with a CSV row, without the `csv` crate's own line number, which lags
/// behind ours (the caller names the line).
fn csv_row_problem(error: &csv::Error) -> String {
    match error.kind() {
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => format!("the row has {len} fields, the header {expected_len}"),
        csv::ErrorKind::Utf8 { err, .. } => format!(
            "field {} is not UTF-8 (from its byte {} on)",
            err.field() + 1,
            err.valid_up_to()
        ),
        _ => error.to_string(),
    }
}

/// How a text or JSON Lines input's lines end, as checkpoints and shard records name it (an
/// earlier version split them at LF only): `None` for inputs without lines of their own.
pub fn line_ends(format: InputFormat) -> Option<&'static str> {
    matches!(format, InputFormat::Text | InputFormat::Jsonl).then_some("LF, CRLF or lone CR")
}

/// Append the next line of `input` to `buf`, its end included: `\n`, `\r\n` or a lone `\r`
/// (old Mac files), as Python's universal newlines and the CSV reader take them. The bytes
/// read; 0 at the end of the input.
fn read_line(input: &mut dyn BufRead, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    let mut read = 0;
    loop {
        let available = match input.fill_buf() {
            Ok(available) => available,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if available.is_empty() {
            return Ok(read);
        }
        match memchr::memchr2(b'\n', b'\r', available) {
            None => {
                let taken = available.len();
                buf.extend_from_slice(available);
                input.consume(taken);
                read += taken;
            }
            Some(end) => {
                let is_cr = available[end] == b'\r';
                buf.extend_from_slice(&available[..=end]);
                input.consume(end + 1);
                read += end + 1;
                // The `\n` of a `\r\n` may start the next chunk.
                if is_cr && next_byte(input)? == Some(b'\n') {
                    buf.push(b'\n');
                    input.consume(1);
                    read += 1;
                }
                return Ok(read);
            }
        }
    }
}

/// The next byte of `input`, left unread; `None` at the end.
fn next_byte(input: &mut dyn BufRead) -> std::io::Result<Option<u8>> {
    loop {
        match input.fill_buf() {
            Ok(available) => return Ok(available.first().copied()),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// The id the row of JSON line `line` would have had: its `--id-column` field, else its `id`
/// where that is a string or a number kept exactly, else (no `id` field) its line number. `None`
/// where the line is not JSON, or its id field is missing, of another type or a number too large.
fn json_line_id(line: usize, text: &str, columns: &InputColumns) -> Option<Value> {
    let id_field = columns.id.as_deref().unwrap_or("id");
    let object = json_line::parse(text, &[id_field]).ok()??;
    match object.get(id_field) {
        // A number id refused as too large is not known either: its digits are lost.
        Some(id @ Value::String(_)) => Some(id.clone()),
        Some(id @ Value::Number(number)) if kept_exactly(number) => Some(id.clone()),
        Some(_) => None,
        None => place_id(columns, line),
    }
}

/// The id of the document on line (Parquet: row) `line` by its place, where no `--id-column`
/// names another: its line number, as [`Record::output_id`] gives it.
fn place_id(columns: &InputColumns, line: usize) -> Option<Value> {
    columns.id.is_none().then(|| Value::from(line))
}

/// 2^53: from here on a float no longer holds every integer.
const F64_EXACT_INTEGERS: f64 = 9_007_199_254_740_992.0;

/// Whether a JSON number id is written out as it was read: an integer within i64 or u64, or a
/// float below [`F64_EXACT_INTEGERS`]. A larger float (any integer past i64 and u64, read as a
/// float) may have lost digits.
fn kept_exactly(id: &serde_json::Number) -> bool {
    !id.is_f64() || id.as_f64().is_some_and(|v| v.abs() < F64_EXACT_INTEGERS)
}

/// A JSON line's record, its text and id from the fields `columns` names (other fields left
/// alone); the error message is about the line (the caller names it).
fn parse_json_line(
    line: usize,
    text: &str,
    columns: &InputColumns,
) -> std::result::Result<Record, String> {
    let text_field = columns.text.as_str();
    let id_field = columns.id.as_deref().unwrap_or("id");
    let mut wanted = vec![text_field, "ids", id_field, "prompt_name"];
    wanted.extend(columns.title.as_deref());
    let Some(map) = json_line::parse(text, &wanted)? else {
        return Err(format!(
            "expected a JSON object with `{}` or `ids`",
            columns.text
        ));
    };
    let fields = || map.names();
    // A field named on the command line must be there (a misspelt name would otherwise give
    // every line the line number as id, or no title).
    let missing = |field: &str, flag: &str, what: &str| {
        format!(
            "no field `{field}` ({flag}{what}); the line has: {}",
            fields()
        )
    };
    let content = match (map.get(text_field), map.get("ids")) {
        (Some(Value::String(text)), None) => Content::Text(text.clone()),
        (Some(other), None) => return Err(format!("`{text_field}` must be a string, got {other}")),
        (None, Some(Value::Array(ids))) => Content::Ids(
            ids.iter()
                .enumerate()
                .map(|(i, v)| {
                    v.as_u64()
                        .and_then(|id| u32::try_from(id).ok())
                        .ok_or_else(|| format!("`ids[{i}]` is not a token id: {v}"))
                })
                .collect::<std::result::Result<_, _>>()?,
        ),
        (None, Some(other)) => {
            return Err(format!("`ids` must be an array of token ids, got {other}"))
        }
        (Some(_), Some(_)) => return Err(format!("give `{text_field}` or `ids`, not both")),
        (None, None) => {
            return Err(format!(
                "missing `{text_field}` (the text; --text-column names another field) or `ids`; \
                 the line has: {}",
                fields()
            ));
        }
    };
    let id = match map.get(id_field) {
        None if columns.id.is_some() => return Err(missing(id_field, "--id-column", "")),
        None => None,
        Some(Value::Number(id)) if !kept_exactly(id) => {
            // Past i64/u64 a number is read as a float, which has lost its last digits.
            return Err(format!(
                "`{id_field}` (the id) is a number too large to keep exactly (read as {id}); \
                 write it as a string"
            ));
        }
        Some(id @ (Value::String(_) | Value::Number(_))) => Some(id.clone()),
        Some(other) => {
            return Err(format!(
                "`{id_field}` (the id) must be a string or a number, got {other}"
            ))
        }
    };
    let mut prompt = match map.get("prompt_name") {
        None => PromptChoice::Inherit,
        Some(Value::Null) => PromptChoice::NoPrompt,
        Some(Value::String(name)) => PromptChoice::Named(name.clone()),
        Some(other) => {
            return Err(format!(
                "`prompt_name` must be a string or null, got {other}"
            ))
        }
    };
    if let Some(title_field) = &columns.title {
        let title = match map.get(title_field) {
            None | Some(Value::Null) => None,
            Some(Value::String(title)) => Some(title.as_str()),
            Some(other) => {
                return Err(format!(
                    "`{title_field}` (the title) must be a string or null, got {other}"
                ))
            }
        };
        match &content {
            Content::Ids(_) if map.get(title_field).is_some_and(|t| !t.is_null()) => {
                return Err("a title does not apply to `ids` (token ids are used as is)".into())
            }
            Content::Ids(_) => {}
            Content::Text(_) if !map.contains_key(title_field) => {
                return Err(missing(
                    title_field,
                    "--title-column",
                    "; null or \"\" for a document without one",
                ))
            }
            Content::Text(_) if prompt != PromptChoice::Inherit => {
                return Err(format!(
                    "`prompt_name` and a title (--title-column `{title_field}`) both choose \
                     the prompt: give one"
                ))
            }
            Content::Text(_) => prompt = PromptChoice::Titled(titled_prompt(title)),
        }
    }
    if matches!(content, Content::Ids(_)) && matches!(prompt, PromptChoice::Named(_)) {
        return Err("`prompt_name` does not apply to `ids` (token ids are used as is)".into());
    }
    Ok(Record {
        line,
        id,
        content,
        prompt,
    })
}

#[cfg(test)]
mod tests {
    use super::super::read_records;
    use super::*;

    fn documents(path: &str, format: InputFormat, start: ReadPosition) -> Vec<Document> {
        let mut reader = RecordReader::open(path, format, &InputColumns::default(), start).unwrap();
        let mut docs = Vec::new();
        while let Some(d) = reader.next_document().unwrap() {
            docs.push(d);
        }
        docs
    }

    /// A reader of `path` from its start, with the default columns.
    fn open_at_start(path: &str, format: InputFormat) -> RecordReader {
        RecordReader::open(
            path,
            format,
            &InputColumns::default(),
            ReadPosition::default(),
        )
        .unwrap()
    }

    fn read_all(path: &str, format: InputFormat, start: ReadPosition) -> Vec<(u64, usize, bool)> {
        documents(path, format, start)
            .into_iter()
            .map(|d| (d.doc, d.line, d.record.is_ok()))
            .collect()
    }

    #[test]
    fn resumes_at_a_recorded_position() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.jsonl");
        std::fs::write(
            &path,
            "{\"text\": \"a\"}\n\n{\"text\": 1}\r\n{\"text\": \"c\"}\n{\"text\": \"d\"}",
        )
        .unwrap();
        let path = path.to_str().unwrap();
        let all = read_all(path, InputFormat::Jsonl, ReadPosition::default());
        assert_eq!(
            all,
            [(0, 1, true), (1, 3, false), (2, 4, true), (3, 5, true)]
        );
        let mut reader = open_at_start(path, InputFormat::Jsonl);
        reader.next_document().unwrap();
        reader.next_document().unwrap();
        let middle = reader.position();
        assert_eq!((middle.line, middle.docs), (3, 2));
        let rest = read_all(path, InputFormat::Jsonl, middle);
        assert_eq!(rest, [(2, 4, true), (3, 5, true)]);
    }

    #[test]
    fn a_refused_json_line_keeps_its_own_id() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.jsonl");
        std::fs::write(
            &path,
            "{\"id\": \"x1\", \"text\": null}\n{\"id\": 7, \"ids\": [-1]}\nnot json\n{\"id\": [1], \"text\": 2}\n\
             {\"text\": 3}\n",
        )
        .unwrap();
        let docs = documents(
            path.to_str().unwrap(),
            InputFormat::Jsonl,
            ReadPosition::default(),
        );
        assert!(docs.iter().all(|d| d.record.is_err()));
        let ids: Vec<Option<Value>> = docs.into_iter().map(|d| d.known_id).collect();
        assert_eq!(
            ids,
            [
                Some(Value::from("x1")),
                Some(Value::from(7)),
                None,
                None,
                // No id of its own: its line number, as its row's id would have been.
                Some(Value::from(5))
            ]
        );
    }

    #[test]
    fn csv_columns_quotes_and_resume() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.csv");
        std::fs::write(
            &path,
            "key,body\nk1,plain\nk2,\"two\nlines, quoted\"\nk3\nk4,last\n",
        )
        .unwrap();
        let path = path.to_str().unwrap();
        let columns = InputColumns {
            text: "body".into(),
            id: Some("key".into()),
            title: None,
        };
        let open = |start| RecordReader::open(path, InputFormat::Csv, &columns, start).unwrap();
        let mut reader = open(ReadPosition::default());
        let mut seen = Vec::new();
        let mut after_first = None;
        while let Some(d) = reader.next_document().unwrap() {
            let summary = match d.record {
                Ok(r) => format!("{:?} {:?}", r.id, r.content),
                Err(e) => e.to_string(),
            };
            seen.push((d.doc, d.line, summary));
            after_first.get_or_insert(reader.position());
        }
        assert_eq!(
            seen[0],
            (0, 2, "Some(String(\"k1\")) Text(\"plain\")".into())
        );
        assert_eq!(
            seen[1],
            (
                1,
                3,
                "Some(String(\"k2\")) Text(\"two\\nlines, quoted\")".into()
            )
        );
        assert_eq!((seen[2].0, seen[2].1), (2, 5));
        assert!(seen[2].2.contains("in.csv: line 5: CSV: "), "{}", seen[2].2);
        assert_eq!(
            seen[3],
            (3, 6, "Some(String(\"k4\")) Text(\"last\")".into())
        );
        let mut resumed = open(after_first.unwrap());
        let next = resumed.next_document().unwrap().unwrap();
        assert_eq!((next.doc, next.line), (1, 3));
        let missing = InputColumns::default();
        let err = RecordReader::open(path, InputFormat::Csv, &missing, ReadPosition::default())
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("no column `text`") && err.contains("key, body"),
            "{err}"
        );
    }

    /// The records of a file `name` holding `bytes`, read by `read_records`.
    fn read(name: &str, bytes: &[u8], format: InputFormat) -> Result<Vec<Record>> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        read_records(path.to_str().unwrap(), format, &InputColumns::default())
    }

    fn jsonl(text: &str) -> Result<Vec<Record>> {
        read("in.jsonl", text.as_bytes(), InputFormat::Jsonl)
    }

    fn line_error(text: &str) -> (usize, String) {
        match jsonl(text).unwrap_err() {
            Error::Line { line, message, .. } => (line, message),
            other => panic!("expected a line error, got {other}"),
        }
    }

    #[test]
    fn reads_json_lines() {
        let records = jsonl(
            "{\"text\": \"a\"}\n\n{\"id\": \"x\", \"text\": \" b \", \"prompt_name\": \"query\"}\r\n\
             {\"id\": 7, \"ids\": [2, 5, 1], \"prompt_name\": null}\n",
        )
        .unwrap();
        assert_eq!(records.len(), 3);
        assert_eq!(records[0].content, Content::Text("a".into()));
        assert_eq!(records[0].output_id(), Value::from(1));
        assert_eq!(records[0].prompt, PromptChoice::Inherit);
        assert_eq!(records[1].line, 3);
        assert_eq!(records[1].content, Content::Text(" b ".into()));
        assert_eq!(records[1].output_id(), Value::from("x"));
        assert_eq!(records[1].prompt, PromptChoice::Named("query".into()));
        assert_eq!(records[2].content, Content::Ids(vec![2, 5, 1]));
        assert_eq!(records[2].output_id(), Value::from(7));
        assert_eq!(records[2].prompt, PromptChoice::NoPrompt);
        // Fields not read are skipped, whatever their numbers (Python's json.dumps writes NaN).
        let records = jsonl(
            "{\"id\": \"n\", \"text\": \"c\", \"score\": NaN, \"big\": 1e400, \"low\": -Infinity}\n",
        )
        .unwrap();
        assert_eq!(records[0].content, Content::Text("c".into()));
        assert_eq!(records[0].output_id(), Value::from("n"));
    }

    #[test]
    fn text_and_json_lines_end_at_lf_crlf_or_a_lone_cr() {
        let dir = tempfile::tempdir().unwrap();
        for (format, lf) in [
            (InputFormat::Text, "one\n\ntwo\nthree"),
            (
                InputFormat::Jsonl,
                "{\"text\": \"one\"}\n\n{\"text\": \"two\"}\n{\"text\": \"three\"}",
            ),
        ] {
            for ending in ["\n", "\r\n", "\r"] {
                let path = dir.path().join("in");
                std::fs::write(&path, lf.replace('\n', ending)).unwrap();
                let path = path.to_str().unwrap();
                let all = documents(path, format, ReadPosition::default());
                let got: Vec<_> = all
                    .iter()
                    .map(|d| match &d.record.as_ref().unwrap().content {
                        Content::Text(text) => (d.line, text.clone()),
                        other => panic!("{other:?}"),
                    })
                    .collect();
                // Text keeps the blank line as an empty document; JSON Lines skips it.
                let mut want = vec![(1, "one"), (2, ""), (3, "two"), (4, "three")];
                if format == InputFormat::Jsonl {
                    want.remove(1);
                }
                let want: Vec<_> = want.into_iter().map(|(l, t)| (l, t.to_string())).collect();
                assert_eq!(got, want, "{format:?} with {ending:?}");
                // A resume after the second document reads the rest, at the same lines.
                let mut reader = open_at_start(path, format);
                reader.next_document().unwrap();
                reader.next_document().unwrap();
                let rest = documents(path, format, reader.position());
                let lines: Vec<_> = rest.iter().map(|d| d.line).collect();
                assert_eq!(lines, want[2..].iter().map(|(l, _)| *l).collect::<Vec<_>>());
            }
        }
        // A `\r\n` split between two reads of the stream is one line end.
        let mut input = BufReader::with_capacity(1, &b"a\r\nb\rc"[..]);
        let mut lines = Vec::new();
        loop {
            let mut line = Vec::new();
            if read_line(&mut input, &mut line).unwrap() == 0 {
                break;
            }
            lines.push(line);
        }
        assert_eq!(lines, [&b"a\r\n"[..], b"b\r", b"c"]);
    }

    #[test]
    fn reads_text_lines_as_is() {
        let records = read("in.txt", b"one\n\n  two \r\n", InputFormat::Text).unwrap();
        let texts: Vec<_> = records.iter().map(|r| r.content.clone()).collect();
        assert_eq!(
            texts,
            [
                Content::Text("one".into()),
                Content::Text(String::new()),
                Content::Text("  two ".into())
            ]
        );
        assert_eq!(records[2].line, 3);
        let empty_line = read("in.txt", b"\n", InputFormat::Text).unwrap();
        assert_eq!(empty_line.len(), 1);
        assert_eq!(empty_line[0].content, Content::Text(String::new()));
        assert!(read("in.txt", b"", InputFormat::Text).unwrap().is_empty());
        // A byte-order mark opening the file is no text; one further on is kept as it is.
        let marked = read(
            "in.txt",
            b"\xef\xbb\xbfone\n\xef\xbb\xbftwo\n",
            InputFormat::Text,
        )
        .unwrap();
        assert_eq!(marked[0].content, Content::Text("one".into()));
        assert_eq!(marked[1].content, Content::Text("\u{feff}two".into()));
        let json = read(
            "in.jsonl",
            b"\xef\xbb\xbf{\"text\": \"a\"}\n",
            InputFormat::Jsonl,
        )
        .unwrap();
        assert_eq!(json[0].content, Content::Text("a".into()));
    }

    #[test]
    fn bad_lines_are_named() {
        assert_eq!(line_error("{\"text\": \"a\"}\n{\"text\": 3}").0, 2);
        let (_, message) = line_error("{\"txt\": \"a\", \"id\": 1}");
        assert!(
            message.contains("missing `text` (the text; --text-column names another field) or `ids`; the line has: id, txt"),
            "{message}"
        );
        assert!(line_error("{\"text\": \"a\", \"ids\": [1]}")
            .1
            .contains("not both"));
        assert!(line_error("{\"ids\": [2, -1]}").1.contains("`ids[1]`"));
        assert!(line_error("{\"ids\": [2, 1], \"prompt_name\": \"query\"}")
            .1
            .contains("does not apply"));
        assert!(line_error("{\"text\": \"a\", \"id\": [1]}")
            .1
            .contains("`id`"));
        assert!(line_error("[1]").1.contains("JSON object"));
        let (line, message) = line_error("{\"text\": \"a\"}\n\n{oops");
        assert_eq!(line, 3);
        assert!(message.contains("invalid JSON"), "{message}");
        let err = read("in.txt", b"ok\n\xff\n", InputFormat::Text).unwrap_err();
        assert!(
            err.to_string().contains("in.txt: line 2: not UTF-8"),
            "{err}"
        );
    }

    /// The records of JSON Lines `text` read with `columns`.
    fn jsonl_with(text: &str, columns: &InputColumns) -> Vec<Result<Record>> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.jsonl");
        std::fs::write(&path, text).unwrap();
        let mut reader = RecordReader::open(
            path.to_str().unwrap(),
            InputFormat::Jsonl,
            columns,
            ReadPosition::default(),
        )
        .unwrap();
        let mut records = Vec::new();
        while let Some(d) = reader.next_document().unwrap() {
            records.push(d.record);
        }
        records
    }

    #[test]
    fn number_ids_are_kept_exactly_or_refused() {
        let records = jsonl_with(
            "{\"id\": 18446744073709551615, \"text\": \"a\"}\n\
             {\"id\": -9223372036854775808, \"text\": \"a\"}\n\
             {\"id\": 2.5, \"text\": \"a\"}\n\
             {\"id\": 18446744073709551616, \"text\": \"a\"}\n\
             {\"id\": -9007199254740992.0, \"text\": \"a\"}\n",
            &InputColumns::default(),
        );
        let ids: Vec<String> = records[..3]
            .iter()
            .map(|r| r.as_ref().unwrap().output_id().to_string())
            .collect();
        assert_eq!(ids, ["18446744073709551615", "-9223372036854775808", "2.5"]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.jsonl");
        std::fs::write(
            &path,
            "{\"id\": 1e300, \"text\": 5}\n{\"id\": 7, \"text\": 5}\n",
        )
        .unwrap();
        let known: Vec<_> = documents(
            path.to_str().unwrap(),
            InputFormat::Jsonl,
            ReadPosition::default(),
        )
        .into_iter()
        .map(|d| d.known_id)
        .collect();
        assert_eq!(known, [None, Some(Value::from(7))], "a refused line's id");
        for (record, read_as) in records[3..]
            .iter()
            .zip(["1.8446744073709552e+19", "-9007199254740992.0"])
        {
            let error = record.as_ref().unwrap_err().to_string();
            assert!(
                error.contains(&format!(
                    "`id` (the id) is a number too large to keep exactly (read as {read_as}); \
                     write it as a string"
                )),
                "{error}"
            );
        }
    }

    #[test]
    fn json_fields_are_chosen_and_others_ignored() {
        // A BEIR corpus line: `_id`, `title`, `text` and `metadata`.
        let beir =
            "{\"_id\": \"doc7\", \"title\": \"Gemma\", \"text\": \"body\", \"metadata\": {}}\n";
        let records = jsonl_with(beir, &InputColumns::default());
        let record = records[0].as_ref().unwrap();
        assert_eq!(record.content, Content::Text("body".into()));
        // No `id` field: the line number.
        assert_eq!(record.output_id(), Value::from(1));
        assert_eq!(record.prompt, PromptChoice::Inherit);

        let beir_columns = InputColumns {
            text: "text".into(),
            id: Some("_id".into()),
            title: Some("title".into()),
        };
        let records = jsonl_with(
            &format!(
                "{beir}{{\"_id\": 8, \"title\": \"\", \"text\": \"b\"}}\n\
                 {{\"_id\": \"d9\", \"text\": \"c\", \"title\": null}}\n\
                 {{\"_id\": \"d10\", \"text\": \"d\", \"title\": \" \"}}\n\
                 {{\"_id\": 11, \"ids\": [2, 1]}}\n"
            ),
            &beir_columns,
        );
        let records: Vec<Record> = records.into_iter().map(|r| r.unwrap()).collect();
        assert_eq!(records[0].output_id(), Value::from("doc7"));
        assert_eq!(
            records[0].prompt,
            PromptChoice::Titled("title: Gemma | text: ".into())
        );
        assert_eq!(records[1].output_id(), Value::from(8));
        // Empty, null and blank titles are `none`: the model's document prompt.
        for untitled in &records[1..4] {
            assert_eq!(
                untitled.prompt,
                PromptChoice::Titled("title: none | text: ".into())
            );
        }
        // Token ids are used as is: a title column does not give them a prompt.
        assert_eq!(records[4].prompt, PromptChoice::Inherit);

        let other_text = InputColumns {
            text: "contents".into(),
            ..InputColumns::default()
        };
        let records = jsonl_with(
            "{\"id\": \"a\", \"contents\": \"x\", \"text\": 5}\n",
            &other_text,
        );
        assert_eq!(
            records[0].as_ref().unwrap().content,
            Content::Text("x".into())
        );

        let errors: Vec<String> = jsonl_with(
            "{\"_id\": [1], \"text\": \"a\", \"title\": null}\n\
             {\"_id\": 2, \"text\": \"a\", \"title\": 3}\n\
             {\"_id\": 3, \"text\": \"a\", \"title\": \"t\", \"prompt_name\": \"query\"}\n\
             {\"_id\": 4, \"text\": \"a\", \"title\": null, \"prompt_name\": null}\n\
             {\"_id\": 5, \"ids\": [2, 1], \"title\": \"t\"}\n\
             {\"id\": 6, \"text\": \"a\", \"title\": null}\n\
             {\"_id\": 7, \"text\": \"a\", \"Title\": \"t\"}\n",
            &beir_columns,
        )
        .into_iter()
        .map(|r| r.unwrap_err().to_string())
        .collect();
        let expected = [
            "line 1: `_id` (the id) must be a string or a number, got [1]",
            "line 2: `title` (the title) must be a string or null, got 3",
            "line 3: `prompt_name` and a title (--title-column `title`) both choose the prompt",
            "line 4: `prompt_name` and a title",
            "line 5: a title does not apply to `ids`",
            // Fields named on the command line must be there: a misspelt name is caught.
            "line 6: no field `_id` (--id-column); the line has: id, text, title",
            "line 7: no field `title` (--title-column; null or \"\" for a document without one); \
             the line has: Title, _id, text",
        ];
        assert_eq!(errors.len(), expected.len());
        for (error, expected) in errors.iter().zip(expected) {
            assert!(error.contains(expected), "{error}");
        }
    }

    #[test]
    fn csv_titles_and_where_titles_do_not_apply() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.csv");
        std::fs::write(&path, "heading,body\nGemma,one\n,two\n").unwrap();
        let path = path.to_str().unwrap();
        let titled = |title: &str| InputColumns {
            text: "body".into(),
            id: None,
            title: Some(title.into()),
        };
        let records = read_records(path, InputFormat::Csv, &titled("heading")).unwrap();
        let prompts: Vec<PromptChoice> = records.into_iter().map(|r| r.prompt).collect();
        assert_eq!(
            prompts,
            [
                PromptChoice::Titled("title: Gemma | text: ".into()),
                PromptChoice::Titled("title: none | text: ".into())
            ]
        );
        let err = read_records(path, InputFormat::Csv, &titled("name"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no column `name` (--title-column); the header has: heading, body"),
            "{err}"
        );
        for format in [InputFormat::Text, InputFormat::Directory] {
            let err = RecordReader::open(
                dir.path().to_str().unwrap(),
                format,
                &titled("heading"),
                ReadPosition::default(),
            )
            .err()
            .unwrap()
            .to_string();
            assert!(
                err.contains("--title-column needs JSON Lines, CSV or Parquet input"),
                "{err}"
            );
            // Nor a text or id column: a text line or file is the text, its id its place.
            for columns in [
                InputColumns {
                    text: "body".into(),
                    ..InputColumns::default()
                },
                InputColumns {
                    id: Some("key".into()),
                    ..InputColumns::default()
                },
            ] {
                let path = dir.path().to_str().unwrap();
                let err = RecordReader::open(path, format, &columns, ReadPosition::default())
                    .err()
                    .unwrap()
                    .to_string();
                assert!(
                    err.contains("--text-column and --id-column need JSON Lines, CSV or Parquet"),
                    "{format:?} {columns:?}: {err}"
                );
            }
        }
    }

    #[test]
    fn csv_lines_are_counted_across_blank_lines_and_in_every_line_ending() {
        // Line 1 the header, 2 k1, 3 blank, 4-5 k2 (quoted over two lines), 6 k3 (a short
        // row), 7 k4 (no line break after it).
        let lf = "key,text\nk1,plain\n\nk2,\"two\nlines\"\nk3\nk4,last";
        let dir = tempfile::tempdir().unwrap();
        for ending in ["\n", "\r\n", "\r"] {
            let content = lf.replace('\n', ending);
            let plain = dir.path().join("in.csv");
            std::fs::write(&plain, &content).unwrap();
            let compressed = dir.path().join("in.csv.gz");
            std::fs::write(&compressed, compressed_in_two(&content, false)).unwrap();
            for path in [&plain, &compressed] {
                let path = path.to_str().unwrap();
                let all = documents_from(path, InputFormat::Csv, ReadPosition::default());
                let lines: Vec<_> = all.iter().map(|((_, line, _), _)| *line).collect();
                assert_eq!(lines, [2, 4, 6, 7], "{path} with {ending:?}");
                let k2 = format!(
                    "Some(String(\"k2\")) Text(\"two{}lines\")",
                    ending.escape_debug()
                );
                assert_eq!(all[1].0 .2, k2, "{path} with {ending:?}");
                assert!(
                    all[2]
                        .0
                         .2
                        .ends_with("line 6: CSV: the row has 1 fields, the header 2"),
                    "{}",
                    all[2].0 .2
                );
                // The line breaks read, and the lines of the documents after a resume there.
                let ends: Vec<_> = all.iter().map(|(_, end)| end.line).collect();
                assert_eq!(ends, [2, 5, 6, 6], "{path} with {ending:?}");
                for (i, (_, end)) in all.iter().enumerate() {
                    let rest = documents_from(path, InputFormat::Csv, *end);
                    assert_eq!(rest, all[i + 1..], "{path} with {ending:?} after {i}");
                }
            }
        }
        let path = dir.path().join("latin1.csv");
        std::fs::write(&path, b"key,text\r\nk1,caf\xe9\r\n").unwrap();
        let all = documents_from(
            path.to_str().unwrap(),
            InputFormat::Csv,
            ReadPosition::default(),
        );
        assert!(
            all[0]
                .0
                 .2
                .ends_with("line 2: CSV: field 2 is not UTF-8 (from its byte 3 on)"),
            "{}",
            all[0].0 .2
        );
    }

    /// Every document of `path` from `start` as (doc, line, record or error), with the
    /// position after each.
    fn documents_from(
        path: &str,
        format: InputFormat,
        start: ReadPosition,
    ) -> Vec<((u64, usize, String), ReadPosition)> {
        let columns = InputColumns {
            id: Some("key".into()),
            ..InputColumns::default()
        };
        let mut reader = RecordReader::open(path, format, &columns, start).unwrap();
        let mut docs = Vec::new();
        while let Some(d) = reader.next_document().unwrap() {
            let summary = match d.record {
                Ok(r) => format!("{:?} {:?}", r.id, r.content),
                Err(e) => e.to_string(),
            };
            docs.push(((d.doc, d.line, summary), reader.position()));
        }
        docs
    }

    /// `content` compressed as two gzip members, or as two zstd frames each after a skippable
    /// frame (as `pzstd` writes), split inside a record.
    fn compressed_in_two(content: &str, zstd: bool) -> Vec<u8> {
        use std::io::Write;
        let mut bytes = Vec::new();
        for part in [&content[..20], &content[20..]] {
            if zstd {
                // Magic 0x184D2A5?, length 3, payload.
                bytes.extend([0x5e, 0x2a, 0x4d, 0x18, 3, 0, 0, 0, 1, 2, 3]);
                bytes.extend(ruzstd::encoding::compress_to_vec(
                    part.as_bytes(),
                    ruzstd::encoding::CompressionLevel::Fastest,
                ));
            } else {
                let mut encoder =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                encoder.write_all(part.as_bytes()).unwrap();
                bytes.extend(encoder.finish().unwrap());
            }
        }
        bytes
    }

    #[test]
    fn compressed_inputs_read_and_resume_as_plain_ones() {
        let dir = tempfile::tempdir().unwrap();
        let jsonl = "{\"text\": \"a\", \"key\": 1}\n\n{\"text\": 1}\r\n{\"text\": \"c\"}\n{\"text\": \"d\"}";
        let csv = "key,text\nk1,plain\nk2,\"two\nlines\"\nk3\nk4,last\n";
        let cases = [
            (InputFormat::Jsonl, jsonl, false),
            (InputFormat::Csv, csv, false),
            (InputFormat::Jsonl, jsonl, true),
            (InputFormat::Csv, csv, true),
        ];
        for (format, content, zstd) in cases {
            let plain = dir.path().join("plain");
            std::fs::write(&plain, content).unwrap();
            let compressed = dir.path().join("compressed");
            let bytes = compressed_in_two(content, zstd);
            std::fs::write(&compressed, &bytes).unwrap();
            let (plain, compressed) = (plain.to_str().unwrap(), compressed.to_str().unwrap());

            let all = documents_from(plain, format, ReadPosition::default());
            let rename = |docs: Vec<((u64, usize, String), ReadPosition)>| -> Vec<_> {
                docs.into_iter()
                    .map(|((doc, line, s), end)| {
                        ((doc, line, s.replace("compressed", "plain")), end)
                    })
                    .collect()
            };
            assert_eq!(
                rename(documents_from(compressed, format, ReadPosition::default())),
                all,
                "{format:?} (zstd {zstd})"
            );
            assert!(
                all.iter().any(|d| d.0 .2.contains("line")),
                "a bad document"
            );
            // Resumed after every document: the rest, as from the start.
            for (i, (_, end)) in all.iter().enumerate() {
                let rest = rename(documents_from(compressed, format, *end));
                assert_eq!(
                    rest,
                    all[i + 1..],
                    "{format:?} (zstd {zstd}) after document {i}"
                );
            }
            // Progress is in compressed bytes and ends at the file's length.
            let mut reader = open_at_start(compressed, format);
            while reader.next_document().unwrap().is_some() {}
            assert_eq!(reader.progress(), bytes.len() as u64);
            assert_eq!(reader.extent(compressed), Some(bytes.len() as u64));
            let past_the_end = ReadPosition {
                offset: content.len() as u64 + 1,
                ..ReadPosition::default()
            };
            let err =
                RecordReader::open(compressed, format, &InputColumns::default(), past_the_end)
                    .err()
                    .unwrap()
                    .to_string();
            assert!(
                err.contains(&format!("cannot resume at byte {}", content.len() + 1)),
                "{err}"
            );
        }
    }

    #[test]
    fn a_shard_keeps_every_nth_document_of_every_source() {
        let dir = tempfile::tempdir().unwrap();
        let jsonl = dir.path().join("in.jsonl");
        std::fs::write(
            &jsonl,
            b"{\"text\": \"a\"}\n\n{\"text\": 1}\n\xff\n{\"text\": \"c\"}\n{\"text\": \"d\"}\n{\"text\": \"e\"}\n",
        )
        .unwrap();
        let txt = dir.path().join("in.txt");
        std::fs::write(&txt, "a\n\nb\nc\nd\n").unwrap();
        let csv = dir.path().join("in.csv");
        std::fs::write(&csv, "text\na\nb\nc\nd\ne\n").unwrap();
        let docs = dir.path().join("docs");
        for name in ["a", "b", "c", "d/e", "d/f"] {
            std::fs::create_dir_all(docs.join(name).parent().unwrap()).unwrap();
            std::fs::write(docs.join(name), name).unwrap();
        }
        let inputs = [
            (jsonl, InputFormat::Jsonl),
            (txt, InputFormat::Text),
            (csv, InputFormat::Csv),
            (docs, InputFormat::Directory),
        ];
        for (path, format) in inputs {
            let path = path.to_str().unwrap();
            let summaries = |shard: Shard| {
                let mut reader = open_at_start(path, format);
                reader.keep_only(shard);
                let mut seen = Vec::new();
                while let Some(d) = reader.next_document().unwrap() {
                    let record = d.record.map_err(|e| e.to_string());
                    seen.push((d.doc, d.line, format!("{record:?}")));
                }
                (seen, reader.position())
            };
            let (all, end) = summaries(Shard::default());
            assert!(all.len() >= 5, "{format:?}: {all:?}");
            for count in 1..=3 {
                for index in 0..count {
                    let shard = Shard { index, count };
                    let want: Vec<_> = all.iter().filter(|d| shard.holds(d.0)).cloned().collect();
                    // Every shard ends where the whole input does (progress reaches 100%).
                    assert_eq!(summaries(shard), (want, end), "{format:?} {index}/{count}");
                }
            }
        }
    }

    #[test]
    fn a_damaged_zstd_frame_fails_its_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.txt.zst");
        let mut bytes = ruzstd::encoding::compress_to_vec(
            &b"one\ntwo\n"[..],
            ruzstd::encoding::CompressionLevel::Fastest,
        );
        // The frame ends with its content checksum.
        *bytes.last_mut().unwrap() ^= 0x55;
        std::fs::write(&path, bytes).unwrap();
        let path = path.to_str().unwrap();
        let err = read_records(path, InputFormat::Text, &InputColumns::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("in.txt.zst: zstd frame checksum mismatch (the file is damaged)"),
            "{err}"
        );
    }

    #[test]
    fn inputs_from_a_pipe_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo.csv");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        for (format, content, texts) in [
            (InputFormat::Csv, "text\na\nb\n", ["a", "b"]),
            (
                InputFormat::Jsonl,
                "{\"text\": \"a\"}\n{\"text\": \"b\"}\n",
                ["a", "b"],
            ),
        ] {
            let writer = {
                let fifo = fifo.clone();
                std::thread::spawn(move || std::fs::write(fifo, content).unwrap())
            };
            let records =
                read_records(fifo.to_str().unwrap(), format, &InputColumns::default()).unwrap();
            writer.join().unwrap();
            let got: Vec<Content> = records.into_iter().map(|r| r.content).collect();
            let want: Vec<Content> = texts.iter().map(|t| Content::Text(t.to_string())).collect();
            assert_eq!(got, want, "{format:?}");
        }
    }
}
