"""Run a Python module or script and, when it exits, write its CUDA peak memory to a JSON file.

    python benchmarks/_peak.py OUT.json -m course_lib.train gpt --preset gpt2-124m ...
    torchrun --nproc-per-node 1 benchmarks/_peak.py OUT.json -m course_lib.train gpt --fsdp ...

``gpu_check`` wraps its runs with this so that every run's ``torch.cuda.max_memory_allocated``
can be set beside the estimate. Ranks other than 0 write ``OUT.rank<N>.json``.
"""

from __future__ import annotations

import atexit
import json
import os
import runpy
import sys
from pathlib import Path


def _write(path: Path) -> None:
    data = {"max_memory_allocated": None, "max_memory_reserved": None}
    try:
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            data = {"max_memory_allocated": torch.cuda.max_memory_allocated(),
                    "max_memory_reserved": torch.cuda.max_memory_reserved()}
    except Exception as exc:  # the run's own result matters more than this record
        data["error"] = f"{type(exc).__name__}: {exc}"
    rank = int(os.environ.get("RANK", "0"))
    target = path if rank == 0 else path.with_suffix(f".rank{rank}.json")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(data))


def main() -> None:
    if len(sys.argv) < 3:
        print("usage: _peak.py OUT.json (-m MODULE | SCRIPT.py) [ARGS ...]", file=sys.stderr)
        sys.exit(2)
    out, rest = Path(sys.argv[1]), sys.argv[2:]
    atexit.register(_write, out)
    if rest[0] == "-m":
        sys.argv = [rest[1], *rest[2:]]
        runpy.run_module(rest[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = rest
        sys.path.insert(0, str(Path(rest[0]).resolve().parent))
        runpy.run_path(rest[0], run_name="__main__")


if __name__ == "__main__":
    main()
