"""Token embeddings and positional encodings.

    "we use learned embeddings to convert the input tokens and output tokens to vectors
    of dimension d_model. [...] In the embedding layers, we multiply those weights by
    sqrt(d_model)."  (Vaswani et al., 2017, 3.4)

    PE(pos, 2i)   = sin(pos / 10000^(2i / d_model))
    PE(pos, 2i+1) = cos(pos / 10000^(2i / d_model))          (3.5)
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _check_ids(ids: torch.Tensor, vocab_size: int) -> None:
    if ids.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise TypeError(f"token ids must be an integer tensor, got {ids.dtype}.")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
        bad = int(ids.max()) if int(ids.max()) >= vocab_size else int(ids.min())
        raise IndexError(
            f"token id {bad} is outside the vocabulary [0, {vocab_size}); encode with the "
            "tokenizer this model was built for, or enlarge vocab_size."
        )


def embed(ids: torch.Tensor, weight: torch.Tensor, padding_idx: int | None = None) -> torch.Tensor:
    """``F.embedding`` with a clear error for an id outside the vocabulary. On the CPU the
    lookup itself refuses such an id, so the ids are only read (two reductions and a wait)
    when it has: the check costs nothing on the hot path. On GPUs a bad id is a device-side
    assert, so there they are checked first, except inside ``torch.compile``, where reading
    ids on the host would split the compiled graph in two at every embedding."""
    if torch.compiler.is_compiling():  # torch >= 2.3
        return nn.functional.embedding(ids, weight, padding_idx)
    if ids.device.type != "cpu":
        _check_ids(ids, weight.shape[0])
        return nn.functional.embedding(ids, weight, padding_idx)
    try:
        return nn.functional.embedding(ids, weight, padding_idx)
    except (IndexError, RuntimeError):
        _check_ids(ids, weight.shape[0])  # raises the clear error
        raise


class TokenEmbedding(nn.Module):
    """Lookup table ``vocab_size x d_model``; outputs are scaled by sqrt(d_model) when
    ``scale=True`` (the paper's encoder-decoder; GPT-2 does not scale)."""

    def __init__(self, vocab_size: int, d_model: int, scale: bool = True, padding_idx: int | None = None):
        super().__init__()
        self.vocab_size, self.d_model, self.scale = vocab_size, d_model, scale
        self.weight = nn.Parameter(torch.empty(vocab_size, d_model))
        self.padding_idx = padding_idx
        nn.init.normal_(self.weight, mean=0.0, std=d_model**-0.5 if scale else 0.02)
        if padding_idx is not None:
            with torch.no_grad():
                self.weight[padding_idx].zero_()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = embed(ids, self.weight, self.padding_idx)
        return x * math.sqrt(self.d_model) if self.scale else x


def _check_positions(x: torch.Tensor, d_model: int, start: int, max_len: int, what: str) -> None:
    if x.dim() != 3 or x.shape[-1] != d_model:
        raise ValueError(
            f"expected embeddings of shape (B, L, d_model={d_model}), got {tuple(x.shape)}; "
            "add positions to the token embeddings, not to the token ids."
        )
    if start < 0:
        raise ValueError(f"start must be >= 0 (the first position's index), got {start}.")
    if start + x.shape[1] > max_len:
        raise ValueError(
            f"sequence of length {start + x.shape[1]} is longer than the {what}'s "
            f"max_len={max_len}; crop the input to the last max_len tokens or build the model "
            "with a larger max_len."
        )


def sinusoidal_encoding(max_len: int, d_model: int, base: float = 10000.0, dtype=torch.float32) -> torch.Tensor:
    """The ``(max_len, d_model)`` table of the paper's formula (even columns sin, odd cos)."""
    if d_model % 2:
        raise ValueError(f"sinusoidal encoding needs an even d_model (sin/cos pairs), got {d_model}.")
    pos = torch.arange(max_len, dtype=torch.float64)[:, None]
    i2 = torch.arange(0, d_model, 2, dtype=torch.float64)  # 2i
    angle = pos / base ** (i2 / d_model)
    pe = torch.empty(max_len, d_model, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(angle)
    pe[:, 1::2] = torch.cos(angle)
    return pe.to(dtype)


class SinusoidalPositionalEncoding(nn.Module):
    """Adds the fixed sinusoidal table to ``x (B, L, d_model)``, then dropout."""

    def __init__(self, d_model: int, max_len: int = 5000, dropout: float = 0.0, base: float = 10000.0):
        super().__init__()
        self.d_model, self.max_len = d_model, max_len
        self.dropout = nn.Dropout(dropout)
        self.register_buffer("pe", sinusoidal_encoding(max_len, d_model, base), persistent=False)

    def forward(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        _check_positions(x, self.d_model, start, self.max_len, "positional encoding")
        L = x.shape[1]
        return self.dropout(x + self.pe[start : start + L].to(x.dtype))


class LearnedPositionalEmbedding(nn.Module):
    """A trained ``max_len x d_model`` table of positions (as in GPT-2), added to ``x``."""

    def __init__(self, max_len: int, d_model: int, dropout: float = 0.0):
        super().__init__()
        self.d_model, self.max_len = d_model, max_len
        self.weight = nn.Parameter(torch.empty(max_len, d_model))
        nn.init.normal_(self.weight, std=0.02)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        _check_positions(x, self.d_model, start, self.max_len, "learned positional embedding")
        L = x.shape[1]
        return self.dropout(x + self.weight[start : start + L])
