"""course_lib.data.copy_task against brute force: every pair copies, lengths and symbols
are in range, the held-out strings are new, and the same seed gives the same data."""

import itertools
import random
from collections import Counter

import pytest

from course_lib.data.copy_task import DIGITS, copy_pairs, copy_split, random_string


def test_pairs_copy_within_lengths_and_symbols():
    pairs = copy_pairs(2000, min_len=2, max_len=5, seed=3)
    assert len(pairs) == 2000 and all(s == t for s, t in pairs)
    words = [s.split(" ") for s, _ in pairs]
    assert {len(w) for w in words} == {2, 3, 4, 5}  # every length occurs, no other
    assert all(len(c) == 1 and c in DIGITS for w in words for c in w)
    counts = Counter(c for w in words for c in w)  # uniform symbols: each near 1/10
    assert set(counts) == set(DIGITS) and max(counts.values()) < 1.3 * min(counts.values())


def test_same_seed_same_pairs_other_seed_other_pairs():
    assert copy_pairs(50, seed=1) == copy_pairs(50, seed=1)
    assert copy_pairs(50, seed=1) != copy_pairs(50, seed=2)


def test_held_out_strings_are_new_and_distinct():
    train, test = copy_split(300, 100, min_len=1, max_len=3, seed=0)
    assert len(train) == 300 and len(test) == 100
    held = [s for s, _ in test]
    assert len(set(held)) == 100 and not set(held) & {s for s, _ in train}
    assert all(s == t for s, t in test)


def test_split_can_take_every_unseen_string():
    # brute force: all strings of 1..2 symbols over "ab"; the test set is exactly the rest
    everything = {" ".join(p) for k in (1, 2) for p in itertools.product("ab", repeat=k)}
    train, test = copy_split(3, len(everything) - len({s for s, _ in copy_pairs(3, 1, 2, 0, "ab")}),
                             min_len=1, max_len=2, symbols="ab")
    assert {s for s, _ in train} | {s for s, _ in test} == everything


def test_random_string_draws_from_the_rng():
    rng = random.Random(0)
    assert random_string(rng, 4, 4, "xy").count(" ") == 3


@pytest.mark.parametrize("kwargs, words", [
    (dict(n=-1), "n=-1"), (dict(n=3, min_len=0), "min_len"), (dict(n=3, min_len=5, max_len=4), "min_len"),
    (dict(n=3, symbols="a"), "symbols"), (dict(n=3, symbols="a b"), "symbols"),
])
def test_bad_arguments_are_named(kwargs, words):
    with pytest.raises(ValueError, match=words):
        copy_pairs(**kwargs)


def test_too_many_held_out_strings_is_an_error():
    with pytest.raises(ValueError, match="n_test=5: only"):
        copy_split(0, 5, min_len=1, max_len=1, symbols="ab")
