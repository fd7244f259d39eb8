#!/usr/bin/env python3
"""A stage of tools/gpu-check.sh: the corpus job (`gemma-embed embed`) end to end, timed, then
killed and resumed.

    index_check.py --model DIR --backend cuda --chars N --work DIR --json OUT
                   [--tokenizer FILE] [--source FILE ...] [--seed S] -- GEMMA_COMMAND... [-- EMBED_ARGS...]

GEMMA_COMMAND runs the gemma-embed binary (with an env prefix where it needs one); EMBED_ARGS go
to every `embed` run. The corpus is JSON Lines of at least N characters of text:
runs of 1 to 8 consecutive paragraphs of the --source files (by default the repository's
Markdown and Rust sources), half of them with the `document` prompt. --tokenizer (a
tokenizer.json, or .json.gz) replaces the model's tokenizer in a copy of the model folder, so a
random-weight model can be timed with the real tokenizer's cost.

Three runs of the same command, reading the job's own last lines (`embedded ...` and
`backend: ...`):
  1. uninterrupted, into full.npy: documents, tokens, wall time, tokens/s, and the backend's
     forward time as a share of the wall time (what reading, tokenizing, packing and writing
     cost on top of the GPU);
  2. into crash.npy, killed with SIGKILL as soon as its checkpoint holds rows;
  3. the same command again, which must continue from the checkpoint.
crash.npy must then hold the rows of full.npy: same shape, every row's cosine >= --min-cosine
(the batches are packed differently after the restart, and bf16 GEMMs of other shapes may round
differently). Exits 1 if any run failed, the kill came after the job finished, nothing was
resumed, or a row differs.
"""

import argparse
import gzip
import json
import math
import operator
import os
import random
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
from array import array

from jsonfile import load

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EMBEDDED = re.compile(r"^embedded (\d+) docs, (\d+) tokens in ([0-9.]+) s ")
RESUMED = re.compile(r", (\d+) from the interrupted run")
BACKEND = re.compile(r"^backend: (\d+) batches \(([0-9.]+) sequences, ([0-9.]+) tokens on average\), "
                     r"forward ([0-9.]+) s = ([0-9.]+)% of the job's wall time \(([0-9]+) tokens/s while computing\)")


def default_sources():
    found = []
    for root, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in ("target", "fixtures")]
        found += [os.path.join(root, f) for f in files if f.endswith((".md", ".rs"))]
    return sorted(found)


def unembeddable_tokens(model):
    """The text of every special token of the model's tokenizer whose id is past its embedding
    table (Gemma's `<image_soft_token>`, id 262144 of 262144 rows): a document holding one is
    refused by `embed`, as sentence-transformers fails on it, so the corpus leaves it out (the
    repository's tests and sources quote it)."""
    with open(os.path.join(model, "config.json")) as f:
        vocab = json.load(f)["vocab_size"]
    with open(os.path.join(model, "tokenizer.json"), encoding="utf-8") as f:
        added = json.load(f).get("added_tokens", [])
    return [t["content"] for t in added if t["id"] >= vocab]


def paragraphs(paths, leave_out):
    out = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        out += [" ".join(p.split()) for p in re.split(r"\n\s*\n", text)]
    return [p for p in out if len(p) >= 20 and not any(t in p for t in leave_out)]


def write_corpus(path, sources, least_chars, seed, leave_out):
    """Documents of 1..8 consecutive paragraphs (none holding a string of `leave_out`) until
    they hold `least_chars` characters of text; returns their count."""
    paras = paragraphs(sources, leave_out)
    if not paras:
        sys.exit(f"index_check: no paragraphs in {sources}")
    rng = random.Random(seed)
    chars, docs = 0, 0
    with open(path, "w", encoding="utf-8") as f:
        while chars < least_chars:
            start = rng.randrange(len(paras))
            text = " ".join(paras[start:start + rng.randint(1, 8)])
            doc = {"id": f"doc{docs}", "text": text}
            if docs % 2 == 0:
                doc["prompt_name"] = "document"
            f.write(json.dumps(doc) + "\n")
            chars += len(text)
            docs += 1
    return docs


def model_with_tokenizer(model, tokenizer, work):
    """A copy of `model` (links to its files) whose tokenizer.json is `tokenizer`."""
    dest = os.path.join(work, "model-with-tokenizer")
    shutil.rmtree(dest, ignore_errors=True)
    os.makedirs(dest)
    for name in os.listdir(model):
        if name != "tokenizer.json":
            os.symlink(os.path.abspath(os.path.join(model, name)), os.path.join(dest, name))
    opener = gzip.open if tokenizer.endswith(".gz") else open
    with opener(tokenizer, "rb") as src, open(os.path.join(dest, "tokenizer.json"), "wb") as out:
        shutil.copyfileobj(src, out)
    return dest


def job_report(stderr):
    """The numbers of the job's closing lines, or None where a line is missing."""
    report = {}
    for line in stderr.splitlines():
        m = EMBEDDED.match(line.strip())
        if m:
            resumed = RESUMED.search(line)
            report.update(docs=int(m[1]), tokens=int(m[2]), seconds=float(m[3]),
                          resumed_rows=int(resumed[1]) if resumed else 0)
        m = BACKEND.match(line.strip())
        if m:
            report.update(batches=int(m[1]), batch_sequences=float(m[2]), batch_tokens=float(m[3]),
                          forward_seconds=float(m[4]), forward_share=float(m[5]) / 100,
                          forward_tokens_per_s=float(m[6]))
    if "docs" not in report:
        return None
    report["tokens_per_s"] = report["tokens"] / max(report["seconds"], 1e-9)
    return report


def read_npy(path):
    """(rows, cols, float32 values) of a 2-D little-endian float32 C-order .npy file."""
    with open(path, "rb") as f:
        if f.read(6) != b"\x93NUMPY":
            raise ValueError(f"{path}: not a .npy file")
        major = f.read(2)[0]
        size_format = "<H" if major == 1 else "<I"
        (header_len,) = struct.unpack(size_format, f.read(struct.calcsize(size_format)))
        header = f.read(header_len).decode("latin1")
        if "'<f4'" not in header or "'fortran_order': False" not in header:
            raise ValueError(f"{path}: not little-endian float32 in C order: {header}")
        rows, cols = (int(v) for v in re.search(r"'shape': \((\d+), (\d+)\)", header).groups())
        values = array("f")
        values.frombytes(f.read())
    if sys.byteorder != "little":
        values.byteswap()
    if len(values) != rows * cols:
        raise ValueError(f"{path}: {len(values)} values for shape ({rows}, {cols})")
    return rows, cols, values


def compare(full_path, resumed_path):
    """Shapes, the smallest row cosine and the largest absolute difference of two outputs."""
    rows, cols, full = read_npy(full_path)
    other_rows, other_cols, other = read_npy(resumed_path)
    result = {"rows": rows, "resumed_file_rows": other_rows, "cols": cols}
    if (rows, cols) != (other_rows, other_cols):
        return result
    worst, largest = 1.0, 0.0
    for r in range(rows):
        a, b = full[r * cols:(r + 1) * cols], other[r * cols:(r + 1) * cols]
        dot = sum(map(operator.mul, a, b))
        norms = math.sqrt(sum(map(operator.mul, a, a)) * sum(map(operator.mul, b, b)))
        cosine = dot / norms if norms > 0 else 0.0
        # A NaN row is the worst of all (min() would pass over it).
        worst = cosine if math.isnan(cosine) else min(worst, cosine)
        largest = max(largest, max(abs(x - y) for x, y in zip(a, b)))
    result.update(min_cosine=worst, max_abs_diff=largest)
    return result


def remove_outputs(path):
    for suffix in ("", ".partial", ".checkpoint"):
        target = path + suffix
        if os.path.isdir(target):
            shutil.rmtree(target)
        elif os.path.exists(target):
            os.remove(target)


def checkpoint_rows(path):
    return (load(path) or {}).get("rows", 0)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--backend", required=True)
    ap.add_argument("--chars", type=int, required=True, help="corpus size: characters of text, at least")
    ap.add_argument("--work", required=True)
    ap.add_argument("--json", required=True)
    ap.add_argument("--tokenizer", help="tokenizer.json or .json.gz to use instead of the model's")
    ap.add_argument("--source", action="append", help="text files the corpus is cut from")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--min-cosine", type=float, default=0.9999)
    ap.add_argument("--kill-timeout", type=float, default=60.0,
                    help="seconds to wait for the second run's first checkpoint")
    ap.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    rest = args.command[1:] if args.command[:1] == ["--"] else args.command
    if "--" in rest:
        split = rest.index("--")
        gemma, extra = rest[:split], rest[split + 1:]
    else:
        gemma, extra = rest, []
    if not gemma:
        ap.error("no gemma-embed command after --")

    os.makedirs(args.work, exist_ok=True)
    model = args.model
    if args.tokenizer:
        model = model_with_tokenizer(model, args.tokenizer, args.work)
    corpus = os.path.join(args.work, "corpus.jsonl")
    sources = args.source or default_sources()
    docs = write_corpus(corpus, sources, args.chars, args.seed, unembeddable_tokens(model))
    print(f"index_check: {docs} documents from {len(sources)} source files -> {corpus}", flush=True)
    command = gemma + ["embed", "--model", model, "--backend", args.backend, "--input", corpus] + extra
    full, crash = os.path.join(args.work, "full.npy"), os.path.join(args.work, "crash.npy")
    result = {"backend": args.backend, "tokenizer": args.tokenizer or "the model's",
              "corpus_docs": docs, "embed_args": extra, "passed": False}

    def finish(problem=None):
        result["problem"] = problem
        result["passed"] = problem is None
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
        print(json.dumps(result, indent=2))
        if problem:
            print(f"index_check: {problem}", file=sys.stderr)
        sys.exit(0 if problem is None else 1)

    def run_to_the_end(output, which):
        run = subprocess.run(command + ["--output", output, "--quiet"], capture_output=True, text=True)
        sys.stderr.write(run.stderr)
        report = job_report(run.stderr)
        if run.returncode != 0 or report is None:
            finish(f"the {which} run failed (exit {run.returncode})")
        return report

    remove_outputs(full)
    result["full"] = run_to_the_end(full, "uninterrupted")

    remove_outputs(crash)
    child = subprocess.Popen(command + ["--output", crash, "--quiet"], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + args.kill_timeout
    killed_at = 0
    while child.poll() is None and time.monotonic() < deadline:
        killed_at = checkpoint_rows(crash + ".checkpoint")
        if killed_at > 0:
            child.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    if killed_at == 0 and child.poll() is None:
        child.kill()
        child.communicate()
        finish(f"the second run wrote no checkpoint with rows in {args.kill_timeout:.0f} s")
    child.communicate()
    if killed_at == 0 or child.returncode != -signal.SIGKILL:
        finish(f"the second run finished (exit {child.returncode}) before it could be killed at a "
               f"checkpoint: make the corpus larger")
    result["killed_at_rows"] = killed_at

    report = result["resumed"] = run_to_the_end(crash, "resumed")
    if report["resumed_rows"] == 0:
        finish("the rerun did not continue from the checkpoint")
    result["agreement"] = compare(full, crash)
    agreement = result["agreement"]
    if "min_cosine" not in agreement:
        finish(f"the resumed output has {agreement['resumed_file_rows']} rows, the uninterrupted "
               f"one {agreement['rows']}")
    if not agreement["min_cosine"] >= args.min_cosine:  # NaN fails too
        finish(f"a resumed row differs: cosine {agreement['min_cosine']:.6f} < {args.min_cosine}")
    finish()


if __name__ == "__main__":
    main()
