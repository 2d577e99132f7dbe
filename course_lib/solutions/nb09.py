"""Reference solutions of notebook 09 (scaling out)."""

from __future__ import annotations


def rank_rows(global_batch: int, rank: int, world_size: int) -> tuple[int, int]:
    """``(start, stop)``: the rows of the global batch that ``rank`` reads (equal parts, in order)."""
    per_rank = global_batch // world_size
    return rank * per_rank, (rank + 1) * per_rank


def bytes_per_rank(
    n_params: int,
    world_size: int,
    strategy: str,
    param_bytes: int = 4,
    grad_bytes: int = 4,
    optim_bytes: int = 8,
) -> dict[str, int]:
    """Bytes one rank holds for parameters, gradients and optimizer state.

    DDP: everything, on every rank. FSDP: a 1/world_size share of each (rounded up).
    AdamW in float32 keeps two values per parameter (8 bytes); with mixed precision
    (ZeRO's accounting) parameters and gradients take 2 bytes and the optimizer 12.
    """
    share = n_params if strategy == "ddp" else -(-n_params // world_size)
    return {
        "parameters": share * param_bytes,
        "gradients": share * grad_bytes,
        "optimizer": share * optim_bytes,
    }


def shard_rows(rows: int, world_size: int) -> list[int]:
    """Rows of a parameter's first dimension that each rank keeps under FSDP.

    FSDP cuts dim 0 like ``torch.chunk``: parts of ceil(rows / world_size) rows, the
    last part shorter, and ranks past the end get none.
    """
    part = -(-rows // world_size)
    return [max(0, min(part, rows - r * part)) for r in range(world_size)]


CASES = {
    "rank_rows": [(8, 0, 2), (8, 1, 2), (12, 2, 4), (64, 7, 8), (6, 0, 1)],
    "bytes_per_rank": [
        (1000, 1, "ddp"),
        (1000, 4, "ddp"),
        (1000, 4, "fsdp"),
        (1001, 2, "fsdp"),
        (7_500_000_000, 64, "fsdp", 2, 2, 12),
    ],
    "shard_rows": [(8, 2), (11, 2), (5, 4), (3, 8), (64, 8), (1, 2)],
}
