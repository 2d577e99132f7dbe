"""The course's training commands under torchrun: 2 CPU processes (gloo), the commands
as a user types them (Adam, float32).

What this file shows: ``torchrun --nproc-per-node 2 -m course_lib train gpt|translate``
runs, a run saved by 2 FSDP ranks resumes on 2 DDP ranks and on one process, and all of
them follow the one-process run to float32 rounding (losses to 1e-4 relative). What it
does not show, because Adam hides it (a gradient twice too large moves Adam's parameters
almost as the right one does): that the gradients are exactly right. That proof is
tests/test_training_exact.py: the same loops under plain SGD in float64, 2 ranks = 1
process to 1e-10, with a wrong gradient scale and a dropped micro-batch shown to fail.

(Parameters are compared for GPT only: with Adam, a parameter whose true gradient is
zero, such as an attention key bias, moves by a full step in the direction of the
rounding noise, so parameters agree only loosely; the losses carry the check.)
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from course_lib.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parent.parent


def torchrun(task: str, args: list[str], nproc: int = 2) -> None:
    """Run ``python -m course_lib train TASK ARGS`` on ``nproc`` CPU processes via torchrun."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += ["--nproc-per-node", str(nproc), "-m", "course_lib", "train", task, *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COURSE_DEVICE": "cpu", "OMP_NUM_THREADS": "1",
           "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1", "COURSE_DIST_TIMEOUT": "60"}  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]


def one_process(task: str, args: list[str]) -> None:
    from course_lib.cli import main

    assert main(["train", task, *args]) == 0


def fork_checkpoint(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# ---------------------------------------------------------------------------- GPT
GPT_ARGS = ["--preset", "tiny", "--data", "stdlib", "--max-chars", "20000", "--steps", "4",
       "--batch-size", "4", "--grad-accum", "2", "--eval-every", "2", "--eval-batches", "1",
       "--warmup", "1", "--lr", "3e-3", "--device", "cpu", "--no-compile", "--precision", "fp32",
       "--no-progress"]  # fmt: skip


def gpt_state(folder: Path) -> dict:
    return load_checkpoint(folder / "checkpoint.safetensors")


def test_gpt_on_two_ranks_follows_one_process(tmp_path):
    config = tmp_path / "small.json"  # a smaller model than the tiny preset: faster
    config.write_text('{"n_layers": 2, "d_model": 32, "n_heads": 2, "block_size": 32}')
    GPT = [*GPT_ARGS, "--config", str(config)]
    one_process("gpt", [*GPT, "--out", str(tmp_path / "one")])
    torchrun("gpt", [*GPT, "--fsdp", "--until-step", "2", "--out", str(tmp_path / "two")])
    fork_checkpoint(tmp_path / "two", tmp_path / "resumed_alone")
    torchrun("gpt", [*GPT, "--resume", "--out", str(tmp_path / "two")])  # now DDP
    one_process("gpt", [*GPT, "--resume", "--out", str(tmp_path / "resumed_alone")])

    ref = gpt_state(tmp_path / "one")
    for name in ("two", "resumed_alone"):
        got = gpt_state(tmp_path / name)
        assert got["train_state"]["step"] == 4
        torch.testing.assert_close(
            torch.tensor(got["train_state"]["train_losses"]),
            torch.tensor(ref["train_state"]["train_losses"]),
            rtol=1e-4,
            atol=0,
        )
        for mine, theirs in zip(got["train_state"]["evals"], ref["train_state"]["evals"], strict=True):
            assert mine["step"] == theirs["step"]
            assert mine["val"] == pytest.approx(theirs["val"], rel=1e-4)
        assert got["model"].keys() == ref["model"].keys()
        for key, value in ref["model"].items():
            torch.testing.assert_close(got["model"][key], value, rtol=0, atol=2e-4)


def test_gpt_refuses_a_batch_the_ranks_cannot_split(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd += ["-m", "course_lib", "train", "gpt", *GPT_ARGS, "--batch-size", "3", "--grad-accum", "1"]
    cmd += ["--out", str(tmp_path / "x")]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode != 0
    assert "global batch of 3 rows cannot be split evenly over 2 rank(s)" in done.stderr


# ---------------------------------------------------------------------------- translation
TRANSLATE = ["--data", "generated", "--n-train", "200", "--n-valid", "4", "--batch-size", "16",
             "--warmup", "4", "--device", "cpu", "--d-model", "32",
             "--n-heads", "2", "--n-layers", "1", "--d-ff", "64", "--max-len", "32"]  # fmt: skip


def translate_state(folder: Path) -> dict:
    return load_checkpoint(folder / "checkpoint.safetensors")["train_state"]


def test_translate_on_two_ranks_follows_one_process(tmp_path):
    one_process("translate", [*TRANSLATE, "--steps", "4", "--out", str(tmp_path / "one")])
    torchrun(
        "translate", [*TRANSLATE, "--fsdp", "--steps", "2", "--out", str(tmp_path / "two")]
    )
    fork_checkpoint(tmp_path / "two", tmp_path / "resumed_alone")
    torchrun(
        "translate", [*TRANSLATE, "--resume", "--steps", "4", "--out", str(tmp_path / "two")]
    )
    one_process(
        "translate",
        [*TRANSLATE, "--resume", "--steps", "4", "--out", str(tmp_path / "resumed_alone")],
    )

    ref = translate_state(tmp_path / "one")
    for name in ("two", "resumed_alone"):
        got = translate_state(tmp_path / name)
        assert got["step"] == 4
        for (s1, l1), (s2, l2) in zip(got["train_losses"], ref["train_losses"], strict=True):
            assert s1 == s2 and l1 == pytest.approx(l2, abs=2e-5)
        e1, e2 = got["evals"][-1], ref["evals"][-1]
        assert e1["step"] == e2["step"] and e1["val"] == pytest.approx(e2["val"], abs=2e-5)
