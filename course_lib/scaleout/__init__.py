"""Scaling out: several processes (ranks) train one model together.

- ``distributed``: joining torchrun's process group, each rank's part of a batch, DDP and
  FSDP wrapping, gradient accumulation without talking, the global gradient norm.
- ``checkpoint``: one full checkpoint written by rank 0, resumable on any number of ranks.
- ``spawn``: ``launch(fn, 2)`` starts CPU ranks from Python (notebook 09, the tests).
- ``rank_memory``: what each rank holds under DDP and FSDP, measured (notebook 09).

The training loops use it as ``D``: ``from course_lib import scaleout as D``.
"""

from course_lib.scaleout.checkpoint import (
    full_model_on_main,
    full_state,
    load,
    load_model_state,
    load_optimizer_state,
    save,
)
from course_lib.scaleout.distributed import (
    DistContext,
    average,
    barrier,
    check_batches,
    cleanup,
    clip_grad_norm,
    current,
    find_blocks,
    rank_part,
    rank_slice,
    setup,
    shard,
    sync_gradients,
    unwrap,
    wrap_model,
)
from course_lib.scaleout.spawn import free_port, launch

__all__ = [
    "DistContext", "average", "barrier", "check_batches", "cleanup", "clip_grad_norm", "current",
    "find_blocks", "free_port", "full_model_on_main", "full_state", "launch", "load", "load_model_state",
    "load_optimizer_state", "rank_part", "rank_slice", "save", "setup", "shard",
    "sync_gradients", "unwrap", "wrap_model",
]  # fmt: skip
