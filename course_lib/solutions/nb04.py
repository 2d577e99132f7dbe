"""Solutions of notebook 04 (attention, Q K^T step by step).

    "We compute the dot products of the query with all keys, divide each by sqrt(d_k),
    and apply a softmax function to obtain the weights on the values."  (3.2.1)
"""

from __future__ import annotations

import math

import torch


def scaled_scores(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """q ``(..., L_q, d_k)``, k ``(..., L_k, d_k)`` -> ``q k^T / sqrt(d_k)``, ``(..., L_q, L_k)``."""
    return q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])


def softmax_rows(scores: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dimension, by hand: subtract each row's maximum first, so
    that exp() never overflows (softmax(x) = softmax(x - c) for any constant c)."""
    shifted = scores - scores.max(dim=-1, keepdim=True).values
    e = shifted.exp()
    return e / e.sum(dim=-1, keepdim=True)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d_k)) v: each output row is a weighted average of the values."""
    return softmax_rows(scaled_scores(q, k)) @ v


def _cases():
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(5, 8, generator=g) for _ in range(3))
    qb = torch.randn(2, 3, 4, 16, generator=g)  # (batch, heads, L_q, d_k)
    kb = torch.randn(2, 3, 6, 16, generator=g)  # (batch, heads, L_k, d_k)
    vb = torch.randn(2, 3, 6, 5, generator=g)  # (batch, heads, L_k, d_v)
    big = torch.tensor([[1000.0, 1001.0, 999.0], [-1000.0, -1002.0, -1001.0]])
    return {
        "scaled_scores": [(q, k), (qb, kb)],
        "softmax_rows": [(q @ k.T,), (big,), (torch.randn(2, 3, 7, generator=g) * 30,)],
        "attention": [(q, k, v), (qb, kb, vb)],
    }


CASES = _cases()
