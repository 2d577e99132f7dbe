"""Summaries: ROUGE over a set of examples, and prompting a pretrained GPT with "TL;DR:".

    "To induce summarization behavior we add the text TL;DR: after the article and
    generate 100 tokens with Top-k random sampling (Fan et al., 2018) with k = 2 [...]
    We use the first 3 generated sentences in these 100 tokens as the summary."
    (Radford et al., 2019, *Language Models are Unsupervised Multitask Learners*, 3.6)

Zero-shot: the dialogue and "TL;DR:"; one- and few-shot: solved examples (dialogue,
"TL;DR:", summary) before it, so the model sees what a summary looks like.

The baseline every summarizer must beat is ``lead``: the first N words of the text, which
scores well wherever the text opens with its point.
"""

from __future__ import annotations

import torch

from course_lib import checks

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def rouge(predictions: list[str], references: list[str], types=ROUGE_TYPES) -> dict[str, float]:
    """Mean ROUGE F-measures (the ``rouge-score`` package, Google's implementation)."""
    from rouge_score import rouge_scorer

    predictions, references = checks.texts("predictions", predictions), checks.texts("references", references)
    types = checks.names("types", types, known=ROUGE_TYPES + ("rougeLsum",))
    if len(predictions) != len(references):
        raise ValueError(f"need as many predictions as references (got {len(predictions)} and "
                         f"{len(references)}); pair each prediction with its reference.")
    scorer = rouge_scorer.RougeScorer(list(types))
    scores = [scorer.score(r, p) for p, r in zip(predictions, references)]
    return {t: sum(s[t].fmeasure for s in scores) / len(scores) for t in types}


def lead(text: str, n_words: int) -> str:
    """The first ``n_words`` words of ``text`` (split at white space, line breaks included),
    joined by single spaces: the lead-N baseline summary."""
    if not isinstance(text, str):
        raise ValueError(f"text must be a string, got {type(text).__name__}.")
    checks.count("n_words", n_words, fix="a summary has at least one word")
    return " ".join(text.split()[:n_words])


def _shots(shots) -> list[tuple[str, str]]:
    """``shots`` as a list of (text, summary) pairs of strings, or an error naming the bad one."""
    if isinstance(shots, str) or not isinstance(shots, (list, tuple)):
        raise ValueError(f"shots must be a list of (text, summary) pairs, got {type(shots).__name__}.")
    for i, shot in enumerate(shots):
        if not (isinstance(shot, (list, tuple)) and len(shot) == 2 and all(isinstance(s, str) for s in shot)):
            raise ValueError(f"shots[{i}]={shot!r} must be a (text, summary) pair of strings.")
    return [tuple(s) for s in shots]


def tldr_prompt(text: str, shots=()) -> str:
    """A prompt for ``text``: each (text, summary) of ``shots`` as a solved example, then
    ``text`` and "TL;DR:" for the model to continue."""
    if not isinstance(text, str):
        raise ValueError(f"text must be a string, got {type(text).__name__}.")
    solved = "".join(f"{t}\nTL;DR: {s}\n\n" for t, s in _shots(shots))
    return f"{solved}{text}\nTL;DR:"


@torch.no_grad()
def prompt_summaries(model, tokenizer, texts: list[str], shots=(), max_new_tokens: int = 32) -> list[str]:
    """Greedy continuations of ``tldr_prompt(text, shots)`` by a GPT, cut at the first line
    break: the model's summary of each text. Prompts longer than the model's context keep
    their last ``block_size - max_new_tokens`` tokens."""
    from course_lib.generate import generate

    texts = checks.texts("texts", texts)
    checks.count("max_new_tokens", max_new_tokens)
    shots = _shots(shots)
    device = next(model.parameters()).device
    keep = model.config.block_size - max_new_tokens
    if keep < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt in a context of "
                         f"{model.config.block_size} tokens.")
    model.eval()
    out = []
    for text in texts:
        ids = tokenizer.encode(tldr_prompt(text, shots))[-keep:]
        new = generate(model, torch.tensor([ids], device=device), max_new_tokens, temperature=0.0,
                       vocab_size=tokenizer.vocab_size)[0, len(ids):]
        out.append(tokenizer.decode(new.tolist()).strip().split("\n")[0].strip())
    return out
