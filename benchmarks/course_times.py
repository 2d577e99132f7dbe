"""Time every notebook of the course as `bash scripts/course.sh` runs them, and write the
seconds per notebook to resources/results/course_times.json (with the device, cores, torch version
and date), the file the README's CPU-time column and run_notebooks' estimates are read from.

    python benchmarks/course_times.py            # every notebook, --jobs as run_notebooks picks
    python benchmarks/course_times.py --jobs 2   # any run_notebooks option passes through

The executed copies and plots go to a temporary folder; nothing in notebooks/ changes.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import run_notebooks  # noqa: E402


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    with tempfile.TemporaryDirectory(prefix="course-times-") as out:
        return run_notebooks.main(["--out", out, "--times", str(run_notebooks.TIMES), *argv])


if __name__ == "__main__":
    sys.exit(main())
