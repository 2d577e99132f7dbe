"""What each rank holds under DDP and FSDP, measured on a small transformer (notebook 09).

``measure()`` runs on every rank (launch it with ``course_lib.distributed.launch`` or
``torchrun``): it builds the same small causal transformer (made of the course's
``MultiHeadAttention``), wraps it with DDP or FSDP, takes one AdamW step on this
rank's part of a batch and reports the bytes this rank then holds for parameters,
gradients and optimizer state, with the local shape of a few parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import distributed as D
from .attention import MultiHeadAttention
from .distributed import DTensor


def _local_bytes(t: torch.Tensor) -> int:
    t = t.to_local() if isinstance(t, DTensor) else t
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


class Block(nn.Module):
    """Pre-norm transformer block: x + MHA(LN(x)), then x + FFN(LN(x))."""

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.attn = MultiHeadAttention(d_model, n_heads)
        self.ffn = nn.Sequential(
            nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model)
        )

    def forward(self, x):
        x = x + self.attn(self.ln1(x), is_causal=True)[0]
        return x + self.ffn(self.ln2(x))


class SmallLM(nn.Module):
    """A small causal language model whose blocks sit in an ``nn.ModuleList`` (FSDP's units)."""

    def __init__(self, vocab_size=256, d_model=64, n_heads=4, n_layers=4):
        super().__init__()
        self.tok = nn.Embedding(vocab_size, d_model)
        self.blocks = nn.ModuleList([Block(d_model, n_heads) for _ in range(n_layers)])
        self.ln_f, self.head = nn.LayerNorm(d_model), nn.Linear(d_model, vocab_size)

    def forward(self, idx):
        x = self.tok(idx)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def measure(strategies=("ddp", "fsdp"), batch_size=8, seq_len=16, **model_kwargs) -> list[dict]:
    """One row per strategy: this rank's bytes of parameters, gradients, optimizer state.

    Counted after ``backward`` and ``optimizer.step()`` (gradients not yet zeroed),
    i.e. what a rank keeps between steps. Under FSDP these are local shards; the full
    parameters of one block exist only briefly while that block runs.
    """
    ctx = D.setup()
    rows = []
    for strategy in strategies:
        torch.manual_seed(0)
        model = D.wrap_model(SmallLM(**model_kwargs), ctx, strategy)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        vocab = model_kwargs.get("vocab_size", 256)
        g = torch.Generator().manual_seed(0)
        tokens = torch.randint(0, vocab, (batch_size, seq_len + 1), generator=g)
        tokens = D.shard(tokens, ctx).to(ctx.device)
        logits = model(tokens[:, :-1])
        F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten()).backward()
        optimizer.step()
        shapes = {
            name: tuple(getattr(p, "to_local", lambda p=p: p)().shape)
            for name, p in D.unwrap(model).named_parameters()
            if name in ("tok.weight", "blocks.0.attn.w_q.weight", "head.bias")
        }
        n_params = sum(p.numel() for p in SmallLM(**model_kwargs).parameters())
        rows.append(
            {
                "strategy": strategy if ctx.distributed else "1 process",
                "world_size": ctx.world_size,
                "rank": ctx.rank,
                "model_parameters": n_params,
                **memory_report(model, optimizer),
                "shapes": shapes,
            }
        )
        D.barrier(ctx)
        if not ctx.distributed:
            break  # on one process both strategies are the plain model
    return rows
