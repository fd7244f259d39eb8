#!/usr/bin/env python3
"""Rerun the check-kernels families that a fault or a hang took down, each in its own process.

After a kernel faults, the CUDA context is unusable, so every family after it in the same
`gemma-embed check-kernels` process reports the fault too; after a hang (the stage's time limit)
the families not yet run are missing from the JSON, which the binary rewrites after each family.
This reads that JSON and, from the first family that errored or did not run onward, runs
`CMD --family NAME --json TMP` for each family under a time limit, putting its results in place of
the old ones. A family that faults again on its own keeps its error; one that does not finish gets
an error entry saying so. Nothing is rerun when every family ran without an error.

Usage: isolate_families.py --kernels OUT/kernels.json [--timeout SECONDS] -- gemma-embed check-kernels
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

from jsonfile import load


def did_not_finish(family, message):
    """An entry shaped like a failed KernelCheck of the binary's JSON (serde writes NaN as null)."""
    return {"family": family, "name": family, "case": "did not run", "max_abs_err": None,
            "rel_l2_err": None, "bad_values": 0, "max_abs_tol": 0.0, "rel_l2_tol": 0.0,
            "passed": False, "timing": None, "error": message, "mismatch": None}


def write_merged(path, checks):
    with open(path + ".tmp", "w") as f:
        json.dump(checks, f, indent=2)
    os.replace(path + ".tmp", path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernels", required=True, help="check-kernels JSON, updated in place")
    parser.add_argument("--timeout", type=int, default=45, help="seconds per family")
    parser.add_argument("command", nargs=argparse.REMAINDER,
                        help="-- then the check-kernels command line")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the check-kernels command after --")

    families = subprocess.run(command + ["--list-families"], check=True, capture_output=True,
                              text=True).stdout.split()
    checks = load(args.kernels) or []
    by_family = {family: [c for c in checks if c.get("family") == family] for family in families}
    # A family may run and check nothing on this card (attention_flash_wgmma off sm_90), so only
    # the families after the last one with results count as not run (a hang cut the run there).
    ran = max((i for i, family in enumerate(families) if by_family[family]), default=-1) + 1
    first = next((i for i, family in enumerate(families)
                  if i >= ran or any(c.get("error") for c in by_family[family])), None)
    if first is None:
        print(f"every one of the {len(families)} families ran without an error: nothing to rerun")
        return 0
    print(f"rerunning {', '.join(families[first:])}, each in its own process "
          f"(the full run's results for {families[first]} and after are replaced)")

    with tempfile.TemporaryDirectory() as tmp:
        for family in families[first:]:
            path = os.path.join(tmp, f"{family}.json")
            print(f"--- {family}", flush=True)
            try:
                run = subprocess.run(command + ["--family", family, "--json", path],
                                     timeout=args.timeout)
                print(f"--- {family}: exit status {run.returncode}", flush=True)
            except subprocess.TimeoutExpired:
                print(f"--- {family}: TIMEOUT after {args.timeout}s", flush=True)
            # The binary writes the JSON once the family has run: present, even `[]`, means it
            # finished.
            results = load(path)
            if results is None:
                results = [did_not_finish(family, f"check-kernels --family {family} gave no "
                                                  f"result in its own process within "
                                                  f"{args.timeout}s (hang or crash)")]
            by_family[family] = results
            # After each family, so the stage's own time limit keeps the reruns done so far.
            write_merged(args.kernels, [c for name in families for c in by_family[name]])

    still = [f for f in families[first:] if any(c.get("error") for c in by_family[f])]
    print(f"families with errors after the reruns: {', '.join(still) if still else 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
