"""Start ``world_size`` CPU processes on this machine that find each other as torchrun's would.

The notebook and the tests use ``launch(fn, 2)`` to run a function on two ranks
(gloo) without a terminal; real runs use ``torchrun``.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable

import torch

from course_lib.scaleout.distributed import cleanup


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _plain(x, to_numpy: bool):
    if isinstance(x, dict):
        return {k: _plain(v, to_numpy) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_plain(v, to_numpy) for v in x)
    if to_numpy and torch.is_tensor(x):
        return x.detach().cpu().numpy()
    if not to_numpy and type(x).__module__ == "numpy" and hasattr(x, "shape") and x.shape:
        return torch.from_numpy(x)
    return x


def _worker(local_rank, fn, world_size, port, args, queue, timeout_s):
    os.environ.update(
        RANK=str(local_rank), LOCAL_RANK=str(local_rank), WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), COURSE_DEVICE="cpu",
        COURSE_DIST_TIMEOUT=str(timeout_s),
    )  # fmt: skip
    torch.set_num_threads(1)
    try:
        queue.put((local_rank, _plain(fn(*args), to_numpy=True)))
    finally:
        cleanup()


def launch(fn: Callable, world_size: int = 2, args: tuple = (), timeout_s: float = 60) -> list:
    """Run ``fn(*args)`` on ``world_size`` CPU processes (gloo) of this machine, as torchrun would.

    ``fn`` must be importable (defined in a module, not in a notebook cell) and return
    picklable data; tensors come back as tensors. Returns the results in rank order.
    ``timeout_s`` bounds the rendezvous and each collective, so a failure never hangs.
    """
    import torch.multiprocessing as mp

    queue = mp.get_context("spawn").SimpleQueue()
    procs = mp.start_processes(
        _worker, args=(fn, world_size, free_port(), args, queue, timeout_s), nprocs=world_size,
        join=False, start_method="spawn",
    )  # fmt: skip
    results, done = {}, False
    while not done:  # read while waiting: a large result would otherwise block its writer
        done = procs.join(timeout=0.05)  # raises if a rank failed
        while not queue.empty():
            rank, value = queue.get()
            results[rank] = value
    return [_plain(results[r], to_numpy=False) for r in range(world_size)]
