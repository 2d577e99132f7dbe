"""Byte-pair encoding (BPE), trained from scratch on bytes, as GPT-2 does it.

> "We initialize the symbol vocabulary with the character vocabulary [...] We
> iteratively count all symbol pairs and replace each occurrence of the most
> frequent pair ('A', 'B') with a new symbol 'AB'." (Sennrich et al., 2016)

GPT-2 starts from the 256 byte values instead of characters (so every text can be
encoded, no unknown token) and first splits the text into chunks with a regular
expression (words with their leading space, numbers, punctuation runs, whitespace),
so that merges never cross a chunk boundary. Token ``256 + i`` is the i-th merge.

Two trainers learn exactly the same merges:

- ``train_merges_naive`` recounts every pair of every chunk after each merge
  (the textbook loop, easy to read, slow);
- ``train_merges`` counts the pairs once and then, after each merge, updates only
  the counts of the chunks that contain the merged pair (an index pair -> chunks
  finds them), with a heap to find the most frequent pair. ``benchmarks/bench_bpe.py``
  compares the two.

Both count each distinct chunk once, weighted by how often it occurs, and break
ties between equally frequent pairs by the smaller pair ``(left id, right id)``, so
training is deterministic. A pair whose merged bytes already are a token is never
merged again: every token has exactly one byte string, as tiktoken requires.
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict

import regex

# GPT-2's pre-tokenizer (tiktoken's "gpt2"/"r50k_base" pat_str): contractions, letters
# with an optional leading space, numbers, other symbols, then whitespace runs.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
# GPT-4's (tiktoken's "cl100k_base"): case-insensitive contractions, numbers of at most
# three digits, newlines kept apart from other whitespace.
GPT4_PATTERN = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
PATTERNS = {"gpt2": GPT2_PATTERN, "gpt4": GPT4_PATTERN}


def resolve_pattern(pattern: str) -> str:
    """``"gpt2"``, ``"gpt4"`` or a regular expression of your own -> the regex string."""
    return PATTERNS.get(pattern, pattern)


def split_chunks(text: str, pattern: str = "gpt2") -> list[str]:
    """The pre-tokenizer: split ``text`` into the chunks that BPE merges within."""
    return regex.findall(resolve_pattern(pattern), text)


def get_pair_counts(ids: list[int], counts: dict | None = None, weight: int = 1) -> dict:
    """Count adjacent pairs: ``[1, 2, 1, 2]`` -> ``{(1, 2): 2, (2, 1): 1}``."""
    counts = {} if counts is None else counts
    for pair in zip(ids, ids[1:]):
        counts[pair] = counts.get(pair, 0) + weight
    return counts


def merge(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace every occurrence of ``pair`` in ``ids`` (left to right) by ``new_id``."""
    out, i, n = [], 0, len(ids)
    a, b = pair
    while i < n:
        if i < n - 1 and ids[i] == a and ids[i + 1] == b:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def chunk_counts(text: str, pattern: str = "gpt2", special_tokens=()) -> Counter:
    """How often each distinct chunk occurs; special token strings are cut out first."""
    pieces = [text]
    if special_tokens:
        specials = "|".join(regex.escape(s) for s in sorted(special_tokens, key=len, reverse=True))
        pieces = regex.split(specials, text)
    compiled = regex.compile(resolve_pattern(pattern))
    counts: Counter = Counter()
    for piece in pieces:
        counts.update(compiled.findall(piece))
    return counts


def _words(text, pattern, special_tokens):
    if not isinstance(text, str):
        raise TypeError(f"BPE trains on a str, got {type(text).__name__}; join your texts first.")
    counts = chunk_counts(text, pattern, special_tokens)
    if not counts:
        raise ValueError(
            "cannot train a BPE on an empty text (no chunks after removing special tokens); "
            "pass a non-empty corpus, e.g. course_lib.data.generated_corpus()."
        )
    words = [list(chunk.encode("utf-8")) for chunk in counts]
    return words, list(counts.values())


def _out_of_pairs(n_done: int, n_merges: int):
    return ValueError(
        f"the text allows only {n_done} merges (after them no chunk has two tokens left "
        f"to merge), but {n_merges} were asked for; use vocab_size <= {256 + n_done} "
        "(+ special tokens) or train on more text."
    )


def _check_n_merges(n_merges: int) -> None:
    if not isinstance(n_merges, int) or n_merges < 0:
        raise ValueError(f"n_merges must be an integer >= 0, got {n_merges!r}")


def train_merges(text: str, n_merges: int, pattern: str = "gpt2", special_tokens=()):
    """Learn ``n_merges`` merges from ``text``, updating pair counts incrementally.

    Returns a list of ``((left_id, right_id), count)``: merge i creates token 256 + i
    and ``count`` is how often the pair occurred when it was chosen.
    """
    _check_n_merges(n_merges)
    words, freqs = _words(text, pattern, special_tokens)
    counts: dict = defaultdict(int)
    where: dict = defaultdict(set)  # pair -> indices of the chunks that (may) contain it
    for i, (word, freq) in enumerate(zip(words, freqs)):
        for pair in zip(word, word[1:]):
            counts[pair] += freq
            where[pair].add(i)
    heap = [(-c, pair) for pair, c in counts.items()]
    heapq.heapify(heap)
    vocab = [bytes([i]) for i in range(256)]
    known = set(vocab)
    merges = []
    while len(merges) < n_merges:
        while heap:  # pop the best pair whose heap entry is still up to date
            neg, pair = heapq.heappop(heap)
            if counts.get(pair) == -neg:
                merged = vocab[pair[0]] + vocab[pair[1]]
                if merged not in known:
                    break
                del counts[pair]  # same bytes as an existing token: never merge it
        else:
            raise _out_of_pairs(len(merges), n_merges)
        new_id = 256 + len(merges)
        merges.append((pair, -neg))
        vocab.append(merged)
        known.add(merged)
        before: dict = {}
        for i in where.pop(pair):
            old = words[i]
            new = merge(old, pair, new_id)
            if len(new) == len(old):  # stale index entry
                continue
            freq = freqs[i]
            for q in zip(old, old[1:]):
                before.setdefault(q, counts[q])
                counts[q] -= freq
            for q in zip(new, new[1:]):
                before.setdefault(q, counts[q])
                counts[q] += freq
                where[q].add(i)
            words[i] = new
        for q, was in before.items():
            now = counts[q]
            if now <= 0:
                del counts[q]
            elif now != was:
                heapq.heappush(heap, (-now, q))
    return merges


def train_merges_naive(text: str, n_merges: int, pattern: str = "gpt2", special_tokens=()):
    """The same merges as ``train_merges``, recounting every pair after each merge."""
    _check_n_merges(n_merges)
    words, freqs = _words(text, pattern, special_tokens)
    vocab = [bytes([i]) for i in range(256)]
    known = set(vocab)
    merges = []
    while len(merges) < n_merges:
        counts: dict = {}
        for word, freq in zip(words, freqs):
            get_pair_counts(word, counts, freq)
        while True:  # the most frequent pair, the smaller pair on ties
            if not counts:
                raise _out_of_pairs(len(merges), n_merges)
            pair = min(counts, key=lambda p: (-counts[p], p))
            if vocab[pair[0]] + vocab[pair[1]] not in known:
                break
            del counts[pair]  # same bytes as an existing token: never merge it
        new_id = 256 + len(merges)
        merges.append((pair, counts[pair]))
        vocab.append(vocab[pair[0]] + vocab[pair[1]])
        known.add(vocab[-1])
        words = [merge(word, pair, new_id) for word in words]
    return merges


def encode_chunk(chunk: bytes, ranks: dict) -> list[int]:
    """Encode one chunk: apply the learned merges, lowest rank (earliest) first."""
    ids = list(chunk)
    while len(ids) >= 2:
        pair = min(zip(ids, ids[1:]), key=lambda p: ranks.get(p, float("inf")))
        if pair not in ranks:
            break
        ids = merge(ids, pair, ranks[pair])
    return ids
