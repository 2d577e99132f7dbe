"""Solutions of notebook 05 (masking).

    "We need to prevent leftward information flow in the decoder to preserve the
    auto-regressive property. We implement this inside of scaled dot-product attention
    by masking out (setting to -inf) all values in the input of the softmax which
    correspond to illegal connections."  (3.2.3)

Masks are bool, True = may attend (the course's and F.scaled_dot_product_attention's convention).
"""

from __future__ import annotations

import torch


def causal_mask(L: int) -> torch.Tensor:
    """Bool ``(L, L)``: True where key j <= query i (each position sees itself and the past)."""
    i = torch.arange(L)[:, None]
    j = torch.arange(L)[None, :]
    return j <= i


def lengths_to_mask(lengths: list[int], L: int) -> torch.Tensor:
    """Bool ``(B, L)`` key mask: row b is True on its first ``lengths[b]`` positions (real
    tokens) and False on the padding after them."""
    return torch.arange(L)[None, :] < torch.tensor(lengths)[:, None]


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dimension of ``scores`` where ``mask`` is True; masked entries
    get weight 0, and a row with no allowed entry gets all zeros (not NaN)."""
    mask = torch.broadcast_to(mask, scores.shape)
    weights = scores.masked_fill(~mask, float("-inf")).softmax(dim=-1)
    return weights.masked_fill(~mask.any(dim=-1, keepdim=True), 0.0)


def _cases():
    g = torch.Generator().manual_seed(5)
    s = torch.randn(4, 4, generator=g)
    sb = torch.randn(2, 3, 5, generator=g)
    pad = torch.tensor([[True, True, True, False, False], [True, False, False, False, False]])
    rows = torch.tensor([[True, False, True, True], [False, False, False, False],
                         [True, True, True, True], [False, True, False, False]])
    return {
        "causal_mask": [(1,), (4,), (7,)],
        "lengths_to_mask": [([3, 1, 5], 5), ([2, 2], 4), ([0, 3], 3)],
        "masked_softmax": [(s, torch.ones(4, 4, dtype=torch.bool)), (s, causal_mask(4)), (s, rows),
                           (sb, pad[:, None, :])],
    }


CASES = _cases()
