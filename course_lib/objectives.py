"""Three pre-training objectives: how a batch of token ids becomes ``(inputs, targets)``.

- masked LM (BERT): ``mask_tokens``, the 15% / 80-10-10 rule (it lives in ``course_lib.bert``
  and is re-exported here);
- next token (GPT): ``next_token``, the ids shifted by one;

    "we use a standard language modeling objective to maximize the following likelihood:
    L1(U) = sum_i log P(u_i | u_{i-k}, ..., u_{i-1}; Theta)"  (Radford et al., 2018, 3.1)

- span corruption (T5): ``span_corruption``, with ``span_mask`` choosing the dropped tokens;

    "All consecutive spans of dropped-out tokens are replaced by a single sentinel token. [...]
    The target then corresponds to all of the dropped-out spans of tokens, delimited by the
    same sentinel tokens used in the input sequence plus a final sentinel token to mark the
    end of the target sequence."  (Raffel et al., 2020, 3.1.4)

    "if we are processing a sequence of 500 tokens and we have specified that 15% of tokens
    should be corrupted and that there should be 25 total spans, then the total number of
    corrupted tokens would be 500 x 0.15 = 75 and the average span length would be
    75/25 = 3."  (3.3.4)

Every target that is not scored is ``IGNORE_INDEX``, which ``F.cross_entropy`` skips.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from course_lib import checks
from course_lib.bert import mask_tokens
from course_lib.classify import pad
from course_lib.losses import IGNORE_INDEX

__all__ = ["IGNORE_INDEX", "mask_tokens", "next_token", "span_corruption", "span_mask"]


def _check_ids(ids, min_len: int) -> None:
    if not torch.is_tensor(ids) or ids.dtype != torch.long or ids.dim() != 2:
        what = f"a {ids.dtype} tensor of shape {tuple(ids.shape)}" if torch.is_tensor(ids) else type(ids).__name__
        raise ValueError(f"ids must be a long tensor of token ids of shape (B, L), got {what}.")
    if ids.shape[1] < min_len:
        raise ValueError(f"ids has {ids.shape[1]} tokens per row; this objective needs at least {min_len}.")


def next_token(ids: torch.Tensor, pad_id: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """GPT's objective: ``inputs = ids[:, :-1]``, ``targets = ids[:, 1:]``: position ``t`` of
    the inputs is scored on token ``t + 1``. A target that is padding is ``IGNORE_INDEX``."""
    _check_ids(ids, 2)
    checks.count("pad_id", pad_id, minimum=0, optional=True)
    targets = ids[:, 1:]
    if pad_id is not None:
        targets = targets.masked_fill(targets == pad_id, IGNORE_INDEX)
    return ids[:, :-1], targets


def _segments(n_items: int, n_segments: int, generator: torch.Generator | None) -> torch.Tensor:
    """``n_items`` split into ``n_segments`` non-empty runs, uniformly at random: the lengths.
    The ``n_segments - 1`` cuts sit at a random subset of the ``n_items - 1`` gaps."""
    cut = torch.randperm(n_items - 1, generator=generator) < n_segments - 1
    starts = torch.cat([torch.zeros(1, dtype=torch.long), cut.nonzero().squeeze(1) + 1])
    return torch.diff(starts, append=torch.tensor([n_items]))


def span_mask(length: int, noise_density: float = 0.15, mean_span_length: float = 3.0,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """Which of ``length`` tokens T5 drops: a bool tensor ``(length,)``.

    ``round(length * noise_density)`` noise tokens (at least 1, at most ``length - 1``) in
    ``round(noise / mean_span_length)`` spans (at least 1, at most one per noise or kept
    token); the noise and the kept tokens are each cut into that many non-empty runs at
    random, and the runs alternate, kept first: kept, noise, kept, noise, ..., noise.
    """
    checks.count("length", length, minimum=2, fix="span corruption needs at least 2 tokens per row")
    checks.number("noise_density", noise_density, 0, 1, above=True, fix="T5 drops 0.15 of the tokens")
    checks.number("mean_span_length", mean_span_length, 1, fix="T5 uses spans of 3 tokens on average")
    n_noise = min(max(round(length * noise_density), 1), length - 1)
    n_spans = min(max(round(n_noise / mean_span_length), 1), n_noise, length - n_noise)
    noise = _segments(n_noise, n_spans, generator)
    kept = _segments(length - n_noise, n_spans, generator)
    runs = torch.stack([kept, noise], dim=1).flatten()
    return torch.tensor([False, True]).repeat(n_spans).repeat_interleave(runs)


def _corrupt_row(tokens: torch.Tensor, noise: torch.Tensor, sentinels: torch.Tensor):
    """One row: (input, target) with span ``j`` replaced by ``sentinels[j]`` in the input, and
    ``sentinels[j]`` + span ``j`` for every span, then ``sentinels[n_spans]``, as the target."""
    starts = noise & ~torch.cat([torch.tensor([False]), noise[:-1]])  # first token of each span
    span = starts.cumsum(0) - 1
    n_spans = int(starts.sum())
    if n_spans + 1 > len(sentinels):
        raise ValueError(f"a row of {len(tokens)} tokens has {n_spans} spans and needs {n_spans + 1} sentinels; "
                         f"{len(sentinels)} were given (T5 reserves 100).")
    inputs = torch.where(starts, sentinels[span.clamp(min=0)], tokens)[~noise | starts]
    targets = [torch.cat([sentinels[j : j + 1], tokens[noise & (span == j)]]) for j in range(n_spans)]
    return inputs, torch.cat(targets + [sentinels[n_spans : n_spans + 1]])


def span_corruption(ids: torch.Tensor, sentinels: Sequence[int], noise_density: float = 0.15,
                    mean_span_length: float = 3.0, pad_id: int | None = None, eos_id: int | None = None,
                    generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """T5's objective. For each row (its tokens other than ``pad_id``), ``span_mask`` picks
    the spans to drop; the input keeps the other tokens and puts ``sentinels[j]`` where span
    ``j`` was; the target is ``sentinels[0]``, span 0, ``sentinels[1]``, span 1, ..., then a
    final sentinel. ``eos_id``, if given, ends both (T5's code appends EOS).

    ``sentinels``: distinct ids that never occur in ``ids`` (T5: ``<extra_id_0>`` is the last id
    of the vocabulary, ``<extra_id_1>`` the one before, ...). Returns ``(inputs, targets)``,
    right-padded with ``pad_id`` and ``IGNORE_INDEX`` where rows differ in length.
    """
    _check_ids(ids, 2)
    checks.count("pad_id", pad_id, minimum=0, optional=True)
    checks.count("eos_id", eos_id, minimum=0, optional=True)
    if isinstance(sentinels, (str, bytes)) or not isinstance(sentinels, Sequence) or not sentinels:
        raise ValueError(f"sentinels={sentinels!r} must be a non-empty list of token ids.")
    for s in sentinels:
        checks.count("a sentinel id", s, minimum=0)
    if len(set(sentinels)) != len(sentinels):
        raise ValueError(f"sentinels {list(sentinels)} must be distinct: each span needs its own id.")
    sentinel_ids = torch.tensor(list(sentinels), dtype=torch.long)
    cpu = ids.cpu()
    if torch.isin(cpu, sentinel_ids).any():
        raise ValueError("ids contain a sentinel id; sentinels must be ids that the text never uses.")
    pairs = []
    for row in cpu:
        tokens = row[row != pad_id] if pad_id is not None else row
        pairs.append(_corrupt_row(tokens, span_mask(len(tokens), noise_density, mean_span_length, generator),
                                  sentinel_ids))
    end = [] if eos_id is None else [eos_id]
    # without a pad id every row has the same length (the counts depend only on it): no filling
    inputs = pad([i.tolist() + end for i, _ in pairs], 0 if pad_id is None else pad_id)
    targets = pad([t.tolist() + end for _, t in pairs], IGNORE_INDEX)
    return inputs.to(ids.device), targets.to(ids.device)
