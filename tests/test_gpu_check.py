"""The GPU check without a GPU: the priority order, the budget's cut-off, skipping what is
recorded, the records written after each check (device, torch, date), the archive that comes
home and its unpacking, and the figures read out of real output formats (commands and notebooks).
Fake checks are short Python commands; nothing here needs CUDA."""

import datetime
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_check  # noqa: E402

RES = "resources/results/"  # where the records go, in the archive and the checkout
ORDER = ["nb08", "shakespeare", "multi30k", "bench", "profile", "memory", "nb01", "nb02", "nb03", "nb04", "nb05",
         "nb06", "nb07", "nb09", "nb10", "nb11", "nb12", "nb13", "nb14", "train", "fsdp"]


def _run(*args, timeout=120):
    env = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """gpu_check pointed at an empty checkout under tmp_path, on a fake GPU."""
    root = tmp_path / "repo"
    (root / "resources" / "results").mkdir(parents=True)
    paths = {"ROOT": root, "OUT": root / "exports" / "gpu_check", "RESULTS": root / "resources" / "results",
             "RESULTS_MD": root / "resources" / "gpu_results.md", "DATA": root / ".devdata"}
    for name, value in paths.items():
        monkeypatch.setattr(gpu_check, name, value)
    monkeypatch.setattr(gpu_check, "describe_device", lambda: {"device": "Fake GPU 80GB", "torch": "2.11.0+cu130",
                                                               "cuda": "13.0", "python": "3.12.3"})
    return root


def _fake(name, code, **kw):
    return gpu_check.Check(name, f"fake check {name}", [sys.executable, "-c", code], timeout_s=60, **kw)


def _ran(out: str) -> list[str]:
    """The checks a run started, from its log."""
    return [line.split()[1].rstrip(":") for line in out.splitlines()
            if line.startswith("== ") and "not run" not in line]


# ---- the order and the expected times ---------------------------------------------------------------

def test_checks_run_in_the_issues_priority_order():
    """Notebook 08, its command-line stand-in, Multi30k, GPT-2's speed (then its profile), the
    memory estimate, every other notebook, then what the H200 run measured already."""
    assert [c.name for c in gpu_check.checks()] == ORDER
    notebooks = sorted(p.name[:2] for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert [f"nb{n}" for n in notebooks] == sorted(n for n in ORDER if n.startswith("nb"))


@pytest.mark.parametrize("name", ORDER)
def test_every_check_has_an_expected_time_that_says_where_it_comes_from(name):
    c = next(c for c in gpu_check.checks() if c.name == name)
    seconds, source = c.expected
    assert name in gpu_check.EXPECTED and seconds > 0 and len(source) > 15
    assert 0 < c.timeout_s <= 600 and (c.command or c.notebook)
    assert seconds <= c.timeout_s


def test_the_priority_checks_fit_one_lease_and_multi30k_is_measured_as_the_goal_says():
    assert gpu_check.EXPECTED["nb08"][0] <= gpu_check.DEFAULT_BUDGET - 30
    assert gpu_check.EXPECTED["multi30k"][0] <= gpu_check.DEFAULT_BUDGET - 30
    recipe = json.loads(gpu_check.RECIPE.read_text())
    assert recipe["eval_beam"] == 4 and recipe["max_minutes"] <= 6 and recipe["n_valid"] >= 1014
    multi30k = next(c for c in gpu_check.checks() if c.name == "multi30k")
    assert multi30k.command[multi30k.command.index("--minutes") + 1] == "6"


def test_the_commands_flags_are_ones_their_programs_take(capsys):
    """Each command line parses (a misspelt flag would cost a lease): the training commands by
    their own parsers, memory_check as far as its GPU test."""
    from course_lib.training.gpt import build_parser

    parsed = {}
    for name in ("shakespeare", "train", "fsdp"):
        argv = _check(name).command
        parsed[name] = build_parser().parse_args(argv[argv.index("gpt") + 1:])
        assert parsed[name].out.endswith(name)
    assert (parsed["shakespeare"].keep_best, parsed["shakespeare"].patience) == (True, 3)
    import memory_check

    argv = _check("memory").command
    if not torch.cuda.is_available():
        assert memory_check.main(argv[2:]) == 2 and "--cuda asks for a GPU" in capsys.readouterr().err


def test_dry_run_lists_every_check_in_order_and_runs_nothing():
    had_devdata = (ROOT / ".devdata").exists()
    out_dir = ROOT / "exports" / "gpu_check"
    before = set(out_dir.rglob("*")) if out_dir.exists() else set()
    results_before = set((ROOT / "resources" / "results").glob("*"))
    proc = _run("--dry-run", "--expected", "nb08=100")
    assert proc.returncode == 0, proc.stderr
    listed = [line[2:].split(" (expected")[0] for line in proc.stdout.splitlines() if line.startswith("- ")]
    assert listed == ORDER
    assert "- nb08 (expected 100 s" in proc.stdout and "memory_check.py --cuda --no-compile --all-models" in proc.stdout
    assert "bench_multi30k.py --config" in proc.stdout and "multi30k_gpu.json" in proc.stdout
    assert (ROOT / ".devdata").exists() == had_devdata
    assert (set(out_dir.rglob("*")) if out_dir.exists() else set()) == before
    assert set((ROOT / "resources" / "results").glob("*")) == results_before


def test_without_a_gpu_it_says_so_and_exits_2():
    proc = _run("--only", "memory")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: no CUDA GPU")


@pytest.mark.parametrize("args, says", [(["--only", "memory,warp-drive"], "unknown check(s) ['warp-drive']"),
                                        (["--redo", "warp"], "unknown check(s) ['warp']"),
                                        (["--expected", "nb08=soon"], "give NAME=SECONDS"),
                                        (["--budget", "0"], "--budget 0 must be > 0")])
def test_bad_options_are_one_error_line(args, says, capsys):
    assert gpu_check.main(["--dry-run", *args]) == 2
    assert says in capsys.readouterr().err


# ---- the budget ---------------------------------------------------------------------------------------

def _plan(budget, fill=False, lacking=None, **seconds):
    expected = {c.name: 1000.0 for c in gpu_check.checks()} | seconds
    decisions = gpu_check.plan(gpu_check.checks(), budget, set(), fill, lacking or {}, expected)
    return {c.name: what for c, what in decisions}


def test_settings_ids_do_not_depend_on_where_the_checkout_or_python_lies(monkeypatch):
    """The id a lease records on the GPU machine (another folder, another interpreter) must
    match the one computed here, or nothing recorded would ever be skipped."""
    here = {c.name: gpu_check.settings_id(c) for c in gpu_check.checks()}
    monkeypatch.setattr(gpu_check, "PY", "/opt/torch/.venv/bin/python3")
    monkeypatch.setattr(gpu_check, "ROOT", Path("/root/elsewhere"))
    monkeypatch.setattr(gpu_check, "OUT", Path("/root/elsewhere/exports/gpu_check"))
    monkeypatch.setattr(gpu_check, "DATA", Path("/root/elsewhere/.devdata"))
    monkeypatch.setattr(gpu_check, "RECIPE", Path("/root/elsewhere/resources/recipes/multi30k_gpu.json"))
    monkeypatch.setattr(gpu_check, "PEAK", "/root/elsewhere/benchmarks/_peak.py")
    monkeypatch.setattr(gpu_check, "notebook_checks", lambda: {})
    there = {c.name: gpu_check.settings_id(c) for c in gpu_check.checks()}
    assert there == {k: v for k, v in here.items() if not k.startswith("nb")}
    assert len(set(here.values())) == len(here)  # and each check has its own


def test_notebook_settings_ids_need_no_nbformat_and_hash_the_code_cells_as_nbformat_reads_them(monkeypatch):
    """The GPU image lacks nbformat until .whl/ is installed: skipping a recorded notebook must
    not import it. The ids stay those of nbformat's reading, so earlier records stay valid."""
    import nbformat

    nbs = gpu_check.notebook_checks()
    expected = {name: hashlib.sha256(json.dumps([name, [c.source for c in nbformat.read(
        ROOT / "notebooks" / check.notebook, as_version=4).cells if c.cell_type == "code"]]).encode()).hexdigest()[:12]
        for name, check in nbs.items()}
    monkeypatch.setitem(sys.modules, "nbformat", None)  # import nbformat now raises ImportError
    assert {name: gpu_check.settings_id(check) for name, check in nbs.items()} == expected


def test_the_budget_stops_at_the_first_check_that_does_not_fit(sandbox, monkeypatch):
    monkeypatch.setattr(gpu_check, "ROOT", ROOT)  # the real checks, the sandbox's (empty) records
    plan = _plan(480, nb08=200, shakespeare=100, multi30k=250, bench=100, nb01=10)
    assert plan["nb08"] == "run" and plan["multi30k"] == "run"  # 200 + 250 of 480
    assert plan["shakespeare"].startswith("nb08 is recorded ok or runs in this call")
    assert plan["bench"] == "expected 100 s, 30 s left of the budget"
    assert plan["nb01"] == "after the budget ran out"  # it would fit, but the order is the priority
    assert _plan(480, nb08=200, shakespeare=100, multi30k=280)["multi30k"] == "run"  # 480: just fits
    assert _plan(480, nb08=200, shakespeare=100, multi30k=281)["multi30k"].startswith("expected 281 s")
    filled = _plan(480, fill=True, nb08=200, shakespeare=100, multi30k=250, bench=100, nb01=10)
    assert filled["bench"].startswith("expected 100 s") and filled["nb01"] == "run"
    assert filled["profile"] == "bench has no recorded MFU"


def test_a_check_longer_than_the_budget_is_passed_over_and_its_stand_in_runs(sandbox, monkeypatch):
    monkeypatch.setattr(gpu_check, "ROOT", ROOT)
    plan = _plan(480, nb08=900, shakespeare=100, multi30k=250)
    assert "more than the whole budget" in plan["nb08"] and "--only nb08" in plan["nb08"]
    assert plan["shakespeare"] == "run" and plan["multi30k"] == "run"
    no_jupyter = _plan(480, lacking={"nb08": ["nbclient"]}, nb08=200, shakespeare=100)
    assert no_jupyter["nb08"] == "missing ['nbclient']" and no_jupyter["shakespeare"] == "run"


def test_profile_runs_only_when_bench_misses_the_mfu_goal(sandbox, monkeypatch):
    from course_lib.results import record

    monkeypatch.setattr(gpu_check, "ROOT", ROOT)
    for mfu, runs in ((38.1, True), (47.0, False)):
        bench = next(c for c in gpu_check.checks() if c.name == "bench")
        record("gpu_bench", {"ok": True, "settings": gpu_check.settings_id(bench), "course_mfu_percent": mfu},
               source="benchmarks/gpu_check.py", device="Fake GPU", folder=gpu_check.RESULTS)
        plan = _plan(480, profile=100, nb08=100, shakespeare=10, multi30k=100)
        assert plan["bench"].startswith("recorded ok on Fake GPU")
        assert (plan["profile"] == "run") == runs, plan["profile"]
    forced = gpu_check.plan(gpu_check.checks(), 480, {"profile", "shakespeare"}, False, {},
                            {c.name: 10.0 for c in gpu_check.checks()})
    assert {c.name: what for c, what in forced}["profile"] == "run"  # --redo profile: whatever bench says
    assert {c.name: what for c, what in forced}["shakespeare"] == "run"  # --redo shakespeare: though nb08 runs


# ---- a run: records after each check, skipping, the archive ---------------------------------------------

def test_a_run_records_each_check_with_device_torch_and_date_and_stops_at_the_budget(sandbox, monkeypatch,
                                                                                     capsys):
    fake = [_fake("a", "import time; time.sleep(0.3); print('step 600: val loss 1.2345, 123,456 tokens/s, MFU 41.5%')"),
            _fake("b", "print('never')"), _fake("c", "print('never either')")]
    monkeypatch.setattr(gpu_check, "checks", lambda: fake)
    assert gpu_check.main(["--budget", "3", "--expected", "a=1,b=2.9,c=1", "--pack", str(sandbox / "OUT")]) == 0
    out = capsys.readouterr().out
    assert _ran(out) == ["a"]  # b would not fit in what was left; c comes after it
    assert "== b: not run (expected 3 s, 3 s left of the budget)" in out and "== c: not run (after the budget" in out
    rec = json.loads((gpu_check.RESULTS / "gpu_a.json").read_text())
    assert rec["device"] == "Fake GPU 80GB" and rec["torch"] == torch.__version__.split("+")[0]
    assert rec["date"] == datetime.date.today().isoformat() and rec["source"] == "benchmarks/gpu_check.py"
    f = rec["figures"]
    assert f["ok"] and 0 < f["seconds"] < 30 and f["settings"] == gpu_check.settings_id(fake[0])
    assert (f["val_loss"], f["tokens_per_s"], f["mfu_percent"]) == (1.2345, 123456, 41.5)
    assert not (gpu_check.RESULTS / "gpu_b.json").exists()
    assert "123,456" in json.loads((gpu_check.OUT / "a.result.json").read_text())["output_tail"]
    assert "| a | Fake GPU 80GB |" in gpu_check.RESULTS_MD.read_text()
    assert [p.name for p in (sandbox / "OUT").iterdir()] == [gpu_check.PACK_NAME]
    with tarfile.open(sandbox / "OUT" / gpu_check.PACK_NAME) as tar:
        assert {RES + "gpu_a.json", "exports/gpu_check/a.result.json", "resources/gpu_results.md",
                "exports/gpu_check/logs/a.log"} <= set(tar.getnames())
    # the next lease: a is recorded ok with the same settings, so b and c run
    assert gpu_check.main(["--budget", "30", "--expected", "a=1,b=2.9,c=1"]) == 0
    out = capsys.readouterr().out
    assert _ran(out) == ["b", "c"] and "== a: not run (recorded ok on Fake GPU 80GB" in out


def test_only_what_is_recorded_ok_with_the_same_settings_is_skipped(sandbox, monkeypatch, capsys):
    fake = [_fake("a", "print('fine')"), _fake("b", "raise SystemExit(3)")]
    monkeypatch.setattr(gpu_check, "checks", lambda: fake)
    assert gpu_check.main(["--budget", "600"]) == 1  # b failed
    assert _ran(capsys.readouterr().out) == ["a", "b"]
    assert json.loads((gpu_check.RESULTS / "gpu_b.json").read_text())["figures"]["rc"] == 3
    gpu_check.main(["--budget", "600"])
    assert _ran(capsys.readouterr().out) == ["b"]  # a failed check runs again
    gpu_check.main(["--budget", "600", "--redo", "a"])
    assert _ran(capsys.readouterr().out) == ["a", "b"]
    fake[0] = _fake("a", "print('other settings')")
    gpu_check.main(["--budget", "600"])
    assert _ran(capsys.readouterr().out) == ["a", "b"]  # its settings changed: the record is stale


def test_a_check_past_the_budget_is_stopped_and_recorded_as_such(sandbox, monkeypatch, capsys):
    monkeypatch.setattr(gpu_check, "GRACE", 1)
    fake = [_fake("slow", "import time; print('started', flush=True); time.sleep(60)")]
    monkeypatch.setattr(gpu_check, "checks", lambda: fake)
    assert gpu_check.main(["--budget", "1", "--expected", "slow=0.5"]) == 1
    f = json.loads((gpu_check.RESULTS / "gpu_slow.json").read_text())["figures"]
    assert f["rc"] == 124 and not f["ok"] and f["seconds"] < 20


# ---- the archive ------------------------------------------------------------------------------------------

def _write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def test_pack_and_unpack_round_trip_within_the_device_tools_limits(sandbox, tmp_path, monkeypatch):
    from course_lib.results import record

    record("gpu_a", {"ok": True, "bleu": 38.2}, source="benchmarks/gpu_check.py", device="Fake GPU",
           folder=gpu_check.RESULTS)
    kept = [gpu_check.RESULTS / "gpu_a.json",
            _write(gpu_check.RESULTS / "nb08_full.json", '{"figures": {"gpt_val": 1.47}}'),
            _write(gpu_check.RESULTS_MD, "# GPU results\n"),
            _write(gpu_check.OUT / "a.result.json", "{}"),
            _write(gpu_check.OUT / "profile.txt", "profile: ...")]
    log = _write(gpu_check.OUT / "logs" / "a.log", "x" * 300_000)
    notebook = _write(gpu_check.OUT / "notebooks" / "08_gpt_training.ipynb", os.urandom(1_500_000))
    _write(gpu_check.RESULTS / "bench_bpe.json", "{}")  # not the GPU check's: stays home
    _write(gpu_check.OUT / "runs" / "x" / "checkpoint.safetensors", b"\0" * 1000)
    archive = gpu_check.pack(sandbox / "OUT")
    assert archive.stat().st_size <= gpu_check.PACK_LIMIT
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        assert len(tar.extractfile("exports/gpu_check/logs/a.log").read()) == 256_000  # a long log's end
    expected = {p.relative_to(sandbox).as_posix() for p in [*kept, log, notebook]}
    assert set(names) == expected and all(n.count("/") <= 4 for n in names)
    small = gpu_check.pack(sandbox / "small", limit=1_000_000)  # over the limit: the notebooks go first
    with tarfile.open(small) as tar:
        assert set(tar.getnames()) == expected - {notebook.relative_to(sandbox).as_posix()}
    assert small.stat().st_size <= 1_000_000
    home = tmp_path / "home"
    (home / "resources" / "results").mkdir(parents=True)
    for name, value in {"ROOT": home, "OUT": home / "exports" / "gpu_check", "RESULTS": home / "resources" / "results",
                        "RESULTS_MD": home / "resources" / "gpu_results.md"}.items():
        monkeypatch.setattr(gpu_check, name, value)
    assert sorted(gpu_check.unpack(archive)) == sorted(expected)
    for p in [*kept[:2], *kept[3:], notebook]:
        assert (home / p.relative_to(sandbox)).read_bytes() == p.read_bytes()
    assert "| a | Fake GPU |" in (home / "resources" / "gpu_results.md").read_text()  # the table, written again


def test_unpack_writes_only_the_files_pack_writes(sandbox, tmp_path, capsys):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in ("../evil.txt", "/tmp/absolute.txt", "course_lib/__init__.py", RES + "gpu_ok.json"):
            info = tarfile.TarInfo(name)
            info.size = 2
            tar.addfile(info, io.BytesIO(b"{}"))
        link = tarfile.TarInfo(RES + "gpu_link.json")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    archive = _write(tmp_path / "bad.tar.gz", buf.getvalue())
    assert gpu_check.unpack(archive) == [RES + "gpu_ok.json"]
    assert capsys.readouterr().out.count("skipped") == 4
    assert not (sandbox.parent / "evil.txt").exists() and not (sandbox / "course_lib").exists()
    assert not (sandbox / "resources" / "results" / "gpu_link.json").exists()


# ---- figures from real output formats ---------------------------------------------------------------------

# benchmarks/bench_gpt.py's table, in the format its print statements write
BENCH_OUTPUT = """device: NVIDIA H100 80GB HBM3; torch 2.11.0+cu130; model gpt2-124m (124,439,808 params, 12 layers, 12 heads, d_model 768, context 1024, vocabulary 50257), batch 16; median of 3 interleaved rounds of 20 steps, wall clock
| training | tokens/s | vs naive | vs reference | MFU |
| --- | ---: | ---: | ---: | ---: |
| naive: hand-written attention and GELU | 333,292 | 1.00x | 0.75x | 28.6% |
| reference: fused q/k/v, fused attention | 443,249 | 1.33x | 1.00x | 38.1% |
| course_lib.gpt | 440,323 | 1.32x | 0.99x | 37.8% |
course per round: vs naive median 1.31x, middle half 1.30-1.33x; vs reference median 0.99x, middle half 0.98-1.00x

| generation (16-token prompt, 256 new tokens, batch 1) | tokens/s |
| --- | ---: |
| without KV cache | 151 |
| with KV cache | 1,302 |
"""


def test_the_bench_table_format_is_the_one_bench_gpt_prints():
    """If bench_gpt's table changes, the sample above (and the parser) must change with it."""
    source = (ROOT / "benchmarks" / "bench_gpt.py").read_text()
    assert '"| training | tokens/s | vs naive | vs reference | MFU |"' in source
    assert "{tps:,.0f} | {tps / speeds['naive']:.2f}x | {tps / speeds['reference']:.2f}x | {mfu} |" in source
    assert '"course": "course_lib.gpt"' in source and '"naive": "naive: hand-written attention and GELU"' in source
    assert 'f"vs {other} median {m:.2f}x, middle half {q1:.2f}-{q3:.2f}x"' in source
    assert 'f"batch {batch}; median of {rounds}' in source
    assert "print(f\"| {'with' if use_cache else 'without'} KV cache | {gen_speed(" in source


def _check(name):
    return next(c for c in gpu_check.checks() if c.name == name)


def test_figures_from_bench_output(sandbox, monkeypatch):
    monkeypatch.setattr(gpu_check, "ROOT", ROOT)
    _write(gpu_check.OUT / "bench.peak.json", json.dumps({"max_memory_allocated": 3 * 2**30}))
    fig = gpu_check.figures(_check("bench"), {"output": BENCH_OUTPUT})
    assert (fig["course_tokens_per_s"], fig["reference_tokens_per_s"], fig["naive_tokens_per_s"]) == \
        (440323, 443249, 333292)
    assert (fig["course_mfu_percent"], fig["course_vs_reference"], fig["course_vs_reference_paired"]) == \
        (37.8, 0.99, 0.99)
    assert fig["batch"] == 16 and fig["peak_gib"] == 3.0 and fig["goal_met"] is False
    assert (fig["generation_without_cache_tokens_per_s"], fig["generation_with_cache_tokens_per_s"]) == (151, 1302)
    assert "estimate_gib" not in fig  # the peak is the whole process's: three models and their optimizers
    text = gpu_check._summary("bench", {"ok": True, **fig})
    assert "course 440,323 tokens/s, MFU 37.8%" in text and "batch 16" in text
    assert "1,302 tokens/s with the KV cache, 151 without" in text


# benchmarks/bench_multi30k.py's lines, in the format its print statements write
MULTI30K_OUTPUT = """recipe resources/recipes/multi30k_gpu.json (preset base); 44,394,496 parameters, vocabulary 8000, 29,000 training pairs; 6 min on 2 thread(s), load average now 1.0
step 500: validation loss 3.1234
trained 9400 steps (41.49 epochs) in 4.9 min of training (5.3 min with evaluations); 5.2 CPU-minutes; validation loss 1.734; averaged [7500, 8000, 8500, 9000, 9400]
final model, greedy: BLEU 36.91 on 1014 sentences, 180.3 sentences/s
final model, beam 4: BLEU 38.27, 95.1 sentences/s
| minutes | step | epochs | greedy BLEU | beam 4 BLEU |
|---|---|---|---|---|
| 2.0 | 3812 | 16.83 | 31.2 | 32.5 |
| 4.0 | 7650 | 33.77 | 35.0 | 36.4 |
| 4.9 (final) | 9400 | 41.49 | 37.3 | 38.6 |
"""


def test_the_multi30k_lines_are_the_ones_bench_multi30k_prints():
    source = (ROOT / "benchmarks" / "bench_multi30k.py").read_text()
    for fmt in ('f"trained {state[\'step\']} steps ({state[\'step\'] / state[\'steps_per_epoch\']:.2f} epochs) in "',
                'f"{train_secs / 60:.1f} min of training ({wall_all / 60:.1f} min with evaluations); "',
                'f"{cpu_train / 60:.1f} CPU-minutes; validation loss {state[\'evals\'][-1][\'val\']:.3f}; "',
                'f"final model, greedy: BLEU {greedy_bleu:.2f} on {len(valid_pairs)} sentences, {greedy_sps:.1f} sentences/s"',
                'f"final model, beam 4: BLEU {beam_bleu:.2f}, {beam_sps:.1f} sentences/s"',
                'print(f"| {c[\'minutes\']:.1f}{\' (final)\' if c.get(\'final\') else \'\'} | {c[\'step\']} | '
                '{c[\'epoch\']:.2f} | "'):
        assert fmt in source, fmt


def test_figures_from_multi30k_output(sandbox, monkeypatch):
    monkeypatch.setattr(gpu_check, "ROOT", ROOT)
    fig = gpu_check.figures(_check("multi30k"), {"output": MULTI30K_OUTPUT})
    assert (fig["bleu_beam4"], fig["bleu_greedy"], fig["sentences"]) == (38.27, 36.91, 1014)
    assert (fig["steps"], fig["epochs"], fig["train_minutes"], fig["val_loss"]) == (9400, 41.49, 4.9, 1.734)
    assert fig["curve"][-1] == {"minutes": 4.9, "step": 9400, "greedy": 37.3, "beam4": 38.6} and len(fig["curve"]) == 3
    assert fig["goal_met"] is True and "bleu" not in fig
    fig = gpu_check.figures(_check("multi30k"), {"output": MULTI30K_OUTPUT.replace("BLEU 38.27", "BLEU 37.99")})
    assert fig["goal_met"] is False


SHAKESPEARE_OUTPUT = """plan: NVIDIA H100 80GB HBM3 (79.6 GiB, cc 9.0) | bf16 autocast (compute capability 9.0: bf16 tensor cores) | micro-batch 64 x 1 = 64 sequences of 256 tokens | peak ~1.6 GiB of a 67.0 GiB budget | ~3.4 ms/step
step 2250: train 1.0512, val 1.4689, 1,023,456 tokens/s, MFU 9.1%
step 2500: train 1.0203, val 1.4702, 1,101,234 tokens/s, MFU 9.8%
done at step 2500 (steps): val loss 1.4702; run folder runs/shakespeare (sample: python -m course_lib generate runs/shakespeare)
lowest val loss 1.4689 at step 2250; weights in runs/shakespeare/best.safetensors
"""


def test_figures_from_the_training_command(sandbox, monkeypatch):
    """The lines course_lib.training.gpt logs (the f-strings are checked to be the ones it has)."""
    source = (ROOT / "course_lib" / "training" / "gpt.py").read_text()
    assert 'log(f"lowest val loss {state[\'best\'][\'val\']:.4f} at step {state[\'best\'][\'step\']}{kept}")' in source
    assert 'log(f"done at step {state[\'step\']} ({state[\'stopped\']}): val loss {state[\'evals\'][-1][\'val\']:.4f}; "' \
        in source
    monkeypatch.setattr(gpu_check, "ROOT", ROOT)
    _write(gpu_check.OUT / "shakespeare.peak.json", json.dumps({"max_memory_allocated": 2**30}))
    fig = gpu_check.figures(_check("shakespeare"), {"output": SHAKESPEARE_OUTPUT})
    assert (fig["best_val_loss"], fig["best_step"], fig["steps"], fig["stopped"]) == (1.4689, 2250, 2500, "steps")
    assert (fig["val_loss"], fig["tokens_per_s"], fig["mfu_percent"]) == (1.4702, 1101234, 9.8)
    assert (fig["estimate_gib"], fig["peak_gib"]) == (1.6, 1.0) and fig["plan_line"].startswith("plan: NVIDIA H100")


def test_figures_from_memory_rows(sandbox, monkeypatch):
    monkeypatch.setattr(gpu_check, "ROOT", ROOT)
    rows = [{"workload": "gpt2-124m", "compiled": False, "precision": "bf16", "micro_batch": 32,
             "estimate": 33.87 * 2**30, "measured": 33.95 * 2**30},
            {"workload": "Llama smollm2-135m", "compiled": False, "precision": "bf16", "micro_batch": 16,
             "estimate": 28.1 * 2**30, "measured": 20.0 * 2**30},
            {"workload": "Llama qwen3-0.6b", "compiled": False, "precision": "bf16", "micro_batch": 8,
             "estimate": 47.8 * 2**30, "measured": None}]
    _write(gpu_check.OUT / "memory.rows.json", json.dumps(rows))
    fig = gpu_check.figures(_check("memory"), {"output": ""})["rows"]
    assert fig["gpt2_124m_eager"] == {"precision": "bf16", "micro_batch": 32, "estimate_gib": 33.87,
                                      "measured_gib": 33.95, "ratio": 0.998, "within_15pct": True}
    assert fig["llama_smollm2_135m_eager"]["ratio"] == 1.405 and not fig["llama_smollm2_135m_eager"]["within_15pct"]
    assert fig["llama_qwen3_0_6b_eager"]["measured_gib"] is None


def test_memory_check_covers_the_llama_presets():
    import memory_check

    loads = memory_check.all_workloads()
    assert {"gpt2-124m", "Transformer base", "Llama smollm2-135m", "Llama qwen3-0.6b"} == set(loads)
    assert type(loads["Llama smollm2-135m"][0]).__name__ == "LlamaConfig"


@pytest.mark.parametrize("nn, line, key, value", [("07", "beam 4: exact match 91.0%, BLEU 96.3", "bleu", 96.3),
                                                   ("08", "validation loss 1.962 after 600 steps", "val_loss", 1.962)])
def test_figures_from_the_committed_notebooks_outputs(sandbox, monkeypatch, nn, line, key, value):
    """The notebooks' own printed lines (here their CPU outputs) give the figures."""
    import nbformat

    monkeypatch.setattr(gpu_check, "ROOT", ROOT)
    path = next((ROOT / "notebooks").glob(f"{nn}_*.ipynb"))
    nb = nbformat.read(path, as_version=4)
    text = "".join(f"--- cell {i} (1.0 s)\n" + gpu_check.cell_text(c) for i, c in enumerate(nb.cells)
                   if c.cell_type == "code")
    fig = gpu_check.figures(_check(f"nb{nn}"), {"output": text})
    assert line in fig["printed"] and fig[key] == value
    assert fig["cells_run"] == sum(c.cell_type == "code" for c in nb.cells)


def test_a_notebook_runs_in_a_kernel_with_its_figures_timings_and_a_slim_copy(sandbox):
    """--execute-notebook: the cells' printed text in the log as they finish, the CUDA peak cell,
    the executed copy without images; a failing cell fails the check with the cells before it kept."""
    import nbformat

    cells = ["print('validation loss 1.2345 after 600 steps')",
             "from IPython.display import display\ndisplay({'image/png': 'iVBORw0KGgo=', 'text/plain': 'a plot'}, raw=True)",
             "print('greedy: exact match 90.5% (181/200), BLEU 95.9')"]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    _write(sandbox / "notebooks" / "99_probe.ipynb", nbformat.writes(nb))
    _write(gpu_check.RESULTS / "nb99_full.json", json.dumps({"figures": {"bleu": 95.9}}))
    check = gpu_check.Check("nb99", "probe", notebook="99_probe.ipynb")
    result = gpu_check.run_check(check, 120)
    assert result["ok"], result["output"]
    fig = gpu_check.figures(check, result)
    assert (fig["val_loss"], fig["bleu"], fig["cells_run"]) == (1.2345, 95.9, 4) and fig["peak_gib"] is None
    assert fig["notebook_record"] == {"bleu": 95.9} and len(fig["slowest_cells"]) == 4
    copy = nbformat.read(gpu_check.OUT / "notebooks" / "99_probe.ipynb", as_version=4)
    assert len(copy.cells) == 3 and copy.cells[1].outputs[0]["data"] == {"text/plain": "a plot"}
    nb.cells[2].source = "raise RuntimeError('boom')"
    _write(sandbox / "notebooks" / "99_probe.ipynb", nbformat.writes(nb))
    failed = gpu_check.run_check(check, 120)
    assert not failed["ok"] and "boom" in failed["output"] and "validation loss 1.2345" in failed["output"]


def test_peak_wrapper_passes_the_exit_code_and_writes_json(tmp_path):
    out = tmp_path / "peak.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "_peak.py"), str(out), "-m", "course_lib", "train"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "error: name what to train first" in proc.stderr
    assert json.loads(out.read_text()) == {"max_memory_allocated": None, "max_memory_reserved": None}


def test_the_profile_summarises_where_the_time_goes(tmp_path, capsys):
    import profile_gpt

    out = tmp_path / "profile.txt"
    assert profile_gpt.main(["--preset", "tiny", "--batch-size", "2", "--steps", "2", "--warmup", "1",
                             "--device", "cpu", "--out", str(out)]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("profile")]
    assert lines[1].startswith("profile: 2 steps,") and any(line.startswith("profile kind: matrix products") for line in lines)
    shares = [float(line.split(": ")[2].split("%")[0]) for line in lines if line.startswith("profile kind:")]
    assert sum(shares) == pytest.approx(100, abs=0.5)  # every kernel counted once
    assert "Self CPU" in out.read_text()
    assert profile_gpt.kind_of("sm90_xmma_gemm_bf16bf16_bf16f32") == "matrix products"
    assert profile_gpt.kind_of("triton_poi_fused_add_gelu_0") == "elementwise and fused (Triton)"
    assert profile_gpt.kind_of("flash_fwd_kernel") == "attention"
