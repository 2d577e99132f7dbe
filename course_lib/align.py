"""Supervised fine-tuning (SFT) and direct preference optimization (DPO): their batches and losses.

Both train through the one training loop (``course_lib.training.loop.fit``), which gets
only the batches and the loss:

- SFT: next-token cross-entropy on the tokens the mask marks (the assistant's replies);
  a batch is ``(ids, targets)`` with target ``IGNORE_INDEX`` where nothing is learned.
- DPO (Rafailov et al., 2023, eq. 7)::

      L = -log sigmoid( beta * [ (log pi(y_w|x) - log ref(y_w|x)) - (log pi(y_l|x) - log ref(y_l|x)) ] )

  for a prompt x with a chosen reply y_w and a rejected one y_l; pi is the model being
  trained, ref a frozen copy of it from before. ``beta * (log pi - log ref)`` is the
  implicit reward of a reply; a batch is ``(ids (B, 2, T), mask (B, 2, T), ref_logps (B, 2))``,
  chosen first, with the reference's log-probabilities computed once beforehand.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from course_lib.chat import encode_chat
from course_lib.losses import IGNORE_INDEX


def pad(rows: list[list[int]], value: int) -> torch.Tensor:
    """Lists of ids of different lengths -> one ``(len(rows), longest)`` tensor, padded on the right."""
    longest = max(len(r) for r in rows)
    return torch.tensor([r + [value] * (longest - len(r)) for r in rows], dtype=torch.long)


def sft_targets(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Targets for next-token prediction: ``ids`` shifted left, ``IGNORE_INDEX`` where the next
    token is not to be learned (mask 0) and at the last position."""
    targets = torch.full_like(ids, IGNORE_INDEX)
    targets[..., :-1] = ids[..., 1:].masked_fill(mask[..., 1:] == 0, IGNORE_INDEX)
    return targets


def sft_batch(tokenizer, conversations) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, targets)`` for a list of conversations (padding is never a target)."""
    encoded = [encode_chat(tokenizer, c) for c in conversations]
    ids = pad([e[0] for e in encoded], 0)
    mask = pad([e[1] for e in encoded], 0)
    return ids, sft_targets(ids, mask)


def sft_loss(model, batch) -> torch.Tensor:
    """Mean cross-entropy over the reply tokens of ``batch = (ids, targets)``."""
    ids, targets = batch
    return model(ids, targets)[1]


def sequence_logprobs(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``log p(tokens marked by mask | the tokens before them)``, summed per row: ``(B, T) -> (B,)``.
    Position 0 has no prediction and is never counted."""
    logits = model(ids)[0][:, :-1].float()
    logp = torch.gather(F.log_softmax(logits, dim=-1), 2, ids[:, 1:, None])[..., 0]
    return (logp * mask[:, 1:]).sum(dim=1)


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float = 0.1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DPO's loss from the summed log-probabilities of each reply under the policy and the
    reference. Returns ``(mean loss, chosen rewards, rejected rewards)``, the rewards being
    ``beta * (log pi - log ref)`` per pair (detached)."""
    chosen_ratio = policy_chosen - ref_chosen
    rejected_ratio = policy_rejected - ref_rejected
    loss = -F.logsigmoid(beta * (chosen_ratio - rejected_ratio)).mean()
    return loss, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


def pair_tensors(tokenizer, pairs) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids (B, 2, T), mask (B, 2, T))`` for ``(prompt, chosen, rejected)`` pairs; the mask
    marks each reply's tokens."""
    rows, masks = [], []
    for prompt, chosen, rejected in pairs:
        for answer in (chosen, rejected):
            ids, mask = encode_chat(tokenizer, [{"role": "user", "content": prompt},
                                                {"role": "assistant", "content": answer}])
            rows.append(ids)
            masks.append(mask)
    ids, mask = pad(rows, 0), pad(masks, 0)
    return ids.view(len(pairs), 2, -1), mask.view(len(pairs), 2, -1)


@torch.no_grad()
def pair_logprobs(model, ids: torch.Tensor, mask: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """``(B, 2)`` summed log-probabilities of the chosen and rejected replies (no gradient)."""
    flat_ids, flat_mask = ids.flatten(0, 1), mask.flatten(0, 1)
    out = [sequence_logprobs(model, flat_ids[i:i + batch_size], flat_mask[i:i + batch_size])
           for i in range(0, len(flat_ids), batch_size)]
    return torch.cat(out).view(-1, 2)


def dpo_batch_loss(model, batch, beta: float = 0.1) -> torch.Tensor:
    """DPO's loss on ``batch = (ids (B, 2, T), mask (B, 2, T), ref_logps (B, 2))``."""
    ids, mask, ref = batch
    logps = sequence_logprobs(model, ids.flatten(0, 1), mask.flatten(0, 1)).view(-1, 2)
    return dpo_loss(logps[:, 0], logps[:, 1], ref[:, 0], ref[:, 1], beta)[0]


def rewards(model, ids: torch.Tensor, mask: torch.Tensor, ref_logps: torch.Tensor,
            beta: float = 0.1) -> torch.Tensor:
    """``(B, 2)`` implicit rewards ``beta * (log pi - log ref)`` of the chosen and rejected replies."""
    return beta * (pair_logprobs(model, ids, mask) - ref_logps)
