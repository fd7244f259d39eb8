#!/usr/bin/env python3
"""The closing table of tools/gpu-check.sh: stage outcomes, kernel checks, parity, and
throughput of gemma-embed against sentence-transformers, from the files the stages wrote.

    summary.py --stages stages.tsv --out DIR

Reads DIR/kernels.json, DIR/parity.json, DIR/bench.json, DIR/bench_variant_NAME.json (the candidate
kernel choices), DIR/bench_budgets.json (smaller batch budgets), DIR/bench_reference.json,
DIR/profile.json, DIR/profile_variant.json, DIR/serve.json and DIR/index.json where they exist.
Exits 1 if a kernel check, the parity check, the server or the corpus job failed, or a stage did
not finish.
"""

import argparse
import glob
import os
import sys

from jsonfile import load

# Issue 3 targets, measured on an H100 or H200.
TARGET_TOKENS_PER_S_512 = 1_000_000
TARGET_RATIO_VS_ST_BF16 = 10.0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stages", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    ok = True

    print("=" * 78)
    print("GPU CHECK SUMMARY")
    bench = load(os.path.join(args.out, "bench.json"))
    ref = load(os.path.join(args.out, "bench_reference.json"))
    variants = {os.path.basename(path)[len("bench_variant_"):-len(".json")]: load(path)
                for path in sorted(glob.glob(os.path.join(args.out, "bench_variant_*.json")))}
    device = None
    for report in (bench, ref):
        if report and not device:
            device = report["machine"].get("gpu") or report["machine"].get("cpu")
    if device:
        print(f"device: {device}")

    print(f"\n{'stage':<20} {'status':<14} {'seconds':>8}")
    with open(args.stages) as f:
        for line in f:
            name, status, millis = line.rstrip("\n").split("\t")
            print(f"{name:<20} {status:<14} {int(millis) / 1000:>8.1f}")
            ok &= status == "ok"

    kernels = load(os.path.join(args.out, "kernels.json"))
    if kernels is not None:
        failing = [k for k in kernels if not k.get("passed")]
        print(f"\nkernels: {len(kernels) - len(failing)}/{len(kernels)} pass")
        for k in failing:
            if k.get("error"):
                # It did not run (launch error, fault, hang): no numbers, the error says why.
                print(f"  FAIL {k['name']} [{k['case']}]: {k['error']}")
                continue
            print(f"  FAIL {k['name']} [{k['case']}]: max abs {k['max_abs_err']:.3e} "
                  f"(tol {k['max_abs_tol']:.1e}), rel L2 {k['rel_l2_err']:.3e} "
                  f"(tol {k['rel_l2_tol']:.1e}), bad values {k['bad_values']}")
            if k.get("mismatch"):
                m = k["mismatch"]
                print(f"       {m['wrong']} of {m['total']} wrong, first {m['first']}, worst {m['worst']}; "
                      f"rows {m['rows_span']} (mod 16: {m['row_residues_16']}), cols {m['cols_span']} "
                      f"(mod 8: {m['col_residues_8']}; 64-blocks: {m['col_blocks_64']})")
        ok &= not failing and len(kernels) > 0
        ceilings = load(os.path.join(args.out, "ceilings.json"))
        if ceilings is not None:
            copy, mm = ceilings["copy_gb_per_s"], ceilings["matmul_bf16_tflop_per_s"]
            # check-kernels' own probe: the L2-to-SM read rate, the ceiling of the tiled GEMM
            # kernels' operand loads (their "L2 GB/s").
            probe = next((k for k in kernels if k["name"] == "l2_read_probe" and k.get("passed")
                          and k.get("timing")), None)
            l2 = probe["timing"]["gbytes_per_s"] if probe else None
            print(f"card ceilings (measured): copy {copy:,.0f} GB/s, bf16 matmul {mm:,.1f} TFLOP/s, "
                  + (f"L2 read {l2:,.0f} GB/s" if l2 else "L2 read not measured"))
            print(f"  {'kernel':<26} {'timed case':<38} {'us':>8} {'GB/s':>7} {'%copy':>6} {'TFLOP/s':>8} {'%mm':>5}"
                  f" {'L2 GB/s':>8} {'%L2':>5}")
            for k in kernels:
                t = k.get("timing")
                if not t:
                    continue
                t_l2 = t.get("l2_gbytes_per_s")
                l2_cols = (f" {t_l2:>8.0f} " + (f"{100 * t_l2 / l2:>4.0f}%" if l2 else f"{'-':>5}")
                           if t_l2 else f" {'-':>8} {'-':>5}")
                print(f"  {k['name']:<26} {t['case']:<38} {t['median_us']:>8.1f} {t['gbytes_per_s']:>7.0f} "
                      f"{100 * t['gbytes_per_s'] / copy:>5.0f}% {t['tflops']:>8.1f} {100 * t['tflops'] / mm:>4.0f}%"
                      + l2_cols)

    parity = load(os.path.join(args.out, "parity.json"))
    if parity is not None:
        print(f"\nparity over {parity['num_vectors']} vectors: "
              + ", ".join(f"min cos({k.replace('_', ',')}) {v:.6f}" for k, v in parity["min_cosine"].items()))
        print(f"  thresholds {parity['threshold']} (cpu,st: {parity['cpu_threshold']}); "
              f"max cos between different sequences "
              + ", ".join(f"{k} {v:.3f}" for k, v in parity["max_cosine_between_different_sequences"].items()))
        for p in parity["problems"][:10]:
            print(f"  PROBLEM {p}")
        print(f"  parity {'PASS' if parity['pass'] else 'FAIL'}")
        ok &= parity["pass"]

    if bench or ref:
        ours = {w["name"]: w for w in bench["workloads"]} if bench else {}
        theirs = {w["name"]: w for w in ref["workloads"]} if ref else {}
        ours_label = f"gemma-embed {bench['backend']} {bench['dtype']}" if bench else "gemma-embed"
        ref_label = f"ST {ref['backend']} {ref['dtype']}" if ref else "ST"
        print(f"\n{'workload':<16} {ours_label:>22} {'TFLOP/s':>8} {ref_label:>18} {'TFLOP/s':>8} {'ratio':>7}")
        for name in list(ours) + [n for n in theirs if n not in ours]:
            a, b = ours.get(name), theirs.get(name)
            cells = [f"{a['tokens_per_s']:>16,.0f} tok/s" if a else f"{'-':>22}",
                     f"{a['tflops_per_s']:>8.2f}" if a else f"{'-':>8}",
                     f"{b['tokens_per_s']:>12,.0f} tok/s" if b else f"{'-':>18}",
                     f"{b['tflops_per_s']:>8.2f}" if b else f"{'-':>8}",
                     f"{a['tokens_per_s'] / b['tokens_per_s']:>6.1f}x" if a and b else f"{'-':>7}"]
            print(f"{name:<16} " + " ".join(cells))
        if bench and bench["backend"] == "cuda":
            w512 = ours.get("fixed-512")
            if w512:
                met = w512["tokens_per_s"] >= TARGET_TOKENS_PER_S_512
                print(f"target >= {TARGET_TOKENS_PER_S_512:,} tok/s at 512: "
                      f"{'met' if met else 'NOT met'} ({w512['tokens_per_s']:,.0f})")
            ratios = [ours[n]["tokens_per_s"] / theirs[n]["tokens_per_s"] for n in ours if n in theirs]
            if ratios:
                print(f"target >= {TARGET_RATIO_VS_ST_BF16:.0f}x sentence-transformers bf16: "
                      f"{'met' if min(ratios) >= TARGET_RATIO_VS_ST_BF16 else 'NOT met'} "
                      f"(lowest {min(ratios):.1f}x)")
    budgets = load(os.path.join(args.out, "bench_budgets.json"))
    if budgets is not None:
        # The bench stage's budget next to the smaller ones, per workload.
        rows = {}
        names = {w["name"] for w in budgets["workloads"]}
        for w in (bench["workloads"] if bench else []) + budgets["workloads"]:
            if w["name"] in names:
                rows.setdefault(w["name"], {})[w["max_batch_tokens"]] = w["tokens_per_s"]
        sizes = sorted({size for by_size in rows.values() for size in by_size})
        print(f"\nbatch budget (tokens):  " + " ".join(f"{size:>12}" for size in sizes))
        for name, by_size in rows.items():
            print(f"  {name:<20} " + " ".join(f"{by_size[size]:>12,.0f}" if size in by_size else f"{'-':>12}"
                                            for size in sizes))

    for variant, report in variants.items():
        if not report:
            continue
        print(f"\nkernel choices: the default vs {variant}")
        ours = {w["name"]: w for w in bench["workloads"]} if bench else {}
        for w in report["workloads"]:
            base = ours.get(w["name"])
            change = f"{100 * (w['tokens_per_s'] / base['tokens_per_s'] - 1):+.1f}%" if base else "-"
            base_cell = f"{base['tokens_per_s']:>12,.0f}" if base else f"{'-':>12}"
            print(f"{w['name']:<16} default {base_cell} tok/s   {variant} {w['tokens_per_s']:>12,.0f} tok/s   {change}")

    if variants:
        # One line per candidate: what a change of default would rest on.
        parity_min = parity["min_cosine"] if parity else {}
        base = {w["name"]: w["tokens_per_s"] for w in bench["workloads"]} if bench else {}
        print("\ncandidates (a default changes only where one is correct and faster):")
        width = max(len(v) for v in variants)
        for variant, report in variants.items():
            cos = parity_min.get(f"{variant}_st")
            correct = cos is not None and cos >= parity["threshold"]
            changes = [w["tokens_per_s"] / base[w["name"]] - 1 for w in (report or {}).get("workloads", [])
                       if w["name"] in base]
            if cos is None or not changes:
                verdict = "not measured"
            elif not correct:
                verdict = "WRONG (parity)"
            elif min(changes) > 0:
                verdict = "correct, faster on every workload"
            elif max(changes) > 0:
                verdict = "correct, faster on some workloads only"
            else:
                verdict = "correct, not faster"
            cos_cell = f"{cos:.6f}" if cos is not None else "-"
            span = f"{100 * min(changes):+.1f}%..{100 * max(changes):+.1f}%" if changes else "-"
            print(f"  {variant:<{width}} min cos vs ST {cos_cell:>9}  throughput {span:>16}  {verdict}")

    profile = load(os.path.join(args.out, "profile.json"))
    if profile is not None:
        other = load(os.path.join(args.out, "profile_variant.json"))
        print(f"\nprofile (ms per batch of {profile['batch_tokens']} tokens): {profile['kernels']}"
              + (f" vs {other['kernels']}" if other else ""))
        other_workloads = {w["workload"]: w for w in other["workloads"]} if other else {}
        for w in profile["workloads"]:
            o = other_workloads.get(w["workload"])
            per_batch = lambda wl, t: t["ms"] / max(wl["batches"], 1)
            print(f"  {w['workload']}: {w['gpu_ms'] / max(w['batches'], 1):.2f} ms"
                  + (f" vs {o['gpu_ms'] / max(o['batches'], 1):.2f} ms" if o else ""))
            ops = [(t["op"], per_batch(w, t), None) for t in w["ops"]]
            if o:
                theirs = {t["op"]: per_batch(o, t) for t in o["ops"]}
                ops = [(name, ms, theirs.pop(name, None)) for name, ms, _ in ops]
                ops += [(name, None, ms) for name, ms in theirs.items()]
            for name, ms, other_ms in ops:
                cells = f"{ms:>8.3f}" if ms is not None else f"{'-':>8}"
                if o:
                    cells += f" {other_ms:>8.3f}" if other_ms is not None else f" {'-':>8}"
                print(f"    {name:<38} {cells}")

    serve = load(os.path.join(args.out, "serve.json"))
    if serve is not None:
        latency = serve["latency_ms"]
        print(f"\nserve under load: {serve['statuses']} over {serve['seconds']:.1f} s, "
              f"{serve['ok_tokens_per_s']:,.0f} tok/s, {serve['ok_inputs_per_s']:,.0f} inputs/s, "
              f"p50 {latency['p50']:.1f} ms, p99 {latency['p99']:.1f} ms "
              f"({serve['concurrency']} connections x {serve['inputs_per_request']} inputs), "
              f"wrong answers {serve['mismatches']} (largest difference {serve['max_abs_diff']:.1e})")
        ok &= serve["mismatches"] == 0 and serve["transport_errors"] == 0

    index = load(os.path.join(args.out, "index.json"))
    if index is not None:
        full, resumed, agreement = index.get("full"), index.get("resumed"), index.get("agreement")
        print(f"\ncorpus job (embed, {index['corpus_docs']} documents, tokenizer: {index['tokenizer']}):")
        if full:
            forward = (f", forward {full['forward_share']:.1%} of the wall time "
                       f"({full['forward_tokens_per_s']:,.0f} tok/s while computing, "
                       f"{full['batch_tokens']:,.0f} tokens a batch)" if "forward_share" in full else "")
            print(f"  {full['tokens']:,} tokens in {full['seconds']:.2f} s: {full['tokens_per_s']:,.0f} tok/s{forward}")
        if resumed:
            print(f"  killed at {index['killed_at_rows']} rows, resumed {resumed['resumed_rows']} rows")
        if agreement and "min_cosine" in agreement:
            print(f"  resumed output against the uninterrupted one: {agreement['rows']} rows, "
                  f"min cosine {agreement['min_cosine']:.6f}, largest difference {agreement['max_abs_diff']:.1e}")
        if index["problem"]:
            print(f"  FAILED: {index['problem']}")
        ok &= index["passed"]

    print(f"\nGPU CHECK {'PASS' if ok else 'FAIL'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
