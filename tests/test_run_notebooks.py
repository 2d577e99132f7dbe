"""scripts/run_notebooks.py: notebooks run --jobs at a time, longest first, each kernel with its
share of the cores, no kernel warning; and resources/results/course_times.json, the results file the
README's CPU-time column is read from, names exactly the notebooks in notebooks/."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import run_notebooks  # noqa: E402

# Each notebook marks that it started and waits for the other's mark: both finish only when
# the two run at the same time (one at a time, the first times out and fails).
HANDSHAKE = """import os, time
from pathlib import Path

Path("{me}.started").touch()
deadline = time.monotonic() + 90
while not Path("{other}.started").exists():
    assert time.monotonic() < deadline, "the other notebook never started: they did not run at once"
    time.sleep(0.1)
print("{me}", os.environ["OMP_NUM_THREADS"], os.environ["PYTHONHASHSEED"], Path.cwd().name)"""


def _tiny(folder: Path, me: str, other: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(HANDSHAKE.format(me=me, other=other))]
    path = folder / f"{me}.ipynb"
    nbformat.write(nb, path)
    return path


def test_two_notebooks_run_at_once_with_one_thread_each(tmp_path):
    a, b = _tiny(tmp_path, "aa", "bb"), _tiny(tmp_path, "bb", "aa")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "COURSE_EXPORT_DIR")}
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "run_notebooks.py"), "--jobs", "2",
                           "--out", str(tmp_path / "out"), "--times", str(tmp_path / "times.json"), str(a), str(b)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    threads = str(max(1, run_notebooks.cores() // 2))
    for name in ("aa", "bb"):
        nb = nbformat.read(tmp_path / "out" / "notebooks" / f"{name}.ipynb", as_version=4)
        assert nb.cells[0].outputs[0]["text"] == f"{name} {threads} 0 {tmp_path.name}\n"  # run in its own folder
        assert nb.metadata == {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                               "language_info": {"name": "python"}}
    out = done.stdout
    assert "2 notebook(s), 2 at a time" in out and "start aa" in out and "start bb" in out
    assert "done in" in out and "(2/2)" in out and "executed notebooks in" in out
    # the kernels talk over local sockets: no warning about unencrypted TCP, nor any other
    assert "encryption" not in out + done.stderr and "Warning" not in out + done.stderr
    times = json.loads((tmp_path / "times.json").read_text())["figures"]
    assert set(times["notebooks"]) == {"aa", "bb"} and times["jobs"] == 2
    assert all(0 < s < 300 for s in times["notebooks"].values())
    assert list(times["slowest_cells"]["aa"]) == ["cell 0"]


def test_longest_first_puts_unknown_notebooks_first():
    paths = [Path(f"{n}.ipynb") for n in ("01_a", "02_b", "03_c", "13_new")]
    expected = {"01_a": 20.0, "02_b": 250.0, "03_c": 60.0}
    order = run_notebooks.longest_first(paths, expected)
    assert [p.stem for p in order] == ["13_new", "02_b", "03_c", "01_a"]


def test_bad_jobs_is_an_error_line(capsys):
    assert run_notebooks.main(["--jobs", "-1"]) == 2
    assert capsys.readouterr().out.startswith("error: --jobs -1 is negative")
    assert run_notebooks.main(["no/such.ipynb"]) == 2
    assert "error: no notebook at" in capsys.readouterr().out


def test_times_file_round_trips(tmp_path):
    results = {"02_b": (250.04, None, {"cell 3": 200.0}), "01_a": (19.96, None, {})}
    run_notebooks.write_times(tmp_path / "t.json", results, jobs=2, wall=270.0)
    assert run_notebooks.read_times(tmp_path / "t.json") == {"01_a": 20.0, "02_b": 250.0}
    assert json.loads((tmp_path / "t.json").read_text())["figures"]["slowest_cells"]["02_b"] == {"cell 3": 200.0}
    assert run_notebooks.read_times(tmp_path / "missing.json") == {}


def test_results_file_names_exactly_the_course_notebooks():
    body = json.loads(run_notebooks.TIMES.read_text())
    record = {**body, **body["figures"]}
    notebooks = sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert sorted(record["notebooks"]) == notebooks, (
        f"{run_notebooks.TIMES.relative_to(ROOT)} does not time exactly the notebooks in notebooks/: "
        "run `python benchmarks/course_times.py` to measure them all")
    assert {"device", "cores", "jobs", "torch", "python", "date", "wall_s"} <= set(record)
    assert all(s > 0 for s in record["notebooks"].values())
