"""Fine-tuning the three kinds of Transformer for a classification (notebook 10).

- encoder-only (BERT): a head on the first token, ``[CLS]``, whose hidden state has seen
  every position ("The final hidden state corresponding to this token is used as the
  aggregate sequence representation for classification tasks", Devlin et al., 2019, 3);
- decoder-only (GPT): a head on the last token, the only position that has seen the
  whole input under the causal mask (as GPT-1 classifies: "the input is passed through
  our pre-trained model to obtain the final transformer block's activation", 3.2);
- encoder-decoder: text to text, the label is a word the decoder writes (as T5 does),
  trained with ``course_lib.training.translation.train``.

For one answer per token (tagging), ``EncoderTagger`` and ``DecoderTagger`` put a linear
layer on every position: the encoder's position *i* has seen the whole input, the
decoder's only positions 0..*i*.

Also the inputs of each kind (``[CLS] a [SEP] b [SEP]`` with segments for BERT,
``a [SEP] b <eos>`` for GPT), padded batches, and one short training loop, ``fit``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import torch
from torch import nn

from course_lib import checks
from course_lib.tokenizer import WordTokenizer

SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>", "<cls>", "<sep>", "<mask>")


def build_tokenizer(texts: Sequence[str]) -> WordTokenizer:
    """One word-level vocabulary for all three models, with BERT's and GPT's special tokens."""
    return WordTokenizer.from_texts(checks.texts("texts", texts), special_tokens=SPECIALS)


def encoder_input(tok, first: str, second: str) -> tuple[list[int], list[int]]:
    """BERT's input for a pair: ``[CLS] first [SEP] second [SEP]``, and the segment of each
    token (0 for ``[CLS] first [SEP]``, 1 for ``second [SEP]``)."""
    checks.texts("the pair (first, second)", [first, second])
    s = tok.special_tokens
    a = [s["<cls>"]] + tok.encode(first) + [s["<sep>"]]
    b = tok.encode(second) + [s["<sep>"]]
    return a + b, [0] * len(a) + [1] * len(b)


def decoder_input(tok, first: str, second: str) -> list[int]:
    """GPT's input for a pair: ``first [SEP] second <eos>`` (read left to right)."""
    checks.texts("the pair (first, second)", [first, second])
    s = tok.special_tokens
    return tok.encode(first) + [s["<sep>"]] + tok.encode(second) + [s["<eos>"]]


def pad(seqs: Sequence[Sequence[int]], pad_id: int) -> torch.Tensor:
    """Lists of ids -> ``(B, L)`` long tensor, padded on the right with ``pad_id``."""
    if not seqs:
        raise ValueError("pad() needs at least one sequence.")
    out = torch.full((len(seqs), max(len(s) for s in seqs)), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.as_tensor(list(s), dtype=torch.long)
    return out


def take(t: torch.Tensor, idx, pad_id: int, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Rows ``idx`` of a padded ``(N, L)`` tensor, cut to the longest of those rows."""
    rows = t[idx]
    n = int((rows != pad_id).sum(1).max()) if lengths is None else int(lengths[idx].max())
    return rows[:, :n]


def last_token_index(ids: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Index of the last non-padding token of each row of right-padded ``ids (B, L)``."""
    if ids.dim() != 2:
        raise ValueError(f"expected ids of shape (B, L), got {tuple(ids.shape)}.")
    n = (ids != pad_id).sum(1)
    if bool((n == 0).any()):
        raise ValueError("a row holds only padding: there is no last token to classify from.")
    return n - 1


def gpt_hidden_states(gpt, ids: torch.Tensor) -> torch.Tensor:
    """A ``course_lib.gpt.GPT``'s final hidden states ``(B, T, d_model)``: what its output
    projection reads (``gpt.out_proj(gpt_hidden_states(gpt, ids))`` are its logits)."""
    x = gpt.pos_embed(gpt.tok_embed(ids))
    for layer in gpt.layers:
        x = layer(x)
    return gpt.final_norm(x)


def _head(d_model: int, n_classes: int) -> nn.Sequential:
    checks.count("n_classes", n_classes, minimum=2, fix="a classifier chooses between at least two classes")
    return nn.Sequential(nn.Linear(d_model, d_model), nn.Tanh(), nn.Linear(d_model, n_classes))


def _tag_head(d_model: int, n_tags: int) -> nn.Linear:
    checks.count("n_tags", n_tags, minimum=2, fix="a tagger chooses between at least two tags")
    return nn.Linear(d_model, n_tags)


class FirstTokenClassifier(nn.Module):
    """BERT + a head (dense, tanh, dense) on the hidden state of the first token, [CLS]."""

    def __init__(self, bert, n_classes: int = 2):
        super().__init__()
        self.bert = bert
        self.head = _head(bert.config.d_model, n_classes)

    def forward(self, ids: torch.Tensor, segments: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.bert.encode(ids, segments)[:, 0])


class LastTokenClassifier(nn.Module):
    """GPT + a head (dense, tanh, dense) on the hidden state of the last non-padding token."""

    def __init__(self, gpt, n_classes: int = 2, pad_id: int = 0):
        super().__init__()
        self.gpt = gpt
        self.pad_id = pad_id
        self.head = _head(gpt.config.d_model, n_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = gpt_hidden_states(self.gpt, ids)
        last = last_token_index(ids, self.pad_id)
        return self.head(h[torch.arange(len(ids), device=ids.device), last])


class EncoderTagger(nn.Module):
    """BERT + a linear layer on every position's hidden state: ``(B, L, n_tags)`` logits."""

    def __init__(self, bert, n_tags: int):
        super().__init__()
        self.bert = bert
        self.head = _tag_head(bert.config.d_model, n_tags)

    def forward(self, ids: torch.Tensor, segments: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.bert.encode(ids, segments))


class DecoderTagger(nn.Module):
    """GPT + a linear layer on every position's hidden state: ``(B, L, n_tags)`` logits; the
    tag of position *i* is read from a state that has seen positions 0..*i* only."""

    def __init__(self, gpt, n_tags: int):
        super().__init__()
        self.gpt = gpt
        self.head = _tag_head(gpt.config.d_model, n_tags)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(gpt_hidden_states(self.gpt, ids))


def batch_indices(n: int, batch_size: int, seed: int) -> Callable[[int], torch.Tensor]:
    """``indices(step)``: the example indices of a step (0-based), going through a fresh
    permutation of the ``n`` examples each epoch; a pure function of (seed, step)."""
    checks.count("n", n)
    checks.count("batch_size", batch_size)
    checks.count("seed", seed, minimum=0)
    if not 1 <= batch_size <= n:
        raise ValueError(f"batch_size={batch_size} must be between 1 and the number of examples ({n}).")
    per_epoch = n // batch_size
    cache: dict[int, torch.Tensor] = {}

    def indices(step: int) -> torch.Tensor:
        epoch, k = divmod(step, per_epoch)
        if epoch not in cache:
            cache.clear()
            cache[epoch] = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        return cache[epoch][k * batch_size : (k + 1) * batch_size]

    return indices


def linear_schedule(step: int, lr: float, warmup: int, steps: int) -> float:
    """BERT's schedule: linear warmup over ``warmup`` steps, then linear decay to zero."""
    checks.count("warmup", warmup, minimum=0)
    checks.count("steps", steps)
    if step < warmup:
        return lr * (step + 1) / warmup
    return lr * max(0.0, (steps - step) / max(1, steps - warmup))


def fit(model: nn.Module, loss_fn: Callable[[int], torch.Tensor], steps: int, lr: float = 1e-3,
        warmup: int = 0, weight_decay: float = 0.01, grad_clip: float = 1.0) -> dict:
    """The short loop: for each step, ``loss_fn(step)`` (a batch's loss), backward, clip,
    AdamW with ``linear_schedule``, through the library's one loop
    (``course_lib.training.loop.fit``). Returns ``{"losses": [...], "seconds": ...}``."""
    from course_lib.training.loop import fit as fit_steps

    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps={steps!r} must be an integer >= 1.")
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    rest = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": rest, "weight_decay": 0.0}], lr=lr)
    losses = []

    def loss_of(_model, step: int) -> torch.Tensor:
        loss = loss_fn(step)
        losses.append(loss.detach().item())
        if not math.isfinite(losses[-1]):
            raise FloatingPointError(f"the loss is {losses[-1]} at step {step}; lower the learning rate.")
        return loss

    start = time.perf_counter()
    fit_steps(model, opt, lambda step: step, loss_of, steps=steps, grad_clip=grad_clip or 0.0, progress=False,
              lr_at=lambda step: linear_schedule(step, lr, warmup, steps), eval_every=steps)
    model.eval()
    return {"losses": losses, "seconds": time.perf_counter() - start}


@torch.no_grad()
def predict(classify: Callable[[torch.Tensor], torch.Tensor], n: int, batch_size: int = 256) -> torch.Tensor:
    """Predicted class of each of ``n`` examples: ``classify(idx)`` returns the logits of
    the examples ``idx``; the argmax is taken batch by batch."""
    checks.count("n", n, fix="there must be examples to predict")
    checks.count("batch_size", batch_size)
    out = [classify(torch.arange(i, min(i + batch_size, n))).argmax(-1) for i in range(0, n, batch_size)]
    return torch.cat(out)
