"""Measure the course's GPU figures in priority order, within a time budget, and bring them home.

    bash scripts/gpu_check.sh --prepare                 # here, before a lease: data, wheels, sizes
    bash scripts/gpu_check.sh --budget 480 --pack $OUT  # on the GPU machine (one device-tool call)
    bash scripts/gpu_check.sh --unpack ARCHIVE          # here, after it: results into the checkout
    bash scripts/gpu_check.sh --dry-run                 # what would run in what order; runs nothing
    bash scripts/gpu_check.sh --only multi30k --redo multi30k   # one check again

The checks, in priority order (``CHECKS`` below says what each runs):

    nb08         notebook 08 at full scale (goal: validation loss <= 1.47 within 5 minutes of training)
    shakespeare  notebook 08's training through the command line, only where the notebook cannot run
    multi30k     the base Transformer on Multi30k, GPU recipe (goal: BLEU >= 38 with beam 4 within 6 minutes)
    bench        gpt2-124m's tokens/s and MFU at bench_gpt's default batch, against the same run's reference
    profile      torch.profiler over a few gpt2-124m steps, only when bench's MFU is below 45%
    memory       the memory estimate against the measured peak, eager, every model (GPT-2, Transformer, Llama)
    nb01..nb14   every other notebook executed at the scale it picks on the GPU
    train, fsdp  the training command compiled, and FSDP on one GPU (measured on an H200 before)

``--budget SECONDS`` (default 480): a check starts only if its expected seconds (``EXPECTED``,
each with where the figure came from) fit in what is left; the first that does not ends the run
(``--fill`` goes on to later checks that fit). A running check is stopped ``GRACE`` seconds after
the budget. A check already recorded as ok with the same settings (``gpu_<check>.json`` in resources/results)
is skipped unless ``--redo NAME`` (or ``--redo all``), so the next lease runs the rest.

After each check its figures are written, with the device, torch version and date:
``exports/gpu_check/<check>.result.json`` (with the output's tail; the whole output in
``exports/gpu_check/logs/``), ``gpu_<check>.json`` in resources/results (``course_lib.results.record``,
so the docs can quote it with markers) and ``resources/gpu_results.md`` (the table of all records).
The notebooks run with ``COURSE_RECORD=1``: their ``record(...)`` cells write ``nbNN_full.json``.
``--pack DIR`` rewrites ``DIR/gpu_check.tar.gz`` after every check (one file under 16 MiB, what the
device tool brings back); ``--unpack`` extracts it here.

The GPU machine may have no internet and no Jupyter: ``scripts/gpu_check.sh`` installs the wheels
in ``.whl/`` (``--prepare`` downloads them, ``WHEELS``) when nbclient or ipykernel is missing. The
data comes from ``.devdata/`` (``--prepare`` copies it from ``../shared/data``).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import importlib.util
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "exports" / "gpu_check"
DATA = ROOT / ".devdata"
SHARED_DATA = ROOT.parent / "shared" / "data"
WHEEL_DIR = ROOT / ".whl"
RESULTS = ROOT / "resources" / "results"
RESULTS_MD = ROOT / "resources" / "gpu_results.md"
RECIPE = ROOT / "resources" / "recipes" / "multi30k_gpu.json"
PY = sys.executable
PEAK = str(ROOT / "benchmarks" / "_peak.py")
GiB = 2**30

DEFAULT_BUDGET = 480  # seconds of checks in one device-tool call of 560 s (the machine's start is not in it)
GRACE = 45  # a running check is stopped this long after the budget, leaving time to pack
PACK_NAME = "gpu_check.tar.gz"
PACK_LIMIT = 16 * 2**20  # the device tool brings back files up to 16 MiB
MFU_GOAL = 45.0
GOALS = {"nb08": "validation loss <= 1.47 within 5 minutes of training on one H100",
         "shakespeare": "validation loss <= 1.47 within 5 minutes on one H100",
         "multi30k": "validation BLEU >= 38 (beam 4) within 6 minutes of training",
         "bench": f"MFU >= {MFU_GOAL:g}% (about 520k tokens/s on an H100)",
         "memory": "each estimate within 15% of the measured peak (eager)"}

DATA_FILES = ["tinyshakespeare/input.txt", "multi30k/train.en.gz", "multi30k/train.de.gz",
              "multi30k/val.en.gz", "multi30k/val.de.gz"]
SHAKESPEARE = ["tinyshakespeare/input.txt"]
MULTI30K = [f for f in DATA_FILES if f.startswith("multi30k")]
NOTEBOOK_PACKAGES = ["nbclient", "nbformat", "ipykernel"]
# Wheels for the GPU machine's Python 3.12 (x86-64) that its image lacks: nbclient, nbformat,
# ipykernel and what they need beyond the image's packages (attrs, packaging, psutil, pygments,
# python-dateutil, typing-extensions are there). 15.3 MB; downloaded by --prepare.
WHEELS = ["asttokens==3.0.2", "comm==0.2.3", "debugpy==1.8.22", "executing==2.3.0", "fastjsonschema==2.22.3",
          "ipykernel==7.4.0", "ipython==9.19.1", "ipython-pygments-lexers==1.1.1", "jedi==0.20.1",
          "jsonschema==4.26.0", "jsonschema-specifications==2025.9.1", "jupyter-client==8.10.0",
          "jupyter-core==5.9.1", "matplotlib-inline==0.2.2", "nbclient==0.11.0", "nbformat==5.11.1",
          "nest-asyncio2==1.7.4", "parso==0.8.7", "pexpect==4.9.0", "platformdirs==4.14.9",
          "prompt-toolkit==3.0.53", "ptyprocess==0.7.0", "pure-eval==0.2.4", "pyzmq==27.3.0",
          "referencing==0.37.0", "rpds-py==2026.9.1", "stack-data==0.6.3", "tornado==6.6.1",
          "traitlets==5.16.1", "tzdata==2026.6", "wcwidth==0.9.5"]

# Expected seconds of each check on one H100 or H200 (an upper estimate: the budget trusts it),
# and where the figure comes from. H200 run: resources/gpu_results_2026-11-29_h200.md; CPU times:
# resources/results/course_times.json (2026-12-07, small scale). Replace an estimate by the
# measured time once a lease has run the check (its gpu_<check>.json holds "seconds").
EXPECTED: dict[str, tuple[float, str]] = {
    "nb08": (420, "estimate, never run on a GPU: sections 2-3 train 22 small models by hand, 2,000 eager steps "
                  "each at ~5 ms = 220 s; the library's run 2,500 steps compiled ~90 s (H200: 5,000 steps in "
                  "115 s); GPT-2 small's timing ~60 s (compilation); the rest ~50 s"),
    "shakespeare": (120, "H200 2026-11-29: 5,000 steps took 115 s with compilation; here 2,500 steps, an H100 ~1.3x slower"),
    "multi30k": (450, "training: the H200's eager base Transformer ran 129k tokens/s at 128 pairs x 40 tokens "
                      "(40 ms/step); Multi30k's pairs are about half as long, ~25 ms/step, so the recipe's 10,000 "
                      "steps (44 epochs of 128 pairs) take ~4.2 min, and max_minutes stops them at 6; then the "
                      "tokenizer ~15 s, BLEU on 1,014 sentences greedy and beam 4 and the curve's 3 points ~60 s"),
    "bench": (150, "H200 2026-11-29: 112 s (3 rounds, three models compiled)"),
    "profile": (100, "estimate: one compilation of gpt2-124m (~50 s on the H200) and 10 steps"),
    "memory": (150, "estimate: H200 2026-11-29 ran 4 rows eager and compiled in ~150 s; now 4 models eager"),
    "train": (90, "H200 2026-11-29: 68 s"),
    "fsdp": (80, "H200 2026-11-29: 54 s"),
}
EXPECTED.update({f"nb{nn}": figure for nn, figure in {  # the notebooks other than 08
    "01": (45, "CPU 6 s at small scale; full: 1M characters of BPE training (3.3x), kernel and CUDA start ~15 s"),
    "02": (45, "CPU 12 s; full: 2.5x the sentences, 3.3x the steps of tiny models"),
    "03": (45, "CPU 16 s; full: 2x the steps"),
    "04": (40, "CPU 12 s; same work, batch 32"),
    "05": (35, "CPU 10 s; no full-scale settings"),
    "06": (40, "CPU 14 s; no full-scale settings"),
    "07": (450, "estimate: the base Transformer for 8,000 steps at ~30 ms (H200 memory row: 129k tokens/s eager "
                "at 128 x 40 tokens) = 240 s, BPE, the copy task, beam search"),
    "09": (90, "CPU 37 s; full: 4 gloo processes instead of 2"),
    "10": (360, "estimate: 3 architectures x 3 seeds x 2 tasks x 2,000 steps and 4,000 summarization steps of "
                "4-layer d128-d256 models, ~40,000 steps at ~8 ms eager, evaluation and ROUGE"),
    "11": (60, "CPU 57 s; no full-scale settings: it reads the committed grid and re-trains its 3 cheapest runs"),
    "12": (200, "estimate: 5,000 pretraining steps of a 4-layer d128 model, 6 fine-tuning runs of 1,000 steps, "
                "3 seeds x 2 distillation runs of 2,000 steps, ~23,000 steps at ~6 ms eager, and evaluations"),
    "13": (150, "estimate: 1,000 steps x 4-layer d256, GPT and Llama, 3 seeds"),
    "14": (120, "CPU 51 s; no full-scale settings but threads"),
}.items()})
NEW_NOTEBOOK = (120, "no figure for this notebook yet: a guess")


@dataclass
class Check:
    name: str
    what: str
    command: list[str] | None = None  # a subprocess; None: a notebook
    notebook: str | None = None
    timeout_s: int = 600
    needs_data: list[str] = field(default_factory=list)
    needs_packages: list[str] = field(default_factory=list)
    fallback_for: str | None = None  # runs only when that check is not recorded ok
    after: str | None = None  # runs only when that check's figures ask for it (profile after bench)

    @property
    def expected(self) -> tuple[float, str]:
        """(seconds, where the figure comes from)."""
        return EXPECTED.get(self.name, NEW_NOTEBOOK)


def notebook_checks() -> dict[str, Check]:
    checks = {}
    for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        nn = path.name[:2]
        data = SHAKESPEARE if nn == "08" else MULTI30K if nn == "07" else []
        checks[f"nb{nn}"] = Check(f"nb{nn}", f"notebook {path.stem} executed at full scale", notebook=path.name,
                                  timeout_s=600, needs_data=data, needs_packages=NOTEBOOK_PACKAGES)
    return checks


def checks() -> list[Check]:
    d, runs = str(DATA), OUT / "runs"

    def train_gpt(name: str, *flags: str) -> list[str]:
        return [PEAK, str(OUT / f"{name}.peak.json"), "-m", "course_lib", "train", "gpt", "--tokenizer", "char",
                "--data", f"{d}/tinyshakespeare", *flags, "--no-progress", "--out", str(runs / name)]

    nbs = notebook_checks()
    first = [nbs.pop("nb08")] if "nb08" in nbs else []
    return first + [
        Check("shakespeare", "notebook 08's full-scale training through the command line (shakespeare-char, dropout "
              "0.2, 64 x 256 tokens, lr 1e-3 to 1e-4, 2,500 steps, best weights kept, patience 3)",
              [PY, *train_gpt("shakespeare", "--preset", "shakespeare-char", "--steps", "2500", "--batch-size", "64",
                              "--lr", "1e-3", "--min-lr", "1e-4", "--beta2", "0.99", "--dropout", "0.2",
                              "--warmup", "100", "--eval-every", "250", "--eval-batches", "20", "--keep-best",
                              "--patience", "3", "--compile")],
              timeout_s=300, needs_data=SHAKESPEARE, fallback_for="nb08"),
        Check("multi30k", "the base Transformer on Multi30k en-de (resources/recipes/multi30k_gpu.json, at most 6 "
              "minutes of training): validation BLEU greedy and beam 4 on all 1,014 sentences, BLEU against minutes",
              [PY, PEAK, str(OUT / "multi30k.peak.json"), str(ROOT / "benchmarks" / "bench_multi30k.py"),
               "--config", str(RECIPE), "--data", f"{d}/multi30k/train", "--minutes", "6", "--curve-every", "2",
               "--curve-n", "300", "--compare-n", "0"],  # no --out: no checkpoint writes at each evaluation
              timeout_s=540, needs_data=MULTI30K),
        Check("bench", "bench_gpt.py on gpt2-124m at its default batch (16 x 1024): tokens/s and MFU of the course "
              "model, the reference and the naive model in the same run",
              [PY, PEAK, str(OUT / "bench.peak.json"), str(ROOT / "benchmarks" / "bench_gpt.py"),
               "--preset", "gpt2-124m", "--rounds", "3"], timeout_s=400),
        Check("profile", f"torch.profiler over 10 steps of gpt2-124m (batch 16, compiled, bf16), when bench's MFU "
              f"is below {MFU_GOAL:g}%: where the time goes",
              [PY, str(ROOT / "benchmarks" / "profile_gpt.py"), "--preset", "gpt2-124m", "--batch-size", "16",
               "--steps", "10", "--out", str(OUT / "profile.txt")], timeout_s=300, after="bench"),
        Check("memory", "the memory estimate against torch.cuda.max_memory_allocated, eager, at the micro-batch "
              "planned for this GPU: gpt2-124m, the base Transformer, Llama smollm2-135m and qwen3-0.6b",
              [PY, str(ROOT / "benchmarks" / "memory_check.py"), "--cuda", "--no-compile", "--all-models",
               "--json", str(OUT / "memory.rows.json")], timeout_s=400),
        *nbs.values(),
        Check("train", "the training command on gpt2-124m (character vocabulary, micro-batch 32, compiled, "
              "200 steps): tokens/s of the course's own loop after compilation",
              [PY, *train_gpt("train", "--preset", "gpt2-124m", "--steps", "200", "--batch-size", "32",
                              "--eval-every", "50", "--eval-batches", "4", "--warmup", "20", "--compile")],
              timeout_s=300, needs_data=SHAKESPEARE),
        Check("fsdp", "torch.compile + FSDP on one GPU (torchrun --nproc-per-node 1), gpt2-124m, 60 steps",
              [PY, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1",
               *train_gpt("fsdp", "--preset", "gpt2-124m", "--steps", "60", "--batch-size", "8",
                          "--eval-every", "20", "--eval-batches", "2", "--warmup", "5", "--fsdp")],
              timeout_s=300, needs_data=SHAKESPEARE),
    ]


# ---- settings, records, skipping -----------------------------------------------------------------

def settings_id(check: Check) -> str:
    """What the check runs, as a short hash: its command (paths relative to the checkout) or its
    notebook's code cells. A record with another id is stale and the check runs again."""
    if check.notebook:  # read as JSON: the GPU image may lack nbformat until .whl/ is installed
        cells = json.loads((ROOT / "notebooks" / check.notebook).read_text())["cells"]
        what = [c["source"] if isinstance(c["source"], str) else "".join(c["source"])
                for c in cells if c["cell_type"] == "code"]
    else:
        what = ["python" if a == PY else a.replace(str(ROOT), ".") for a in check.command]
    return hashlib.sha256(json.dumps([check.name, what]).encode()).hexdigest()[:12]


def load_record(name: str) -> dict | None:
    from course_lib.results import load

    try:
        return load(f"gpu_{name}", folder=RESULTS)
    except (OSError, ValueError):  # none yet, or unreadable
        return None


def recorded_ok(check: Check) -> dict | None:
    """``check``'s record if it ran ok with the settings it has now, else None."""
    rec = load_record(check.name)
    return rec if rec and rec["figures"].get("ok") and rec["figures"].get("settings") == settings_id(check) else None


def skip_reason(check: Check, redo: set[str], planned: set[str] = frozenset()) -> str | None:
    """Why ``check`` does not run now (None: it runs, budget permitting). ``planned``: the checks
    this run has started before it. A check named in ``redo`` runs whatever the records say."""
    if check.name in redo:
        return None
    if "all" not in redo and (rec := recorded_ok(check)):
        return f"recorded ok on {rec['device']} on {rec['date']} (--redo {check.name} runs it again)"
    base = check.fallback_for
    if base and (recorded_ok(next(c for c in checks() if c.name == base)) or
                 (base in planned and load_record(base) is None)):
        return f"{base} is recorded ok or runs in this call, and covers it"
    if check.after == "bench" and not ("bench" in planned and load_record("bench") is None):
        rec = load_record("bench")
        mfu = rec and rec["figures"].get("ok") and rec["figures"].get("course_mfu_percent")
        if not mfu:
            return "bench has no recorded MFU"
        if mfu >= MFU_GOAL:
            return f"bench's MFU {mfu:.1f}% meets the goal of {MFU_GOAL:g}%"
    return None


def decide(check: Check, left: float, budget: float, stopped: bool, fill: bool, redo: set[str],
           lacking: list[str], expected: float, planned: set[str]) -> tuple[str | None, bool]:
    """(why ``check`` is not started, or None; whether the run has stopped starting checks). A check
    expected to take longer than the whole budget is passed over: it needs a lease of its own."""
    why = skip_reason(check, redo, planned) or (f"missing {lacking}" if lacking else None)
    if why is None and expected > budget:
        why = f"expected {expected:.0f} s, more than the whole budget: a lease of its own (--only {check.name})"
    elif why is None and stopped:
        why = "after the budget ran out"
    elif why is None and expected > left:
        why = f"expected {expected:.0f} s, {max(left, 0):.0f} s left of the budget"
        stopped = not fill
    return why, stopped


def code_id() -> str:
    """The commit (where git works) and a hash of the library, benchmarks and scripts as they are."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    h = hashlib.sha256()
    for path in sorted([*ROOT.glob("course_lib/**/*.py"), *ROOT.glob("benchmarks/*.py"), *ROOT.glob("scripts/*")]):
        if path.is_file():
            h.update(path.relative_to(ROOT).as_posix().encode() + path.read_bytes())
    return f"{commit or 'no git'} (code {h.hexdigest()[:12]})"


def write_record(check: Check, result: dict, fig: dict, env: dict, code: str) -> None:
    """The check's results, after it ran: exports/gpu_check/<check>.result.json (with its output's
    tail), logs/<check>.log (all of it) and gpu_<check>.json in resources/results."""
    from course_lib.results import record

    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "logs").mkdir(exist_ok=True)
    (OUT / "logs" / f"{check.name}.log").write_text(result["output"])
    meta = {"ok": result["ok"], "rc": result["rc"], "seconds": round(result["seconds"], 1),
            "settings": settings_id(check), "code": code, "what": check.what}
    if check.name in GOALS:
        meta["goal"] = GOALS[check.name]
    body = {"name": check.name, **meta, "figures": fig, "environment": env,
            "date": datetime.date.today().isoformat(), "output_tail": result["output"][-4000:]}
    (OUT / f"{check.name}.result.json").write_text(json.dumps(body, indent=1))
    record(f"gpu_{check.name}", {**meta, **fig}, source="benchmarks/gpu_check.py", device=env.get("device"),
           folder=RESULTS)


# ---- what the machine has ------------------------------------------------------------------------

def missing_packages(names: list[str]) -> list[str]:
    return [n for n in names if importlib.util.find_spec(n) is None]


def missing_data() -> list[str]:
    return [f for f in DATA_FILES if not (DATA / f).exists()]


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


# ---- running ---------------------------------------------------------------------------------------

def _env() -> dict:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "COURSE_DATA_DIR": str(DATA), "COURSE_EXPORT_DIR": str(OUT / "plots"),
            "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TQDM_DISABLE": "1", "PYTHONHASHSEED": "0",
            "PYTHONUNBUFFERED": "1", "COURSE_SCALE": "full", "COURSE_RECORD": "1", "MPLBACKEND": "Agg"}


def run_process(argv: list[str], timeout_s: float) -> dict:
    """Run ``argv`` in its own process group, its output echoed and kept; after ``timeout_s`` the
    whole group (a notebook's kernel too) is stopped."""
    start, lines = time.perf_counter(), []
    proc = subprocess.Popen(argv, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, errors="replace", start_new_session=True)
    timer = _Killer(proc, timeout_s)
    for line in proc.stdout:
        print(line, end="", flush=True)
        lines.append(line)
    rc = proc.wait()
    timer.cancel()
    if timer.fired:
        lines.append(f"\n(stopped after {timeout_s:.0f} s)\n")
        rc = 124
    return {"ok": rc == 0, "rc": rc, "seconds": time.perf_counter() - start, "output": "".join(lines)}


class _Killer:
    def __init__(self, proc, seconds: float):
        import threading

        self.proc, self.fired = proc, False
        self.timer = threading.Timer(max(seconds, 0.0), self._fire)
        self.timer.start()

    def _fire(self):
        self.fired = True
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def cancel(self):
        self.timer.cancel()


def run_check(check: Check, timeout_s: float) -> dict:
    if check.command:
        return run_process(check.command, timeout_s)
    out = OUT / "notebooks" / check.notebook
    return run_process([PY, str(Path(__file__).resolve()), "--execute-notebook",
                        str(ROOT / "notebooks" / check.notebook), str(out)], timeout_s)


PEAK_CELL = ("import json as _j, torch as _t\n"
             "print('GPU_CHECK_PEAK', _j.dumps({'max_memory_allocated': _t.cuda.max_memory_allocated() "
             "if _t.cuda.is_available() else None}))")


def execute_notebook(src: Path, dest: Path) -> int:
    """Execute ``src`` in a fresh kernel (working directory: its folder), printing each cell's text
    outputs as it finishes and saving the executed copy (big outputs dropped) after every cell, then
    one more cell that prints the kernel's CUDA peak. Exit code 1 if a cell failed."""
    import nbformat
    from nbclient import NotebookClient

    sys.path.insert(0, str(ROOT / "scripts"))
    from run_notebooks import cell_seconds

    nb = nbformat.read(src, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(PEAK_CELL))
    dest.parent.mkdir(parents=True, exist_ok=True)

    def after_cell(cell, cell_index, execute_reply):
        print(f"--- cell {cell_index} ({cell_seconds(cell) or 0.0:.1f} s)", flush=True)
        print(cell_text(cell), flush=True)
        nbformat.write(slim(nb), dest)

    client = NotebookClient(nb, timeout=None, kernel_name="python3", record_timing=True,
                            resources={"metadata": {"path": str(src.parent)}}, on_cell_executed=after_cell)
    try:
        client.execute()
        ok = True
    except Exception as exc:
        print(f"error: {type(exc).__name__}: {str(exc).strip()[-2000:]}", flush=True)
        ok = False
    nb.cells.pop()
    nbformat.write(slim(nb), dest)
    return 0 if ok else 1


def cell_text(cell) -> str:
    """What a code cell printed or showed as text."""
    parts = []
    for o in cell.get("outputs", []):
        if o.get("output_type") == "stream":
            parts.append(o.get("text", ""))
        elif o.get("output_type") == "error":
            parts.append(f"{o.get('ename')}: {o.get('evalue')}")
        elif "text/plain" in o.get("data", {}):
            parts.append(o["data"]["text/plain"])
    return "".join(p if p.endswith("\n") else p + "\n" for p in parts)


def slim(nb):
    """A copy of ``nb`` without images and long HTML (the text outputs are what is measured)."""
    import copy

    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            data = o.get("data", {})
            for kind in [k for k in data if k.startswith("image/") or (k == "text/html" and len(data[k]) > 20_000)]:
                del data[kind]
    return nb


# ---- reading the figures out of the runs -------------------------------------------------------------

def _floats(pattern: str, text: str) -> list[float]:
    return [float(m.replace(",", "")) for m in re.findall(pattern, text)]


KEYWORDS = re.compile(r"loss|BLEU|accuracy|tokens/s|MFU|exact|match|perplexity|parameters|steps|GiB|speed", re.I)


def generic_figures(text: str) -> dict:
    """The last BLEU, validation loss, tokens/s, MFU and accuracy a run printed."""
    fig = {}
    for key, pattern in (("bleu", r"BLEU[ =:]*([\d.]+)"), ("val_loss", r"(?<!lowest )val(?:idation)? loss ([\d.]+)"),
                         ("tokens_per_s", r"([\d,]+) tokens/s"), ("mfu_percent", r"MFU ([\d.]+)%"),
                         ("accuracy", r"accuracy[ =:]*([\d.]+)")):
        found = _floats(pattern, text)
        if found:
            fig[key] = found[-1]
    return fig


def memory_figures(text: str) -> dict:
    fig = {}
    peak = re.search(r"GPU_CHECK_PEAK (\{.*\})", text)
    if peak:
        fig["peak_gib"] = _round_gib(json.loads(peak.group(1)).get("max_memory_allocated"))
    plan = re.findall(r"plan: .*?peak ~([\d.]+) (GiB|MiB)", text)
    if plan:
        value, unit = plan[-1]
        fig["estimate_gib"] = round(float(value) / (1 if unit == "GiB" else 1024), 3)
        fig["plan_line"] = next(line.strip() for line in reversed(text.splitlines()) if "plan: " in line)
    return fig


def _round_gib(x):
    return round(x / GiB, 3) if x else None


def bench_figures(text: str) -> dict:
    """benchmarks/bench_gpt.py's tables: | label | tokens/s | vs naive | vs reference | MFU |, then
    batch-1 generation: | with/without KV cache | tokens/s |."""
    fig = {}
    rows = re.findall(r"\| (naive[^|]*|reference[^|]*|course[^|]*) \| ([\d,]+) \| ([\d.]+)x \| "
                      r"([\d.]+)x \| ([^|]+) \|", text)
    for label, tps, vs_naive, vs_ref, mfu in rows:
        key = label.split(":")[0].split("_")[0].strip()
        fig[f"{key}_tokens_per_s"] = float(tps.replace(",", ""))
        fig[f"{key}_vs_naive"] = float(vs_naive)
        fig[f"{key}_vs_reference"] = float(vs_ref)
        m = re.match(r"([\d.]+)%", mfu.strip())
        if m:
            fig[f"{key}_mfu_percent"] = float(m.group(1))
    paired = re.search(r"vs reference median ([\d.]+)x", text)
    if paired:
        fig["course_vs_reference_paired"] = float(paired.group(1))
    setup = re.search(r"batch (\d+); median of", text)
    if setup:
        fig["batch"] = int(setup.group(1))
    for cache, tps in re.findall(r"^\| (with|without) KV cache \| ([\d,]+) \|$", text, re.M):
        fig[f"generation_{cache}_cache_tokens_per_s"] = float(tps.replace(",", ""))
    return fig


def multi30k_figures(text: str) -> dict:
    """benchmarks/bench_multi30k.py's lines: the training summary, the final BLEU, the curve."""
    fig = {}
    m = re.search(r"trained (\d+) steps \(([\d.]+) epochs\) in ([\d.]+) min of training.*?validation loss ([\d.]+)",
                  text)
    if m:
        fig.update(steps=int(m.group(1)), epochs=float(m.group(2)), train_minutes=float(m.group(3)),
                   val_loss=float(m.group(4)))
    m = re.search(r"final model, greedy: BLEU ([\d.]+) on (\d+) sentences", text)
    if m:
        fig.update(bleu_greedy=float(m.group(1)), sentences=int(m.group(2)))
    m = re.search(r"final model, beam 4: BLEU ([\d.]+)", text)
    if m:
        fig["bleu_beam4"] = float(m.group(1))
    curve = re.findall(r"^\| ([\d.]+)( \(final\))? \| (\d+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|$", text, re.M)
    if curve:
        fig["curve"] = [{"minutes": float(c[0]), "step": int(c[2]), "greedy": float(c[4]), "beam4": float(c[5])}
                        for c in curve]
    if "bleu_beam4" in fig and "train_minutes" in fig:
        fig["goal_met"] = fig["bleu_beam4"] >= 38 and fig["train_minutes"] <= 6
    return fig


def shakespeare_figures(text: str) -> dict:
    fig = {}
    m = re.search(r"lowest val loss ([\d.]+) at step (\d+)", text)
    if m:
        fig.update(best_val_loss=float(m.group(1)), best_step=int(m.group(2)))
    m = re.search(r"done at step (\d+) \((.*?)\): val loss", text)
    if m:
        fig.update(steps=int(m.group(1)), stopped=m.group(2))
    return fig


def notebook_figures(check: Check, text: str) -> dict:
    """The printed lines that carry figures, the generic figures, the slowest cells, and the
    notebook's own results file (nbNN_full.json) when it wrote one."""
    lines = [line.strip()[:200] for line in text.splitlines()
             if re.search(r"\d", line) and KEYWORDS.search(line) and not line.startswith("--- cell")]
    fig = {"printed": lines[:60]}
    cells = [(float(s), int(i)) for i, s in re.findall(r"^--- cell (\d+) \(([\d.]+) s\)", text, re.M)]
    if cells:
        fig["cells_run"] = len(cells)
        fig["slowest_cells"] = {f"cell {i}": s for s, i in sorted(cells, reverse=True)[:5]}
    if check.name == "nb08":
        training = _training_cell(check)
        fig["training_cell_s"] = next((s for s, i in cells if i == training), None)
    own = RESULTS / f"{check.name}_full.json"
    if own.exists():
        fig["notebook_record"] = json.loads(own.read_text())["figures"]
    return fig


def _training_cell(check: Check) -> int | None:
    """Notebook 08's cell that trains the library's model at scale."""
    import nbformat

    nb = nbformat.read(ROOT / "notebooks" / check.notebook, as_version=4)
    return next((i for i, c in enumerate(nb.cells) if c.source.startswith("state = train(model, data, cfg")), None)


def memory_rows(path: Path) -> dict:
    """memory_check.py's rows: estimate, measured and their ratio per model (eager: goal within 15%)."""
    from course_lib.results import slug

    if not path.exists():
        return {}
    rows = {}
    for r in json.loads(path.read_text()):
        key = slug(r["workload"], "compiled" if r["compiled"] else "eager")
        meas, est = r.get("measured"), r.get("estimate")
        rows[key] = {"precision": r["precision"], "micro_batch": r["micro_batch"], "estimate_gib": _round_gib(est),
                     "measured_gib": _round_gib(meas), "ratio": round(est / meas, 3) if meas and est else None,
                     "within_15pct": bool(meas and est and abs(est / meas - 1) <= 0.15)}
    return {"rows": rows}


def figures(check: Check, result: dict) -> dict:
    text = result["output"]
    peak_file = OUT / f"{check.name}.peak.json"
    fig = memory_figures(text)
    if peak_file.exists():
        fig["peak_gib"] = _round_gib(json.loads(peak_file.read_text()).get("max_memory_allocated"))
    if check.name == "bench":
        fig.pop("estimate_gib", None)  # the peak is the process's: three models and their optimizers
        fig.update(bench_figures(text))
        if "course_mfu_percent" in fig:
            fig["goal_met"] = fig["course_mfu_percent"] >= MFU_GOAL
        return fig
    if check.name == "memory":
        return {**fig, **memory_rows(OUT / "memory.rows.json")}
    if check.name == "profile":
        return {**fig, "summary": [line for line in text.splitlines() if line.startswith("profile")][:30]}
    fig.update(generic_figures(text))
    if check.name == "multi30k":
        fig.update(multi30k_figures(text))
        fig.pop("bleu", None)
    if check.name in ("shakespeare", "train", "fsdp"):
        fig.update(shakespeare_figures(text))
    if check.notebook:
        fig.update(notebook_figures(check, text))
    return fig


# ---- the table --------------------------------------------------------------------------------------

def _summary(name: str, f: dict) -> str:
    if not f.get("ok"):
        return f"**failed** (exit {f.get('rc')})"
    if name == "bench" and "course_tokens_per_s" in f:
        return (f"course {f['course_tokens_per_s']:,.0f} tokens/s, MFU {f.get('course_mfu_percent', 'n/a')}%; "
                f"reference {f.get('reference_tokens_per_s', 0):,.0f}; naive {f.get('naive_tokens_per_s', 0):,.0f}; "
                f"batch {f.get('batch', 'n/a')}"
                + (f"; batch-1 generation {f['generation_with_cache_tokens_per_s']:,.0f} tokens/s with the KV cache, "
                   f"{f.get('generation_without_cache_tokens_per_s', 0):,.0f} without"
                   if "generation_with_cache_tokens_per_s" in f else ""))
    if name == "memory" and f.get("rows"):
        return "; ".join(f"{k}: {r['estimate_gib']} / {r['measured_gib']} GiB ({r['ratio']})"
                         for k, r in f["rows"].items())
    parts = []
    for key, label, fmt in (("bleu_beam4", "BLEU beam 4", "{:.2f}"), ("bleu_greedy", "greedy", "{:.2f}"),
                            ("train_minutes", "trained", "{:.1f} min"), ("best_val_loss", "lowest val loss", "{:.4f}"),
                            ("bleu", "BLEU", "{:.2f}"), ("val_loss", "val loss", "{:.3f}"),
                            ("tokens_per_s", "tokens/s", "{:,.0f}"), ("mfu_percent", "MFU %", "{:.1f}"),
                            ("training_cell_s", "training cell", "{:.0f} s")):
        if f.get(key) is not None:
            parts.append(f"{label} {fmt.format(f[key])}")
    if f.get("notebook_record"):
        parts.append("figures in " + name + "_full.json")
    return ", ".join(parts) or "ran"


def render(records: list[dict]) -> str:
    lines = [
        "# GPU results",
        "",
        "Written by `bash scripts/gpu_check.sh` (`benchmarks/gpu_check.py`) from the records",
        "`gpu_<check>.json` in resources/results; each row names the device and the date it was measured on.",
        "An earlier run on an H200 (2026-11-29) is kept in [gpu_results_2026-11-29_h200.md](gpu_results_2026-11-29_h200.md).",
        "",
        "| check | device | date | torch | result | time | peak (GiB) | estimate (GiB) |",
        "| --- | --- | --- | --- | --- | ---: | ---: | ---: |",
    ]
    if not records:
        lines.append("| (none yet) | | | | `bash scripts/gpu_check.sh`: see docs/hardware.md | | | |")
    for r in records:
        f = r["figures"]
        lines.append(f"| {r['name'].removeprefix('gpu_')} | {r['device']} | {r['date']} | {r['torch']} | "
                     f"{_summary(r['name'].removeprefix('gpu_'), f)} | {f.get('seconds', 0):.0f} s | "
                     f"{f.get('peak_gib') or 'n/a'} | {f.get('estimate_gib') or 'n/a'} |")
    goals = [f"- {name}: {goal}" for name, goal in GOALS.items()]
    lines += ["", "Goals (issue 31):", "", *goals, ""]
    return "\n".join(lines)


def load_records() -> list[dict]:
    """Every gpu_<check>.json: the checks' in priority order, then any others by name."""
    order = [c.name for c in checks()]
    others = sorted(p.stem.removeprefix("gpu_") for p in RESULTS.glob("gpu_*.json"))
    found = [load_record(n) for n in order + [n for n in others if n not in order]]
    return [r for r in found if r]


# ---- bringing the results home ----------------------------------------------------------------------

def pack_members() -> list[tuple[Path, int]]:
    """(file, priority) of what goes home; a lower priority is left out first when over the limit."""
    members = [(p, 3) for p in sorted(RESULTS.glob("gpu_*.json"))]
    members += [(p, 3) for p in sorted(RESULTS.glob("nb*_full.json"))]
    members += [(RESULTS_MD, 3)] if RESULTS_MD.exists() else []
    members += [(p, 3) for p in sorted(OUT.glob("*.result.json"))]
    members += [(p, 2) for p in sorted(OUT.glob("profile*.txt"))]
    members += [(p, 1) for p in sorted((OUT / "logs").glob("*.log"))]
    members += [(p, 0) for p in sorted((OUT / "notebooks").glob("*.ipynb"))]
    return members


def pack(folder: Path, limit: int = PACK_LIMIT) -> Path:
    """One gzip'd tar of the results in ``folder`` (written atomically), under ``limit`` bytes:
    the executed notebooks, then the logs are left out if it would be larger."""
    folder.mkdir(parents=True, exist_ok=True)
    members = pack_members()
    for keep_from in (0, 1, 2, 3):
        chosen = [p for p, prio in members if prio >= keep_from]
        data = _tar_bytes(chosen)
        if len(data) <= limit:
            break
    else:
        raise RuntimeError(f"the results alone are {len(data):,} bytes, over the {limit:,}-byte limit.")
    left_out = len(members) - len(chosen)
    target = folder / PACK_NAME
    tmp = target.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, target)
    print(f"packed {len(chosen)} files into {target} ({len(data) / 2**20:.2f} MiB)"
          + (f"; {left_out} left out to stay under {limit / 2**20:.0f} MiB" if left_out else ""), flush=True)
    return target


def _tar_bytes(paths: list[Path]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for p in paths:
            data = p.read_bytes()
            if p.suffix == ".log" and len(data) > 256_000:
                data = data[-256_000:]  # the end of a long log
            info = tarfile.TarInfo(p.relative_to(ROOT).as_posix())
            info.size, info.mtime, info.mode = len(data), int(p.stat().st_mtime), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


PACKABLE = re.compile(r"^(resources/results/(gpu_[\w-]+|nb\d\d_full)\.json|" + re.escape("resources/gpu_results.md") + r"|"
                      r"exports/gpu_check/([\w.-]+\.result\.json|profile[\w.-]*\.txt|logs/[\w.-]+\.log|"
                      r"notebooks/[\w.-]+\.ipynb))$")


def unpack(archive: Path) -> list[str]:
    """Extract what ``pack`` wrote into the checkout: regular files at the paths ``pack`` uses,
    nothing else; then the table is written again from all records."""
    if not archive.is_file():
        raise FileNotFoundError(f"no archive at {archive}; give the {PACK_NAME} that --pack wrote.")
    written = []
    with tarfile.open(archive, "r:gz") as tar:
        for m in tar.getmembers():
            if not m.isfile() or not PACKABLE.match(m.name):
                print(f"skipped {m.name!r}: not a file that --pack writes")
                continue
            target = ROOT / m.name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(tar.extractfile(m).read())
            written.append(m.name)
    RESULTS_MD.write_text(render(load_records()))
    print(f"unpacked {len(written)} files; wrote {RESULTS_MD.relative_to(ROOT)}")
    return written


# ---- before a lease ---------------------------------------------------------------------------------

def prepare() -> int:
    """Copy the data into .devdata/, download the wheels into .whl/, and say what will travel."""
    for f in missing_data():
        if (SHARED_DATA / f).exists():
            (DATA / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(SHARED_DATA / f, DATA / f)
    have = {p.name.split("-")[0].lower().replace("_", "-") for p in WHEEL_DIR.glob("*.whl")}
    need = [w for w in WHEELS if w.split("==")[0].lower() not in have]
    if need:
        platforms = [a for n in ("manylinux_2_28", "manylinux_2_27", "manylinux_2_26", "manylinux_2_17",
                                 "manylinux2014", "manylinux1") for a in ("--platform", f"{n}_x86_64")]
        cmd = [PY, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
               "--implementation", "cp", *platforms, "--platform", "any", "-d", str(WHEEL_DIR), *need]
        if subprocess.run(cmd).returncode:
            print("error: pip download failed; see above.", file=sys.stderr)
            return 2
    sizes = {"working tree": _tree_bytes(), ".whl": _folder_bytes(WHEEL_DIR), ".devdata": _folder_bytes(DATA)}
    total = sum(sizes.values())
    print("; ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in sizes.items()) + f"; together {total / 2**20:.1f} MiB "
          f"of the device tool's 64 MiB")
    print(f"data missing: {missing_data() or 'none'}")
    return 0 if total < 64 * 2**20 and not missing_data() else 1


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0


def _tree_bytes() -> int:
    """Tracked files and untracked files git does not ignore: what the device tool sends."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, text=True).stdout
    return sum((ROOT / p).stat().st_size for p in out.split("\0") if p and (ROOT / p).is_file())


# ---- main -------------------------------------------------------------------------------------------

def plan(selected: list[Check], budget: float, redo: set[str], fill: bool, lacking: dict[str, list[str]],
         expected: dict[str, float]) -> list[tuple[Check, str]]:
    """What a run would do with each check if each took its expected time: 'run', or why not."""
    left, out, stopped, planned = budget, [], False, set()
    for c in selected:
        why, stopped = decide(c, left, budget, stopped, fill, redo, lacking.get(c.name, []), expected[c.name],
                              planned)
        if why is None:
            left -= expected[c.name]
            planned.add(c.name)
        out.append((c, why or "run"))
    return out


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="say what would run, in what order; run nothing")
    p.add_argument("--only", help="comma-separated checks (default: all, in priority order)")
    p.add_argument("--budget", type=float, default=DEFAULT_BUDGET, help="seconds for the checks")
    p.add_argument("--fill", action="store_true", help="after a check that does not fit, try the later ones")
    p.add_argument("--redo", default="", help="comma-separated checks to run even if recorded ok ('all': every one)")
    p.add_argument("--expected", default="", help="NAME=SECONDS,... instead of the table's expected seconds")
    p.add_argument("--pack", type=Path, help="after every check, write DIR/gpu_check.tar.gz")
    p.add_argument("--unpack", type=Path, help="extract an archive --pack wrote into this checkout")
    p.add_argument("--prepare", action="store_true", help="copy the data, download the wheels, report sizes")
    p.add_argument("--render", action="store_true", help="only rewrite resources/gpu_results.md from the records")
    p.add_argument("--execute-notebook", nargs=2, type=Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def select(args) -> tuple[list[Check], dict[str, float]]:
    every = checks()
    names = {c.name for c in every}
    wanted = [n.strip() for n in (args.only or "").split(",") if n.strip()]
    redo = [n.strip() for n in args.redo.split(",") if n.strip() and n.strip() != "all"]
    expected = {c.name: c.expected[0] for c in every}
    for item in filter(None, args.expected.split(",")):
        name, _, value = item.partition("=")
        try:
            expected[name.strip()] = float(value)
        except ValueError:
            raise ValueError(f"--expected {item!r}: give NAME=SECONDS, e.g. nb08=300.") from None
    unknown = sorted((set(wanted) | set(redo) | set(expected)) - names)
    if unknown:
        raise ValueError(f"unknown check(s) {unknown}; choose from {[c.name for c in every]}.")
    if args.budget <= 0:
        raise ValueError(f"--budget {args.budget:g} must be > 0 seconds.")
    return [c for c in every if not wanted or c.name in wanted], expected


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.execute_notebook:
        return execute_notebook(*args.execute_notebook)
    try:
        if args.unpack:
            unpack(args.unpack)
            return 0
        if args.prepare:
            return prepare()
        selected, expected = select(args)
    except (ValueError, FileNotFoundError, tarfile.TarError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.render:
        RESULTS_MD.write_text(render(load_records()))
        print(f"wrote {RESULTS_MD.relative_to(ROOT)}")
        return 0
    return run_all(args, selected, expected)


def run_all(args, selected: list[Check], expected: dict[str, float]) -> int:
    start = time.monotonic()
    env = describe_device() if importlib.util.find_spec("torch") is not None else {}
    print(f"device: {env.get('device', 'no torch')} | torch {env.get('torch')} | CUDA {env.get('cuda')} | "
          f"budget {args.budget:.0f} s")
    if not args.dry_run and env.get("device") in (None, "no CUDA GPU"):
        print("error: no CUDA GPU here; this check measures GPU figures (--dry-run lists what it would run).",
              file=sys.stderr)
        return 2
    no_data, no_pkgs = missing_data(), missing_packages(NOTEBOOK_PACKAGES)
    lacking = {c.name: [f for f in c.needs_data if f in no_data] + [q for q in c.needs_packages if q in no_pkgs]
               for c in selected}
    print(f"data in {DATA.relative_to(ROOT)}/: {'all present' if not no_data else f'missing {no_data}'}; "
          f"notebook packages: {'present' if not no_pkgs else f'missing {no_pkgs}'}")
    redo = {n.strip() for n in args.redo.split(",") if n.strip()}
    if args.dry_run:
        for c, what in plan(selected, args.budget, redo, args.fill, lacking, expected):
            how = " ".join(c.command) if c.command else f"execute notebooks/{c.notebook} (COURSE_SCALE=full)"
            print(f"- {c.name} (expected {expected[c.name]:.0f} s, limit {c.timeout_s} s): {what}\n"
                  f"    {c.what}\n    {how}\n    expected time: {c.expected[1]}")
        print(f"results would go to {OUT.relative_to(ROOT)}/, {RESULTS.relative_to(ROOT)}/gpu_<check>.json "
              f"and {RESULTS_MD.relative_to(ROOT)}")
        return 0
    code, failures, stopped, planned = code_id(), 0, False, set()
    for c in selected:
        left = args.budget - (time.monotonic() - start)
        why, stopped = decide(c, left, args.budget, stopped, args.fill, redo, lacking[c.name], expected[c.name],
                              planned)
        if why is not None:
            print(f"\n== {c.name}: not run ({why})", flush=True)
            continue
        planned.add(c.name)
        print(f"\n== {c.name}: {c.what} (expected {expected[c.name]:.0f} s, {left:.0f} s left)", flush=True)
        for stale in OUT.glob(f"{c.name}.peak*.json"):
            stale.unlink()
        result = run_check(c, min(c.timeout_s, left + GRACE))
        fig = figures(c, result)
        write_record(c, result, fig, env, code)
        RESULTS_MD.write_text(render(load_records()))
        print(f"-> {c.name}: {'ok' if result['ok'] else 'FAILED'} in {result['seconds']:.0f} s", flush=True)
        failures += not result["ok"]
        if args.pack:
            pack(args.pack)
    if args.pack and not planned:  # nothing ran: still an archive, of the records as they are
        pack(args.pack)
    print(f"\nwrote {RESULTS_MD.relative_to(ROOT)}; {time.monotonic() - start:.0f} s in all")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
