"""Worker: this machine's bf16 (and fp32) matmul peak on 2 threads, in FLOP/s.

    python bench/_peak.py --out peak.json [--n 2048] [--seconds 3]

C = A @ B for n x n matrices is 2 n^3 FLOPs. Best of several timed loops after a warm-up.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def measure(dtype: torch.dtype, n: int, seconds: float) -> float:
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    for _ in range(3):
        a @ b
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        reps = 5
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        dt = time.perf_counter() - t0
        best = max(best, reps * 2 * n**3 / dt)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    torch.set_num_threads(2)
    result = {
        "n": args.n,
        "threads": torch.get_num_threads(),
        "bf16_flops": measure(torch.bfloat16, args.n, args.seconds),
        "fp32_flops": measure(torch.float32, args.n, args.seconds),
        "torch": torch.__version__,
    }
    Path(args.out).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
