"""Execute the course's notebooks headlessly, several at once.

    python scripts/run_notebooks.py --out exports          # executed copies + plots
    python scripts/run_notebooks.py --inplace [NB ...]     # refresh committed outputs
    python scripts/run_notebooks.py --times resources/results/course_times.json   # and record the times

Each notebook runs in its own kernel with the notebooks folder as working directory,
progress bars off and the Hugging Face hub offline unless ``--online`` is given.
``--jobs`` notebooks run at once (on a CPU: one per core; on a GPU: one), the longest
first, as timed in ``resources/results/course_times.json``. Each kernel gets an equal share of
the cores as its torch threads (``OMP_NUM_THREADS``, unless it is set already): on two
cores, two notebooks at once with one thread each, the setting the committed outputs
are made with (``OMP_NUM_THREADS=1``). The notebooks seed themselves, so what runs
beside a notebook does not change its outputs. With ``--inplace`` the executed notebook replaces the source, with its metadata
cleaned (no timings, no per-machine kernel details), which is how the committed
notebooks are produced at the CPU scale that CI runs.
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import os
import re
import sys
import tempfile
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
TIMES = ROOT / "resources" / "results" / "course_times.json"


def clean_metadata(nb: nbformat.NotebookNode) -> None:
    """No timings, no per-machine kernel details, each stream's text in one piece."""
    nb.metadata = nbformat.from_dict(
        {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        }
    )
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        cell.metadata.pop("collapsed", None)
        cell.metadata.pop("scrolled", None)
        if cell.cell_type == "code":
            for output in cell.get("outputs", []):
                output.get("metadata", {}).pop("execution", None)
            cell.outputs = coalesce_streams(cell.get("outputs", []))


def coalesce_streams(outputs: list) -> list:
    """Join consecutive pieces of one stream: how the kernel cuts printed text into messages
    depends on timing, and the committed outputs must not."""
    joined = []
    for output in outputs:
        last = joined[-1] if joined else None
        if (output.get("output_type") == "stream" and last is not None and last.get("output_type") == "stream"
                and last.get("name") == output.get("name")):
            last["text"] = "".join(last["text"]) + "".join(output["text"])
        else:
            joined.append(output)
    return joined


def kernel_config(sockets: str):
    """The kernel talks to this process over local sockets (IPC) in the folder ``sockets``
    where the system has them, so no kernel warns about unencrypted TCP; Windows keeps TCP."""
    from traitlets.config import Config

    config = Config()
    if os.name != "nt":
        config.KernelManager.transport = "ipc"
        config.KernelManager.ip = str(Path(sockets) / "kernel")  # absolute: the kernel runs elsewhere
    return config


def run(path: Path, timeout: int) -> nbformat.NotebookNode:
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    with tempfile.TemporaryDirectory(prefix="nb-") as sockets:
        client = NotebookClient(
            nb,
            timeout=timeout,
            kernel_name="python3",
            resources={"metadata": {"path": str(path.parent)}},
            config=kernel_config(sockets),
        )
        client.execute()
    return nb


def cell_seconds(cell) -> float | None:
    """How long an executed cell ran, from nbclient's timestamps (None without them)."""
    stamps = cell.get("metadata", {}).get("execution", {})
    try:
        began, ended = (datetime.datetime.fromisoformat(stamps[k].replace("Z", "+00:00"))
                        for k in ("iopub.execute_input", "shell.execute_reply"))
    except (KeyError, ValueError):
        return None
    return (ended - began).total_seconds()


def slowest_cells(nb: nbformat.NotebookNode, n: int = 3) -> dict[str, float]:
    """{"cell N": seconds} of the ``n`` slowest code cells, from nbclient's timestamps."""
    seconds = [(f"cell {i}", round(t, 1)) for i, cell in enumerate(nb.cells) if (t := cell_seconds(cell)) is not None]
    return dict(sorted(seconds, key=lambda x: -x[1])[:n])


def execute(path: Path, target: Path, timeout: int) -> tuple[float, str | None, dict]:
    """Run one notebook and write it to ``target``; returns (seconds, error line or None,
    its slowest cells)."""
    start = time.monotonic()
    try:
        nb = run(path, timeout)
    except Exception as exc:  # reported by the caller, which runs the other notebooks on
        lines = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip().splitlines() or [type(exc).__name__]
        return time.monotonic() - start, lines[-1], {}
    slowest = slowest_cells(nb)
    clean_metadata(nb)
    nbformat.write(nb, target)
    return time.monotonic() - start, None, slowest


def read_times(path: Path = TIMES) -> dict[str, float]:
    """Seconds per notebook (by stem) from a results file; {} when there is none yet."""
    try:
        return {k: float(v) for k, v in json.loads(path.read_text())["figures"]["notebooks"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def longest_first(paths: list[Path], expected: dict[str, float]) -> list[Path]:
    """Notebooks without a recorded time first (they may be long), then by expected time."""
    return sorted(paths, key=lambda p: (p.stem in expected, -expected.get(p.stem, 0.0), p.name))


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def gpu_found() -> bool:
    if os.environ.get("COURSE_DEVICE", "").startswith("cpu"):
        return False
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available() or torch.backends.mps.is_available()


def clock(seconds: float) -> str:
    return f"{int(seconds) // 60}:{int(seconds) % 60:02d}"


def shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def run_all(paths: list[Path], targets: list[Path], jobs: int, timeout: int,
            expected: dict[str, float], echo=print) -> dict[str, tuple[float, str | None, dict]]:
    """Run the notebooks ``jobs`` at a time in the order given;
    returns name -> (seconds, error, slowest cells)."""
    results: dict[str, tuple[float, str | None, dict]] = {}
    todo = list(zip(paths, targets))
    start = time.monotonic()
    # spawn, not fork: this process may hold torch's threads, which a fork must not copy
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        running = {}
        while todo or running:
            while todo and len(running) < jobs:
                path, target = todo.pop(0)
                guess = f"expected about {expected[path.stem]:.0f} s" if path.stem in expected else "no time recorded"
                echo(f"[{clock(time.monotonic() - start)}] start {path.stem} ({guess})", flush=True)
                running[pool.submit(execute, path, target, timeout)] = path
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                path = running.pop(future)
                seconds, error, slowest = results[path.stem] = future.result()
                status = f"FAILED after {seconds:.0f} s: {error}" if error else f"done in {seconds:.0f} s"
                echo(f"[{clock(time.monotonic() - start)}] {status}: {path.stem} "
                     f"({len(results)}/{len(paths)})", flush=True)
    return results


def write_times(path: Path, results: dict[str, tuple[float, str | None, dict]], jobs: int, wall: float) -> None:
    """The results file the README's CPU-time column is read from (``course_lib.results``)."""
    from course_lib.results import record

    figures = {"cores": cores(), "jobs": jobs, "wall_s": round(wall, 1),
               "notebooks": {name: round(results[name][0], 1) for name in sorted(results)},
               "slowest_cells": {name: results[name][2] for name in sorted(results)}}
    record(path.stem, figures, source="benchmarks/course_times.py", folder=path.parent)


def set_environment(args, threads: int) -> None:
    os.environ.setdefault("TQDM_DISABLE", "1")
    # No MPLBACKEND here: the kernel's inline backend keeps the figures in the outputs.
    os.environ.pop("MPLBACKEND", None)
    os.environ.setdefault("PYTHONHASHSEED", "0")
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    if not args.online:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every notebook")
    parser.add_argument("--out", type=Path, default=ROOT / "exports")
    parser.add_argument("--inplace", action="store_true", help="overwrite the notebooks themselves")
    parser.add_argument("--online", action="store_true", help="let the notebooks reach the hub")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    parser.add_argument("--jobs", type=int, default=0, help="notebooks at once (default: one per core on a CPU, 1 on a GPU)")
    parser.add_argument("--times", type=Path, default=None, help="write the seconds per notebook to this JSON file")
    args = parser.parse_args(argv)
    if args.jobs < 0:
        print(f"error: --jobs {args.jobs} is negative; give a number of notebooks to run at once (0: automatic)")
        return 2
    paths = [p.resolve() for p in (args.notebooks or sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")))]
    if not paths:
        print(f"error: no notebooks found in {shown(NOTEBOOKS)}; give paths to .ipynb files")
        return 2
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        print(f"error: no notebook at {', '.join(missing)}; give paths to .ipynb files")
        return 2
    jobs = min(args.jobs or (1 if gpu_found() else cores()), len(paths))
    set_environment(args, max(1, cores() // jobs))
    out = args.out.resolve()
    if args.inplace:
        targets = paths
        os.environ["COURSE_RECORD"] = "1"  # the committed notebooks' figures go to resources/results/
    else:
        os.environ.setdefault("COURSE_EXPORT_DIR", str(out / "plots"))
        (out / "notebooks").mkdir(parents=True, exist_ok=True)
        targets = [out / "notebooks" / p.name for p in paths]
    expected = read_times()
    order = longest_first(paths, expected)
    into = dict(zip(paths, targets))
    known = [expected[p.stem] for p in paths if p.stem in expected]
    estimate = (f"about {max(sum(known) / jobs, max(known)) / 60:.0f} min as timed in {shown(TIMES)}"
                if known else f"no times recorded in {shown(TIMES)} yet")
    print(f"{len(paths)} notebook(s), {jobs} at a time, {os.environ['OMP_NUM_THREADS']} thread(s) each, "
          f"longest first; {estimate}", flush=True)
    start = time.monotonic()
    results = run_all(order, [into[p] for p in order], jobs, args.timeout, expected)
    wall = time.monotonic() - start
    print(f"\n{'notebook':<28}{'seconds':>8}")
    for p in paths:
        seconds, error, _ = results[p.stem]
        print(f"{p.stem:<28}{seconds:>8.0f}{'  FAILED' if error else ''}")
    print(f"{'all, at ' + str(jobs) + ' at a time':<28}{wall:>8.0f}")
    if args.inplace:
        print("executed notebooks written in place")
    else:
        print(f"executed notebooks in {shown(out / 'notebooks')}, plots in {shown(Path(os.environ['COURSE_EXPORT_DIR']))}")
    failed = [p.stem for p in paths if results[p.stem][1]]
    if failed:
        print(f"{len(failed)} notebook(s) failed: {', '.join(failed)}")
        return 1
    if args.times:
        write_times(args.times, results, jobs, wall)
        print(f"times written to {shown(args.times)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
