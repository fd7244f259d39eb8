#!/usr/bin/env python3
"""The documents of a corpus file, read as `gemma-embed embed` and `gemma-embed bench --corpus`
read them, for tools/bench_reference.py (so that both engines are measured on the same sequences).

    python3 tools/corpus_docs.py FILE --model DIR [--format F] [--text-column C] [--title-column T]
                                 [--prompt-name P] [--docs N]

prints each document as a JSON line: `{"text": PROMPT + TEXT, "prompt_name": null}`, or `{"ids":
[...]}` for a line that brings its own token ids; `gemma-embed tokenize` of that output gives the
ids `gemma-embed tokenize` gives for the corpus itself with the same flags.

Formats, by extension unless --format says: JSON Lines (.jsonl, .ndjson, .json; blank lines
skipped; `text` or the --text-column field, or `ids`; optional `prompt_name`, null for none),
plain text (.txt; every line a document, blank ones too), CSV with a header (.csv), each perhaps
gzip- or zstd-compressed (recognized by the first bytes; zstd needs Python 3.14 or the
`zstandard` package); Parquet (.parquet; needs `pyarrow`); a directory (every file below it, hidden
entries left out, in path order, the first MiB of each). With --title-column each document's
prompt is EmbeddingGemma's document prompt with its title, `title: {title | none} | text: `.
Standard library only, but for zstd and Parquet.
"""

import argparse
import csv
import gzip
import io
import json
import os
import sys

FORMATS = ("jsonl", "text", "csv", "parquet", "dir")
EXTENSIONS = {"jsonl": "jsonl", "ndjson": "jsonl", "json": "jsonl", "txt": "text", "csv": "csv",
              "parquet": "parquet"}
DIRECTORY_FILE_PREFIX_BYTES = 1 << 20

# What a document's prompt is: the job's (--prompt-name, else the model's default), or its own.
INHERIT = "inherit"


class CorpusError(Exception):
    """A document or file that cannot be read, named."""


def format_of(path):
    """The format of `path` from its extension (after a .gz or .zst), as gemma-embed tells it."""
    if path == "-":
        return "jsonl"
    if os.path.isdir(path):
        return "dir"
    name, compressed = path, False
    for suffix in (".gz", ".zst"):
        if name.endswith(suffix):
            name, compressed = name[:-len(suffix)], True
            break
    fmt = EXTENSIONS.get(os.path.splitext(name)[1].lstrip("."))
    if fmt is None or (fmt == "parquet" and compressed):
        raise CorpusError(f"{path}: cannot tell the format from the extension; pass --format")
    return fmt


def titled_prompt(title):
    """EmbeddingGemma's document prompt with a title (`none` for a missing or blank one)."""
    return f"title: {title if title and title.strip() else 'none'} | text: "


def open_bytes(path):
    """The bytes of `path` (`-`: stdin), decompressed when their first bytes say gzip or zstd."""
    raw = sys.stdin.buffer if path == "-" else open(path, "rb")
    start = raw.peek(4)[:4]
    if start[:2] == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=raw)
    zstd_frame = start == b"\x28\xb5\x2f\xfd"
    skippable_frame = len(start) == 4 and start[0] & 0xF0 == 0x50 and start[1:] == b"\x2a\x4d\x18"
    if zstd_frame or skippable_frame:
        try:
            from compression import zstd  # Python 3.14
            return zstd.ZstdFile(raw)
        except ImportError:
            pass
        try:
            import zstandard
        except ImportError:
            raise CorpusError(f"{path}: zstd input needs Python 3.14 or the `zstandard` package")
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True))
    return raw


def json_document(path, number, line, text_column, title_column):
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise CorpusError(f"{path}: line {number}: invalid JSON: {e}")
    if not isinstance(record, dict):
        raise CorpusError(f"{path}: line {number}: expected a JSON object")
    has_text, has_ids = text_column in record, "ids" in record
    if has_text == has_ids:
        raise CorpusError(f"{path}: line {number}: give `{text_column}` or `ids`, one of them")
    prompt = INHERIT
    if "prompt_name" in record:
        prompt = None if record["prompt_name"] is None else ("named", record["prompt_name"])
    if has_ids:
        return record["ids"], INHERIT
    if not isinstance(record[text_column], str):
        raise CorpusError(f"{path}: line {number}: `{text_column}` must be a string")
    if title_column is not None:
        if title_column not in record:
            raise CorpusError(f"{path}: line {number}: no field `{title_column}` (--title-column)")
        if prompt is not INHERIT:
            raise CorpusError(f"{path}: line {number}: `prompt_name` and a title both choose the prompt")
        prompt = ("raw", titled_prompt(record[title_column]))
    return record[text_column], prompt


def line_documents(path, fmt, text_column, title_column):
    """JSON Lines or text documents, line by line."""
    with open_bytes(path) as stream:
        for number, raw in enumerate(stream, start=1):
            raw = raw.removesuffix(b"\n").removesuffix(b"\r")
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise CorpusError(f"{path}: line {number}: not UTF-8 ({e})")
            if fmt == "text":
                yield line, INHERIT
            elif line.strip():
                yield json_document(path, number, line, text_column, title_column)


def csv_documents(path, text_column, title_column):
    with open_bytes(path) as stream:
        rows = csv.reader(io.TextIOWrapper(stream, encoding="utf-8-sig", newline=""))
        header = next(rows, [])
        places = {}
        for column, flag in ((text_column, "--text-column"), (title_column, "--title-column")):
            if column is not None:
                if column not in header:
                    raise CorpusError(f"{path}: no column `{column}` ({flag}); the header has: "
                                      + ", ".join(header))
                places[column] = header.index(column)
        for row in rows:
            if len(row) != len(header):
                raise CorpusError(f"{path}: line {rows.line_num}: {len(row)} fields, the header has "
                                  f"{len(header)}")
            prompt = INHERIT if title_column is None else ("raw", titled_prompt(row[places[title_column]]))
            yield row[places[text_column]], prompt


def parquet_documents(path, text_column, title_column):
    try:
        import pyarrow.parquet
    except ImportError:
        raise CorpusError(f"{path}: Parquet input needs the `pyarrow` package")
    columns = [c for c in (text_column, title_column) if c is not None]
    table = pyarrow.parquet.read_table(path, columns=columns)
    texts = table.column(text_column).to_pylist()
    titles = table.column(title_column).to_pylist() if title_column else [None] * len(texts)
    for row, (text, title) in enumerate(zip(texts, titles), start=1):
        if text is None:
            raise CorpusError(f"{path}: row {row}: the text is null")
        yield text, INHERIT if title_column is None else ("raw", titled_prompt(title))


def directory_documents(root):
    """Every file below `root` but hidden ones, sorted component by component, its first MiB."""
    files = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in names:
            full = os.path.join(folder, name)
            if not name.startswith(".") and os.path.isfile(full):
                files.append(os.path.relpath(full, root).split(os.sep))
    for parts in sorted(files):
        with open(os.path.join(root, *parts), "rb") as f:
            data = f.read(DIRECTORY_FILE_PREFIX_BYTES)
        # A character split by the cut is left out, as gemma-embed leaves it out.
        for cut in range(4 if len(data) == DIRECTORY_FILE_PREFIX_BYTES else 1):
            try:
                yield data[:len(data) - cut].decode("utf-8"), INHERIT
                break
            except UnicodeDecodeError:
                continue
        else:
            raise CorpusError(f"{root}: {'/'.join(parts)}: not UTF-8")


def read_corpus(path, fmt=None, text_column="text", title_column=None, limit=None):
    """The first `limit` documents (all with None) of `path`: (text or token ids, prompt) each,
    the prompt INHERIT, None (no prompt), ("named", NAME) or ("raw", PROMPT)."""
    fmt = fmt or format_of(path)
    if title_column is not None and fmt in ("text", "dir"):
        raise CorpusError(f"{path}: --title-column needs JSON Lines, CSV or Parquet input")
    if fmt in ("jsonl", "text"):
        documents = line_documents(path, fmt, text_column, title_column)
    elif fmt == "csv":
        documents = csv_documents(path, text_column, title_column)
    elif fmt == "parquet":
        documents = parquet_documents(path, text_column, title_column)
    else:
        documents = directory_documents(path)
    out = []
    for document in documents:
        if limit is not None and len(out) >= limit:
            break
        out.append(document)
    return out


def prompted(documents, prompts, job_prompt_name):
    """Each document as the engine sees it: its prompt + text (str), or its token ids (list).
    `prompts` are the model's named prompts; `job_prompt_name` the prompt of INHERIT (or None)."""
    def prompt_text(name):
        if name not in prompts:
            raise CorpusError(f"no prompt named `{name}`; the model has: {', '.join(prompts)}")
        return prompts[name]

    job_prompt = prompt_text(job_prompt_name) if job_prompt_name else ""
    out = []
    for content, prompt in documents:
        if isinstance(content, list):
            out.append(content)
        elif prompt is INHERIT:
            out.append(job_prompt + content)
        elif prompt is None:
            out.append(content)
        elif prompt[0] == "named":
            out.append(prompt_text(prompt[1]) + content)
        else:
            out.append(prompt[1] + content)
    return out


def model_prompts(model_dir):
    """The named prompts and default prompt name of a sentence-transformers model directory."""
    try:
        with open(os.path.join(model_dir, "config_sentence_transformers.json"), encoding="utf-8") as f:
            config = json.load(f)
    except FileNotFoundError:
        return {}, None
    return config.get("prompts") or {}, config.get("default_prompt_name")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("corpus")
    ap.add_argument("--model", required=True, help="model directory (for its named prompts)")
    ap.add_argument("--format", choices=FORMATS)
    ap.add_argument("--text-column", default="text")
    ap.add_argument("--title-column")
    ap.add_argument("--prompt-name", help="the prompt of documents without their own "
                                          "(default: the model's default prompt, if any)")
    ap.add_argument("--docs", type=int, help="only the first N documents")
    args = ap.parse_args()
    try:
        prompts, default_name = model_prompts(args.model)
        documents = read_corpus(args.corpus, args.format, args.text_column, args.title_column, args.docs)
        for document in prompted(documents, prompts, args.prompt_name or default_name):
            if isinstance(document, list):
                print(json.dumps({"ids": document}))
            else:
                print(json.dumps({"text": document, "prompt_name": None}, ensure_ascii=False))
    except CorpusError as e:
        sys.exit(f"corpus_docs: {e}")


if __name__ == "__main__":
    main()
