#!/usr/bin/env python3
"""The candidate kernel choices that passed check-kernels, together: the build tools/gpu-check.sh
times and profiles last, so that one failing candidate does not leave the run without a
measurement of all the others combined.

    passing_candidates.py --kernels OUT/kernels.json [--sm90]

Per choice variable, the first option (most promising first) whose kernels all passed: every
check of the kernel (its name, or NAME/part) passed and it has at least one. Prints one line,
NAME<TAB>ENV<TAB>KERNELS: the variant's name (its options joined by '+', as gpu-check names
variants), its environment and its kernels; prints nothing when no candidate passed.
"""
import argparse
import json
import sys

# (variable, option, name in variant names, kernels, sm_90 only), most promising first per variable.
OPTIONS = [
    ("GEMMA_EMBED_QKV", "wgmma", "wgmma-qkv", ["qkv_proj_wgmma"], True),
    ("GEMMA_EMBED_ATTENTION", "flash-wgmma", "wgmma-attention", ["attention_flash_wgmma"], True),
    ("GEMMA_EMBED_MLP", "wgmma-wide", "wgmma-wide-mlp", ["gate_up_geglu_wgmma_wide"], True),
    ("GEMMA_EMBED_MLP", "wgmma", "wgmma-mlp", ["gate_up_geglu_wgmma"], True),
    ("GEMMA_EMBED_MLP", "fused", "fused-mlp", ["gate_up_geglu"], False),
    ("GEMMA_EMBED_BRANCH", "fused", "fused-branch", ["proj_residual_norm_wgmma"], True),
    ("GEMMA_EMBED_BRANCH", "bf16", "bf16-branch", ["residual_norm_bf16_branch"], False),
]


def passed(checks, kernel):
    entries = [c for c in checks if c.get("name") == kernel or c.get("name", "").startswith(kernel + "/")]
    return bool(entries) and all(c.get("passed") and not c.get("error") for c in entries)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernels", required=True, help="check-kernels JSON")
    parser.add_argument("--sm90", action="store_true", help="the card runs the sm_90-only kernels")
    args = parser.parse_args()
    try:
        with open(args.kernels) as f:
            checks = json.load(f)
    except (OSError, ValueError):
        return 0
    chosen = {}
    for variable, option, name, kernels, sm90_only in OPTIONS:
        if variable in chosen or (sm90_only and not args.sm90):
            continue
        if all(passed(checks, k) for k in kernels):
            chosen[variable] = (option, name, kernels)
    if chosen:
        picks = list(chosen.items())
        print("+".join(name for _, (_, name, _) in picks) + "\t"
              + " ".join(f"{variable}={option}" for variable, (option, _, _) in picks) + "\t"
              + " ".join(k for _, (_, _, kernels) in picks for k in kernels))
    return 0


if __name__ == "__main__":
    sys.exit(main())
