"""Decoding a trained encoder-decoder: greedy search and beam search.

    "We used beam search with a beam size of 4 and length penalty alpha = 0.6. [...]
    We set the maximum output length during inference to input length + 50, but
    terminate early when possible."  (Vaswani et al., 2017, 6.1)

The source is encoded once; the decoder then runs one token at a time. With
``use_cache=True`` each decoder layer keeps the keys and values of the tokens
generated so far in a ``KVCache``, so every step feeds only the newest token.

Length handling (the same in both searches, and in the brute-force test): a
hypothesis ends when it emits ``<eos>`` or when it holds ``max_new_tokens`` tokens.
Its length counts the generated tokens including ``<eos>``. Beam search ranks finished
hypotheses by ``log P / lp(length)`` with GNMT's length penalty
``lp(n) = ((5 + n) / 6) ** alpha`` (alpha = 0: plain log-probability). ``<pad>`` and
``<bos>`` are never generated.
"""

from __future__ import annotations

import torch

from course_lib.attention import padding_mask


def length_penalty(n: int, alpha: float) -> float:
    return ((5.0 + n) / 6.0) ** alpha


def _forbid(logits: torch.Tensor, banned: list[int]) -> torch.Tensor:
    if banned:
        logits[..., banned] = float("-inf")
    return logits


@torch.no_grad()
def greedy_decode(model, src: torch.Tensor, bos_id: int, eos_id: int, max_new_tokens: int = 64,
                  use_cache: bool = True) -> list[list[int]]:
    """Batched greedy search. ``src (B, L)`` padded with ``model.config.pad_id``.
    Returns, per sentence, the generated ids (without ``<bos>``, ending in ``<eos>``
    unless ``max_new_tokens`` was reached)."""
    model.eval()
    pad = model.config.pad_id
    src_mask = padding_mask(src, pad)
    memory = model.encode(src, src_mask)
    B = src.shape[0]
    max_new_tokens = min(max_new_tokens, model.config.max_len - 1)
    ys = torch.full((B, 1), bos_id, dtype=torch.long, device=src.device)
    done = torch.zeros(B, dtype=torch.bool, device=src.device)
    caches = model.new_caches() if use_cache else None
    for t in range(max_new_tokens):
        if use_cache:
            logits = model.decode(ys[:, -1:], memory, src_mask, caches=caches, start=t)
        else:
            logits = model.decode(ys, memory, src_mask)
        logits = _forbid(logits[:, -1].float(), [pad, bos_id])
        nxt = logits.argmax(-1)
        nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
        ys = torch.cat([ys, nxt[:, None]], dim=1)
        done |= nxt == eos_id
        if bool(done.all()):
            break
    out = []
    for row in ys[:, 1:].tolist():
        seq = []
        for tok in row:
            if tok == pad:
                break
            seq.append(tok)
            if tok == eos_id:
                break
        out.append(seq)
    return out


@torch.no_grad()
def beam_search(model, src: torch.Tensor, bos_id: int, eos_id: int, beam_size: int = 4,
                max_new_tokens: int = 64, alpha: float = 0.6, use_cache: bool = True) -> list[int]:
    """Beam search for one source sentence ``src (1, L)`` (or ``(L,)``).

    Keeps the ``beam_size`` best unfinished hypotheses; a candidate ending in ``<eos>``
    that ranks among the ``beam_size`` best of a step is finished. Stops when no
    unfinished hypothesis can still beat the best finished one (log-probabilities only
    fall, so ``score / lp(max_new_tokens)`` bounds what an unfinished one can reach).
    Returns the best hypothesis's ids (as ``greedy_decode``).
    """
    # One piece, longer than the others here: the search read top to bottom, and the
    # one-sentence reference that batched_beam_search (with its helpers) is tested against.
    model.eval()
    if src.dim() == 1:
        src = src[None]
    if src.shape[0] != 1:
        raise ValueError(f"beam_search translates one sentence, got a batch of {src.shape[0]}; loop over them.")
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}.")
    pad = model.config.pad_id
    max_new_tokens = min(max_new_tokens, model.config.max_len - 1)
    src_mask = padding_mask(src, pad)
    memory = model.encode(src, src_mask)  # encoded once, reused at every step
    device = src.device
    seqs = torch.full((1, 1), bos_id, dtype=torch.long, device=device)
    scores = torch.zeros(1, device=device, dtype=torch.float64)
    caches = model.new_caches() if use_cache else None
    finished: list[tuple[float, list[int]]] = []  # (normalised score, ids)
    for t in range(max_new_tokens):
        n = seqs.shape[0]
        mem, mmask = memory.expand(n, -1, -1), src_mask.expand(n, -1, -1, -1)
        if use_cache:
            logits = model.decode(seqs[:, -1:], mem, mmask, caches=caches, start=t)
        else:
            logits = model.decode(seqs, mem, mmask)
        logp = _forbid(logits[:, -1].double(), [pad, bos_id]).log_softmax(-1)
        V = logp.shape[-1]
        cand = (scores[:, None] + logp).view(-1)
        k = min(beam_size, int(torch.isfinite(cand).sum()))
        top_scores, top_idx = cand.topk(min(cand.numel(), 2 * beam_size + 1))
        last_step = t == max_new_tokens - 1
        keep_rows, keep_tok, keep_scores = [], [], []
        for rank, (s, idx) in enumerate(zip(top_scores.tolist(), top_idx.tolist())):
            if s == float("-inf"):
                break
            row, tok = divmod(idx, V)
            if tok == eos_id or last_step:
                if rank < k:
                    ids = seqs[row, 1:].tolist() + [tok]
                    finished.append((s / length_penalty(len(ids), alpha), ids))
            elif len(keep_rows) < beam_size:
                keep_rows.append(row)
                keep_tok.append(tok)
                keep_scores.append(s)
            if len(keep_rows) == beam_size and rank >= k - 1:
                break
        if not keep_rows or last_step:
            break
        index = torch.tensor(keep_rows, device=device)
        seqs = torch.cat([seqs[index], torch.tensor(keep_tok, device=device)[:, None]], dim=1)
        scores = torch.tensor(keep_scores, device=device, dtype=torch.float64)
        if caches is not None:
            for c in caches:
                c.reorder(index)
        if finished:
            best = max(f[0] for f in finished)
            bound = max(keep_scores) / length_penalty(max_new_tokens, alpha) if alpha > 0 else max(keep_scores)
            if best >= bound:
                break
    if not finished:
        return seqs[0, 1:].tolist()
    return max(finished, key=lambda f: f[0])[1]


@torch.no_grad()
def batched_beam_search(model, src: torch.Tensor, bos_id: int, eos_id: int, beam_size: int = 4,
                        max_new_tokens: int | list[int] = 64, alpha: float = 0.6,
                        use_cache: bool = True) -> list[list[int]]:
    """``beam_search`` for a batch of sentences at once: ``src (B, L)`` padded with
    ``model.config.pad_id``; returns, per sentence, what ``beam_search`` returns for it
    alone. ``max_new_tokens``: one limit for all, or one per sentence.

    The decoder runs on ``B x beam_size`` rows: sentence ``b``'s beams are rows
    ``b*beam_size ...``. A sentence with fewer live hypotheses than ``beam_size`` (the
    first step has one) fills its other rows with score ``-inf``, so they never win a
    place. The choice among each sentence's candidates is ``beam_search``'s, step for
    step; a sentence that is done leaves the batch (its rows are dropped from the batch
    and the caches), so the batch shrinks as sentences finish.
    """
    model.eval()
    K, device, pad = beam_size, src.device, model.config.pad_id
    limits = _beam_limits(model, src, beam_size, max_new_tokens)
    src_mask = padding_mask(src, pad)
    results: list[list[int] | None] = [None if n > 0 else [] for n in limits]
    active = [b for b in range(len(limits)) if limits[b] > 0]  # sentences still searching, in batch order
    rows = torch.tensor(active, device=device).repeat_interleave(K)
    mem, mmask = model.encode(src, src_mask).index_select(0, rows), src_mask.index_select(0, rows)
    seqs = torch.full((len(active) * K, 1), bos_id, dtype=torch.long, device=device)
    scores = torch.full((len(active), K), float("-inf"), dtype=torch.float64, device=device)
    scores[:, 0] = 0.0  # one hypothesis (<bos>) per sentence at the start
    caches = model.new_caches() if use_cache else None
    finished: dict[int, list[tuple[float, list[int]]]] = {b: [] for b in active}
    t = 0
    while active:
        if use_cache:
            logits = model.decode(seqs[:, -1:], mem, mmask, caches=caches, start=t)
        else:
            logits = model.decode(seqs, mem, mmask)
        logp = _forbid(logits[:, -1].double(), [pad, bos_id]).log_softmax(-1)
        V = logp.shape[-1]
        cand = (scores[:, :, None] + logp.view(len(active), K, V)).view(len(active), K * V)
        n_finite = torch.isfinite(cand).sum(-1).tolist()
        top_scores, top_idx = (v.tolist() for v in cand.topk(min(K * V, 2 * K + 1), dim=-1))
        seq_rows = seqs.tolist()
        next_active, picks = [], []  # picks: (row, token, score) of each kept hypothesis
        for a, b in enumerate(active):
            last_step = t == limits[b] - 1
            keep = _beam_choice(top_scores[a], top_idx[a], V, K, min(K, n_finite[a]), last_step, eos_id, alpha,
                                seq_rows[a * K:(a + 1) * K], finished[b])
            if _beam_done(keep, last_step, finished[b], limits[b], alpha):
                results[b] = max(finished[b], key=lambda f: f[0])[1] if finished[b] else seq_rows[a * K][1:]
                continue
            next_active.append((a, b))  # rows without a hypothesis: any row, score -inf
            picks += [(a * K + r, tok, sc) for r, tok, sc in keep] + [(a * K, pad, float("-inf"))] * (K - len(keep))
        if not next_active:
            break
        index = torch.tensor([r for r, _, _ in picks], device=device)
        seqs = torch.cat([seqs.index_select(0, index), torch.tensor([[tok] for _, tok, _ in picks], device=device)], 1)
        scores = torch.tensor([sc for _, _, sc in picks], dtype=torch.float64, device=device).view(-1, K)
        kept = torch.tensor([a for a, _ in next_active], device=device).repeat_interleave(K) * K
        mem, mmask = mem.index_select(0, kept), mmask.index_select(0, kept)
        for c in caches or []:
            c.reorder(index)
        active = [b for _, b in next_active]
        t += 1
    return results


def _beam_limits(model, src: torch.Tensor, beam_size: int, max_new_tokens: int | list[int]) -> list[int]:
    """Each sentence's limit of new tokens (within the model's context), after the checks."""
    if src.dim() != 2:
        raise ValueError(f"batched_beam_search takes source ids of shape (B, L), got {tuple(src.shape)}.")
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}.")
    B = src.shape[0]
    limits = [max_new_tokens] * B if isinstance(max_new_tokens, int) else list(max_new_tokens)
    if len(limits) != B:
        raise ValueError(f"max_new_tokens has {len(limits)} limits for {B} sentences; give one per sentence.")
    return [min(n, model.config.max_len - 1) for n in limits]


def _beam_choice(top_scores: list[float], top_idx: list[int], V: int, K: int, k: int, last_step: bool,
                 eos_id: int, alpha: float, seq_rows: list[list[int]], finished: list) -> list[tuple]:
    """One sentence's step: walk its best candidates (flat indices ``row * V + token``); an
    ``<eos>`` (or any token at the last step) among the ``k`` best ends a hypothesis, added
    to ``finished`` with its length-penalised score; the others, up to ``K``, go on.
    Returns the (row, token, score) of those that go on."""
    keep = []
    for rank, (sc, idx) in enumerate(zip(top_scores, top_idx)):
        if sc == float("-inf"):
            break
        row, tok = divmod(idx, V)
        if tok == eos_id or last_step:
            if rank < k:
                ids = seq_rows[row][1:] + [tok]
                finished.append((sc / length_penalty(len(ids), alpha), ids))
        elif len(keep) < K:
            keep.append((row, tok, sc))
        if len(keep) == K and rank >= k - 1:
            break
    return keep


def _beam_done(keep: list[tuple], last_step: bool, finished: list, limit: int, alpha: float) -> bool:
    """Whether a sentence's search is over: nothing goes on, the last step, or no live
    hypothesis can beat the best finished one any more."""
    if not keep or last_step:
        return True
    if not finished:
        return False
    best, top = max(f[0] for f in finished), max(sc for _, _, sc in keep)
    return best >= (top / length_penalty(limit, alpha) if alpha > 0 else top)


@torch.no_grad()
def sequence_log_prob(model, src: torch.Tensor, ids: list[int], bos_id: int) -> float:
    """log P(ids | src) by teacher forcing (``<pad>``/``<bos>`` forbidden, as in the searches)."""
    model.eval()
    if src.dim() == 1:
        src = src[None]
    tgt = torch.tensor([[bos_id] + list(ids)], device=src.device)
    logits = model(src, tgt[:, :-1]).double()
    logp = _forbid(logits, [model.config.pad_id, bos_id]).log_softmax(-1)
    return float(logp[0].gather(-1, tgt[0, 1:, None]).sum())


def translate(model, tokenizer, sentences: list[str] | str, beam_size: int = 1, max_new_tokens: int | None = None,
              alpha: float = 0.6, batch_size: int = 64, warn=print) -> list[str] | str:
    """Translate text, ``batch_size`` sentences at a time. ``beam_size=1``: greedy search;
    else beam search (``batched_beam_search``: the same output as ``beam_search`` run on
    each sentence alone), with the length penalty ``alpha``.

    A source longer than the model's ``max_len`` is truncated to its first tokens, with a
    one-line warning (the model itself refuses over-long input with an error).
    """
    from course_lib import checks
    from course_lib.tokenizer import special_ids

    single = isinstance(sentences, str)
    sentences = checks.texts("sentences", [sentences] if single else sentences, allow_empty=True)
    checks.count("beam_size", beam_size)
    checks.count("batch_size", batch_size)
    checks.count("max_new_tokens", max_new_tokens, optional=True)
    checks.number("alpha", alpha, 0.0)
    ids = special_ids(tokenizer)
    pad, bos, eos = ids["<pad>"], ids["<bos>"], ids["<eos>"]
    device = next(model.parameters()).device
    max_len = model.config.max_len
    encoded = []
    for i, s in enumerate(sentences):
        toks = tokenizer.encode(s)
        if len(toks) + 1 > max_len:
            warn(f"warning: sentence {i} has {len(toks) + 1} tokens (with <eos>), more than max_len={max_len}; "
                 f"translating its first {max_len - 1} tokens only")
            toks = toks[: max_len - 1]
        encoded.append(toks + [eos])

    def padded(chunk):
        src = torch.full((len(chunk), max(map(len, chunk))), pad, dtype=torch.long)
        for r, toks in enumerate(chunk):
            src[r, : len(toks)] = torch.tensor(toks)
        return src.to(device)

    outputs: list[list[int]] = []
    if beam_size == 1:
        for start in range(0, len(encoded), batch_size):
            src = padded(encoded[start : start + batch_size])
            outputs += greedy_decode(model, src, bos, eos, max_new_tokens or min(max_len - 1, src.shape[1] + 50))
    else:
        # batches of similar lengths (less padding); each sentence keeps its own limit,
        # so the result is the one-sentence-at-a-time beam search's
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        outputs = [[] for _ in encoded]
        for start in range(0, len(order), batch_size):
            part = order[start : start + batch_size]
            limits = [max_new_tokens or min(max_len - 1, len(encoded[i]) + 50) for i in part]
            found = batched_beam_search(model, padded([encoded[i] for i in part]), bos, eos, beam_size, limits, alpha)
            for i, out in zip(part, found):
                outputs[i] = out
    texts = [tokenizer.decode([t for t in out if t != eos]) for out in outputs]
    return texts[0] if single else texts
