"""Causal self-attention, forward + backward: PyTorch's fused kernel against the attention
written out (``course_lib.attention.short_attention``), by sequence length. Prints a table.

    python benchmarks/bench_attention.py                 # the CPU, 2 threads
    python benchmarks/bench_attention.py --threads 1

The inputs come as ``MultiHeadAttention`` makes them (one stacked q/k/v projection, split
into heads: strided views), so the copies the written-out path needs are counted. Both
paths run in interleaved rounds; the median round counts. The crossover is what sets
``course_lib.attention.CPU_SHORT_ATTENTION``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from course_lib.attention import CPU_SHORT_ATTENTION, short_attention  # noqa: E402


def timed(fn, x, grad, reps: int) -> float:
    start = time.perf_counter()
    for _ in range(reps):
        fn(x).backward(grad)
    return (time.perf_counter() - start) / reps


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--lengths", type=int, nargs="+", default=[16, 32, 64, 128, 256, 512])
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"cpu, {torch.get_num_threads()} threads, torch {torch.__version__}; causal self-attention, "
          f"forward + backward, median of {args.rounds} interleaved rounds; "
          f"the library writes attention out up to {CPU_SHORT_ATTENTION} positions "
          "(CPU_SHORT_ATTENTION) when it runs more than one thread")
    print("| batch x heads x length x d_k | fused kernel ms | written out ms | written out vs fused |")
    print("| --- | ---: | ---: | ---: |")
    for B, H, d in ((12, 4, 32), (8, 6, 64)):
        for T in args.lengths:
            torch.manual_seed(0)
            x = torch.randn(B, T, 3 * H * d, requires_grad=True)
            grad = torch.randn(B, H, T, d)

            def heads(x, n_heads=H):
                return [t.unflatten(-1, (n_heads, -1)).transpose(1, 2) for t in x.chunk(3, dim=-1)]

            paths = {"fused": lambda x: F.scaled_dot_product_attention(*heads(x), is_causal=True),
                     "short": lambda x: short_attention(*heads(x), is_causal=True)}
            torch.testing.assert_close(paths["short"](x), paths["fused"](x))
            reps = max(3, int(3e6 / (B * H * T * T)))
            for fn in paths.values():
                timed(fn, x, grad, 2)
            times = {name: [] for name in paths}
            for _ in range(args.rounds):
                for name, fn in paths.items():
                    times[name].append(timed(fn, x, grad, reps))
            fused, short = (sorted(times[n])[len(times[n]) // 2] * 1e3 for n in ("fused", "short"))
            print(f"| {B} x {H} x {T} x {d} | {fused:.2f} | {short:.2f} | {fused / short:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
