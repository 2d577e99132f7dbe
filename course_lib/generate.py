"""Text generation from a GPT: greedy, temperature, top-k and top-p (nucleus) sampling,
with a KV cache.

    "we sample from the distribution P(x_t | x_1 ... x_{t-1}) [...] and feed the sampled
    token back in as input"; with a KV cache each step computes keys and values for the
    new token only, instead of for the whole prefix again.

Command line (samples from a run written by ``python -m course_lib train gpt``):

    python -m course_lib generate runs/gpt "The " --top-p 0.9
"""

from __future__ import annotations

import warnings

import torch


def check_sampling_args(temperature: float, top_k: int | None, top_p: float | None) -> None:
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not temperature >= 0 \
            or temperature == float("inf"):
        raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature}.")
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
        raise ValueError(f"top_k must be a positive number of tokens (or None), got {top_k}.")
    if top_p is not None and (not isinstance(top_p, (int, float)) or not (0.0 < top_p <= 1.0)):
        raise ValueError(f"top_p must be in (0, 1] (the probability mass kept), got {top_p}.")


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` largest logits of the last dimension; the rest become -inf."""
    k = min(k, logits.shape[-1])
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus: keep the smallest set of most likely tokens whose probabilities sum to >= p."""
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # probability of the tokens ranked above
    drop_sorted = mass_before >= p  # the top token always stays (mass_before = 0 < p)
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def next_token_probs(
    logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None
) -> torch.Tensor:
    """The distribution sampled from: softmax(logits / T), restricted to top-k, then top-p.

    ``temperature=0`` is greedy: all the mass on the most likely token.
    """
    check_sampling_args(temperature, top_k, top_p)
    logits = logits.float()
    if temperature == 0:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).to(logits.dtype)
    logits = logits / temperature
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None and top_p < 1.0:
        logits = top_p_filter(logits, top_p)
    return logits.softmax(dim=-1)


def positions_computed(prompt_len: int, new_tokens: int, block_size: int, use_cache: bool) -> int:
    """How many positions go through the model to generate ``new_tokens`` tokens."""
    if not use_cache:
        return sum(min(prompt_len + i, block_size) for i in range(new_tokens))
    total, cached = 0, 0
    for i in range(new_tokens):
        context = min(prompt_len + i, block_size)
        if i == 0 or prompt_len + i > block_size:  # (re)fill: the window slid past the cache
            total, cached = total + context, context
        else:
            total, cached = total + 1, cached + 1
    return total


@torch.no_grad()
def generate(
    model,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_id: int | None = None,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
    vocab_size: int | None = None,
) -> torch.Tensor:
    """Extend ``idx (B, T)`` by up to ``max_new_tokens`` tokens; returns ``(B, T + n)``.

    A prompt longer than the context is cropped to its last ``block_size`` tokens (with a
    warning). Generation stops early once every row has produced ``eos_id``; finished
    rows are padded with ``eos_id``. ``use_cache=False`` recomputes the whole context
    at every step (same tokens, more work). ``vocab_size``: never pick ids at or above it
    (a model whose vocabulary was padded past the tokenizer's, e.g. 50,304 for GPT-2).
    """
    check_sampling_args(temperature, top_k, top_p)
    _check_generate_args(idx, max_new_tokens, vocab_size)
    if idx.dim() == 1:
        idx = idx[None]
    cfg = model.config
    idx = _checked_prompt(idx, cfg)
    was_training = model.training
    model.eval()
    finished = torch.zeros(idx.shape[0], dtype=torch.bool, device=idx.device)
    caches, fed = None, 0  # fed: tokens of idx the caches already hold
    for _ in range(max_new_tokens):
        logits, caches = _forward_step(model, idx, caches, fed, use_cache, cfg.block_size)
        fed = idx.shape[1]
        nxt = _sample_next(logits[:, -1, :], temperature, top_k, top_p, generator, vocab_size)
        if eos_id is not None:
            nxt = nxt.masked_fill(finished[:, None], eos_id)
            finished |= nxt[:, 0] == eos_id
        idx = torch.cat([idx, nxt], dim=1)
        if eos_id is not None and bool(finished.all()):
            break
    model.train(was_training)
    return idx


def _check_generate_args(idx, max_new_tokens, vocab_size) -> None:
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens={max_new_tokens!r} must be an integer >= 0 (the tokens to add).")
    if not torch.is_tensor(idx) or idx.dtype.is_floating_point or idx.dtype == torch.bool or idx.dim() not in (1, 2):
        what = f"a {idx.dtype} tensor of shape {tuple(idx.shape)}" if torch.is_tensor(idx) else type(idx).__name__
        raise ValueError(f"the prompt must be token ids, an integer tensor of shape (T,) or (B, T); got {what}.")
    if vocab_size is not None and (not isinstance(vocab_size, int) or vocab_size < 1):
        raise ValueError(f"vocab_size={vocab_size!r} must be an integer >= 1 (or None).")


def _checked_prompt(idx: torch.Tensor, cfg) -> torch.Tensor:
    """The prompt ``(B, T)`` once its ids are checked, cropped to the last ``cfg.block_size`` tokens."""
    if idx.numel() == 0:
        raise ValueError("the prompt is empty; give at least one token.")
    if int(idx.min()) < 0 or int(idx.max()) >= cfg.vocab_size:
        bad = int(idx.max()) if int(idx.max()) >= cfg.vocab_size else int(idx.min())
        raise IndexError(
            f"prompt token id {bad} is outside the model's vocabulary [0, {cfg.vocab_size}); "
            "encode the prompt with the tokenizer the model was trained with."
        )
    if idx.shape[1] > cfg.block_size:
        warnings.warn(  # stacklevel 3: the frame that called generate (through torch.no_grad)
            f"prompt of {idx.shape[1]} tokens is longer than the context of {cfg.block_size}; "
            f"using its last {cfg.block_size} tokens.", stacklevel=3,
        )
        idx = idx[:, -cfg.block_size:]
    return idx


def _forward_step(model, idx: torch.Tensor, caches, fed: int, use_cache: bool, block_size: int):
    """``(logits, caches)`` of one step: only the new tokens while the cache holds the rest."""
    if use_cache and caches is not None and idx.shape[1] <= block_size:
        logits, _ = model(idx[:, fed:], caches=caches)
    else:  # no cache, first step, or the context window slid: run the last block_size tokens
        window = idx[:, -block_size:]
        caches = model.new_caches() if use_cache and idx.shape[1] <= block_size else None
        logits, _ = model(window, caches=caches)
    return logits, caches


def _sample_next(last: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None,
                 generator: torch.Generator | None, vocab_size: int | None) -> torch.Tensor:
    """The next token ``(B, 1)`` from the last position's logits ``(B, V)``."""
    if vocab_size is not None and vocab_size < last.shape[-1]:
        last = last[:, :vocab_size]  # drop the padding ids
    probs = next_token_probs(last, temperature, top_k, top_p)
    return probs.argmax(-1, keepdim=True) if temperature == 0 else torch.multinomial(probs, 1, generator=generator)
