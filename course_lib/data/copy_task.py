"""The copy task: the target is the source itself, a string of random digits.

The smallest sequence-to-sequence problem: a model that solves it has learned to carry
every source position through the encoder and to find it again with cross-attention, in
order, and to stop. Notebook 07 trains on it first, because it is learned in about a
minute on a CPU and its answer is known exactly.

``copy_pairs(n, seed=0)``: ``n`` pairs such as ``("3 1 4 1 5", "3 1 4 1 5")``;
``copy_split(n_train, n_test, seed=0)``: a training set and a held-out set of strings that
do not occur in the training set.
"""

from __future__ import annotations

import random

DIGITS = "0123456789"


def _check(n: int, min_len: int, max_len: int, symbols: str) -> None:
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n={n!r} must be a whole number >= 0.")
    if not (isinstance(min_len, int) and isinstance(max_len, int) and 1 <= min_len <= max_len):
        raise ValueError(f"lengths {min_len!r}..{max_len!r}: need whole numbers 1 <= min_len <= max_len.")
    if len(set(symbols)) < 2 or any(s.isspace() for s in symbols):
        raise ValueError(f"symbols={symbols!r}: need at least two different characters, none of them a space.")


def random_string(rng: random.Random, min_len: int, max_len: int, symbols: str = DIGITS) -> str:
    """Between ``min_len`` and ``max_len`` symbols drawn uniformly, separated by spaces."""
    return " ".join(rng.choice(symbols) for _ in range(rng.randint(min_len, max_len)))


def copy_pairs(n: int, min_len: int = 3, max_len: int = 8, seed: int = 0,
               symbols: str = DIGITS) -> list[tuple[str, str]]:
    """``n`` (source, target) pairs whose target is the source; the same for the same seed."""
    _check(n, min_len, max_len, symbols)
    rng = random.Random(seed)
    return [(s, s) for s in (random_string(rng, min_len, max_len, symbols) for _ in range(n))]


def copy_split(n_train: int, n_test: int, min_len: int = 3, max_len: int = 8, seed: int = 0,
               symbols: str = DIGITS) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Training pairs, and ``n_test`` held-out pairs whose strings are neither in the
    training set nor repeated among themselves."""
    _check(n_test, min_len, max_len, symbols)
    train = copy_pairs(n_train, min_len, max_len, seed, symbols)
    seen = {s for s, _ in train}
    room = sum(len(symbols) ** k for k in range(min_len, max_len + 1)) - len(seen)
    if n_test > room:
        raise ValueError(f"n_test={n_test}: only {room} strings of {min_len}..{max_len} symbols are not in the "
                         "training set; ask for fewer or allow longer strings (max_len).")
    rng = random.Random(seed + 1_000_003)
    test: list[tuple[str, str]] = []
    while len(test) < n_test:
        s = random_string(rng, min_len, max_len, symbols)
        if s not in seen:
            seen.add(s)
            test.append((s, s))
    return train, test
