"""Results files: every figure the README and docs quote, as the script that measured it wrote it.

    from course_lib.results import record
    record("bench_bpe", {"incremental_s": 0.41, "naive_s": 25.6}, source="benchmarks/bench_bpe.py")

writes ``resources/results/bench_bpe.json`` (a notebook's ``record`` writes there only under
``COURSE_RECORD=1``, as ``scripts/run_notebooks.py --inplace`` runs them; else beside its exports)::

    {"name": "bench_bpe", "source": "benchmarks/bench_bpe.py", "device": "...", "torch": "2.13.0",
     "python": "3.11.7", "date": "2026-12-07", "figures": {"incremental_s": 0.41, ...}}

A text quotes a figure with a marker right after it, which ``tests/test_docs.py`` checks
against the file: ``**0.41 s**<!-- bench_bpe:incremental_s -->``. The number before the
marker must equal the recorded value at the precision the text shows (``0.41`` matches 0.4123,
not 0.43); thousands separators, ``%`` and ``x`` are allowed.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "resources" / "results"
MARKER = re.compile(r"(?P<number>[-+]?\d[\d,]*(?:\.\d+)?)[^\d<]{0,12}<!--\s*(?P<name>[\w-]+):(?P<key>[\w.-]+)\s*-->")


def describe_machine() -> str:
    """The device a figure was measured on, in words: the GPU's name, or the CPU's threads."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    threads = torch.get_num_threads()
    return f"CPU, {os.cpu_count()} cores, {threads} torch thread{'s' if threads > 1 else ''} ({platform.machine()})"


def _default_folder() -> Path:
    """resources/results/ when ``COURSE_RECORD=1`` in a checkout of the course (as
    ``scripts/run_notebooks.py --inplace`` sets it, which makes the committed notebooks);
    otherwise a results/ folder beside the notebook's exports, so that a learner's run, a
    shortened run or a test never rewrites the figures the docs quote."""
    checkout = (ROOT / "notebooks").is_dir() and (ROOT / "resources").is_dir()
    if checkout and os.environ.get("COURSE_RECORD") == "1":
        return RESULTS
    from course_lib.env import export_dir

    return export_dir("results")


def slug(*parts: str) -> str:
    """A key that a docs marker can name, from any label: ``"gpt2-124m", "T4"`` -> ``"gpt2_124m_t4"``
    (lower case, each run of other characters one ``_``)."""
    return re.sub(r"[^a-z0-9]+", "_", " ".join(parts).lower()).strip("_")


def record(name: str, figures: dict, source: str, device: str | None = None, folder: Path | None = None) -> Path:
    """Write ``figures`` (a flat or nested dict of numbers and strings) to ``<folder>/<name>.json``
    with the device, the versions and today's date; written atomically, keys sorted."""
    import torch

    if not re.fullmatch(r"[\w-]+", name or ""):
        raise ValueError(f"results name {name!r} must be letters, digits, '_' or '-' (it names a file).")
    if not isinstance(figures, dict) or not figures:
        raise ValueError("figures must be a non-empty dict of named values.")
    folder = Path(folder or _default_folder())
    folder.mkdir(parents=True, exist_ok=True)
    body = {"name": name, "source": source, "device": device or describe_machine(),
            "torch": torch.__version__.split("+")[0], "python": platform.python_version(),
            "date": datetime.date.today().isoformat(), "figures": figures}
    path = folder / f"{name}.json"
    tmp = path.with_suffix(f".json.tmp{os.getpid()}")
    tmp.write_text(json.dumps(body, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)
    from course_lib.env import shown_path

    print(f"recorded {path.relative_to(ROOT) if path.is_relative_to(ROOT) else shown_path(path)}")
    return path


def load(name: str, folder: Path | None = None) -> dict:
    """The results file ``name`` as a dict (``figures`` and where they were measured)."""
    path = Path(folder or RESULTS) / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"no results file {path}; run its source script to write it.")
    return json.loads(path.read_text())


def figure(name: str, key: str, folder: Path | None = None):
    """One recorded value; ``key`` may be dotted (``"times.07_encoder_decoder"``)."""
    value = load(name, folder)["figures"]
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(f"results file {name}.json has no figure {key!r}.")
        value = value[part]
    return value


def matches(shown: str, value) -> bool:
    """Whether the number as the text shows it (``"1,234.5"``) is ``value`` rounded to the
    digits shown."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    digits = len(shown.split(".")[1]) if "." in shown else 0
    return round(float(value), digits) == round(float(shown.replace(",", "")), digits)


def check_text(text: str, folder: Path | None = None) -> list[str]:
    """Every marker of ``text`` whose number differs from its results file, as messages."""
    problems = []
    text = re.sub(r"```.*?```|`[^`\n]*`", "", text, flags=re.S)  # examples in code are not quotes
    for m in MARKER.finditer(text):
        try:
            value = figure(m["name"], m["key"], folder)
        except (FileNotFoundError, KeyError) as exc:
            problems.append(f"{m['number']} <!-- {m['name']}:{m['key']} -->: {exc}")
            continue
        if not matches(m["number"], value):
            problems.append(f"{m['number']} <!-- {m['name']}:{m['key']} -->: the file says {value!r}")
    return problems
