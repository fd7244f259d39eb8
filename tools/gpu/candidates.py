#!/usr/bin/env python3
"""The candidate kernel choices tools/gpu-check.sh runs as variants, and what check-kernels said of
their kernels. One table (CANDIDATES) names each candidate, its environment, its kernels and the
cards it is a candidate on (those that run it and do not default to it, src/backend/cuda/options.rs).

    candidates.py list [--sm90] [--variants NAME,...]
        every candidate the card runs (or those of them named), one line each:
        NAME<TAB>ENV<TAB>KERNELS; a name the card has no candidate of is an error (exit 2)
    candidates.py ran --kernels OUT/kernels.json KERNEL...
        exit 0 when every KERNEL ran in check-kernels: it has an entry (its name, or NAME/part) and
        none of them is an error (launch failure, fault, hang). Wrong numbers count as run, since
        the variant's parity shows what they cost. Exit 1 naming those that did not run. Without
        a readable kernels.json there is nothing to go by: exit 0. gpu-check asks before it
        spends a variant's stages on a kernel that would only hang or fault again.
    candidates.py passing --kernels OUT/kernels.json [--sm90] [--variants NAME,...]
        the candidates whose kernels all passed check-kernels, together: per choice variable the
        first (most promising) passing option, former defaults left out, as one line NAME<TAB>ENV<TAB>KERNELS, the name the
        options' names joined by '+'; nothing when none passed. gpu-check times and profiles it
        last, so one failing candidate does not leave the run without the others combined.
        With --variants, only when the names include `combined`.
"""
import argparse
import sys

from jsonfile import load

# The cards a row is a candidate on.
SM90 = "sm90"  # sm_90 only: its kernels have sm_90a code only, or it is sm_90's former default
ELSEWHERE = "elsewhere"  # every card but sm_90, whose default it is
EVERY = "every"

# (variable, option, variant name, kernels as check-kernels names them, cards, combined): within a
# variable, most promising first. `combined` is False for sm_90's former defaults, timed against
# the defaults measured faster, and for the fused branch, 4-5 % slower than the bf16 branch on an
# H200 (docs/gpu-report.md, 2026-11-28): timed alone, but never part of the candidates run
# together, so that their profile shows the others against the default branch. Its TMA twin, not
# yet run on a GPU, is combined: with the TMA QKV and MLP kernels it makes the all-TMA path.
CANDIDATES = [
    ("GEMMA_EMBED_QKV", "tma", "tma-qkv", ["qkv_proj_tma"], SM90, True),
    ("GEMMA_EMBED_QKV", "wgmma", "wgmma-qkv", ["qkv_proj_wgmma"], SM90, True),
    ("GEMMA_EMBED_MLP", "tma", "tma-mlp", ["gate_up_geglu_tma"], SM90, True),
    ("GEMMA_EMBED_MLP", "wgmma-wide", "wgmma-wide-mlp", ["gate_up_geglu_wgmma_wide"], SM90, True),
    ("GEMMA_EMBED_MLP", "wgmma", "wgmma-mlp", ["gate_up_geglu_wgmma"], SM90, True),
    ("GEMMA_EMBED_MLP", "fused", "fused-mlp", ["gate_up_geglu"], EVERY, True),
    ("GEMMA_EMBED_BRANCH", "tma", "tma-branch", ["proj_residual_norm_tma"], SM90, True),
    ("GEMMA_EMBED_BRANCH", "fused", "fused-branch", ["proj_residual_norm_wgmma"], SM90, False),
    ("GEMMA_EMBED_BRANCH", "bf16", "bf16-branch", ["residual_norm_bf16_branch"], ELSEWHERE, True),
    ("GEMMA_EMBED_ATTENTION", "flash-tma-free", "tma-free-attention", ["attention_flash_tma_free"], SM90,
     True),
    ("GEMMA_EMBED_ATTENTION", "flash-tma", "tma-attention", ["attention_flash_tma"], SM90, True),
    ("GEMMA_EMBED_ATTENTION", "flash", "flash-attention", ["attention_flash"], SM90, False),
    ("GEMMA_EMBED_BRANCH", "f32", "f32-branch", ["residual_norm"], SM90, False),
]


def line(candidates):
    """NAME<TAB>ENV<TAB>KERNELS of candidates run together."""
    return ("+".join(c[2] for c in candidates) + "\t"
            + " ".join(f"{c[0]}={c[1]}" for c in candidates) + "\t"
            + " ".join(k for c in candidates for k in c[3]))


def on_card(sm90):
    return [c for c in CANDIDATES if c[4] == EVERY or (c[4] == SM90) == sm90]


def entries(checks, kernel):
    """The checks of `kernel`: those named it, or KERNEL/part."""
    return [c for c in checks if c.get("name") == kernel or c.get("name", "").startswith(kernel + "/")]


def ran(checks, names):
    did_not_run = []
    for name in names:
        errors = [c["error"] for c in entries(checks, name) if c.get("error")]
        if not entries(checks, name):
            did_not_run.append(f"{name} (no check of it)")
        elif errors:
            did_not_run.append(f"{name} ({errors[0]})")
    if did_not_run:
        print("did not run in check-kernels: " + "; ".join(did_not_run))
        return 1
    return 0


def passing(checks, sm90):
    def passed(kernel):
        found = entries(checks, kernel)
        return bool(found) and all(c.get("passed") and not c.get("error") for c in found)

    chosen = {}
    for candidate in on_card(sm90):
        variable, _, _, kernels, _, combined = candidate
        if combined and variable not in chosen and all(passed(k) for k in kernels):
            chosen[variable] = candidate
    if chosen:
        print(line(list(chosen.values())))
    return 0


# The --variants name of the candidates that passed, run together.
COMBINED = "combined"


def named(candidates, variants):
    """The candidates named in `variants` (comma-separated; None: all), or exit 2 naming the
    names that are not among them."""
    if variants is None:
        return candidates
    names = [n for n in variants.split(",") if n]
    known = {c[2] for c in candidates}
    unknown = [n for n in names if n not in known and n != COMBINED]
    if unknown:
        print(f"candidates.py: no candidate {', '.join(unknown)} on this card; "
              f"the card's are {', '.join(sorted(known))} and {COMBINED}", file=sys.stderr)
        sys.exit(2)
    return [c for c in candidates if c[2] in names]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    listing = sub.add_parser("list")
    listing.add_argument("--sm90", action="store_true", help="the card runs the sm_90-only kernels")
    listing.add_argument("--variants", help="only these candidates (comma-separated names)")
    ran_parser = sub.add_parser("ran")
    ran_parser.add_argument("--kernels", required=True, help="check-kernels JSON")
    ran_parser.add_argument("names", nargs="+", help="kernel names, as check-kernels reports them")
    passing_parser = sub.add_parser("passing")
    passing_parser.add_argument("--kernels", required=True, help="check-kernels JSON")
    passing_parser.add_argument("--sm90", action="store_true", help="the card runs the sm_90-only kernels")
    passing_parser.add_argument("--variants", help=f"print nothing unless these names include {COMBINED}")
    args = parser.parse_args()

    if args.command == "list":
        for candidate in named(on_card(args.sm90), args.variants):
            print(line([candidate]))
        return 0
    if args.command == "passing" and args.variants is not None \
            and COMBINED not in args.variants.split(","):
        return 0
    checks = load(args.kernels)
    if checks is None:
        if args.command == "ran":
            print(f"no kernel checks to go by in {args.kernels}: running the variant")
        return 0
    return ran(checks, args.names) if args.command == "ran" else passing(checks, args.sm90)


if __name__ == "__main__":
    sys.exit(main())
