"""Every script in benchmarks/ starts: ``python benchmarks/<name>.py --help`` prints its usage and
exits 0 (``_peak.py``, which takes positional arguments only, prints its usage line and exits 2
when given none). A script that imports a module the library no longer has fails here.

One interpreter runs them all, each as ``__main__`` (``runpy``) with the arguments it would get
on the command line, so torch is imported once (about 3 s of CPU) instead of once per script.
Before each script, ``sys.path`` is what ``python benchmarks/<name>.py`` gives and every module of
course_lib or benchmarks/ is forgotten, so no script can lean on another's imports."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted(p for p in (ROOT / "benchmarks").glob("*.py"))

_RUN_EACH = """
import contextlib, io, json, runpy, sys, traceback
import torch  # loaded once; course_lib's and the scripts' own modules load afresh for each
base_path, results = list(sys.path[1:]), {}
for path, args in json.loads(sys.argv[1]):
    folder = path.rsplit("/", 1)[0]
    for name in [m for m, mod in sys.modules.items() if m == "course_lib" or m.startswith("course_lib.")
                 or (getattr(mod, "__file__", None) or "").startswith(folder + "/")]:
        del sys.modules[name]
    sys.path[:] = [folder] + base_path
    sys.argv = [path] + args
    out, code = io.StringIO(), 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            runpy.run_path(path, run_name="__main__")
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    except BaseException:
        code, _ = 1, out.write(traceback.format_exc())
    results[path] = [code, out.getvalue()]
print(json.dumps(results))
"""


def run_each(runs: list[tuple[Path, list[str]]]) -> dict[str, tuple[int, str]]:
    """{script: (exit status, what it printed)} of each (script, arguments), run as above."""
    proc = subprocess.run([sys.executable, "-c", _RUN_EACH, json.dumps([[str(p), a] for p, a in runs])],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {k: tuple(v) for k, v in json.loads(proc.stdout.strip().splitlines()[-1]).items()}


def test_every_benchmark_starts_and_a_broken_one_is_caught(tmp_path):
    assert len(SCRIPTS) >= 10 and ROOT / "benchmarks" / "_peak.py" in SCRIPTS
    broken = tmp_path / "broken_bench.py"  # the failure this test exists for: an import of a module now gone
    broken.write_text("import argparse\nfrom course_lib.translation_data import build_tokenizer\n"
                      "argparse.ArgumentParser().parse_args()\n")
    runs = [(p, [] if p.name == "_peak.py" else ["--help"]) for p in SCRIPTS] + [(broken, ["--help"])]
    results = run_each(runs)
    code, text = results.pop(str(broken))
    assert code == 1 and "ModuleNotFoundError: No module named 'course_lib.translation_data'" in text, text
    code, text = results.pop(str(ROOT / "benchmarks" / "_peak.py"))
    assert code == 2 and text.startswith("usage: _peak.py OUT.json"), (code, text)
    failed = {Path(p).name: f"exit {code}\n{text[-1500:]}" for p, (code, text) in results.items()
              if code != 0 or "usage:" not in text}
    assert not failed, "benchmark scripts that do not start with --help:\n" + "\n".join(
        f"--- {name}: {why}" for name, why in failed.items())
