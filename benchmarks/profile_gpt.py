"""Where a GPT training step's time goes: torch.profiler over a few steps, summarised.

    python benchmarks/profile_gpt.py --preset gpt2-124m --batch-size 16 --steps 10 --out profile.txt

The course's model stepped as ``course_lib.training.gpt`` steps it (``train_step``: bf16
autocast, ``torch.compile`` and fused AdamW on CUDA; float32, eager on the CPU), after warm-up
steps that compile it. Prints ``profile ...`` lines (time per step, the device's busy share,
the time by kind of kernel, the top kernels) and writes them with the profiler's full table
(operators sorted by device time) to ``--out``.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_gpt import Trainer  # noqa: E402  (benchmarks/: the steps bench_gpt times, the shipped ones)

from course_lib.env import get_device  # noqa: E402
from course_lib.gpt import GPT, PRESETS, GPTConfig  # noqa: E402
from course_lib.training.gpt import GPTTrainConfig  # noqa: E402

# kind of kernel -> a pattern of its name (first match wins)
KINDS = [("matrix products", r"gemm|matmul|\bmm\b|addmm|bmm|cutlass|sm90_xmma|nvjet|linear"),
         ("attention", r"flash|attention|sdpa|fmha|efficient_attention"),
         ("optimizer", r"adam|foreach|multi_tensor"),
         ("cross-entropy and softmax", r"cross_entropy|log_softmax|nll_loss|softmax"),
         ("elementwise and fused (Triton)", r"triton|elementwise|vectorized|layer_norm|gelu|add|mul|copy|fill")]


def kind_of(name: str) -> str:
    for kind, pattern in KINDS:
        if re.search(pattern, name, re.I):
            return kind
    return "other"


def summarise(events, steps: int, wall_s: float, device_type: str) -> list[str]:
    """The ``profile`` lines: time per step, busy share, time by kind, top ten by self time."""
    use_device = device_type == "cuda"

    def self_time(e) -> float:  # microseconds
        return (e.self_device_time_total if use_device else e.self_cpu_time_total) or 0.0

    if use_device:  # the kernels themselves: an operator's own device time would count them twice
        events = [e for e in events if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA]
    rows = sorted(events, key=self_time, reverse=True)
    busy = sum(self_time(e) for e in rows) / 1e6
    lines = [f"profile: {steps} steps, {1000 * wall_s / steps:.1f} ms per step (wall clock); "
             f"{'GPU' if use_device else 'CPU'} busy {1000 * busy / steps:.1f} ms per step "
             f"({100 * busy / max(wall_s, 1e-9):.0f}% of the wall clock)"]
    by_kind: dict[str, float] = {}
    for e in rows:
        by_kind[kind_of(e.key)] = by_kind.get(kind_of(e.key), 0.0) + self_time(e) / 1e6
    for kind, secs in sorted(by_kind.items(), key=lambda kv: -kv[1]):
        lines.append(f"profile kind: {kind}: {100 * secs / max(busy, 1e-12):.1f}% ({1000 * secs / steps:.2f} ms/step)")
    for e in rows[:10]:
        lines.append(f"profile top: {e.key[:90]}: {self_time(e) / 1000 / steps:.2f} ms/step, {e.count // steps} calls")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="gpt2-124m", choices=sorted(PRESETS))
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=10, help="steps profiled")
    p.add_argument("--warmup", type=int, default=5, help="steps before (compilation)")
    p.add_argument("--device", default=None)
    p.add_argument("--out", type=Path, default=Path("profile.txt"))
    args = p.parse_args(argv)
    if args.steps < 1 or args.batch_size < 1 or args.warmup < 0:
        p.error("--steps and --batch-size must be >= 1, --warmup >= 0")
    device = get_device(args.device)
    cuda = device.type == "cuda"
    config = GPTConfig.preset(args.preset, **({} if "vocab_size" in PRESETS[args.preset] else {"vocab_size": 65}))
    torch.manual_seed(0)
    if cuda:
        torch.set_float32_matmul_precision("high")
    trainer = Trainer(GPT(config).to(device), GPTTrainConfig(batch_size=args.batch_size), device,
                      compile_it=cuda, shipped=True)
    tokens = torch.randint(0, config.vocab_size, (200_000,))
    trainer.run(tokens, config.block_size, 0, args.warmup)
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    with torch.profiler.profile(activities=activities) as prof:
        wall = trainer.run(tokens, config.block_size, args.warmup, args.steps)
    events = prof.key_averages()
    lines = [f"profile setup: {args.preset}, batch {args.batch_size} x {config.block_size} tokens, "
             f"{'compiled, bf16' if cuda else 'eager, float32'}, {device}, torch {torch.__version__}",
             *summarise(events, args.steps, wall, device.type)]
    print("\n".join(lines))
    sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n\n" + events.table(sort_by=sort, row_limit=40, max_name_column_width=80))
    print(f"profile written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
