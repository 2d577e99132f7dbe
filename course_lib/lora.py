"""LoRA: fine-tune a frozen model through small low-rank updates (notebook 12).

    "We freeze the pre-trained model weights and inject trainable rank decomposition
    matrices into each layer of the Transformer architecture."  (Hu et al., 2021, *LoRA:
    Low-Rank Adaptation of Large Language Models*, abstract)

A ``LoRALinear`` computes ``W x + b + (alpha / r) B A x`` with ``W`` and ``b`` frozen,
``A`` (r x in) random and ``B`` (out x r) zero at the start, so the fine-tuned model
starts exactly where the pretrained one is. Only A and B train: ``r (in + out)`` numbers
instead of ``in * out``. ``merge_lora`` folds ``(alpha / r) B A`` into ``W`` afterwards,
so inference costs nothing extra. The initialisation and scaling follow the ``peft``
library's defaults, against which the tests check outputs and gradients.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from course_lib import checks


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` (``base``) plus a trainable rank-``r`` update."""

    def __init__(self, base: nn.Linear, r: int = 8, alpha: float = 16.0, dropout: float = 0.0):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRALinear wraps an nn.Linear, not {type(base).__name__}.")
        if not isinstance(r, int) or r < 1 or r > min(base.in_features, base.out_features):
            raise ValueError(f"rank r={r!r} must be an integer from 1 to min(in, out) = "
                             f"{min(base.in_features, base.out_features)}.")
        checks.number("alpha", alpha, 0.0, above=True,
                      fix="alpha = 0 scales the update to nothing; peft's default is 2 * r (here 16)")
        checks.number("dropout", dropout, 0.0, 1.0)
        if dropout == 1.0:
            raise ValueError("dropout=1.0 drops every input of the adapter; use a value in [0, 1).")
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.r, self.alpha = r, alpha
        self.scaling = alpha / r
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, device=w.device, dtype=w.dtype))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, device=w.device, dtype=w.dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear (and peft) initialise A
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def delta_weight(self) -> torch.Tensor:
        """The update the adapter adds to W: ``(alpha / r) B A``, shape (out, in)."""
        return self.scaling * self.lora_B @ self.lora_A

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (self.dropout(x) @ self.lora_A.t() @ self.lora_B.t()) * self.scaling

    def merged(self) -> nn.Linear:
        """A plain ``nn.Linear`` with ``W + (alpha / r) B A``: the same function, no adapter."""
        out = nn.Linear(self.base.in_features, self.base.out_features, bias=self.base.bias is not None,
                        device=self.base.weight.device, dtype=self.base.weight.dtype)
        with torch.no_grad():
            out.weight.copy_(self.base.weight + self.delta_weight())
            if self.base.bias is not None:
                out.bias.copy_(self.base.bias)
        return out

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha}"


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def add_lora(model: nn.Module, targets: tuple[str, ...] = ("w_q", "w_v"), r: int = 8, alpha: float = 16.0,
             dropout: float = 0.0) -> nn.Module:
    """Freeze every parameter of ``model`` and wrap each ``nn.Linear`` whose name ends with
    one of ``targets`` (``"w_q"`` matches ``layers.0.self_attn.w_q``) in a ``LoRALinear``.
    Changes ``model`` in place and returns it."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"add_lora takes a torch nn.Module, got {type(model).__name__}.")
    targets = checks.names("targets", targets)
    names = [n for n, m in model.named_modules()
             if isinstance(m, nn.Linear) and any(n == t or n.endswith("." + t) for t in targets)]
    if not names:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise ValueError(f"no nn.Linear named {list(targets)} in the model; its linear layers are called {linear}.")
    for p in model.parameters():
        p.requires_grad_(False)
    for name in names:
        _set(model, name, LoRALinear(model.get_submodule(name), r, alpha, dropout))
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every ``LoRALinear`` by its merged ``nn.Linear`` (in place; returns ``model``)."""
    for name in [n for n, m in model.named_modules() if isinstance(m, LoRALinear)]:
        _set(model, name, model.get_submodule(name).merged())
    return model


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Parameters counted once (tied weights once), optionally only those that train."""
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen and (p.requires_grad or not trainable_only):
            seen.add(id(p))
            total += p.numel()
    return total


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes the optimizer keeps per parameter (AdamW: two moments), measured on its state."""
    return sum(v.numel() * v.element_size() for s in optimizer.state.values() for v in s.values()
               if torch.is_tensor(v) and v.dim() > 0)
