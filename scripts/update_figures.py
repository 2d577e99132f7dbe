"""Copy the plots the README shows from a run of the notebooks into resources/figures/.

    bash scripts/course.sh && python scripts/update_figures.py            # from exports/plots
    python scripts/update_figures.py --exports EXPORTS   # plots saved elsewhere, e.g. beside the notebooks

The README names each picture as ``resources/figures/<notebook>/<file>``; this copies
``<exports>/<notebook>/<file>``, written by that notebook's ``save_figure``, over it.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIGURE = re.compile(r"\]\((resources/figures/([\w-]+)/([\w.-]+))\)")


def readme_figures(readme: Path = ROOT / "README.md") -> list[tuple[str, str, str]]:
    """(path in the repository, notebook, file name) of every picture the README shows."""
    return FIGURE.findall(readme.read_text(encoding="utf-8"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exports", type=Path, default=ROOT / "exports" / "plots")
    args = parser.parse_args(argv)
    missing = []
    for target, notebook, name in readme_figures():
        source = args.exports / notebook / name
        if not source.is_file():
            missing.append(str(source))
            continue
        (ROOT / target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, ROOT / target)
        print(f"copied {target}")
    if missing:
        print("error: not found (run the notebooks first): " + ", ".join(missing), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
