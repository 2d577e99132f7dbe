import os
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("TQDM_DISABLE", "1")
ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))


@pytest.fixture
def shared_data() -> Path:
    """../shared/data (real public data sets); tests using it skip cleanly without it."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present (real-data test)")
    return SHARED_DATA


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread (and do not fight the other test worker)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def launch_ranks():
    """``course_lib.scaleout.launch`` for the tests' module fixtures: a machine where the gloo
    processes cannot start (no sockets, no multiprocessing) fails the test, never skips it."""
    from course_lib.scaleout import launch

    def run(fn, world_size: int, *args, **kwargs):
        try:
            return launch(fn, world_size, *args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - any failure to start is reported as such
            pytest.fail(f"could not launch {world_size} gloo processes: {exc}")

    return run
