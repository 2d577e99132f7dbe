"""A training command that can be killed at a chosen moment, for tests/test_kill_resume.py:

    KILL_MODE=mid-write|between-writes KILL_AT=N KILL_MARKER=FILE python tests/kill_runs.py train gpt ...

runs ``python -m course_lib ARGS`` unchanged, except that at the N-th checkpoint write
it stops and waits (for the test's ``kill -9``), after writing FILE:

- ``mid-write``: inside the write, after half of the temporary file's bytes are on disk
  and before the rename;
- ``between-writes``: after the N-th checkpoint is complete, before the next step.
"""

import os
import sys
import time
from pathlib import Path

import course_lib.checkpoint as checkpoint
from course_lib.cli import main
from course_lib.training import core

MODE, AT, MARKER = os.environ["KILL_MODE"], int(os.environ["KILL_AT"]), Path(os.environ["KILL_MARKER"])
calls = {"n": 0}


def wait_for_the_kill(what: str) -> None:
    MARKER.write_text(what)
    time.sleep(300)
    sys.exit("kill_runs: nobody killed this process")


if MODE == "mid-write":
    real_save_file = checkpoint.save_file

    def save_file_then_stall(tensors, filename, metadata=None):
        real_save_file(tensors, filename, metadata=metadata)
        calls["n"] += 1
        if calls["n"] == AT:
            with open(filename, "r+b") as f:
                f.truncate(os.path.getsize(filename) // 2)
            wait_for_the_kill(str(filename))

    checkpoint.save_file = save_file_then_stall
elif MODE == "between-writes":
    real_save_run = core.save_run

    def save_run_then_stall(*args, **kwargs):
        real_save_run(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == AT:
            wait_for_the_kill("saved")

    core.save_run = save_run_then_stall  # what both trainers call after an evaluation
else:
    sys.exit(f"KILL_MODE={MODE!r}: use mid-write or between-writes")

sys.exit(main(sys.argv[1:]))
