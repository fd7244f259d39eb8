#!/usr/bin/env python3
"""CPU throughput: gemma-embed's CPU backend vs sentence-transformers (torch float32), side by side.

Both embed the same documents (a deterministic mix of 20..300-token texts cut from the golden
file's texts) with the same number of threads; the script prints tokens/s of each, the ratio, and
the agreement of the two sets of embeddings.

    python3 tools/bench_cpu_vs_st.py [--model DIR] [--threads 2] [--docs 64] [--rounds 2] [--avx2]

Our side runs `examples/cpu_throughput.rs` (built here with `cargo build --release --example
cpu_throughput`), which times `CpuBackend::forward` over packed batches after one warm-up batch;
sentence-transformers is timed on `encode` (batch size 32, its default) after one warm-up call.
The two alternate for --rounds rounds and the best round of each counts. Besides wall-clock
tokens/s it prints tokens per CPU-second times the thread count, which estimates the idle-machine
rate when other processes share the cores.
"""

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT.parent / "shared/golden/embeddinggemma-300m.json"


def make_documents(tokenizer, count: int, seed: int) -> list[str]:
    """`count` texts of 20..300 tokens: random word windows of the golden texts."""
    golden = json.loads(GOLDEN.read_text())
    words = " ".join(case["text"] for case in golden["cases"] if case["n_tokens"] > 100).split()
    rng = random.Random(seed)
    docs = []
    while len(docs) < count:
        target = rng.randint(20, 300)
        length = max(5, int(target * 0.6))
        start = rng.randrange(0, len(words) - length)
        text = " ".join(words[start : start + length])
        ids = tokenizer(text)["input_ids"]
        while len(ids) > target and length > 5:
            length -= max(1, (len(ids) - target) // 2)
            text = " ".join(words[start : start + length])
            ids = tokenizer(text)["input_ids"]
        if 20 <= len(ids) <= 300:
            docs.append(text)
    return docs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(Path.home() / ".cache/embeddinggemma-300m"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--docs", type=int, default=64)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--max-batch-tokens", type=int, default=8192)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds; the best of each side counts")
    parser.add_argument("--avx2", action="store_true",
                        help="both sides on AVX2 kernels only: ours built without the `avx512` feature, "
                             "torch/MKL/oneDNN capped at AVX2 (what an AVX2-only machine runs)")
    args = parser.parse_args()

    os.environ["RAYON_NUM_THREADS"] = str(args.threads)
    if args.avx2:
        # Read by torch, MKL and oneDNN when they load: set before the import.
        os.environ.update(ATEN_CPU_CAPABILITY="avx2", MKL_ENABLE_INSTRUCTIONS="AVX2", ONEDNN_MAX_CPU_ISA="AVX2")
    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(args.threads)
    st = SentenceTransformer(args.model, device="cpu")
    st.eval()
    docs = make_documents(st.tokenizer, args.docs, args.seed)
    ids = [st.tokenizer(d)["input_ids"] for d in docs]
    tokens = sum(len(i) for i in ids)
    print(f"{len(docs)} documents, {tokens} tokens, lengths {min(map(len, ids))}..{max(map(len, ids))}, "
          f"{args.threads} threads", flush=True)

    features = ["--no-default-features"] if args.avx2 else []
    subprocess.run(["cargo", "build", "--release", "--quiet", "--example", "cpu_throughput", *features],
                   cwd=ROOT, check=True)
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    tmp = Path(tempfile.mkdtemp())
    ids_path, out_path = tmp / "ids.jsonl", tmp / "out.f32"
    ids_path.write_text("".join(json.dumps(i) + "\n" for i in ids))
    with torch.no_grad():
        st.encode(docs[:8], batch_size=32)

    # Alternate the two sides so that load from other processes hits both alike; keep the best
    # round of each. Tokens per CPU-second (times the thread count) estimates the rate on an
    # otherwise idle machine when the machine is shared.
    ours_runs, st_runs = [], []
    for round_ in range(args.rounds):
        result = json.loads(
            subprocess.run(
                [target / "release/examples/cpu_throughput", args.model, ids_path,
                 str(args.max_batch_tokens), out_path],
                check=True, capture_output=True, text=True,
            ).stdout
        )
        ours_runs.append((result["seconds"], result["cpu_seconds"]))
        with torch.no_grad():
            wall, cpu = time.perf_counter(), time.process_time()
            st_emb = st.encode(docs, batch_size=32, convert_to_numpy=True)
            st_runs.append((time.perf_counter() - wall, time.process_time() - cpu))
        print(f"round {round_ + 1}: gemma-embed {tokens / ours_runs[-1][0]:.1f} tokens/s "
              f"(cpu {ours_runs[-1][1]:.1f} s), sentence-transformers {tokens / st_runs[-1][0]:.1f} tokens/s "
              f"(cpu {st_runs[-1][1]:.1f} s)", flush=True)
    ours_emb = np.fromfile(out_path, dtype=np.float32).reshape(len(docs), -1)
    shutil.rmtree(tmp)

    ours_wall = tokens / min(w for w, _ in ours_runs)
    st_wall = tokens / min(w for w, _ in st_runs)
    ours_cpu = tokens * args.threads / min(c for _, c in ours_runs)
    st_cpu = tokens * args.threads / min(c for _, c in st_runs)
    print(f"gemma-embed cpu:       {ours_wall:7.1f} tokens/s wall, {ours_cpu:7.1f} tokens/s per {args.threads} CPU-s")
    print(f"sentence-transformers: {st_wall:7.1f} tokens/s wall, {st_cpu:7.1f} tokens/s per {args.threads} CPU-s")
    cos = (ours_emb * st_emb).sum(1) / (np.linalg.norm(ours_emb, axis=1) * np.linalg.norm(st_emb, axis=1))
    print(f"agreement: worst cosine {cos.min():.7f}, max abs diff {np.abs(ours_emb - st_emb).max():.2e}")
    print(f"ratio gemma-embed / sentence-transformers: {ours_wall / st_wall:.2f}x wall-clock, "
          f"{ours_cpu / st_cpu:.2f}x per CPU-second")
    if cos.min() < 0.99999:
        sys.exit("embeddings disagree")


if __name__ == "__main__":
    main()
