"""The memory estimate against a measurement, for the course's two full-scale workloads.

    python benchmarks/memory_check.py                 # no GPU: analytic count vs fake-tensor measurement
    python benchmarks/memory_check.py --cuda          # on a GPU: vs torch.cuda.max_memory_allocated,
                                                      #   eager and compiled, at the planned micro-batch
    python benchmarks/memory_check.py --cuda --json out.json

Prints a markdown table; ``--json`` also writes the rows (``gpu_check`` collects them).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from course_lib.results import slug  # noqa: E402
from course_lib.training.memory import GiB, estimate_memory, measure_cuda_memory, measure_memory  # noqa: E402
from course_lib.training.plan import GPUS, device_info, plan_training, workloads  # noqa: E402


def rows_without_gpu(gpus=("T4", "H100")) -> list[dict]:
    """At the micro-batch planned for each GPU. Dropout is set to 0: with dropout the CPU
    computes attention explicitly (a T x T matrix per head) where CUDA's fused kernels do not,
    so only the dropout-free step is the same on both."""
    import dataclasses

    rows = []
    for name, (config, kw) in workloads().items():
        config = dataclasses.replace(config, dropout=0.0)
        for gpu in gpus:
            plan = plan_training(config, GPUS[gpu], **kw)
            args = dict(src_len=kw.get("src_len"))
            start = time.perf_counter()
            meas = measure_memory(config, plan.micro_batch, kw["seq_len"], plan.precision, **args)["total"]
            rows.append({"workload": f"{name} (dropout 0)" if name.startswith("Transformer") else name,
                         "device": f"{gpu} plan, fake tensors on the CPU",
                         "precision": plan.precision, "micro_batch": plan.micro_batch, "compiled": False,
                         "estimate": plan.est_memory.total, "measured": meas, "how": "FakeTensorMode",
                         "seconds": time.perf_counter() - start})
    return rows


def all_workloads() -> dict[str, tuple]:
    """``workloads()`` and the Llama-style decoders of ``course_lib.llama``'s published presets,
    at 1,024 tokens of context (their GPT-2-sized and larger vocabularies make the logits count)."""
    from course_lib.llama import LlamaConfig

    return {**workloads(),
            "Llama smollm2-135m": (LlamaConfig.preset("smollm2-135m"), dict(global_batch=16, seq_len=1024)),
            "Llama qwen3-0.6b": (LlamaConfig.preset("qwen3-0.6b"), dict(global_batch=8, seq_len=1024))}


def rows_on_gpu(compile_too: bool = True, loads: dict | None = None) -> list[dict]:
    info = device_info("cuda")
    rows = []
    for name, (config, kw) in (loads or workloads()).items():
        plan = plan_training(config, info, **kw)
        est = estimate_memory(config, plan.micro_batch, kw["seq_len"], plan.precision, src_len=kw.get("src_len"))
        for compiled in (False, True) if compile_too else (False,):
            try:
                m = measure_cuda_memory(config, plan.micro_batch, kw["seq_len"], plan.precision,
                                        src_len=kw.get("src_len"), compile=compiled)
                measured, tps = m["total"], m["tokens_per_s"]
            except Exception as exc:  # an out-of-memory is a result too
                print(f"{name} (compiled={compiled}): {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
                measured, tps = None, None
            rows.append({"workload": name, "device": info.name, "precision": plan.precision,
                         "micro_batch": plan.micro_batch, "compiled": compiled, "estimate": est.total,
                         "measured": measured, "how": "max_memory_allocated", "tokens_per_s": tps})
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| workload | device | precision | micro-batch | compiled | estimate (GiB) | measured (GiB) | estimate / measured |",
             "| --- | --- | --- | ---: | --- | ---: | ---: | ---: |"]
    for r in rows:
        meas = r["measured"]
        ratio = f"{r['estimate'] / meas:.3f}" if meas else "n/a"
        lines.append(f"| {r['workload']} | {r['device']} | {r['precision']} | {r['micro_batch']} | "
                     f"{'yes' if r['compiled'] else 'no'} | {r['estimate'] / GiB:.2f} | "
                     f"{meas / GiB if meas else float('nan'):.2f} | {ratio} |")
    return "\n".join(lines)


def recorded_rows(rows: list[dict]) -> dict:
    keep = ("precision", "micro_batch", "how", "tokens_per_s")
    return {slug(r["workload"], r["device"].split(" plan")[0], "compiled" if r["compiled"] else "eager"): {
        **{k: r[k] for k in keep if k in r}, "estimate_gib": round(r["estimate"] / GiB, 2),
        "measured_gib": round(r["measured"] / GiB, 2) if r["measured"] else None} for r in rows}


def plan_table(gpus=("T4", "L4", "A100-40GB", "H100")) -> dict:
    """The plan of each full-scale workload on each GPU of the table: precision, micro-batch,
    accumulation and the estimated peak (eager, AdamW)."""
    out = {}
    for name, (config, kw) in workloads().items():
        for gpu in gpus:
            plan = plan_training(config, GPUS[gpu], **kw)
            out[slug(name, gpu)] = {"precision": plan.precision, "micro_batch": plan.micro_batch,
                                    "grad_accum": plan.grad_accum, "estimate_gib": round(plan.est_memory.total / GiB, 2)}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cuda", action="store_true", help="measure on the GPU (else fake tensors on the CPU)")
    p.add_argument("--no-compile", action="store_true", help="on the GPU: eager runs only")
    p.add_argument("--all-models", action="store_true",
                   help="on the GPU: also the Llama-style presets smollm2-135m and qwen3-0.6b")
    p.add_argument("--json", type=Path, help="also write the rows here")
    p.add_argument("--record", action="store_true", help="write resources/results/memory_check_cpu.json (with --cuda: memory_check_cuda.json)")
    args = p.parse_args(argv)
    if args.cuda:
        import torch

        if not torch.cuda.is_available():
            print("error: --cuda asks for a GPU and torch sees none; run without --cuda for the CPU check.",
                  file=sys.stderr)
            return 2
        rows = rows_on_gpu(not args.no_compile, all_workloads() if args.all_models else None)
    else:
        rows = rows_without_gpu()
    print(table(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1))
    if args.record:
        from course_lib.results import RESULTS, record

        name = f"memory_check_{'cuda' if args.cuda else 'cpu'}"
        record(name, {"checks": recorded_rows(rows), "plans": plan_table()}, source="benchmarks/memory_check.py", folder=RESULTS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
