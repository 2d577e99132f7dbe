"""Reference solutions for notebook 08 (GPT training). Try the exercises first!"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def gpt2_param_count(vocab_size: int, block_size: int, n_layers: int, d_model: int) -> int:
    """Parameters of a GPT-2-shaped model with a tied output head.

    Embeddings: (vocab + block) * d. Per block: two LayerNorms (2 * 2d), attention
    (4 matrices d x d + 4 biases d), MLP (d x 4d + 4d, 4d x d + d). Final LayerNorm 2d.
    """
    d = d_model
    per_block = 2 * 2 * d + (4 * d * d + 4 * d) + (d * 4 * d + 4 * d + 4 * d * d + d)
    return (vocab_size + block_size) * d + n_layers * per_block + 2 * d


def top_p_mask(probs: torch.Tensor, p: float) -> torch.Tensor:
    """Bool mask of the tokens nucleus sampling keeps: the smallest set of most likely
    tokens whose probabilities add up to at least ``p``."""
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    before = sorted_probs.cumsum(-1) - sorted_probs
    keep_sorted = before < p
    return keep_sorted.scatter(-1, order, keep_sorted)


def next_token_loss(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Language-model loss: logits ``(B, T, V)`` at position t predict ``tokens[:, t + 1]``;
    mean cross-entropy over the ``T - 1`` predictions that have a target."""
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))


_g = torch.Generator().manual_seed(8)
CASES = {
    "gpt2_param_count": [(50257, 1024, 12, 768), (65, 64, 3, 96), (100, 32, 1, 16)],
    "top_p_mask": [
        (torch.tensor([0.5, 0.3, 0.15, 0.05]), 0.7),
        (torch.tensor([0.1, 0.6, 0.3]), 0.6),
        (torch.softmax(torch.randn(3, 10, generator=_g), -1), 0.9),
        (torch.tensor([0.25, 0.25, 0.25, 0.25]), 1.0),
    ],
    "next_token_loss": [
        (torch.randn(2, 5, 7, generator=_g), torch.randint(0, 7, (2, 5), generator=_g)),
        (torch.randn(1, 3, 4, generator=_g), torch.tensor([[0, 3, 1]])),
    ],
}
