"""Ring all-reduce: every rank ends with the sum of all ranks' tensors, each rank sending
only to its right-hand neighbour and receiving from its left-hand one.

The tensor is cut into N chunks. **Reduce-scatter** (N - 1 steps): at step s rank r sends
its running sum of chunk (r - s) mod N to the right and adds the chunk that arrives from
the left, (r - s - 1) mod N; after N - 1 steps rank r holds the full sum of chunk
(r + 1) mod N. **All-gather** (N - 1 steps): the finished chunks travel round the ring the
same way, each rank copying the one that arrives. Each rank sends 2 (N - 1) chunks of
size/N: 2 (N - 1) / N times the tensor's bytes, whatever N is (Patarasuk and Yuan, 2009,
"Bandwidth optimal all-reduce algorithms for clusters of workstations").

``ring_all_reduce(t)`` does it with ``dist.isend`` / ``dist.recv`` and returns the bytes this
rank sent; ``dist.all_reduce`` (gloo, NCCL) gives the same sum with its own schedule.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def ring_bytes_per_rank(nbytes: int, world_size: int) -> float:
    """Bytes each rank sends (and receives) in a ring all-reduce of ``nbytes``: 2 (N - 1) / N of them."""
    return 2 * (world_size - 1) / world_size * nbytes


def ring_steps(world_size: int) -> list[tuple[str, int, list[int]]]:
    """The schedule: ``(phase, step, chunk each rank sends)`` for the 2 (N - 1) steps;
    rank r sends to rank (r + 1) mod N, which adds (reduce-scatter) or copies (all-gather)."""
    n = world_size
    rs = [("reduce-scatter", s, [(r - s) % n for r in range(n)]) for s in range(n - 1)]
    ag = [("all-gather", s, [(r + 1 - s) % n for r in range(n)]) for s in range(n - 1)]
    return rs + ag


def _exchange(send: torch.Tensor, recv: torch.Tensor, right: int, left: int) -> None:
    request = dist.isend(send, right)
    dist.recv(recv, left)
    request.wait()


def ring_all_reduce(t: torch.Tensor) -> int:
    """Sum ``t`` over all ranks in place, around the ring; returns the bytes this rank sent.

    ``t`` must be contiguous (its chunks are views of it) and the same shape on every rank.
    """
    if not t.is_contiguous():
        raise ValueError(f"ring_all_reduce needs a contiguous tensor (got strides {t.stride()}); "
                         "pass t.contiguous() and copy the result back.")
    n, rank = dist.get_world_size(), dist.get_rank()
    chunks = t.view(-1).tensor_split(n)
    right, left = (rank + 1) % n, (rank - 1) % n
    sent = 0
    for phase, _, sends in ring_steps(n):
        out = sends[rank]
        into = (out - 1) % n  # the chunk the left neighbour sends at this step
        incoming = torch.empty_like(chunks[into])
        _exchange(chunks[out], incoming, right, left)
        if phase == "reduce-scatter":
            chunks[into].add_(incoming)
        else:
            chunks[into].copy_(incoming)
        sent += chunks[out].numel() * t.element_size()
    return sent
