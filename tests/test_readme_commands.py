"""Every command line of the README and docs/, run at tiny settings (a few steps of a tiny model;
the README's own flags first, the tiny ones appended, so they win):

- ``test_readme_commands``: the lines of the README's ```bash blocks that start with
  ``python -m course_lib``, ``torchrun`` or ``accelerate launch`` (continuation lines
  joined), in the README's order, in one folder (a ``--resume`` line continues the run
  its training line wrote). ``python -m course_lib`` lines run in-process (the same
  ``main``); ``torchrun`` and ``accelerate launch`` lines run as written, on 2 CPU
  processes (gloo). A two-machine line (``--nnodes 2``) is parsed, not run.
- ``test_documented_commands``: the same for ``DOCUMENTED`` below, the lines the README
  is to show, so that they stay runnable whatever the README holds.

Needs ../shared/data (tiny Shakespeare, Multi30k). In CI (the environment variable CI set)
a missing folder fails the tests; elsewhere they skip without it. A command that breaks
fails them.
"""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from course_lib.cli import main

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

DOCUMENTED = """
python -m course_lib train translate --steps 3000 --warmup 400 --out runs/translate
python -m course_lib train translate --data ../shared/data/multi30k/train --tokenizer bpe --preset base --max-len 128 --batch-size 128 --epochs 20 --out runs/multi30k
python -m course_lib train translate --data ../shared/data/multi30k/train --tokenizer bpe --preset base --max-len 128 --batch-size 128 --epochs 20 --out runs/multi30k --resume
python -m course_lib translate runs/translate "today the man calls the young woman ." --beam 4
python -m course_lib train gpt --preset small-cpu --data ../shared/data/tinyshakespeare --steps 2000 --out runs/gpt
python -m course_lib train gpt --preset small-cpu --data ../shared/data/tinyshakespeare --steps 4000 --out runs/gpt --resume
python -m course_lib generate runs/gpt "ROMEO:" --top-p 0.9
python -m course_lib export-attention runs/translate "the man sees the dog ." --target "der Mann sieht den Hund ." --out exports/attention
python -m course_lib train translate --config config.json --out runs/course-config
torchrun --nproc-per-node 8 -m course_lib train gpt --preset gpt2-124m --data ../shared/data/tinyshakespeare
torchrun --nproc-per-node 8 -m course_lib train gpt --preset gpt2-124m --data ../shared/data/tinyshakespeare --fsdp
torchrun --nproc-per-node 8 -m course_lib train translate --data ../shared/data/multi30k/train --tokenizer bpe
torchrun --nnodes 2 --nproc-per-node 8 --node-rank 0 --rdzv-backend c10d --rdzv-endpoint host0:29500 -m course_lib train gpt --preset gpt2-124m --data ../shared/data/tinyshakespeare --out /shared/runs/gpt
accelerate launch --multi_gpu --num_processes 8 -m course_lib train translate --config config.json --out runs/accelerate
"""

# The original seq2seq course's config file (its names), for the --config lines.
COURSE_CONFIG = {"train_data": "generated", "epochs": 1, "batch_size": 16, "learning_rate": 0.001, "model_dim": 16,
                 "hidden_dims": 32, "num_heads": 2, "num_layers": 1, "dropout": 0.1, "max_seq_length": 64}

COMMON = ["--device", "cpu", "--precision", "fp32", "--no-compile", "--no-progress"]
GPT_TINY = ["--eval-every", "2", "--eval-batches", "1", "--max-chars", "20000", "--batch-size", "4", "--warmup", "1",
            "--n-layers", "1", "--d-model", "16", "--n-heads", "2", "--block-size", "16", "--tokenizer", "char"]
TRANSLATE_TINY = ["--eval-every", "2", "--n-train", "128", "--n-valid", "8", "--batch-size", "16", "--warmup", "2",
                  "--bpe-vocab-size", "300", "--d-model", "16", "--n-heads", "2", "--n-layers", "1", "--d-ff", "32",
                  "--max-len", "64"]


def command_lines(text: str) -> list[str]:
    """Command lines of the ```bash blocks (or of plain text): continuations joined, comments dropped."""
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S) or [text]
    lines = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip() if not line.strip().startswith("#") else ""
            if re.match(r"(python -m course_lib\b|torchrun |accelerate launch )", line):
                lines.append(" ".join(line.split()))
    return lines


def tiny(line: str, shared: Path) -> tuple[list[str], bool] | None:
    """argv at tiny settings, and whether it runs in another process (None: not run here)."""
    argv = shlex.split(line.replace("../shared/data", str(shared)))
    if argv[0] == "torchrun":
        if "--nnodes" in argv and argv[argv.index("--nnodes") + 1] != "1":
            return None  # two machines: not run here
        argv[argv.index("--nproc-per-node") + 1] = "2"
        argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", *argv[1:]]
    elif argv[:2] == ["accelerate", "launch"]:
        argv[argv.index("--num_processes") + 1] = "2"
        argv = [str(BIN / "accelerate"), "launch", "--num_machines", "1", "--mixed_precision", "no",
                "--dynamo_backend", "no", *argv[2:]]
    elif argv[:3] == ["python", "-m", "course_lib"]:
        argv = argv[3:]
    else:
        raise AssertionError(f"not a course command: {line}")
    words = argv[argv.index("course_lib") + 1:] if "course_lib" in argv else argv
    steps = ["--steps", "4" if "--resume" in words else "2"]
    if words[:2] == ["train", "gpt"]:
        argv += [*GPT_TINY, *steps, *COMMON]
    elif words[:2] == ["train", "translate"]:
        argv += [*TRANSLATE_TINY, *steps, *COMMON]
    elif words[:2] == ["train", "chat"]:
        argv += ["--scale", "small", "--base-steps", "2", "--sft-steps", "2", "--dpo-steps", "2", "--device", "cpu"]
    elif words[:1] in (["generate"], ["translate"], ["chat"]):
        argv += ["--max-new-tokens", "8", "--device", "cpu"]
    return argv, argv[0] != words[0]


def run_lines(lines: list[str], shared: Path, folder: Path, capsys, known: frozenset = frozenset()) -> list[str]:
    """Run ``lines`` in ``folder``; multi-process lines in ``known`` (run by another test
    already, seconds each) are not run again. Returns the lines not run."""
    (folder / "config.json").write_text(json.dumps(COURSE_CONFIG))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1",
           "COURSE_DEVICE": "cpu", "COURSE_DIST_TIMEOUT": "120"}
    skipped = []
    for line in lines:
        plan = tiny(line, shared)
        if plan is None:
            skipped.append(line)
            continue
        argv, separate = plan
        if separate and line in known:
            skipped.append(line)
            continue
        if separate:
            done = subprocess.run(argv, cwd=folder, env=env, capture_output=True, text=True, timeout=300)
            errors = [x for x in done.stderr.splitlines() if "Error" in x or x.startswith("error:")][-12:]
            assert done.returncode == 0, f"{line}\n{done.stdout[-1500:]}\n" + "\n".join(errors)
        else:
            code = main(argv)
            assert code == 0, f"{line}\n{capsys.readouterr().err[-3000:]}"
    return skipped


@pytest.fixture
def shared_data() -> Path:
    """../shared/data; missing, the tests fail in CI and skip elsewhere (a learner's checkout)."""
    return required_data(ROOT.parent / "shared" / "data", os.environ)


def required_data(folder: Path, env) -> Path:
    if not folder.is_dir():
        if env.get("CI"):
            pytest.fail(f"{folder.name} is missing at ../shared/data, and CI must run the README's commands")
        pytest.skip("../shared/data is not present (real-data test)")
    return folder


def test_missing_data_fails_in_ci_and_skips_elsewhere(tmp_path):
    with pytest.raises(pytest.fail.Exception, match="CI must run"):
        required_data(tmp_path / "absent", {"CI": "true"})
    with pytest.raises(pytest.skip.Exception):
        required_data(tmp_path / "absent", {})
    assert required_data(tmp_path, {"CI": "true"}) == tmp_path


@pytest.fixture
def in_tmp(tmp_path, monkeypatch, shared_data, one_thread):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_documented_commands(in_tmp, shared_data, capsys):
    lines = command_lines(DOCUMENTED)
    assert len(lines) == 14
    skipped = run_lines(lines, shared_data, in_tmp, capsys)
    assert skipped == [lines[12]]  # the two-machine line
    for run in ("translate", "multi30k", "course-config", "gpt", "accelerate"):
        assert (in_tmp / "runs" / run / "checkpoint.safetensors").is_file(), run
    assert any((in_tmp / "exports" / "attention").iterdir())


def test_readme_commands(in_tmp, shared_data, capsys, monkeypatch):
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    lines = [line for page in pages for line in command_lines(page.read_text(encoding="utf-8"))]
    assert lines, "no command lines found in the bash blocks of the README and docs/"
    monkeypatch.setattr("sys.stdin", io.StringIO("count: cat dog\n\n"))  # the chat command reads its messages
    stale = [line for line in lines if re.search(r"course_lib\.(train|generate|translate|export_attention)\b", line)]
    assert not stale, f"README lines use entry points that no longer exist: {stale}"
    run_lines(lines, shared_data, in_tmp, capsys, known=frozenset(command_lines(DOCUMENTED)))


def test_command_lines_parsing():
    text = "x\n```bash\npython -m course_lib train gpt \\\n    --steps 3   # a comment\n# only a comment\n" \
           "bash scripts/test.sh\n```\n"
    assert command_lines(text) == ["python -m course_lib train gpt --steps 3"]
