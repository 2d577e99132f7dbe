"""Rotary position embeddings (RoPE): position enters attention as a rotation of q and k.

    "we propose a novel method named Rotary Position Embedding (RoPE) to effectively leverage
    the positional information. Specifically, the proposed RoPE encodes the absolute position
    with a rotation matrix and meanwhile incorporates the explicit relative position
    dependency in self-attention formulation."  (Su et al., 2021, RoFormer, abstract)

Each head vector of size ``head_size`` is cut into ``head_size / 2`` pairs of dimensions;
pair ``i`` at position ``m`` is rotated by the angle ``m * theta_i`` with
``theta_i = base ** (-2 i / head_size)``. A rotation by ``m`` angles in the query and by
``n`` in the key leaves ``q . k`` depending only on ``m - n``.

Real code pairs the dimensions in one of two layouts:

- ``"interleaved"``: pairs ``(0, 1), (2, 3), ...`` (the paper, Meta's original Llama code);
- ``"halves"``: pairs ``(i, i + head_size / 2)`` (Hugging Face's ``rotate_half``, GPT-NeoX).

They give the same attention once the rows of W_Q and W_K of each head are permuted
(``interleaved_to_halves``). The course's model uses ``"halves"``, as Hugging Face does.
"""

from __future__ import annotations

import torch
from torch import nn

LAYOUTS = ("halves", "interleaved")


def rope_angles(head_size: int, n_positions: int, base: float = 10000.0) -> torch.Tensor:
    """``(n_positions, head_size / 2)``: the angle ``m * theta_i`` of pair ``i`` at position ``m``."""
    if head_size % 2:
        raise ValueError(f"head_size={head_size} is odd; RoPE rotates pairs of dimensions, so a head "
                         "needs an even size (change d_model, n_heads or head_size).")
    theta = base ** (-torch.arange(0, head_size, 2, dtype=torch.float64) / head_size)
    return (torch.arange(n_positions, dtype=torch.float64)[:, None] * theta[None, :]).float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layout: str = "halves") -> torch.Tensor:
    """Rotate each pair of dimensions of ``x (..., T, head_size)`` by the angles whose cosines
    and sines are ``cos, sin (T, head_size / 2)``."""
    if layout == "halves":
        x1, x2 = x.chunk(2, dim=-1)
    elif layout == "interleaved":
        x1, x2 = x[..., 0::2], x[..., 1::2]
    else:
        raise ValueError(f"layout={layout!r} must be one of {LAYOUTS}.")
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    y1, y2 = x1 * cos - x2 * sin, x1 * sin + x2 * cos  # (x1, x2) rotated by the angle
    if layout == "halves":
        return torch.cat([y1, y2], dim=-1)
    return torch.stack([y1, y2], dim=-1).flatten(-2)


def interleaved_to_halves(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """The rows of a W_Q or W_K ``(n_heads * head_size, d_model)`` written for the interleaved
    layout, reordered for the halves layout: in each head, the even rows, then the odd ones."""
    head_size = weight.shape[0] // n_heads
    order = torch.cat([torch.arange(0, head_size, 2), torch.arange(1, head_size, 2)])
    return weight.view(n_heads, head_size, -1)[:, order].reshape(weight.shape)


class RotaryEmbedding(nn.Module):
    """The cosines and sines of every position up to ``n_positions`` (buffers, not saved
    with the weights); ``rope(x, start)`` rotates ``x (B, heads, T, head_size)`` as positions
    ``start .. start + T - 1``."""

    def __init__(self, head_size: int, n_positions: int, base: float = 10000.0, layout: str = "halves"):
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"layout={layout!r} must be one of {LAYOUTS}.")
        self.layout = layout
        angles = rope_angles(head_size, n_positions, base)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        T = x.shape[-2]
        return apply_rope(x, self.cos[start:start + T], self.sin[start:start + T], self.layout)
