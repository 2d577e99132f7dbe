"""Activation checkpointing: keep only each block's input through the forward pass and run the
block again during the backward pass to get what its gradient needs.

    "we design an algorithm that costs O(sqrt(n)) memory to train a n layer network, with
    only the computational cost of an extra forward pass per mini-batch." (Chen et al., 2016,
    *Training Deep Nets with Sublinear Memory Cost*)

Checkpointing every block, as here, keeps the n block inputs (and, during the backward pass,
one block's activations at a time) instead of every block's activations.

``checkpoint_blocks(model)`` makes every block of ``model`` (``find_blocks``: the elements of its
``nn.ModuleList`` s) run under ``torch.utils.checkpoint.checkpoint``; the weights, their names and
the gradients stay the same. ``activation_memory(step)`` measures what a training step holds.
"""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from course_lib.scaleout.distributed import find_blocks


def checkpoint_blocks(model: nn.Module, enabled: bool = True, blocks: list[nn.Module] | None = None) -> nn.Module:
    """Run each of ``blocks`` (default ``find_blocks(model)``) under activation checkpointing
    (``enabled=False`` undoes it). The module is changed in place and returned."""
    blocks = find_blocks(model) if blocks is None else blocks
    if enabled and not blocks:
        raise ValueError(f"{type(model).__name__} has no blocks to checkpoint (no nn.ModuleList); "
                         "pass blocks=[...].")
    for block in blocks:
        block.__dict__.pop("forward", None)  # the class's forward again
        if enabled:
            plain = block.forward
            block.forward = functools.partial(checkpoint, plain, use_reentrant=False)
    return model


def is_checkpointed(block: nn.Module) -> bool:
    return "forward" in block.__dict__


def activation_memory(forward, backward=None, existing=()) -> dict[str, int]:
    """Bytes of the tensors a training step makes, counted by storage from the operation that
    makes each until Python frees it (``course_lib.training.memory.PeakBytes``).

    ``forward()`` returns the loss; ``backward(loss)`` (default ``loss.backward()``) runs the
    backward pass; ``existing``: tensors made before (the parameters, the batch) whose
    storages are not counted, even where an operation returns a view of them. Returns
    ``after_forward``: the bytes alive when the forward pass ends (what is kept for the
    backward pass, and the loss); ``peak``: the most alive at any moment of forward and
    backward (the gradients included).
    """
    from course_lib.training.memory import PeakBytes

    with PeakBytes() as counter:
        counter.track(list(existing))
        before = counter.live
        loss = forward()
        after_forward = counter.live - before
        (backward or torch.Tensor.backward)(loss)
        del loss
    return {"after_forward": after_forward, "peak": counter.peak - before}
