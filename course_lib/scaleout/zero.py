"""ZeRO's stages of data parallelism, each with PyTorch's own engine.

    "ZeRO-DP has three main optimization stages [...], which correspond to the partitioning
    of optimizer states, gradients, and parameters." (Rajbhandari et al., 2020, section 1)

- ``ddp``: every rank keeps everything (``DistributedDataParallel``), the baseline;
- ``zero1``: the optimizer state is shared out (DDP + ``ZeroRedundancyOptimizer``);
- ``zero2``: the gradients too (``fully_shard(reshard_after_forward=False)``);
- ``zero3``: the parameters too (``fully_shard``, FSDP's FULL_SHARD).

``fully_shard(reshard_after_forward=False)`` is FSDP's SHARD_GRAD_OP: a block's gathered
parameters stay whole from its forward pass to the end of its backward pass, so during the
step every rank holds all the parameters, as ZeRO-2 does. ``ZeroRedundancyOptimizer`` shares
out whole tensors (the largest first, each to the rank with the fewest bytes so far), so its
ranks hold about, not exactly, 1/N of the optimizer state.

    model = wrap_stage(GPT(config), ctx, "zero2")
    optimizer = stage_optimizer(model, "zero2", lr=1e-3)   # AdamW; ZeroRedundancyOptimizer for zero1
"""

from __future__ import annotations

import torch
from torch import nn

from course_lib.scaleout import distributed as D

STAGES = ("ddp", "zero1", "zero2", "zero3")


def _check_stage(stage: str) -> None:
    if stage not in STAGES:
        raise ValueError(f"stage={stage!r} is not one of {STAGES}: 'ddp' shards nothing, 'zero1' the "
                         "optimizer state, 'zero2' also the gradients, 'zero3' also the parameters.")


def wrap_stage(model: nn.Module, ctx: D.DistContext, stage: str, blocks: list[nn.Module] | None = None) -> nn.Module:
    """``model`` on the rank's device, wrapped for ``stage`` (unchanged on one process).
    Build the optimizer after wrapping, with ``stage_optimizer``."""
    _check_stage(stage)
    if stage in ("ddp", "zero1"):
        return D.wrap_model(model, ctx, "ddp")
    return D.wrap_model(model, ctx, "fsdp", blocks, reshard_after_forward=stage == "zero3")


def stage_optimizer(model: nn.Module, stage: str, optimizer_class=torch.optim.AdamW, **options):
    """``optimizer_class(model.parameters(), **options)``; for ``zero1`` on several ranks,
    ``ZeroRedundancyOptimizer`` around it (each rank keeps and updates its share)."""
    _check_stage(stage)
    if stage == "zero1" and D.current().distributed:
        from torch.distributed.optim import ZeroRedundancyOptimizer

        return ZeroRedundancyOptimizer(model.parameters(), optimizer_class=optimizer_class, **options)
    return optimizer_class(model.parameters(), **options)


def local_optimizer(optimizer):
    """The optimizer whose ``state`` this rank holds (inside a ``ZeroRedundancyOptimizer``)."""
    return getattr(optimizer, "optim", optimizer)


def zero_bytes_per_parameter(stage: str, world_size: int, param_bytes: float = 4, grad_bytes: float = 4,
                             optim_bytes: float = 8) -> dict[str, float]:
    """The paper's model-state memory per rank, in bytes per parameter of the model.

    With mixed-precision Adam (2, 2 and K = 12 bytes) the totals are (2 + 2 + K), 2 + 2 + K/N,
    2 + (2 + K)/N and (2 + 2 + K)/N (Rajbhandari et al., 2020, figure 1); float32 AdamW
    (the default here) is 4, 4 and 8 bytes. The parameters that ZeRO-3 gathers for the block
    being computed are temporary and not counted.
    """
    _check_stage(stage)
    if world_size < 1:
        raise ValueError(f"world_size={world_size} must be at least 1.")
    share = 1 / world_size
    depth = STAGES.index(stage)  # how many of optimizer, gradients, parameters are shared out
    return {
        "parameters": param_bytes * (share if depth >= 3 else 1),
        "gradients": grad_bytes * (share if depth >= 2 else 1),
        "optimizer": optim_bytes * (share if depth >= 1 else 1),
    }
