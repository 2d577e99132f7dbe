"""The two shipped training loops, exactly, under plain SGD in float64:

- ``grad_accum=k`` micro-batches give the parameters of one batch of the same size
  (``batch_size`` is the global batch; k = 2 and 4 against k = 1) to 1e-10;
- 2 gloo processes (DDP and FSDP, with accumulation) give the parameters of one process
  to 1e-10.

SGD, not Adam: Adam divides each gradient by its own running scale, so a gradient that
is twice too large moves the parameters almost as a right one would; SGD moves them by
lr x gradient, so a wrong scale shows. Each comparison is shown able to fail: a loop
broken on purpose (a wrong gradient scale, a dropped micro-batch) misses by far more
than the tolerance.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from exact_runs import LOOPS, broken, params
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent
TOL = 1e-10
BROKEN = 1e-6  # a broken variant misses by more than this (in practice 1e-3 and more)


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


@pytest.fixture(scope="module")
def references(one_thread):
    return {loop: params(run(grad_accum=1)) for loop, run in LOOPS.items()}


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_accumulation_equals_one_batch(loop, references):
    for k in (2, 4):
        assert max_diff(params(LOOPS[loop](grad_accum=k)), references[loop]) < TOL, k
    moved = max_diff(params(LOOPS[loop](grad_accum=1, batch_size=4)), references[loop])
    assert moved > BROKEN  # the runs do learn: another batch gives other parameters


@pytest.mark.parametrize("loop", sorted(LOOPS))
@pytest.mark.parametrize("variant", ["scale", "drop"])
def test_a_broken_accumulation_fails_the_comparison(loop, variant, references):
    with broken(variant, factor=2.0):
        got = params(LOOPS[loop](grad_accum=2))
    assert max_diff(got, references[loop]) > BROKEN


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """One torchrun of 2 CPU processes trains every (loop, strategy, variant)."""
    out = tmp_path_factory.mktemp("ranks")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(ROOT / "tests" / "exact_runs.py"), str(out)]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}", "OMP_NUM_THREADS": "1",
           "TQDM_DISABLE": "1", "COURSE_DEVICE": "cpu", "COURSE_DIST_TIMEOUT": "120"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return out


@pytest.mark.parametrize("loop", sorted(LOOPS))
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_equal_one(loop, strategy, two_ranks, references):
    got = load_file(str(two_ranks / f"{loop}-{strategy}-ok.safetensors"))
    assert max_diff(got, references[loop]) < TOL
    for variant in ("scale", "drop"):  # the same comparison catches a broken loop
        wrong = load_file(str(two_ranks / f"{loop}-{strategy}-{variant}.safetensors"))
        assert max_diff(wrong, references[loop]) > BROKEN, variant
