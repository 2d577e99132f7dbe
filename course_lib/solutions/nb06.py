"""Solutions of notebook 06 (multi-head attention).

    "Multi-head attention allows the model to jointly attend to information from different
    representation subspaces at different positions."  (3.2.2)

    MultiHead(Q, K, V) = Concat(head_1, ..., head_h) W^O
"""

from __future__ import annotations

import torch


def split_heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """``(B, L, d_model) -> (B, n_heads, L, d_k)``: head h gets columns ``h*d_k .. (h+1)*d_k - 1``."""
    B, L, d_model = x.shape
    return x.view(B, L, n_heads, d_model // n_heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``(B, n_heads, L, d_k) -> (B, L, n_heads * d_k)``, the inverse of ``split_heads``
    (``transpose`` makes the tensor non-contiguous, hence ``reshape``, not ``view``)."""
    B, n_heads, L, d_k = x.shape
    return x.transpose(1, 2).reshape(B, L, n_heads * d_k)


def mha_flops(B: int, L: int, d_model: int, n_heads: int) -> dict[str, int]:
    """Matrix-multiplication FLOPs of one self-attention layer (a multiply-add = 2 FLOPs,
    biases and the softmax not counted), per part:

    - ``qkv``: three ``(B*L, d_model) @ (d_model, d_model)`` projections,
    - ``scores``: ``Q K^T`` per head, ``(L, d_k) @ (d_k, L)``, for B * n_heads heads,
    - ``weighted_sum``: ``A V`` per head, ``(L, L) @ (L, d_k)``,
    - ``out``: the output projection ``(B*L, d_model) @ (d_model, d_model)``.
    """
    d_k = d_model // n_heads
    proj = 2 * B * L * d_model * d_model
    per_head = 2 * B * n_heads * L * L * d_k
    return {"qkv": 3 * proj, "scores": per_head, "weighted_sum": per_head, "out": proj}


def _cases():
    g = torch.Generator().manual_seed(6)
    return {
        "split_heads": [(torch.arange(24.0).view(1, 3, 8), 2), (torch.randn(2, 5, 12, generator=g), 3),
                        (torch.randn(3, 4, 16, generator=g), 8)],
        "merge_heads": [(torch.arange(24.0).view(1, 2, 3, 4),), (torch.randn(2, 3, 5, 4, generator=g),)],
        "mha_flops": [(1, 10, 64, 4), (8, 128, 512, 8), (2, 7, 48, 6)],
    }


CASES = _cases()
