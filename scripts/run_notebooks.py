"""Execute the course's notebooks in order, headlessly.

    python scripts/run_notebooks.py --out exports          # executed copies + plots
    python scripts/run_notebooks.py --inplace [NB ...]     # refresh committed outputs

Each notebook runs in its own kernel with the notebooks folder as working directory,
progress bars off and the Hugging Face hub offline unless ``--online`` is given.
With ``--inplace`` the executed notebook replaces the source, with its metadata
cleaned (no timings, no per-machine kernel details), which is how the committed
notebooks are produced at the CPU scale that CI runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"


def clean_metadata(nb: nbformat.NotebookNode) -> None:
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


def run(path: Path, timeout: int) -> nbformat.NotebookNode:
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute()
    return nb


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every notebook, in order")
    parser.add_argument("--out", type=Path, default=ROOT / "exports")
    parser.add_argument("--inplace", action="store_true", help="overwrite the notebooks themselves")
    parser.add_argument("--online", action="store_true", help="let the notebooks reach the hub")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    args = parser.parse_args(argv)

    paths = args.notebooks or sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    out = args.out.resolve()
    os.environ.setdefault("TQDM_DISABLE", "1")
    # No MPLBACKEND here: the kernel's inline backend keeps the figures in the outputs.
    os.environ.pop("MPLBACKEND", None)
    os.environ.setdefault("PYTHONHASHSEED", "0")
    if not args.online:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    if not args.inplace:
        os.environ.setdefault("COURSE_EXPORT_DIR", str(out / "plots"))
        (out / "notebooks").mkdir(parents=True, exist_ok=True)
    failed = []
    for path in paths:
        path = path.resolve()
        start = time.time()
        print(f"running {path.name} ...", flush=True)
        try:
            nb = run(path, args.timeout)
        except Exception as exc:  # report every notebook, then fail
            print(f"  FAILED after {time.time() - start:.0f}s: {str(exc).splitlines()[-1]}")
            failed.append(path.name)
            continue
        clean_metadata(nb)
        target = path if args.inplace else out / "notebooks" / path.name
        nbformat.write(nb, target)
        print(f"  ok in {time.time() - start:.0f}s -> {target.relative_to(ROOT) if target.is_relative_to(ROOT) else target}")
    if not args.inplace:
        print(f"plots exported under {out / 'plots'}")
    if failed:
        print(f"{len(failed)} notebook(s) failed: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
