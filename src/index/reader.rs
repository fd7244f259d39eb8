//! Streaming input: one record at a time with the byte offset after it, so a job can resume
//! by seeking (never holding the corpus in memory).

use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};

use super::{parse_json_line, source_name, Content, InputFormat, PromptChoice, Record};
use crate::{Error, Result};

/// Where a reader stands: the next byte to read, the last line read, documents seen so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadPosition {
    pub offset: u64,
    /// 1-based number of the last line read (0 before the first).
    pub line: usize,
    /// Documents (non-blank JSON lines, every text line) seen so far, bad ones included.
    pub docs: u64,
}

/// One document of the input: its 0-based document index and the record, or why its line
/// cannot be used (an [`Error::Line`]).
pub struct Document {
    pub doc: u64,
    pub line: usize,
    pub record: Result<Record>,
}

/// Reads documents from a file (or stdin, `-`, which cannot resume past its start).
pub struct RecordReader {
    input: Box<dyn BufRead + Send>,
    name: String,
    format: InputFormat,
    position: ReadPosition,
    buf: Vec<u8>,
}

impl RecordReader {
    pub fn open(path: &str, format: InputFormat, start: ReadPosition) -> Result<Self> {
        let name = source_name(path).to_string();
        let input: Box<dyn BufRead + Send> = if path == "-" {
            if start.offset != 0 {
                return Err(Error::File {
                    path: name.into(),
                    message: "standard input cannot be resumed: give a file".into(),
                });
            }
            Box::new(BufReader::with_capacity(1 << 20, std::io::stdin()))
        } else {
            let io_error = |source| Error::Io {
                path: path.into(),
                source,
            };
            let mut file = File::open(path).map_err(io_error)?;
            file.seek(SeekFrom::Start(start.offset)).map_err(io_error)?;
            Box::new(BufReader::with_capacity(1 << 20, file))
        };
        Ok(Self {
            input,
            name,
            format,
            position: start,
            buf: Vec::new(),
        })
    }

    /// Where the next document starts.
    pub fn position(&self) -> ReadPosition {
        self.position
    }

    /// The next document, `None` at the end of the input.
    pub fn next_document(&mut self) -> Result<Option<Document>> {
        loop {
            self.buf.clear();
            let read = self
                .input
                .read_until(b'\n', &mut self.buf)
                .map_err(|source| Error::Io {
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
            let error = |message: String| Error::Line {
                source_name: self.name.clone(),
                line,
                message,
            };
            let record = match std::str::from_utf8(raw) {
                Err(e) => Err(error(format!("not UTF-8 ({e})"))),
                Ok(text) => match self.format {
                    InputFormat::Jsonl if text.trim().is_empty() => continue,
                    InputFormat::Jsonl => parse_json_line(line, text).map_err(error),
                    InputFormat::Text => Ok(Record {
                        line,
                        id: None,
                        content: Content::Text(text.to_string()),
                        prompt: PromptChoice::Inherit,
                    }),
                },
            };
            let doc = self.position.docs;
            self.position.docs += 1;
            return Ok(Some(Document { doc, line, record }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(path: &str, format: InputFormat, start: ReadPosition) -> Vec<(u64, usize, bool)> {
        let mut reader = RecordReader::open(path, format, start).unwrap();
        let mut docs = Vec::new();
        while let Some(d) = reader.next_document().unwrap() {
            docs.push((d.doc, d.line, d.record.is_ok()));
        }
        docs
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
        let mut reader =
            RecordReader::open(path, InputFormat::Jsonl, ReadPosition::default()).unwrap();
        reader.next_document().unwrap();
        reader.next_document().unwrap();
        let middle = reader.position();
        assert_eq!((middle.line, middle.docs), (3, 2));
        let rest = read_all(path, InputFormat::Jsonl, middle);
        assert_eq!(rest, [(2, 4, true), (3, 5, true)]);
    }
}
