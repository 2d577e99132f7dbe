"""Reference solutions for notebook 10 (the Transformer family). Try the exercises first!"""

from __future__ import annotations

import re
from collections import Counter

import torch


def apply_80_10_10(ids: torch.Tensor, selected: torch.Tensor, u: torch.Tensor, random_ids: torch.Tensor,
                   mask_id: int) -> torch.Tensor:
    """BERT's rule, given the draws: a selected position becomes ``mask_id`` where
    ``u < 0.8``, ``random_ids`` where ``0.8 <= u < 0.9``, and keeps its token otherwise."""
    out = torch.where(selected & (u < 0.8), torch.full_like(ids, mask_id), ids)
    return torch.where(selected & (u >= 0.8) & (u < 0.9), random_ids, out)


def masked_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean of -log p(label) over the positions whose label is not -100."""
    keep = labels != -100
    logp = logits[keep].log_softmax(-1)
    return -logp.gather(-1, labels[keep][:, None]).mean()


def last_token_index(ids: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Index of the last non-padding token in each row of right-padded ``ids``."""
    return (ids != pad_id).sum(1) - 1


def rouge1_f(candidate: str, reference: str) -> float:
    """ROUGE-1 F-measure: unigram overlap (counts clipped) between the two texts, after
    lower-casing and keeping runs of letters and digits as words."""
    def words(text):
        return re.sub(r"[^a-z0-9]+", " ", text.lower()).split()

    c, r = Counter(words(candidate)), Counter(words(reference))
    overlap = sum((c & r).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / sum(c.values()), overlap / sum(r.values())
    return 2 * precision * recall / (precision + recall)


_g = torch.Generator().manual_seed(10)
_ids = torch.randint(4, 40, (3, 12), generator=_g)
CASES = {
    "apply_80_10_10": [
        (_ids, torch.rand(3, 12, generator=_g) < 0.3, torch.rand(3, 12, generator=_g),
         torch.randint(4, 40, (3, 12), generator=_g), 3),
        (torch.tensor([[5, 6, 7, 8]]), torch.tensor([[True, True, True, False]]),
         torch.tensor([[0.1, 0.85, 0.95, 0.1]]), torch.tensor([[9, 9, 9, 9]]), 3),
    ],
    "masked_lm_loss": [
        (torch.randn(2, 6, 11, generator=_g), torch.tensor([[-100, 3, -100, 7, -100, -100], [1, -100, -100, -100, 10, 2]])),
        (torch.randn(1, 4, 5, generator=_g), torch.tensor([[4, -100, -100, -100]])),
    ],
    "last_token_index": [
        (torch.tensor([[5, 6, 7, 0, 0], [8, 0, 0, 0, 0], [1, 2, 3, 4, 5]]), 0),
        (torch.tensor([[3, 3, 1, 1]]), 1),
    ],
    "rouge1_f": [
        ("anna and ben will meet on friday .", "anna and ben will meet at the cafe on friday ."),
        ("the keys are in the car", "the keys of anna are in the kitchen ."),
        ("no overlap here", "something else entirely"),
        ("the the the", "the cat"),
    ],
}
