"""What each rank holds under DDP and FSDP, measured on a small transformer (notebook 09).

``measure()`` runs on every rank (launch it with ``course_lib.scaleout.launch`` or
``torchrun``): it builds the same small GPT (``course_lib.gpt``), wraps it with DDP or
FSDP, takes one AdamW step (``course_lib.training.loop.train_step``) on this
rank's part of a batch and reports the bytes this rank then holds for parameters,
gradients and optimizer state, with the local shape of a few parameters.
"""

from __future__ import annotations

import torch
from torch import nn

from course_lib.gpt import GPT, GPTConfig
from course_lib.scaleout import distributed as D
from course_lib.training.loop import train_step


def _local_bytes(t: torch.Tensor) -> int:
    t = t.to_local() if D.fsdp_isinstance(t, "DTensor") else t
    return t.numel() * t.element_size()


def memory_report(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict:
    """Bytes this rank holds for parameters, gradients and optimizer state (local shards)."""
    params = [p for p in model.parameters()]
    optim = 0
    if optimizer is not None:
        for state in optimizer.state.values():
            optim += sum(_local_bytes(v) for v in state.values() if torch.is_tensor(v) and v.dim())
    return {
        "parameters": sum(_local_bytes(p) for p in params),
        "gradients": sum(_local_bytes(p.grad) for p in params if p.grad is not None),
        "optimizer": optim,
    }


def _step_gradients(model: nn.Module, optimizer, tokens: torch.Tensor) -> int:
    """One training step (``train_step``) on ``tokens``; the bytes of this rank's gradients
    where the step clips them, after the backward pass (the step frees them at its end)."""
    held = {}

    def count_gradients(max_norm: float) -> None:
        held["gradients"] = memory_report(model)["gradients"]

    train_step(model, optimizer, (tokens[:, :-1], tokens[:, 1:]), lambda m, b: m(*b)[1], clip_grad=count_gradients)
    return held["gradients"]


SMALL_GPT = dict(vocab_size=256, n_layers=4, n_heads=4, d_model=64)


def measure(strategies=("ddp", "fsdp"), batch_size=8, seq_len=16, **model_kwargs) -> list[dict]:
    """One row per strategy: this rank's bytes of parameters, gradients, optimizer state.

    One step of the library's ``train_step``; the gradients are counted after the backward
    pass (``train_step`` frees them after the optimizer step), the parameters and the
    optimizer state after the step: what a rank holds at the end of a step. Under FSDP these are local shards; the full
    parameters of one block exist only briefly while that block runs.
    """
    ctx = D.setup()
    config = GPTConfig(**{**SMALL_GPT, "block_size": seq_len, **model_kwargs})
    rows = []
    for strategy in strategies:
        torch.manual_seed(0)
        model = D.wrap_model(GPT(config), ctx, strategy)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        g = torch.Generator().manual_seed(0)
        tokens = torch.randint(0, config.vocab_size, (batch_size, seq_len + 1), generator=g)
        tokens = D.shard(tokens, ctx).to(ctx.device)
        gradients = _step_gradients(model, optimizer, tokens)
        shapes = {
            name: tuple(getattr(p, "to_local", lambda p=p: p)().shape)
            for name, p in D.unwrap(model).named_parameters()
            if name in ("tok_embed.weight", "layers.0.self_attn.w_q.weight", "final_norm.bias")
        }
        n_params = GPT(config).num_parameters()
        rows.append(
            {
                "strategy": strategy if ctx.distributed else "1 process",
                "world_size": ctx.world_size,
                "rank": ctx.rank,
                "model_parameters": n_params,
                **memory_report(model, optimizer),
                "gradients": gradients,
                "shapes": shapes,
            }
        )
        D.barrier(ctx)
        if not ctx.distributed:
            break  # on one process both strategies are the plain model
    return rows
