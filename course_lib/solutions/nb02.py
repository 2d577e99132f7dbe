"""Solutions of notebook 02 (embeddings). Try the exercises first!"""

from __future__ import annotations

import torch


def embed_one_hot(ids: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """The embedding lookup written as a matrix product: one_hot(ids) @ table.

    ``ids`` (any shape) of integers in [0, V), ``table`` (V, d) -> (*ids.shape, d).
    """
    V = table.shape[0]
    one_hot = (ids[..., None] == torch.arange(V)).to(table.dtype)  # (..., V)
    return one_hot @ table


def cosine_similarity_matrix(vectors: torch.Tensor) -> torch.Tensor:
    """(N, d) -> (N, N): entry (i, j) is cos(angle between vectors i and j)."""
    unit = vectors / vectors.norm(dim=-1, keepdim=True)
    return unit @ unit.T


def nearest_neighbours(vectors: torch.Tensor, i: int, k: int) -> list[int]:
    """The indices of the ``k`` rows most cosine-similar to row ``i`` (``i`` excluded),
    most similar first."""
    sims = cosine_similarity_matrix(vectors)[i].clone()
    sims[i] = float("-inf")
    return sims.topk(k).indices.tolist()


def _cases():
    g = torch.Generator().manual_seed(2)
    table = torch.randn(7, 4, generator=g)
    vectors = torch.randn(9, 5, generator=g)
    return {
        "embed_one_hot": [
            (torch.tensor([0, 3, 6, 3]), table),
            (torch.tensor([[1, 2], [5, 0]]), table),
        ],
        "cosine_similarity_matrix": [(vectors,), (torch.randn(3, 2, generator=g),)],
        "nearest_neighbours": [(vectors, 0, 3), (vectors, 4, 1), (vectors, 8, 8)],
    }


CASES = _cases()
