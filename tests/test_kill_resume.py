"""A real ``kill -9`` of each training command, in the middle of a checkpoint write and
between two writes; ``--resume`` then ends with the weights and optimizer state of the
uninterrupted run, bit for bit (and its losses), and no temporary file is left behind.

The command runs in a subprocess (tests/kill_runs.py: the command unchanged, except that
it waits at the chosen moment, for the kill). Killed mid-write, the temporary file is
half written and the previous checkpoint is intact; the resumed run's next write
removes the dead process's temporary file.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from course_lib.checkpoint import read_metadata
from course_lib.cli import main

ROOT = Path(__file__).resolve().parent.parent

COMMANDS = {
    "gpt": ["train", "gpt", "--data", "generated", "--max-chars", "4000", "--steps", "6", "--eval-every", "2",
            "--batch-size", "4", "--eval-batches", "1", "--n-layers", "1", "--d-model", "16", "--n-heads", "2",
            "--block-size", "16", "--warmup", "2", "--dropout", "0.1"],
    "translate": ["train", "translate", "--data", "generated", "--n-train", "64", "--n-valid", "4", "--steps", "6",
                  "--eval-every", "2", "--batch-size", "16", "--warmup", "2", "--d-model", "16", "--n-heads", "2",
                  "--n-layers", "1", "--d-ff", "32", "--max-len", "32", "--dropout", "0.1"],
}
COMMON = ["--device", "cpu", "--no-compile", "--precision", "fp32", "--no-progress"]


def losses(run: Path) -> list:
    return read_metadata(run / "checkpoint.safetensors")["train_state"]["train_losses"]


def final_state(run: Path) -> tuple[dict, list]:
    """The run's last checkpoint: its weights and optimizer tensors, and its losses."""
    tensors = load_file(str(run / "checkpoint.safetensors"))
    return {k: v for k, v in tensors.items() if k.startswith(("model.", "optim."))}, losses(run)


def assert_same_run(resumed: tuple[dict, list], whole: tuple[dict, list]) -> None:
    (got, got_losses), (want, want_losses) = resumed, whole
    assert sorted(got) == sorted(want) and any(k.startswith("optim.") for k in want)
    differ = [k for k in want if not torch.equal(got[k], want[k])]
    assert not differ, f"tensors that differ from the uninterrupted run: {differ[:5]}"
    assert got_losses == want_losses


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, one_thread):
    out = {}
    for task, args in COMMANDS.items():
        run = tmp_path_factory.mktemp(f"{task}_whole")
        assert main([*args, *COMMON, "--out", str(run)]) == 0
        out[task] = final_state(run)
    return out


def kill_during(task: str, mode: str, at: int, run: Path) -> None:
    marker = run.parent / f"{run.name}.marker"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1",
           "KILL_MODE": mode, "KILL_AT": str(at), "KILL_MARKER": str(marker)}
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "kill_runs.py"), *COMMANDS[task], *COMMON,
                             "--out", str(run)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while not marker.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the run ended before the kill: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # kill -9: no handler, no cleanup
    assert proc.wait(timeout=30) == -signal.SIGKILL


def temporaries(run: Path) -> list[str]:
    return sorted(p.name for p in run.iterdir() if p.name.endswith(".tmp"))


@pytest.mark.parametrize("task", sorted(COMMANDS))
@pytest.mark.parametrize("mode", ["mid-write", "between-writes"])
def test_kill_9_then_resume_equals_the_uninterrupted_run(task, mode, tmp_path, uninterrupted):
    run = tmp_path / "run"
    kill_during(task, mode, at=2, run=run)  # the 2nd checkpoint: at step 4
    left = temporaries(run)
    step = read_metadata(run / "checkpoint.safetensors")["train_state"]["step"]
    if mode == "mid-write":
        assert len(left) == 1 and left[0].startswith(".checkpoint.safetensors."), left  # the half-written file
        assert step == 2  # the previous checkpoint is intact
    else:
        assert left == [] and step == 4
    assert main([*COMMANDS[task], *COMMON, "--resume", "--out", str(run)]) == 0
    assert_same_run(final_state(run), uninterrupted[task])  # weights and optimizer bit for bit
    assert temporaries(run) == []  # the dead process's temporary file was removed


def test_only_dead_writers_temporaries_are_removed(tmp_path):
    """The next write removes a temporary file of a dead process of this host, and keeps
    those of a live process (another writer) and of other hosts (a shared file system)."""
    import torch

    from course_lib.checkpoint import _host, save_checkpoint

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    names = {f".checkpoint.safetensors.{_host()}.{dead.pid}.abc123.tmp": False,  # removed
             f".checkpoint.safetensors.{_host()}.{os.getppid()}.abc124.tmp": True,  # alive: kept
             f".checkpoint.safetensors.otherhost.{dead.pid}.abc125.tmp": True}  # another host: kept
    for name in names:
        (tmp_path / name).write_bytes(b"half")
    save_checkpoint(tmp_path / "checkpoint.safetensors", torch.nn.Linear(2, 2), {"model_type": "x"})
    assert {name: (tmp_path / name).exists() for name in names} == names
