"""What each rank holds under DDP and ZeRO's three stages, measured on a small GPT (notebook 09).

``measure()`` runs on every rank (launch it with ``course_lib.scaleout.launch`` or
``torchrun``): for each stage (``course_lib.scaleout.zero``) it builds the same small GPT
(``course_lib.gpt``), takes a few AdamW steps (``course_lib.training.loop.train_step``) on
this rank's part of each batch and counts the bytes of the tensors the rank holds: the
parameters as the model exposes them (a shard's local part, or the whole tensor while it is
gathered), the gradients (``.grad``) and the optimizer state. It counts tensors, not the
process's memory (RSS), which also holds the interpreter, the libraries and freed memory that
the allocator keeps.
"""

from __future__ import annotations

import torch
from torch import nn

from course_lib.gpt import GPT, GPTConfig
from course_lib.scaleout import distributed as D
from course_lib.scaleout.checkpoint import full_state
from course_lib.scaleout.zero import STAGES, local_optimizer, stage_optimizer, wrap_stage
from course_lib.training.loop import train_step


def _local_bytes(t: torch.Tensor) -> int:
    t = t.to_local() if D.fsdp_isinstance(t, "DTensor") else t
    return t.numel() * t.element_size()


def parameter_bytes(model: nn.Module) -> int:
    """Bytes of the parameters ``model`` exposes now: a shard's local part, or the whole
    tensor while FSDP has gathered it (a tied weight counts once)."""
    return sum(_local_bytes(p) for p in model.parameters())


def memory_report(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict:
    """Bytes this rank holds for parameters, gradients and optimizer state (local shards)."""
    optim = 0
    if optimizer is not None:
        for state in local_optimizer(optimizer).state.values():
            optim += sum(_local_bytes(v) for v in state.values() if torch.is_tensor(v) and v.dim())
    return {
        "parameters": parameter_bytes(model),
        "gradients": sum(_local_bytes(p.grad) for p in model.parameters() if p.grad is not None),
        "optimizer": optim,
    }


class ParameterPeak:
    """The most parameter bytes (``parameter_bytes``) the model exposes during its forward
    passes, sampled after every leaf module runs; ``remove()`` takes the hooks away."""

    def __init__(self, model: nn.Module):
        self.peak = 0
        leaves = [m for m in model.modules() if next(m.children(), None) is None]
        self._hooks = [m.register_forward_hook(lambda *_: self._sample(model)) for m in leaves]

    def _sample(self, model: nn.Module) -> None:
        self.peak = max(self.peak, parameter_bytes(model))

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()


def _step(model: nn.Module, optimizer, tokens: torch.Tensor) -> tuple[float, int]:
    """One ``train_step`` on ``tokens``: the loss, and the bytes of this rank's gradients
    where the step clips them, after the backward pass (the step frees them at its end)."""
    held = {}

    def count_gradients(max_norm: float) -> None:
        held["gradients"] = memory_report(model)["gradients"]

    loss = train_step(model, optimizer, (tokens[:, :-1], tokens[:, 1:]), lambda m, b: m(*b)[1],
                      clip_grad=count_gradients)
    return loss, held["gradients"]


def _shapes(model: nn.Module) -> dict[str, tuple]:
    """This rank's local shape of a few parameters (FSDP cuts the first dimension)."""
    names = ("tok_embed.weight", "layers.0.self_attn.w_q.weight", "final_norm.bias")
    return {n: tuple((p.to_local() if D.fsdp_isinstance(p, "DTensor") else p).shape)
            for n, p in D.unwrap(model).named_parameters() if n in names}


SMALL_GPT = dict(vocab_size=256, n_layers=4, n_heads=4, d_model=64)


def batch(step: int, batch_size: int, seq_len: int, vocab_size: int) -> torch.Tensor:
    """The global batch of ``step``: random token ids, the same on every rank."""
    g = torch.Generator().manual_seed(step)
    return torch.randint(0, vocab_size, (batch_size, seq_len + 1), generator=g)


def measure(stages=STAGES, batch_size: int = 8, seq_len: int = 16, steps: int = 3, lr: float = 1e-3,
            **model_kwargs) -> list[dict]:
    """One row per stage: what this rank holds, the losses, and the full weights at the end.

    ``parameters``: the most during a step's forward pass (FSDP gathers blocks there);
    ``parameters_at_rest``: after the last step; ``gradients``: after the last backward
    pass; ``optimizer``: after the last step. ``losses``: the global batch's loss at each
    step (the mean over ranks); ``weights``: the full state dict, on rank 0 only (None on
    the others); ``shapes``: this rank's local shape of three parameters. On one process
    there is one row, the plain model, named ``"1 process"``.
    """
    ctx = D.setup()
    config = GPTConfig(**{**SMALL_GPT, "block_size": seq_len, **model_kwargs})
    with torch.device("meta"):  # counted whole, before any sharding, without building the weights
        n_params = GPT(config).num_parameters()
    rows = []
    for stage in stages if ctx.distributed else stages[:1]:
        torch.manual_seed(0)
        model = wrap_stage(GPT(config), ctx, stage)
        optimizer = stage_optimizer(model, stage, lr=lr)
        peak, losses = ParameterPeak(model), []
        for step in range(steps):
            tokens = D.shard(batch(step, batch_size, seq_len, config.vocab_size), ctx).to(ctx.device)
            loss, gradients = _step(model, optimizer, tokens)
            losses.append(float(D.average(loss, ctx)))
        peak.remove()
        weights = full_state(model)[0]
        rows.append({
            "stage": stage if ctx.distributed else "1 process", "world_size": ctx.world_size,
            "rank": ctx.rank, "model_parameters": n_params,
            **memory_report(model, optimizer), "parameters_at_rest": parameter_bytes(model),
            "parameters": peak.peak, "gradients": gradients, "losses": losses, "shapes": _shapes(model),
            "weights": {k: v.detach().cpu() for k, v in weights.items()} if ctx.is_main else None,
        })  # fmt: skip
        D.barrier(ctx)
    return rows
