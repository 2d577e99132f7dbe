"""Solutions of notebook 03 (positional encoding). Try the exercises first!"""

from __future__ import annotations

import math

import torch


def positional_encoding(max_len: int, d_model: int) -> torch.Tensor:
    """(max_len, d_model): PE(pos, 2i) = sin(pos / 10000^(2i/d_model)), PE(pos, 2i+1) = cos(...)."""
    pos = torch.arange(max_len, dtype=torch.float64)[:, None]
    freq = 10000.0 ** (-torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)  # 1 / 10000^(2i/d)
    pe = torch.zeros(max_len, d_model, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq)
    return pe.float()


def wavelengths(d_model: int) -> torch.Tensor:
    """(d_model / 2,): the wavelength of the i-th (sin, cos) pair, 2 pi 10000^(2i/d_model)
    ("The wavelengths form a geometric progression from 2 pi to 10000 * 2 pi")."""
    return 2 * math.pi * 10000.0 ** (torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)


def relative_shift_matrix(k: int, d_model: int) -> torch.Tensor:
    """(d_model, d_model) block-diagonal M_k with PE(pos + k) = M_k @ PE(pos) for every pos:
    one 2 x 2 rotation by the angle k / 10000^(2i/d_model) per (sin, cos) pair."""
    m = torch.zeros(d_model, d_model, dtype=torch.float64)
    angles = k * 10000.0 ** (-torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)
    for n, a in enumerate(angles.tolist()):
        c, s = math.cos(a), math.sin(a)
        m[2 * n : 2 * n + 2, 2 * n : 2 * n + 2] = torch.tensor([[c, s], [-s, c]], dtype=torch.float64)
    return m


CASES = {
    "positional_encoding": [(10, 4), (50, 16), (3, 64)],
    "wavelengths": [(4,), (64,)],
    "relative_shift_matrix": [(1, 4), (5, 8), (-3, 6)],
}
