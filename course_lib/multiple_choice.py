"""Multiple-choice evaluation by log-likelihood, the way evaluation harnesses score such tasks.

The model writes nothing: each option is scored by the sum of its tokens' log-probabilities
after the question, ``sum_t log p(option_t | question, option_<t)``, and the model's answer
is the option with the highest score. It needs no reply format, so it measures a base model
and a chat model alike (with the same prompt for both).
"""

from __future__ import annotations

import torch

from course_lib.align import pad, sequence_logprobs


@torch.no_grad()
def choice_logprobs(model, prompt_ids: list[int], option_ids: list[list[int]]) -> torch.Tensor:
    """``(n_options,)`` summed log-probabilities of each option's tokens after ``prompt_ids``."""
    if not prompt_ids or not option_ids or any(not o for o in option_ids):
        raise ValueError("give a non-empty prompt and at least one option, each of at least one token.")
    device = next(model.parameters()).device
    rows = [prompt_ids + o for o in option_ids]
    masks = [[0] * len(prompt_ids) + [1] * len(o) for o in option_ids]
    return sequence_logprobs(model, pad(rows, 0).to(device), pad(masks, 0).to(device)).cpu()


def accuracy(model, questions, encode_prompt, encode_option) -> tuple[float, list[int]]:
    """Share of ``questions`` (``(prompt, options, right index)``) whose right option scores
    highest, and the option picked for each. ``encode_prompt`` / ``encode_option``: text -> ids."""
    if not questions:
        raise ValueError("no questions to score; give at least one (prompt, options, right index).")
    picked = []
    for prompt, options, _ in questions:
        scores = choice_logprobs(model, encode_prompt(prompt), [encode_option(o) for o in options])
        picked.append(int(scores.argmax()))
    right = sum(p == q[2] for p, q in zip(picked, questions))
    return right / len(questions), picked
