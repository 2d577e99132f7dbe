"""Scaling out: several processes (ranks) train one model together.

- ``distributed``: joining torchrun's process group, each rank's part of a batch, DDP and
  FSDP wrapping, gradient accumulation without talking, the global gradient norm.
- ``checkpoint``: one full checkpoint written by rank 0, resumable on any number of ranks.
- ``spawn``: ``launch(fn, 2)`` starts CPU ranks from Python (notebook 09, the tests).
- ``zero``: ZeRO's stages 1-3 with PyTorch's engines, and the paper's bytes per parameter.
- ``rank_memory``: what each rank holds under DDP and each ZeRO stage, measured (notebook 09).
- ``ring``: the ring all-reduce over point-to-point messages, and the bytes each rank sends.
- ``comm_cost``: an all-reduce timed for several sizes, fitted by latency + bytes / bandwidth.
- ``activation_checkpoint``: blocks run again in the backward pass instead of keeping
  their activations, and the bytes a training step keeps, counted.

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
