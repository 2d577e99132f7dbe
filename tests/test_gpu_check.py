"""The GPU check without a GPU: --dry-run lists every check and runs nothing, a machine without
CUDA is told so in one line, and the figures are read correctly out of real output formats."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_check  # noqa: E402

NAMES = ["memory", "bench", "train", "fsdp", "shakespeare", "multi30k", "nb07", "nb08"]


def _run(*args, timeout=120):
    env = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_dry_run_lists_every_check_and_runs_nothing():
    had_devdata = (ROOT / ".devdata").exists()
    before = set((ROOT / "exports" / "gpu_check").glob("*")) if (ROOT / "exports" / "gpu_check").exists() else set()
    proc = _run("--dry-run")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "dry run: nothing is executed" in out
    for name in NAMES:
        assert f"- {name} (limit " in out
    assert "memory_check.py --cuda" in out and "bench_gpt.py --preset gpt2-124m" in out
    assert "torch.distributed.run --standalone --nproc-per-node 1" in out and "--fsdp" in out
    assert "07_encoder_decoder.ipynb" in out and "08_gpt_training.ipynb" in out
    assert "resources/gpu_results.md" in out
    # nothing written: no data copied, no results
    assert (ROOT / ".devdata").exists() == had_devdata
    after = set((ROOT / "exports" / "gpu_check").glob("*")) if (ROOT / "exports" / "gpu_check").exists() else set()
    assert after == before


def test_without_a_gpu_it_says_so_and_exits_2():
    proc = _run("--only", "memory")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: no CUDA GPU")


def test_unknown_check_is_an_error():
    proc = _run("--only", "memory,warp-drive", "--dry-run")
    assert proc.returncode == 2 and "error: unknown check(s) ['warp-drive']" in proc.stderr


def test_peak_wrapper_passes_the_exit_code_and_writes_json(tmp_path):
    out = tmp_path / "peak.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "_peak.py"), str(out), "-m", "course_lib", "train"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "error: name what to train first" in proc.stderr
    assert json.loads(out.read_text()) == {"max_memory_allocated": None, "max_memory_reserved": None}


# benchmarks/bench_gpt.py's table, in the format its print statements write
BENCH_OUTPUT = """device: cpu (1 threads); torch 2.13.0+cpu; model small-cpu (809,984 params, ...), batch 12; ...
| training | tokens/s | vs naive | vs reference | MFU |
| --- | ---: | ---: | ---: | ---: |
| naive: hand-written attention and GELU | 970 | 1.00x | 0.80x | n/a (CPU) |
| reference: fused q/k/v, fused attention | 1,210 | 1.25x | 1.00x | n/a (CPU) |
| course_lib.gpt | 1,102 | 1.14x | 0.91x | n/a (CPU) |
| the same with GPT-2's tanh GELU | 1,010 | 1.04x | 0.83x | n/a (CPU) |
"""


def test_the_bench_table_format_is_the_one_bench_gpt_prints():
    """If bench_gpt's table changes, the sample above (and the parser) must change with it."""
    source = (ROOT / "benchmarks" / "bench_gpt.py").read_text()
    assert '"| training | tokens/s | vs naive | vs reference | MFU |"' in source
    assert "{tps:,.0f} | {tps / speeds['naive']:.2f}x | {tps / speeds['reference']:.2f}x | {mfu} |" in source
    assert '"course": "course_lib.gpt"' in source and '"naive": "naive: hand-written attention and GELU"' in source
    assert '"course_tanh": "the same with GPT-2\'s tanh GELU"' in source


def test_paired_ratios_compare_models_within_each_round():
    """A machine that slows down during the run (every round slower than the last) leaves the
    per-round ratio alone: the course at 1.1x the reference's speed reads 1.1x in every quartile."""
    import bench_gpt

    drift = [1.0, 1.3, 2.0, 2.5, 4.0]
    times = {"course": [d * 1.0 for d in drift], "reference": [d * 1.1 for d in drift]}
    assert bench_gpt.paired_ratios(times, "course", "reference") == pytest.approx((1.1, 1.1, 1.1))
    assert bench_gpt.paired_ratios(times, "reference", "course") == pytest.approx((1 / 1.1,) * 3)
    times["course"][0] = 2.2  # one slow round moves the lower quartile, not the median
    q1, median, q3 = bench_gpt.paired_ratios(times, "course", "reference")
    assert q1 < 1.0 and median == pytest.approx(1.1) and q3 == pytest.approx(1.1)


def test_repeat_times_in_fresh_processes_and_summarises_each_run(capsys):
    """--repeat N: N runs, each a fresh process that times once (the last --repeat on its command
    line wins), and a table whose lowest, median and highest are those runs' own ratios."""
    import bench_gpt

    assert bench_gpt.main(["--preset", "tiny", "--rounds", "1", "--steps", "1", "--threads", "1", "--repeat", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    per_run = [line for line in lines if line.startswith("run ")]
    assert [line.split(":")[0] for line in per_run] == ["run 1 of 2", "run 2 of 2"]
    assert any("2 runs, each in a fresh process" in line for line in lines)
    assert not any(line.startswith("| training |") for line in lines)  # the runs' own tables stay in them
    rows = [line for line in lines if line.startswith("| naive (") or line.startswith("| reference (")]
    assert len(rows) == 4
    for row in rows:
        label, low, median, high, each = (cell.strip() for cell in row.strip("|").split("|"))
        values = [float(v) for v in each.split(", ")]
        assert all(f"vs {label} {v:.2f}x" in run for v, run in zip(values, per_run, strict=True))
        assert (float(low[:-1]), float(high[:-1])) == (min(values), max(values))
        assert float(median[:-1]) == pytest.approx(sum(values) / 2, abs=0.006)
    for bad, says in ((["--repeat", "0"], "give at least 1"), (["--repeat", "2", "--shakespeare-cpu"], "runs once")):
        with pytest.raises(SystemExit) as exit_:
            bench_gpt.main(bad)
        assert exit_.value.code == 2 and says in capsys.readouterr().err


def _check(name):
    return next(c for c in gpu_check.checks() if c.name == name)


def test_figures_from_bench_output(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "OUT", tmp_path)
    (tmp_path / "bench.peak.json").write_text(json.dumps({"max_memory_allocated": 3 * 2**30}))
    fig = gpu_check.figures(_check("bench"), {"output": BENCH_OUTPUT})
    assert fig["naive_tokens_per_s"] == 970 and fig["course_tokens_per_s"] == 1102  # not the tanh row's
    assert fig["reference_tokens_per_s"] == 1210
    assert fig["course_speedup"] == 1.14 and fig["peak"] == 3 * 2**30
    assert "estimate" not in fig  # the peak is the whole process's: three models and their optimizers
    assert "course 1,102 tokens/s" in gpu_check._result_text("bench", fig, True, 0)


def test_figures_from_a_notebook_and_the_table(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "OUT", tmp_path)
    text = ("plan: NVIDIA H100 80GB HBM3 (79.6 GiB, cc 9.0) | bf16 autocast (x) | micro-batch 32 x 1 = 32 "
            "sequences of 1024 tokens | peak ~35.0 GiB of a 67.0 GiB budget | ~0.08 s/step\n"
            "step 600: train 1.2, val 1.4700, lr 6.00e-05, 512,345 tokens/s, MFU 41.2%\n"
            "greedy on 200 validation pairs: BLEU 36.40, exact match 20/200\n"
            'GPU_CHECK_PEAK {"max_memory_allocated": 32212254720}\n')
    fig = gpu_check.figures(_check("nb08"), {"output": text})
    assert fig["estimate"] == 35.0 * 2**30 and fig["peak"] == 32212254720
    assert (fig["tokens_per_s"], fig["mfu_percent"], fig["bleu"]) == (512345, 41.2, 36.4)
    assert fig["plan_line"].startswith("plan: NVIDIA H100")
    env = {"device": "NVIDIA H100 80GB HBM3", "memory_gib": 79.6, "capability": "9.0", "torch": "2.13.0",
           "cuda": "12.8", "python": "3.11"}
    md = gpu_check.render([{"name": "nb08", "what": "notebook 08", "ok": True, "rc": 0, "seconds": 312.0,
                            "figures": fig, "environment": env},
                           {"name": "fsdp", "what": "fsdp smoke", "ok": False, "rc": 1, "seconds": 9.0,
                            "figures": {}, "environment": env}])
    assert "device: **NVIDIA H100 80GB HBM3** (79.6 GiB, compute capability 9.0)" in md
    row = next(line for line in md.splitlines() if line.startswith("| nb08 "))
    assert "BLEU 36.4" in row and "512,345 tokens/s" in row and "| 312 s | 30.00 | 35.00 | 1.17 |" in row
    assert "| fsdp | fsdp smoke | **failed** (exit 1) |" in md


@pytest.mark.parametrize("name", NAMES)
def test_every_check_has_a_time_limit_within_the_budget(name):
    c = _check(name)
    assert 0 < c.timeout_s <= 900 and (c.command or c.notebook)
