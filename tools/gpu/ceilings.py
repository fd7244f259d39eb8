#!/usr/bin/env python3
"""Measure the card's two ceilings the kernel report is read against (METHOD.md: measure them,
don't trust datasheets): device-to-device copy bandwidth (bytes read + written) and the bf16
matrix-product rate of the vendor library, on random data, median of timed repeats with CUDA
events after warm-up.

    ceilings.py --json PATH
"""

import argparse
import json
import statistics

import torch


def time_ms(fn, repeats):
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(repeats):
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", required=True)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()

    n_bytes = 4 << 30  # 4 GiB source: far beyond L2
    src = torch.randint(0, 255, (n_bytes,), dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    copy_ms = time_ms(lambda: dst.copy_(src), args.repeats)
    copy_gbs = 2 * n_bytes / (copy_ms * 1e-3) / 1e9
    del src, dst

    n = 8192
    a = torch.randn(n, n, dtype=torch.bfloat16, device="cuda")
    b = torch.randn(n, n, dtype=torch.bfloat16, device="cuda")
    for _ in range(3):
        a @ b
    mm_ms = time_ms(lambda: a @ b, args.repeats)
    mm_tflops = 2 * n**3 / (mm_ms * 1e-3) / 1e12

    report = {
        "device": torch.cuda.get_device_name(),
        "copy_bytes": n_bytes,
        "copy_ms": copy_ms,
        "copy_gb_per_s": copy_gbs,
        "matmul_bf16_n": n,
        "matmul_ms": mm_ms,
        "matmul_bf16_tflop_per_s": mm_tflops,
    }
    with open(args.json, "w") as f:
        json.dump(report, f, indent=1)
    print(f"ceilings on {report['device']}: copy {copy_gbs:,.0f} GB/s (read+write), "
          f"bf16 matmul {n}^3 {mm_tflops:,.1f} TFLOP/s (torch/cuBLAS, random data)")


if __name__ == "__main__":
    main()
