"""What an all-reduce costs: timed for several sizes, fitted by time = latency + bytes / bandwidth.

The fixed cost (latency: starting the messages, the steps of the ring) dominates small
tensors, the bandwidth large ones. ``time_all_reduce`` runs on every rank (launch it with
``course_lib.scaleout.launch``); ``fit_latency_bandwidth`` is plain least squares on the
relative error, so that the small sizes, microseconds beside the large ones' milliseconds,
count as much as the large ones.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.distributed as dist

KIB = 1024
SIZES = tuple(KIB * 4**k for k in range(9))  # 1 KiB .. 64 MiB


def time_all_reduce(sizes=SIZES, repeats: int = 5, warmup: int = 1) -> list[float]:
    """Seconds of one ``dist.all_reduce`` of a float32 tensor of each of ``sizes`` bytes: the
    fastest of ``repeats`` timed calls (the one least disturbed by other programs), each
    started together on all ranks (a barrier) and timed as its slowest rank saw it."""
    seconds = []
    for nbytes in sizes:
        if nbytes % 4:
            raise ValueError(f"size {nbytes} is not a whole number of float32 values (4 bytes each).")
        t = torch.ones(nbytes // 4)
        runs = []
        for i in range(warmup + repeats):
            dist.barrier()
            start = time.perf_counter()
            dist.all_reduce(t)
            elapsed = torch.tensor([time.perf_counter() - start], dtype=torch.float64)
            dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
            if i >= warmup:
                runs.append(float(elapsed))
        seconds.append(min(runs))
    return seconds


def measure(sizes=SIZES, repeats: int = 5, ring_size: int = 1001) -> dict:
    """On every rank: ``ring_all_reduce`` against ``dist.all_reduce`` on a random float32
    tensor of ``ring_size`` values (``ring_max_diff``, ``ring_bytes_sent``), then
    ``time_all_reduce(sizes, repeats)`` (``sizes``, ``seconds``)."""
    from course_lib.scaleout.distributed import setup
    from course_lib.scaleout.ring import ring_all_reduce

    ctx = setup()
    t = torch.randn(ring_size, generator=torch.Generator().manual_seed(ctx.rank))
    ours, theirs = t.clone(), t.clone()
    sent = ring_all_reduce(ours)
    dist.all_reduce(theirs)
    return {"world_size": ctx.world_size, "ring_max_diff": float((ours - theirs).abs().max()),
            "ring_bytes_sent": sent, "tensor_bytes": t.numel() * t.element_size(), "sizes": list(sizes),
            "seconds": time_all_reduce(sizes, repeats)}


def fit_latency_bandwidth(nbytes, seconds) -> tuple[float, float]:
    """``(latency_s, bytes_per_s)`` minimising the sum over sizes of
    ((latency + bytes / bandwidth - time) / time)^2."""
    b, s = np.asarray(nbytes, dtype=float), np.asarray(seconds, dtype=float)
    if b.shape != s.shape or b.size < 2 or (s <= 0).any():
        raise ValueError(f"need at least two sizes with positive times, one time per size: got {b.size} "
                         f"size(s) and {s.size} time(s), smallest time {s.min() if s.size else None}.")
    design = np.stack([np.ones_like(b), b], axis=1) / s[:, None]
    (latency, per_byte), *_ = np.linalg.lstsq(design, np.ones_like(s), rcond=None)
    return float(latency), float(1 / per_byte) if per_byte > 0 else float("inf")
