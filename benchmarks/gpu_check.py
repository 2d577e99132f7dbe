"""Measure every GPU figure of the course in one command and write them to one markdown table.

    bash scripts/gpu_check.sh                 # everything (meant to take < 20 minutes on one H100)
    bash scripts/gpu_check.sh --dry-run       # what it would run, and what is missing; runs nothing
    bash scripts/gpu_check.sh --only memory,bench,fsdp      # some checks (results accumulate)
    bash scripts/gpu_check.sh --only nb08 --timeout-scale 2 # a slower GPU: longer limits

The checks, in order:

    memory    the memory estimate against torch.cuda.max_memory_allocated for gpt2-124m and
              the base Transformer at the micro-batch planned for this GPU, eager and compiled
    bench     benchmarks/bench_gpt.py on gpt2-124m: tokens/s and MFU, and the naive model in the same run
    train     the training command on gpt2-124m, compiled: the course loop's tokens/s after compilation
    fsdp      torch.compile + FSDP on one GPU: torchrun --nproc-per-node 1, gpt2-124m, 60 steps
    shakespeare  notebook 08's full-scale training through the command line (for a GPU without Jupyter)
    multi30k  the paper's base Transformer trained on Multi30k; BLEU on the validation set
    nb07      notebook 07 executed at full scale, with its duration
    nb08      notebook 08 executed at full scale, with its duration

Every run's peak (``torch.cuda.max_memory_allocated``) is recorded beside the estimate that
the run's plan line printed (or that this script computes for the run's settings). Results go
to ``exports/gpu_check/<check>.result.json`` (one file per check, so that several invocations
add up) and the table to ``resources/gpu_results.md``. To bring the results home from a lent
machine, copy ``exports/gpu_check/*.json`` and that table, not the folder: its ``runs/`` holds
the runs' checkpoints (about 1 GB for gpt2-124m); ``--render`` rewrites the table from the JSON.

What the GPU machine needs (it may have no internet and no Jupyter packages): a CUDA build
of torch >= 2.4 and the course's runtime packages; for the notebooks nbclient, nbformat and
ipykernel. Whatever is missing is installed from wheels in ``.whl/`` if that folder exists
(``pip install --no-index --find-links .whl ...``). Make it where pip has an index, for the GPU
machine's Python (3.12 here; 17 MB for the three notebook packages and their needs):

    pip download --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform any \
        -d .whl nbclient nbformat ipykernel

On a 15-minute lease (one H200, 2026-11-29) ``--only bench``, ``memory`` and ``fsdp`` took 5.5
minutes in one call, ``train`` 1 and ``shakespeare`` (5,000 steps) 2; the first call's start
about 1. ``multi30k``, ``nb07`` and ``nb08`` need a second lease.

The data (tiny Shakespeare, Multi30k) is read from ``.devdata/`` (git-ignored), copied there
from ``../shared/data`` when that exists: ``.devdata/tinyshakespeare/input.txt`` and
``.devdata/multi30k/{train,val}.{en,de}.gz``. The notebooks find it through
``COURSE_DATA_DIR=.devdata``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "exports" / "gpu_check"
RUNS = OUT / "runs"
DATA = ROOT / ".devdata"
SHARED_DATA = ROOT.parent / "shared" / "data"
WHEELS = ROOT / ".whl"
RESULTS_MD = ROOT / "resources" / "gpu_results.md"
PY = sys.executable
PEAK = str(ROOT / "benchmarks" / "_peak.py")

DATA_FILES = ["tinyshakespeare/input.txt", "multi30k/train.en.gz", "multi30k/train.de.gz",
              "multi30k/val.en.gz", "multi30k/val.de.gz"]
RUNTIME_PACKAGES = ["torch", "numpy", "pandas", "matplotlib", "safetensors", "tiktoken", "regex", "tqdm",
                    "sacrebleu"]
NOTEBOOK_PACKAGES = ["nbclient", "nbformat", "ipykernel"]
GiB = 2**30


@dataclass
class Check:
    name: str
    what: str
    command: list[str] | None = None  # a subprocess, or None for an in-process notebook run
    notebook: str | None = None
    timeout_s: int = 600
    needs_data: list[str] = field(default_factory=list)
    needs_packages: list[str] = field(default_factory=list)


def checks() -> list[Check]:
    d = str(DATA)

    def train_gpt(name: str, *flags: str) -> list[str]:
        """``train gpt`` on tiny Shakespeare's characters, into runs/<name>, with ``flags``."""
        return [PEAK, str(OUT / f"{name}.peak.json"), "-m", "course_lib", "train", "gpt", "--tokenizer", "char",
                "--data", f"{d}/tinyshakespeare", *flags, "--no-progress", "--out", str(RUNS / name)]

    shakespeare = ["tinyshakespeare/input.txt"]
    return [
        Check("memory", "memory estimate vs torch.cuda.max_memory_allocated (gpt2-124m, base Transformer; "
              "eager and compiled)",
              [PY, str(ROOT / "benchmarks" / "memory_check.py"), "--cuda", "--json", str(OUT / "memory.rows.json")],
              timeout_s=300),
        Check("bench", "bench_gpt.py on gpt2-124m: tokens/s, MFU, naive model in the same run",
              [PY, PEAK, str(OUT / "bench.peak.json"), str(ROOT / "benchmarks" / "bench_gpt.py"),
               "--preset", "gpt2-124m", "--rounds", "3"], timeout_s=480),
        Check("train", "the training command on gpt2-124m (character vocabulary, micro-batch 32, compiled, "
              "200 steps): tokens/s of the course's own loop after compilation",
              [PY, *train_gpt("train", "--preset", "gpt2-124m", "--steps", "200", "--batch-size", "32",
                              "--eval-every", "50", "--eval-batches", "4", "--warmup", "20", "--compile")],
              timeout_s=300, needs_data=shakespeare),
        Check("fsdp", "torch.compile + FSDP on one GPU (torchrun --nproc-per-node 1), gpt2-124m, 60 steps",
              [PY, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1",
               *train_gpt("fsdp", "--preset", "gpt2-124m", "--steps", "60", "--batch-size", "8",
                          "--eval-every", "20", "--eval-batches", "2", "--warmup", "5", "--fsdp")],
              timeout_s=300, needs_data=shakespeare),
        Check("shakespeare", "notebook 08's full-scale training through the command line (shakespeare-char, "
              "dropout 0.2, 64 x 256 tokens, lr 1e-3 to 1e-4, 2,500 steps): validation loss; needs no Jupyter",
              [PY, *train_gpt("shakespeare", "--preset", "shakespeare-char", "--steps", "2500", "--batch-size", "64",
                              "--lr", "1e-3", "--min-lr", "1e-4", "--beta2", "0.99", "--dropout", "0.2",
                              "--warmup", "100", "--eval-every", "500", "--eval-batches", "20", "--compile")],
              timeout_s=300, needs_data=shakespeare),
        Check("multi30k", "the paper's base Transformer on Multi30k (BPE 8000, batch 128, 20 epochs): BLEU",
              [PY, PEAK, str(OUT / "multi30k.peak.json"), "-m", "course_lib", "train", "translate",
               "--preset", "base", "--data", f"{d}/multi30k/train", "--tokenizer", "bpe", "--n-train", "29000",
               "--max-len", "128", "--batch-size", "128", "--epochs", "20", "--no-progress",
               "--out", str(RUNS / "multi30k")],
              timeout_s=900, needs_data=[f for f in DATA_FILES if f.startswith("multi30k")]),
        Check("nb07", "notebook 07 (encoder-decoder) at full scale", notebook="07_encoder_decoder.ipynb",
              timeout_s=900, needs_data=[f for f in DATA_FILES if f.startswith("multi30k")],
              needs_packages=NOTEBOOK_PACKAGES),
        Check("nb08", "notebook 08 (GPT training) at full scale", notebook="08_gpt_training.ipynb",
              timeout_s=900, needs_data=shakespeare, needs_packages=NOTEBOOK_PACKAGES),
    ]


# ---- what the machine has ------------------------------------------------------------------

def missing_packages(names: list[str]) -> list[str]:
    return [n for n in names if importlib.util.find_spec(n) is None]


def install_from_wheels(names: list[str], dry_run: bool) -> list[str]:
    """Install ``names`` from ``.whl/`` (no index); returns those still missing."""
    if not names or not WHEELS.is_dir():
        return names
    cmd = [PY, "-m", "pip", "install", "--no-index", "--find-links", str(WHEELS), *names]
    print(("would run: " if dry_run else "installing from .whl/: ") + " ".join(cmd))
    if not dry_run:
        subprocess.run(cmd, check=False)
        importlib.invalidate_caches()
    return missing_packages(names) if not dry_run else names


def prepare_data(dry_run: bool) -> list[str]:
    """Copy the data from ../shared/data into .devdata/ where it is missing; returns what is still missing."""
    missing = [f for f in DATA_FILES if not (DATA / f).exists()]
    for f in list(missing):
        src = SHARED_DATA / f
        if src.exists():
            print(f"{'would copy' if dry_run else 'copying'} {src} -> {DATA / f}")
            if not dry_run:
                (DATA / f).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, DATA / f)
                missing.remove(f)
    return missing


def describe_device() -> dict:
    import torch

    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": sys.version.split()[0]}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(device=p.name, memory_gib=round(p.total_memory / GiB, 1),
                    capability=".".join(map(str, torch.cuda.get_device_capability(0))))
    else:
        info.update(device="no CUDA GPU", memory_gib=None, capability=None)
    return info


# ---- running -------------------------------------------------------------------------------

def _env(full: bool = True) -> dict:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}".rstrip(os.pathsep),
           "COURSE_DATA_DIR": str(DATA), "COURSE_EXPORT_DIR": str(OUT / "plots"), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "TQDM_DISABLE": "1", "PYTHONHASHSEED": "0"}
    if full:
        env["COURSE_SCALE"] = "full"
    return env


def run_command(check: Check, timeout_s: int) -> dict:
    start = time.perf_counter()
    try:
        proc = subprocess.run(check.command, cwd=ROOT, env=_env(), capture_output=True, text=True,
                              timeout=timeout_s)
        out, rc = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        out += f"\n(timed out after {timeout_s} s)"
        rc = 124
    return {"ok": rc == 0, "rc": rc, "seconds": time.perf_counter() - start, "output": out}


PEAK_CELL = ("import json as _j, torch as _t\n"
             "print('GPU_CHECK_PEAK', _j.dumps({'max_memory_allocated': _t.cuda.max_memory_allocated() "
             "if _t.cuda.is_available() else None}))")


def run_notebook(check: Check, timeout_s: int) -> dict:
    """Execute the notebook in a fresh kernel at full scale, then one more cell that prints the
    kernel's CUDA peak; the executed copy (without that cell) goes to exports/gpu_check/."""
    import nbformat
    from nbclient import NotebookClient

    path = ROOT / "notebooks" / check.notebook
    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(PEAK_CELL))
    os.environ.update({k: v for k, v in _env().items() if k != "PYTHONPATH"})
    os.environ["PYTHONPATH"] = _env()["PYTHONPATH"]
    os.environ.pop("MPLBACKEND", None)
    start = time.perf_counter()
    error = None
    try:
        NotebookClient(nb, timeout=timeout_s, kernel_name="python3",
                       resources={"metadata": {"path": str(path.parent)}}).execute()
    except Exception as exc:
        error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
    seconds = time.perf_counter() - start
    texts = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            if o.get("output_type") == "stream":
                texts.append(o.get("text", ""))
            elif "data" in o and "text/plain" in o["data"]:
                texts.append(o["data"]["text/plain"])
    nb.cells.pop()
    (OUT / "notebooks").mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, OUT / "notebooks" / check.notebook)
    out = "\n".join(texts) + (f"\n{error}" if error else "")
    return {"ok": error is None, "rc": 0 if error is None else 1, "seconds": seconds, "output": out}


# ---- reading the figures out of the runs --------------------------------------------------------

def _floats(pattern: str, text: str) -> list[float]:
    return [float(m.replace(",", "")) for m in re.findall(pattern, text)]


def figures(check: Check, result: dict) -> dict:
    text = result["output"]
    fig: dict = {}
    peak_file = OUT / f"{check.name}.peak.json"
    if peak_file.exists():
        fig["peak"] = json.loads(peak_file.read_text()).get("max_memory_allocated")
    m = re.search(r"GPU_CHECK_PEAK (\{.*\})", text)
    if m:
        fig["peak"] = json.loads(m.group(1)).get("max_memory_allocated")
    plan = re.findall(r"plan: .*?peak ~([\d.]+) (GiB|MiB)", text)
    if plan:
        value, unit = plan[-1]
        fig["estimate"] = float(value) * (GiB if unit == "GiB" else 2**20)
        fig["plan_line"] = next(line.strip() for line in reversed(text.splitlines()) if "plan: " in line)
    if check.name == "bench":
        # | label | tokens/s | vs naive | vs reference | MFU |  (benchmarks/bench_gpt.py's table)
        rows = re.findall(r"\| (naive[^|]*|reference[^|]*|course[^|]*) \| ([\d,]+) \| ([\d.]+)x \| "
                          r"([\d.]+)x \| ([^|]+) \|", text)
        for label, tps, vs_naive, _vs_ref, mfu in rows:
            key = label.split(":")[0].split("_")[0].strip()  # naive, reference, course
            fig[f"{key}_tokens_per_s"] = float(tps.replace(",", ""))
            fig[f"{key}_speedup"] = float(vs_naive)
            fig[f"{key}_mfu"] = mfu.strip()
        # no estimate: the peak is the process's, with three models (and their optimizers) alive in it
    if check.name == "memory" and (OUT / "memory.rows.json").exists():
        fig["rows"] = json.loads((OUT / "memory.rows.json").read_text())
    bleu = _floats(r"BLEU[ =:]*([\d.]+)", text)
    if bleu:
        fig["bleu"] = bleu[-1]
    tps = _floats(r"([\d,]+) tokens/s", text)
    if tps and check.name != "bench":
        fig["tokens_per_s"] = tps[-1]
    mfu = _floats(r"MFU ([\d.]+)%", text)
    if mfu and check.name != "bench":
        fig["mfu_percent"] = mfu[-1]
    val = _floats(r"val(?:idation)? loss ([\d.]+)", text)
    if val:
        fig["val_loss"] = val[-1]
    return fig


# ---- the table ------------------------------------------------------------------------------------

def _gib(x) -> str:
    return f"{x / GiB:.2f}" if x else "n/a"


def _result_text(name: str, fig: dict, ok: bool, rc) -> str:
    if not ok:
        return f"**failed** (exit {rc})"
    if name == "bench" and "course_tokens_per_s" in fig:
        ref = (f"; reference {fig['reference_tokens_per_s']:,.0f}" if "reference_tokens_per_s" in fig else "")
        return (f"course {fig['course_tokens_per_s']:,.0f} tokens/s, MFU {fig.get('course_mfu', 'n/a')}; "
                f"naive {fig.get('naive_tokens_per_s', float('nan')):,.0f}{ref}; "
                f"{fig.get('course_speedup', float('nan')):.1f}x the naive model")
    parts = []
    if "bleu" in fig:
        parts.append(f"BLEU {fig['bleu']:.1f}")
    if "val_loss" in fig:
        parts.append(f"val loss {fig['val_loss']:.3f}")
    if "tokens_per_s" in fig:
        parts.append(f"{fig['tokens_per_s']:,.0f} tokens/s")
    if "mfu_percent" in fig:
        parts.append(f"MFU {fig['mfu_percent']:.1f}%")
    return ", ".join(parts) or "ran"


def render(records: list[dict]) -> str:
    env = next((r["environment"] for r in records if r.get("environment")), {})
    lines = [
        "# GPU results",
        "",
        "Written by `bash scripts/gpu_check.sh` (`benchmarks/gpu_check.py`); every figure below was",
        "measured on the device named here, in the run that wrote this file.",
        "",
        f"- device: **{env.get('device', 'n/a')}** ({env.get('memory_gib', 'n/a')} GiB, compute capability "
        f"{env.get('capability', 'n/a')})",
        f"- torch {env.get('torch', 'n/a')}, CUDA {env.get('cuda', 'n/a')}, Python {env.get('python', 'n/a')}",
        "",
        "| check | what | result | time | peak memory (GiB, measured) | estimate (GiB) | estimate / measured |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in records:
        fig = r.get("figures", {})
        if r["name"] == "memory" and fig.get("rows"):
            for row in fig["rows"]:
                meas, est = row.get("measured"), row.get("estimate")
                ratio = f"{est / meas:.2f}" if meas and est else "n/a"
                tps = f", {row['tokens_per_s']:,.0f} tokens/s" if row.get("tokens_per_s") else ""
                lines.append(f"| memory | {row['workload']}, {row['precision']}, micro-batch {row['micro_batch']}, "
                             f"{'compiled' if row['compiled'] else 'eager'} | {'ran' if meas else 'failed'}{tps} | | "
                             f"{_gib(meas)} | {_gib(est)} | {ratio} |")
            continue
        meas, est = fig.get("peak"), fig.get("estimate")
        ratio = f"{est / meas:.2f}" if meas and est else "n/a"
        lines.append(f"| {r['name']} | {r['what']} | {_result_text(r['name'], fig, r['ok'], r.get('rc'))} | "
                     f"{r['seconds']:.0f} s | {_gib(meas)} | {_gib(est)} | {ratio} |")
    plan_lines = [r["figures"]["plan_line"] for r in records if r.get("figures", {}).get("plan_line")]
    if plan_lines:
        lines += ["", "Plan lines the runs printed:", ""] + [f"- `{p}`" for p in plan_lines]
    lines += ["", "Targets (issue 11): gpt2-124m >= 450,000 tokens/s (~40% MFU at 989 TFLOP/s) and >= 10x the naive",
              "model on one H100/H200; Multi30k BLEU >= 35 within 15 minutes; notebook 08 at full scale within",
              "10 minutes; each memory estimate within 15% of the measured peak (eager; compiled runs use less).", ""]
    return "\n".join(lines)


def load_records() -> list[dict]:
    order = [c.name for c in checks()]
    found = {p.stem: json.loads(p.read_text()) for p in OUT.glob("*.result.json")} if OUT.is_dir() else {}
    found = {k.removesuffix(".result"): v for k, v in found.items()}
    return [found[n] for n in order if n in found]


# ---- main -------------------------------------------------------------------------------------------

def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="list what would run and what is missing; run nothing")
    p.add_argument("--only", help="comma-separated checks: " + ",".join(c.name for c in checks()))
    p.add_argument("--timeout-scale", type=float, default=1.0, help="multiply every check's time limit")
    p.add_argument("--render", action="store_true", help="only rewrite resources/gpu_results.md from saved results")
    args = p.parse_args(argv)
    selected = checks()
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = sorted(set(names) - {c.name for c in selected})
        if unknown:
            print(f"error: unknown check(s) {unknown}; choose from {[c.name for c in selected]}.", file=sys.stderr)
            return 2
        selected = [c for c in selected if c.name in names]
    if args.render:
        RESULTS_MD.write_text(render(load_records()))
        print(f"wrote {RESULTS_MD.relative_to(ROOT)}")
        return 0

    print("== preflight")
    env = describe_device() if importlib.util.find_spec("torch") is not None else {}
    print(f"device: {env.get('device', 'no torch')} | torch {env.get('torch')} | CUDA {env.get('cuda')}")
    if not args.dry_run and env.get("device") in (None, "no CUDA GPU"):
        print("error: no CUDA GPU here; this check measures GPU figures (--dry-run lists what it would run).",
              file=sys.stderr)
        return 2
    missing_data = prepare_data(args.dry_run)
    need_pkgs = sorted({*RUNTIME_PACKAGES, *(q for c in selected for q in c.needs_packages)})
    missing = install_from_wheels(missing_packages(need_pkgs), args.dry_run)
    print(f"data in {DATA.relative_to(ROOT)}/: " + ("all present" if not missing_data else f"missing {missing_data}"))
    print("packages: " + ("all present" if not missing else f"missing {missing}" +
                          ("" if WHEELS.is_dir() else " (no .whl/ folder to install them from)")))
    print("\n== checks" + (" (dry run: nothing is executed)" if args.dry_run else ""))
    for c in selected:
        limit = int(c.timeout_s * args.timeout_scale)
        how = " ".join(c.command) if c.command else f"execute notebooks/{c.notebook} (COURSE_SCALE=full)"
        per = " per cell" if c.notebook else ""
        print(f"- {c.name} (limit {limit} s{per}): {c.what}\n    {how}")
    if args.dry_run:
        print(f"\nresults would go to {OUT.relative_to(ROOT)}/ and {RESULTS_MD.relative_to(ROOT)}")
        return 0
    OUT.mkdir(parents=True, exist_ok=True)
    failures = 0
    for c in selected:
        lacking = [f for f in c.needs_data if f in missing_data] + [q for q in c.needs_packages if q in missing]
        limit = int(c.timeout_s * args.timeout_scale)
        print(f"\n== {c.name}: {c.what}", flush=True)
        if lacking:
            result = {"ok": False, "rc": "skipped", "seconds": 0.0, "output": f"skipped: missing {lacking}"}
        else:
            for stale in OUT.glob(f"{c.name}.peak*.json"):
                stale.unlink()
            result = run_command(c, limit) if c.command else run_notebook(c, limit)
        fig = figures(c, result) if result["rc"] != "skipped" else {}
        record = {"name": c.name, "what": c.what, "ok": result["ok"], "rc": result["rc"],
                  "seconds": result["seconds"], "figures": fig, "environment": env,
                  "output_tail": result["output"][-4000:]}
        (OUT / f"{c.name}.result.json").write_text(json.dumps(record, indent=1))
        print(result["output"][-1500:])
        print(f"-> {c.name}: {'ok' if result['ok'] else 'FAILED'} in {result['seconds']:.0f} s; {fig}", flush=True)
        failures += not result["ok"]
    RESULTS_MD.write_text(render(load_records()))
    print(f"\nwrote {RESULTS_MD.relative_to(ROOT)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
