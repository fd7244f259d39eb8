#!/usr/bin/env python3
"""Reference throughput: the workloads of `gemma-embed bench`, run through sentence-transformers,
written in the same JSON schema (so the two reports can be compared workload by workload).

    python3 tools/bench_reference.py --model DIR [--device cuda] [--full] [--lengths 128,512,2048]
                                     [--mixed] [--corpus FILE [--corpus-docs N] [--corpus-format F]
                                     [--text-column C] [--title-column T] [--prompt-name P]]
                                     [--tokens N] [--repeats N] [--json out.json]

By default the CPU run is CI-sized (fixed-128 and fixed-512, 1024 tokens each, 2 repeats: about a
minute on 2 cores); `--full` runs the whole set (16, 128, 512, 2048 and the mixed workload, 16384
tokens on the CPU, 262144 on a GPU, 5 repeats). Explicit flags override either.

On a GPU the model runs in bfloat16 with SDPA attention; on the CPU in float32 (how each is
normally used). Token ids are random (ids >= 6) and fed straight to the model: tokenization is not
timed, as in `gemma-embed bench`. Sequences are sorted by length and packed into padded batches of
at most --max-batch-tokens (padded) tokens, so the reference gets large batches. Warm-up runs are
excluded; the reported rate is the median over --repeats runs of the whole workload.

A corpus workload (--corpus) uses the documents' real token ids: tools/corpus_docs.py reads the
file as `gemma-embed bench --corpus` reads it (same formats, columns, titles and prompts) and they
are tokenized as it tokenizes them. The mixed workload's lengths are drawn exactly as `gemma-embed
bench --mixed` draws them (the same splitmix64 stream), so both engines see the same sequence
lengths.
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import corpus_docs  # noqa: E402  (beside this script)

MASK64 = (1 << 64) - 1
MIXED_MIN_LEN = 16
MIXED_MAX_LEN = 1024
FIRST_ORDINARY_ID = 6


def hf_backbone(model):
    """The transformers model inside a SentenceTransformer."""
    from transformers import PreTrainedModel

    return next(m for m in model.modules() if isinstance(m, PreTrainedModel))


def splitmix64(state):
    """One step of splitmix64: returns (new_state, output)."""
    state = (state + 0x9E3779B97F4A7C15) & MASK64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return state, z ^ (z >> 31)


def mixed_lengths(tokens, seed):
    """Uniform lengths in MIXED_MIN_LEN..=MIXED_MAX_LEN until their sum reaches `tokens`."""
    state, lengths, total = seed & MASK64, [], 0
    while total < tokens:
        state, z = splitmix64(state)
        n = MIXED_MIN_LEN + z % (MIXED_MAX_LEN - MIXED_MIN_LEN + 1)
        lengths.append(n)
        total += n
    return lengths


def corpus_workload(args, model):
    """The documents of --corpus, read by tools/corpus_docs.py as `gemma-embed bench --corpus`
    reads them (every input format of `embed`), tokenized as it tokenizes them: prompt + text,
    <bos>/<eos>, truncated to max_seq_length; a line's own `ids` used as they are."""
    try:
        documents = corpus_docs.read_corpus(args.corpus, args.corpus_format, args.text_column,
                                            args.title_column, args.corpus_docs)
        texts = corpus_docs.prompted(documents, model.prompts,
                                     args.prompt_name or model.default_prompt_name)
    except corpus_docs.CorpusError as e:
        sys.exit(f"bench_reference: {e}")
    ids = [t if isinstance(t, list) else
           model.tokenizer(t, truncation=True, max_length=model.max_seq_length)["input_ids"]
           for t in texts]
    name = os.path.basename(os.path.normpath(args.corpus))
    stem = "stdin" if args.corpus == "-" else os.path.splitext(name)[0]
    return {"name": f"corpus-{stem}", "seq_len": None, "lengths": [len(i) for i in ids], "ids": ids}


def workloads(args, model):
    out = []
    for n in args.lengths:
        out.append({"name": f"fixed-{n}", "seq_len": n, "lengths": [n] * max(1, args.tokens // n)})
    if args.mixed:
        out.append({"name": f"mixed-{MIXED_MIN_LEN}-{MIXED_MAX_LEN}", "seq_len": None,
                    "lengths": mixed_lengths(args.tokens, args.seed)})
    if args.corpus:
        out.append(corpus_workload(args, model))
    return out


def model_flops(cfg, radius, dense_shapes, n):
    """Matmul FLOPs of one sequence of n tokens: projections, MLP, attention inside each layer's
    window (QK^T and PV), and the Dense head. Same formula as `gemma-embed bench`."""
    hidden, inter = cfg["hidden_size"], cfg["intermediate_size"]
    head_dim, heads, kv_heads = cfg["head_dim"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    q_dim, kv_dim = heads * head_dim, kv_heads * head_dim
    per_token = 2 * (hidden * (q_dim + 2 * kv_dim) + q_dim * hidden + 3 * hidden * inter)
    total = 0
    for kind in cfg["layer_types"]:
        pairs = n * n
        if kind == "sliding_attention" and n > radius + 1:
            pairs -= (n - radius - 1) * (n - radius)
        total += per_token * n + 4 * heads * head_dim * pairs
    total += 2 * sum(i * o for i, o in dense_shapes)
    return total


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def batches_of(lengths, max_batch_tokens):
    """Sort by length (longest first, as sentence-transformers does) and cut into padded batches
    whose padded size (rows x longest) stays within max_batch_tokens (one sequence at least)."""
    order = sorted(lengths, reverse=True)
    batches, current = [], []
    for n in order:
        if current and (len(current) + 1) * current[0] > max_batch_tokens:
            batches.append(current)
            current = []
        current.append(n)
    if current:
        batches.append(current)
    return batches


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="sentence-transformers model directory or id")
    ap.add_argument("--device", help="cuda (bf16 + SDPA) or cpu (float32); default: cuda when available")
    ap.add_argument("--dtype", choices=["bf16", "f32"], help="default: bf16 on cuda, f32 on cpu")
    ap.add_argument("--full", action="store_true",
                    help="the full set: lengths 16,128,512,2048 plus mixed, 16384 tokens on cpu "
                         "(262144 on cuda), 5 repeats; without it a CI-sized run")
    ap.add_argument("--lengths", default=None,
                    type=lambda s: [int(x) for x in s.split(",") if x.strip()],
                    help="default: 128,512 on cpu (128,512,2048 on cuda); 16,128,512,2048 with --full")
    ap.add_argument("--mixed", action="store_true", help="add the mixed-length workload (on with --full)")
    ap.add_argument("--corpus", help="add a corpus workload: a file or directory in any input format of "
                                      "`gemma-embed embed` (see tools/corpus_docs.py); without --lengths "
                                      "the only workload")
    ap.add_argument("--corpus-docs", type=int, default=None, help="only the corpus's first N documents")
    ap.add_argument("--corpus-format", choices=corpus_docs.FORMATS, help="default: from the extension")
    ap.add_argument("--text-column", default="text", help="corpus: the column (JSON Lines: field) of the text")
    ap.add_argument("--title-column", help="corpus: the column (JSON Lines: field) of a title, for the "
                                           "prompt `title: {title} | text: `")
    ap.add_argument("--prompt-name", default=None, help="corpus: prompt for documents without their own "
                                                        "(default: the model's default prompt)")
    ap.add_argument("--tokens", type=int, default=None,
                    help="tokens per measured run of a workload (default: 65536 on cuda, 1024 on cpu; "
                         "--full: 262144 on cuda, 16384 on cpu)")
    ap.add_argument("--max-batch-tokens", type=int, default=None,
                    help="padded tokens per forward pass (default: 16384 on cuda, 4096 on cpu)")
    ap.add_argument("--repeats", type=int, default=None, help="default: 2 on cpu, 3 on cuda; 5 with --full")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the report here")
    args = ap.parse_args()
    if args.title_column and args.prompt_name:
        ap.error("--title-column and --prompt-name both choose the prompt: give one")

    try:
        import torch
        from sentence_transformers import SentenceTransformer
    except ImportError as e:
        sys.exit(f"bench_reference.py needs torch and sentence-transformers ({e}); "
                 "e.g. python3 -m pip install torch sentence-transformers")

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    on_gpu = args.device.startswith("cuda")
    dtype_name = args.dtype or ("bf16" if on_gpu else "f32")
    dtype = {"bf16": torch.bfloat16, "f32": torch.float32}[dtype_name]
    def default(value, otherwise):
        return otherwise if value is None else value

    if args.full:
        args.lengths = default(args.lengths, [16, 128, 512, 2048])
        args.mixed = True
        args.tokens = default(args.tokens, 262144 if on_gpu else 16384)
        args.repeats = default(args.repeats, 5)
    if args.lengths is None:
        args.lengths = [] if args.corpus else ([128, 512, 2048] if on_gpu else [128, 512])
    args.tokens = default(args.tokens, 65536 if on_gpu else 1024)
    args.repeats = default(args.repeats, 3 if on_gpu else 2)
    args.max_batch_tokens = default(args.max_batch_tokens, 16384 if on_gpu else 4096)
    for flag, value in (("--tokens", args.tokens), ("--repeats", args.repeats),
                        ("--max-batch-tokens", args.max_batch_tokens)):
        if value < 1:
            ap.error(f"{flag} must be at least 1, not {value}")
    if any(n < 1 for n in args.lengths):
        ap.error(f"--lengths must be at least 1 each, not {args.lengths}")
    if args.warmup < 0:
        ap.error(f"--warmup must be at least 0, not {args.warmup}")

    start = time.time()
    model = SentenceTransformer(args.model, device=args.device,
                                model_kwargs={"dtype": dtype, "attn_implementation": "sdpa"})
    model.to(dtype)
    model.eval()
    auto = hf_backbone(model)
    cfg = auto.config.to_dict()
    # The window radius from the raw config.json, as gemma-embed reads it (|i - j| <= w/2):
    # transformers turns the raw window w into the exclusive bound w/2 + 1 on the attribute, but
    # `to_dict()` gives the raw value in some versions and the converted one in others.
    raw_cfg, _ = type(auto.config).get_config_dict(auto.config._name_or_path)
    radius = raw_cfg["sliding_window"] // 2
    dense_shapes = [(m.linear.in_features, m.linear.out_features) for m in model if hasattr(m, "linear")]
    print(f"bench_reference: {args.device} {next(model.parameters()).dtype} "
          f"attention {auto.config._attn_implementation}, loaded in {time.time() - start:.1f} s", file=sys.stderr)

    rng = np.random.default_rng(args.seed)
    vocab = cfg["vocab_size"]

    def run(batches_ids):
        if on_gpu:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.inference_mode():
            for input_ids, mask in batches_ids:
                features = {"input_ids": input_ids.to(args.device), "attention_mask": mask.to(args.device)}
                model(features)["sentence_embedding"].float().cpu()
        if on_gpu:
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    results = []
    for w in workloads(args, model):
        lengths = w["lengths"]
        batches = batches_of(lengths, args.max_batch_tokens)
        # A corpus's own ids, longest first as batches_of orders the lengths.
        corpus_ids = iter(sorted(w["ids"], key=len, reverse=True)) if "ids" in w else None
        batch_tensors = []
        for b in batches:
            ids = torch.zeros((len(b), b[0]), dtype=torch.long)
            mask = torch.zeros((len(b), b[0]), dtype=torch.long)
            for r, n in enumerate(b):
                if corpus_ids is None:
                    ids[r, :n] = torch.from_numpy(rng.integers(FIRST_ORDINARY_ID, vocab, size=n))
                else:
                    ids[r, :n] = torch.tensor(next(corpus_ids))
                mask[r, :n] = 1
            batch_tensors.append((ids, mask))
        for _ in range(args.warmup):
            run(batch_tensors)
        seconds = [run(batch_tensors) for _ in range(args.repeats)]
        num_tokens = sum(lengths)
        padded = sum(len(b) * b[0] for b in batches)
        flops = sum(model_flops(cfg, radius, dense_shapes, n) for n in lengths)
        med = statistics.median(seconds)
        results.append({
            "name": w["name"],
            "seq_len": w["seq_len"],
            "mode": "offline",
            "max_batch_tokens": args.max_batch_tokens,
            "num_sequences": len(lengths),
            "num_tokens": num_tokens,
            "num_batches": len(batches),
            # Padded tokens over the budget of its batches (gemma-embed's batch_fill: tokens
            # over the budget, as it pads nothing), and how many of them are real tokens.
            "batch_fill": padded / (len(batches) * args.max_batch_tokens),
            "padding_efficiency": num_tokens / padded,
            "seconds": seconds,
            "seconds_median": med,
            "tokens_per_s": num_tokens / med,
            "tokens_per_s_min": num_tokens / max(seconds),
            "tokens_per_s_max": num_tokens / min(seconds),
            "sequences_per_s": len(lengths) / med,
            "flops": flops,
            "tflops_per_s": flops / med / 1e12,
        })
        r = results[-1]
        print(f"{r['name']:>16}: {r['tokens_per_s']:>12,.0f} tok/s  ({r['tokens_per_s_min']:,.0f}.."
              f"{r['tokens_per_s_max']:,.0f})  {r['sequences_per_s']:>9,.1f} seq/s  "
              f"{r['tflops_per_s']:>7.2f} TFLOP/s  real/padded tokens {r['padding_efficiency']:.2f}",
              file=sys.stderr)

    import sentence_transformers
    import transformers
    report = {
        "schema": "gemma-embed-bench/2",
        "engine": "sentence-transformers",
        "backend": "cuda" if on_gpu else "cpu",
        "dtype": dtype_name,
        "mode": "offline",
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "cpu": cpu_name(),
            "cpu_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name() if on_gpu else None,
        },
        "build": {
            "sentence_transformers": sentence_transformers.__version__,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "attention": auto.config._attn_implementation,
        },
        "model": {
            "dir": args.model,
            "num_layers": cfg["num_hidden_layers"],
            "hidden_size": cfg["hidden_size"],
            "embedding_dim": dense_shapes[-1][1] if dense_shapes else cfg["hidden_size"],
        },
        "settings": {
            "tokens_per_run": args.tokens,
            "max_batch_tokens": [args.max_batch_tokens],
            "repeats": args.repeats,
            "warmup": args.warmup,
            "seed": args.seed,
        },
        "workloads": results,
    }
    text = json.dumps(report, indent=1)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    else:
        print(text)


if __name__ == "__main__":
    main()
