"""Wall time of a `symcx validate` sweep of the seed net on cpu, with backward.

Times the whole call (analysis, then FLOP count, memory pass, warm-up and timed runs at
each batch size) at 6 batch sizes with the CLI's default repeats and warm-up. The floor is
30 s; the script exits with status 1 above it (or if a FLOP check fails).

It runs torch with one intra-op thread by default, so that the number measures the sweep
rather than how an OpenMP team fares on a machine shared with other jobs (there, two
contending threads made the same sweep take 51 s instead of 22); ``--threads 0`` keeps
torch's default.

    python benchmarks/validate_speed.py [--batch-sizes 1,2,4,8,16,32] [--repeats 20] [--warmup 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from symcx import validate
from symcx.zoo import MnistCNN

FLOOR_S = 30.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", default="1,2,4,8,16,32")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads; 0 keeps torch's default")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    start = time.perf_counter()
    v = validate(MnistCNN(), torch.randn(1, 1, 28, 28), device="cpu", batch_sizes=sizes,
                 backward=True, repeats=args.repeats, warmup=args.warmup)
    wall = time.perf_counter() - start

    print(f"torch {torch.__version__}, {v.device_name}")
    print(f"seed net, forward+backward, batch sizes {sizes}, repeats {args.repeats}, warmup {args.warmup}")
    for row in v.sizes:
        print(f"  t={row.batch_size:<4} {row.status:<5} median {row.median_s * 1e3:8.2f} ms"
              f"  FLOPs {'ok' if row.flops_ok else 'FAIL'}")
    print(f"wall time of the sweep: {wall:.2f} s (floor {FLOOR_S:.0f} s)")
    return 0 if wall < FLOOR_S and v.ok else 1


if __name__ == "__main__":
    sys.exit(main())
