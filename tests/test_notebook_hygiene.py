"""Every committed notebook reads cleanly: what the learner sees is the course, not its plumbing.

Rules, each checked on every notebook in notebooks/ and reported as ``notebook cell N: ...``:
- no output names a folder of the machine that executed it (paths print relative);
- no output shows a library warning;
- nbval markers are cell tags (``nbval-check-output`` ...), never ``# NBVAL_...`` comments;
- no cell is longer than 1,500 characters;
- the first code cell is the short setup cell (it prints ``setup_report()``);
- the numbered sections (``## 1.``, ``## 2.`` ...) count 1, 2, 3 ... in order;
- no function or class is defined in more than one notebook (it belongs in course_lib).
The rules are first checked on a small notebook that breaks each of them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
MAX_CELL = 1500
MAX_SETUP = 600
NBVAL_TAGS = {"nbval-check-output", "nbval-ignore-output", "nbval-skip", "nbval-raises-exception"}
# an absolute path under a folder that holds users' or machines' work (not a URL: no ':' or '/' before)
MACHINE_PATH = re.compile(r"(?<![\w.:/~-])/(?:home|Users|root|tmp|work|mnt|content|private|var|opt|srv)/[^\s'\"]*")
WARNING = re.compile(r"\b\w*Warning: ")
NBVAL_COMMENT = re.compile(r"#\s*NBVAL_\w+")
SECTION = re.compile(r"^##\s+(\d+)\.")
DEFINITION = re.compile(r"^(?:def|class)\s+(\w+)", re.M)


def cells(nb: dict):
    for i, cell in enumerate(nb["cells"]):
        yield i, cell, "".join(cell.get("source", ""))


def output_texts(cell: dict):
    """The text a learner reads in a cell's outputs (streams, text/* data, tracebacks)."""
    for out in cell.get("outputs", []):
        if "text" in out:
            yield "".join(out["text"])
        for mime, data in out.get("data", {}).items():
            if mime.startswith("text/"):
                yield "".join(data) if isinstance(data, list) else str(data)
        if "traceback" in out:
            yield "\n".join(out["traceback"])


def machine_paths(nb: dict, root: Path = ROOT) -> list[str]:
    found = []
    for i, cell, _ in cells(nb):
        for text in output_texts(cell):
            hits = set(MACHINE_PATH.findall(text)) | ({str(root)} if str(root) in text else set())
            found += [f"cell {i}: output shows the machine path {hit!r}" for hit in sorted(hits)]
    return found


def warnings_shown(nb: dict) -> list[str]:
    return [f"cell {i}: output shows a warning: {m.group(0)}{text[m.end():m.end() + 80]!r}"
            for i, cell, _ in cells(nb) for text in output_texts(cell) for m in WARNING.finditer(text)]


def nbval_comments(nb: dict) -> list[str]:
    found = []
    for i, cell, source in cells(nb):
        found += [f"cell {i}: {m!r} comment; use the cell tag instead" for m in NBVAL_COMMENT.findall(source)]
        tags = cell.get("metadata", {}).get("tags", [])
        found += [f"cell {i}: unknown nbval tag {t!r}" for t in tags if t.startswith("nbval") and t not in NBVAL_TAGS]
    return found


def long_cells(nb: dict) -> list[str]:
    return [f"cell {i}: {len(source)} characters (at most {MAX_CELL}); split it or move plumbing into course_lib"
            for i, _, source in cells(nb) if len(source) > MAX_CELL]


def setup_cell(nb: dict) -> list[str]:
    code = [(i, source) for i, cell, source in cells(nb) if cell["cell_type"] == "code"]
    if not code:
        return ["no code cell"]
    i, source = code[0]
    if "setup_report()" not in source:
        return [f"cell {i}: the first code cell does not print setup_report() (copy notebook 01's first cell)"]
    if len(source) > MAX_SETUP:
        return [f"cell {i}: the setup cell has {len(source)} characters (at most {MAX_SETUP})"]
    return []


def section_numbers(nb: dict) -> list[tuple[int, int]]:
    """(cell, number) of each '## N.' heading outside fenced code blocks."""
    found = []
    for i, cell, source in cells(nb):
        if cell["cell_type"] != "markdown":
            continue
        fenced = False
        for line in source.splitlines():
            if line.lstrip().startswith("```"):
                fenced = not fenced
            elif not fenced and (m := SECTION.match(line)):
                found.append((i, int(m.group(1))))
    return found


def section_order(nb: dict) -> list[str]:
    return [f"cell {i}: section {n} where section {k} belongs (numbers run 1, 2, 3 ... once each)"
            for k, (i, n) in enumerate(section_numbers(nb), start=1) if n != k]


def definitions(nb: dict) -> dict[str, int]:
    """Top-level function and class names defined in code cells -> first cell."""
    names: dict[str, int] = {}
    for i, cell, source in cells(nb):
        if cell["cell_type"] == "code":
            for name in DEFINITION.findall(source):
                names.setdefault(name, i)
    return names


RULES = {
    "machine_paths": machine_paths,
    "warnings_shown": warnings_shown,
    "nbval_comments": nbval_comments,
    "long_cells": long_cells,
    "setup_cell": setup_cell,
    "section_order": section_order,
}


def read(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


# ------------------------------------------------------------ the rules catch what they name


def _notebook(*cells_: tuple[str, str, list]) -> dict:
    def cell(kind, source, outputs):
        c = {"cell_type": kind, "metadata": {}, "source": source}
        if kind == "code":
            c["outputs"] = outputs
        return c
    return {"cells": [cell(*c) for c in cells_]}


def test_each_rule_catches_a_notebook_that_breaks_it():
    clean = _notebook(
        ("markdown", "# 99 · A notebook\n\n## 1. First", []),
        ("code", "from course_lib.env import setup_report\n\nprint(setup_report())",
         [{"output_type": "stream", "name": "stdout", "text": "course_lib 0.1.0 from .. (editable install)\n"}]),
        ("markdown", "## 2. Second\n```bash\n## 9. not a section, inside a code block\n```", []),
        ("code", "def helper():\n    return 1\n\nprint('see https://example.org/home/x')",
         [{"output_type": "stream", "name": "stdout", "text": "saved exports/99/a.{png,svg}\n"}]),
    )
    assert {name: rule(clean) for name, rule in RULES.items()} == {name: [] for name in RULES}
    broken = _notebook(
        ("markdown", "# 99\n\n## 1. First\n\n## 3. Third", []),
        ("code", "import torch", []),
        ("markdown", "## 2. Second", []),
        ("code", "# NBVAL_CHECK_OUTPUT\nprint(1)" + "\n#" * 800,
         [{"output_type": "stream", "name": "stderr", "text": "x.py:1: FutureWarning: old\n"},
          {"output_type": "execute_result", "data": {"text/plain": "PosixPath('/home/learner/notebooks/runs')"}}]),
    )
    found = {name: rule(broken) for name, rule in RULES.items()}
    assert found["machine_paths"] == ["cell 3: output shows the machine path '/home/learner/notebooks/runs'"]
    assert found["warnings_shown"][0].startswith("cell 3: output shows a warning: FutureWarning")
    assert found["nbval_comments"] == ["cell 3: '# NBVAL_CHECK_OUTPUT' comment; use the cell tag instead"]
    assert found["long_cells"][0].startswith("cell 3: 1629 characters")
    assert found["setup_cell"][0].startswith("cell 1: the first code cell does not print setup_report()")
    assert found["section_order"] == [
        "cell 0: section 3 where section 2 belongs (numbers run 1, 2, 3 ... once each)",
        "cell 2: section 2 where section 3 belongs (numbers run 1, 2, 3 ... once each)",
    ]
    repo = _notebook(("code", "print(here)", [{"output_type": "stream", "name": "stdout", "text": "at /srv2/course\n"}]))
    assert machine_paths(repo, root=Path("/srv2/course")) == ["cell 0: output shows the machine path '/srv2/course'"]


# ------------------------------------------------------------ every committed notebook


@pytest.mark.parametrize("rule", sorted(RULES))
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_follows_rule(path, rule):
    breaches = RULES[rule](read(path))
    assert not breaches, f"{path.name} breaks {rule}:\n  " + "\n  ".join(breaches)


def test_no_function_is_defined_in_two_notebooks():
    where: dict[str, list[str]] = {}
    for path in NOTEBOOKS:
        for name, i in definitions(read(path)).items():
            where.setdefault(name, []).append(f"{path.stem} cell {i}")
    twice = {name: places for name, places in where.items() if len(places) > 1}
    assert not twice, "defined in more than one notebook (move it into course_lib): " + "; ".join(
        f"{name} in {', '.join(places)}" for name, places in sorted(twice.items()))
