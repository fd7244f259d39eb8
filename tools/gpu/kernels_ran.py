#!/usr/bin/env python3
"""Did these kernels run in check-kernels? tools/gpu-check.sh asks before it spends a variant's
time on the embed and bench stages: a kernel that hung or faulted there would do the same again,
and each such variant would burn its stages' whole time limits.

    kernels_ran.py --kernels OUT/kernels.json KERNEL...

Exit 0 when every KERNEL has an entry in kernels.json (its name, or NAME/part) and none of its
entries is an error (did not run: launch failure, fault, hang); wrong numbers still count as run,
since the variant's parity shows what they cost. Exit 1 naming the kernels that did not run.
Without a readable kernels.json there is nothing to go by: exit 0 and say so.
"""
import argparse
import json
import sys


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernels", required=True, help="check-kernels JSON")
    parser.add_argument("names", nargs="+", help="kernel names, as check-kernels reports them")
    args = parser.parse_args()
    try:
        with open(args.kernels) as f:
            checks = json.load(f)
    except (OSError, ValueError) as e:
        print(f"no kernel checks to go by ({e}): running the variant")
        return 0
    did_not_run = []
    for name in args.names:
        entries = [c for c in checks if c.get("name") == name or c.get("name", "").startswith(name + "/")]
        errors = [c["error"] for c in entries if c.get("error")]
        if not entries:
            did_not_run.append(f"{name} (no check of it)")
        elif errors:
            did_not_run.append(f"{name} ({errors[0]})")
    if did_not_run:
        print("did not run in check-kernels: " + "; ".join(did_not_run))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
