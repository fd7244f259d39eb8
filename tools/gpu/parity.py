#!/usr/bin/env python3
"""End-to-end parity for the GPU check: one set of random token-id sequences, embedded by
gemma-embed (CUDA and CPU backends) and by sentence-transformers in float32, compared per vector.

    parity.py ids --output ids.jsonl [--lengths 1,2,...] [--seed N] [--vocab V]
    parity.py reference --model DIR --input ids.jsonl --output st.npy [--device cuda]
    parity.py compare --ids ids.jsonl [--cuda a.npy] [--variant NAME=v.npy ...] [--cpu b.npy] [--st c.npy] [--json out.json]

`reference` feeds the exact ids to the model (no tokenizer), one sequence per forward pass, so
there is no padding at all, with eager attention and full float32 matmuls (no TF32): the spec's
float32 reference. `compare` exits 1 if any cosine is under its threshold, a vector is NaN, or an
array is missing or has the wrong shape.
"""

import argparse
import json
import math
import secrets
import sys
import time

import numpy as np

PARITY_LENGTHS = [1, 2, 3, 15, 16, 17, 63, 64, 65, 127, 128, 129, 255, 256, 257, 258,
                  511, 512, 513, 1023, 2047, 2048]
FIRST_ORDINARY_ID = 6  # ids 0..5 are <pad>, <eos>, <bos>, <unk>, <mask>, [multimodal]


def hf_backbone(model):
    """The transformers model inside a SentenceTransformer."""
    from transformers import PreTrainedModel

    return next(m for m in model.modules() if isinstance(m, PreTrainedModel))


def parse_lengths(text):
    return [int(x) for x in text.split(",") if x.strip()]


def read_ids(path):
    seqs = []
    with open(path) as f:
        for line in f:
            if line.strip():
                seqs.append(json.loads(line)["ids"])
    return seqs


def cmd_ids(args):
    seed = args.seed if args.seed is not None else secrets.randbits(31)
    rng = np.random.default_rng(seed)
    with open(args.output, "w") as f:
        for i, n in enumerate(parse_lengths(args.lengths)):
            ids = rng.integers(FIRST_ORDINARY_ID, args.vocab, size=n)
            f.write(json.dumps({"id": i, "ids": [int(x) for x in ids]}) + "\n")
    print(f"parity ids: seed {seed} -> {args.output}", file=sys.stderr)


def cmd_reference(args):
    import torch
    from sentence_transformers import SentenceTransformer

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    start = time.time()
    model = SentenceTransformer(args.model, device=args.device,
                                model_kwargs={"attn_implementation": "eager", "dtype": torch.float32})
    model.to(torch.float32)
    model.eval()
    attn = hf_backbone(model).config._attn_implementation
    print(f"sentence-transformers reference: device {args.device}, "
          f"{next(model.parameters()).dtype}, attention {attn}, "
          f"loaded in {time.time() - start:.1f} s", file=sys.stderr)
    if attn != "eager":
        # One unpadded sequence per pass: any attention implementation computes the same
        # function here; eager is only the most literal one.
        print(f"warning: eager attention was not taken, the reference uses {attn}", file=sys.stderr)
    seqs = read_ids(args.input)
    rows = []
    start = time.time()
    with torch.inference_mode():
        for ids in seqs:
            input_ids = torch.tensor([ids], dtype=torch.long, device=args.device)
            features = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
            rows.append(model(features)["sentence_embedding"][0].float().cpu().numpy())
    out = np.stack(rows).astype(np.float32)
    print(f"sentence-transformers reference: {len(seqs)} sequences, "
          f"{sum(map(len, seqs))} tokens in {time.time() - start:.1f} s", file=sys.stderr)
    np.save(args.output, out)


def cosine(a, b):
    a, b = a.astype(np.float64), b.astype(np.float64)
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if not (math.isfinite(na) and math.isfinite(nb)) or na == 0.0 or nb == 0.0:
        return float("nan")
    return float(np.dot(a, b) / (na * nb))


def worst(cosines):
    """The smallest cosine, NaN if any is NaN."""
    return float("nan") if any(math.isnan(c) for c in cosines) else min(cosines)


def cmd_compare(args):
    lengths = [len(s) for s in read_ids(args.ids)]
    n = len(lengths)
    problems = []
    arrays = {}
    inputs = [("cuda", args.cuda)]
    for spec in args.variant:
        name, sep, path = spec.partition("=")
        if not sep or not name or "_" in name or name in ("cuda", "cpu", "st"):
            problems.append(f"--variant {spec}: expected NAME=PATH, NAME without '_' and not cuda/cpu/st")
            continue
        inputs.append((name, path))
    variants = [name for name, _ in inputs[1:]]
    inputs += [("cpu", args.cpu), ("st", args.st)]
    for name, path in inputs:
        if path is None:
            continue
        try:
            arr = np.load(path)
        except (OSError, ValueError) as e:
            problems.append(f"{name}: cannot read {path}: {e}")
            continue
        if arr.ndim != 2 or arr.shape[0] != n:
            problems.append(f"{name}: shape {arr.shape}, expected [{n}, D]")
            continue
        arrays[name] = arr

    candidates = [("cuda", "cpu"), ("cuda", "st")]
    candidates += [(v, other) for v in variants for other in ("st", "cuda")]
    candidates.append(("cpu", "st"))
    pairs = [(a, b) for a, b in candidates if a in arrays and b in arrays]
    thresholds = {p: (args.cpu_threshold if p == ("cpu", "st") else args.threshold) for p in pairs}
    rows = []
    for i in range(n):
        row = {"index": i, "length": lengths[i]}
        for name, arr in arrays.items():
            row[f"{name}_nan"] = bool(not np.all(np.isfinite(arr[i])))
            if row[f"{name}_nan"]:
                problems.append(f"{name}: vector {i} (length {lengths[i]}) has NaN/Inf")
        for a, b in pairs:
            c = cosine(arrays[a][i], arrays[b][i])
            row[f"cos_{a}_{b}"] = c
            if not c >= thresholds[(a, b)]:
                problems.append(f"cos({a},{b}) = {c:.6f} < {thresholds[(a, b)]} "
                                f"for vector {i} (length {lengths[i]})")
        rows.append(row)

    # How far apart different sequences are: a parity cosine only means something when
    # unrelated vectors are far from each other.
    distinct = {}
    for name, arr in arrays.items():
        if n > 1 and np.all(np.isfinite(arr)):
            unit = arr / np.linalg.norm(arr, axis=1, keepdims=True)
            sim = unit @ unit.T
            distinct[name] = float(np.max(sim[~np.eye(n, dtype=bool)]))

    if not pairs:
        problems.append("nothing to compare: fewer than two usable embedding arrays")
    summary = {
        "pass": not problems,
        "num_vectors": n,
        "threshold": args.threshold,
        "cpu_threshold": args.cpu_threshold,
        "min_cosine": {f"{a}_{b}": worst([r[f"cos_{a}_{b}"] for r in rows]) for a, b in pairs},
        "max_cosine_between_different_sequences": distinct,
        "problems": problems,
        "vectors": rows,
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)

    header = f"{'#':>3} {'len':>5} " + " ".join(f"{'cos(' + a + ',' + b + ')':>14}" for a, b in pairs)
    print(header)
    for r in rows:
        cells = []
        for a, b in pairs:
            c = r[f"cos_{a}_{b}"]
            flag = " " if c >= thresholds[(a, b)] else "!"
            cells.append(f"{1.0 - c:>13.2e}{flag}" if math.isfinite(c) else f"{'NaN':>13}!")
        print(f"{r['index']:>3} {r['length']:>5} " + " ".join(cells))
    print("(cells are 1 - cosine; '!' marks a failure)")
    for (a, b), c in ((p, summary["min_cosine"][f"{p[0]}_{p[1]}"]) for p in pairs):
        print(f"min cos({a},{b}) = {c:.7f}  (threshold {thresholds[(a, b)]})")
    for name, c in distinct.items():
        print(f"max cos between different sequences ({name}) = {c:.4f}")
    for p in problems:
        print(f"PROBLEM: {p}")
    print(f"PARITY {'PASS' if summary['pass'] else 'FAIL'}")
    sys.exit(0 if summary["pass"] else 1)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("ids", help="write random token-id sequences as JSON Lines")
    p.add_argument("--output", required=True)
    p.add_argument("--lengths", default=",".join(map(str, PARITY_LENGTHS)))
    p.add_argument("--seed", type=int, default=None, help="default: fresh, printed")
    p.add_argument("--vocab", type=int, default=262144)
    p.set_defaults(func=cmd_ids)

    p = sub.add_parser("reference", help="sentence-transformers float32 embeddings of exact ids")
    p.add_argument("--model", required=True)
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--device", default="cuda")
    p.set_defaults(func=cmd_reference)

    p = sub.add_parser("compare", help="per-vector cosines between embedding arrays")
    p.add_argument("--ids", required=True, help="the ids.jsonl the arrays were made from")
    p.add_argument("--cuda")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=PATH",
                   help="CUDA embeddings made with other kernel choices (GEMMA_EMBED_MLP=..., "
                        "GEMMA_EMBED_BRANCH=...), compared with st and cuda; repeatable")
    p.add_argument("--cpu")
    p.add_argument("--st")
    p.add_argument("--threshold", type=float, default=0.9995)
    p.add_argument("--cpu-threshold", type=float, default=0.99999,
                   help="threshold for cos(cpu, st): both are float32")
    p.add_argument("--json")
    p.set_defaults(func=cmd_compare)

    args = ap.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
