"""A classification task with a known answer: is this German translation correct?

Each example is an English sentence of the course grammar (``course_lib.data.grammar``)
and a German sentence that is either its translation (label 1) or the translation with
one error put in (label 0). The errors need context, often from both sides of a word:

- ``agreement``: an article or adjective with the wrong ending ("der mann sieht *der*
  hund": the case comes from the word's role, i.e. from the verb before it; the gender from
  the noun after it);
- ``verb``: a verb in the wrong person ("heute *siehst* der mann ...": the subject comes
  after the verb);
- ``order``: a verb swapped with its neighbour ("der mann den *sieht* hund");
- ``noun``: a noun replaced by another of the same gender ("der mann sieht den *brief*"
  for "the man sees the dog"): grammatical German, a wrong translation, which only the
  English tells.

``translation_check(n_train, n_test, seed)`` gives balanced training and held-out sets
(no held-out English sentence occurs in the training set), deterministic in the seed.

A second task asks for one answer per position, and where its evidence lies decides
which architecture can give it: ``neighbour_tags`` writes a row of numbers and tags each
number with which of its two neighbours is larger (``none``, ``left``, ``right`` or
``both``). The left half of a tag needs the word before, the right half the word after:
a causal model, reading left to right, cannot know the right half at that position.
"""

from __future__ import annotations

import random
from typing import NamedTuple

from course_lib import checks
from course_lib.data import grammar

KINDS = ("agreement", "verb", "order", "noun")

ARTICLES = [
    ["der", "die", "das", "den", "dem"],
    ["ein", "eine", "einen", "einem", "einer"],
    ["mein", "meine", "meinen", "meinem", "meiner"],
]
ADJECTIVE_ENDINGS = ("e", "en", "er", "es")


def _verb_families() -> list[list[str]]:
    families = []
    for _, _, conj, particle, _ in grammar.VERBS:
        forms = sorted(set(conj.values()))
        families.append(forms)  # main clause: "ruft ... an"
        if particle:
            families.append(sorted({particle + f for f in forms}))  # verb-final: "anruft"
    for _, _, conj, _ in grammar.MODALS:
        families.append(sorted(set(conj.values())))
    for _, _, conj in grammar.SAY_VERBS:
        families.append(sorted(set(conj.values())))
    return families


VERB_FAMILIES = _verb_families()
NOUNS_BY_GENDER = {g: sorted(n[1] for n in grammar.NOUNS if n[2] == g) for g in "mfn"}


def _family(word: str, families) -> list[str] | None:
    return next((f for f in families if word in f), None)


def _adjective_forms(word: str) -> list[str] | None:
    for _, stem in grammar.ADJECTIVES:
        if word.startswith(stem) and word[len(stem):] in ADJECTIVE_ENDINGS:
            return [stem + e for e in ADJECTIVE_ENDINGS]
    return None


class CheckExample(NamedTuple):
    english: str
    german: str
    label: int  # 1: the correct translation, 0: one error put in
    kind: str  # "correct" or the kind of error
    position: int  # index of the changed German word (-1 if correct)


def corrupt(german: str, kind: str, rng: random.Random) -> tuple[str, int] | None:
    """Put one error of ``kind`` into ``german`` (words separated by spaces). Returns
    ``(new sentence, index of the changed word)``, or None if the sentence offers no
    place for that kind of error. The result always differs from ``german``."""
    if kind not in KINDS:
        raise ValueError(f"unknown error kind {kind!r}; choose from {KINDS}.")
    words = german.split()
    options = []  # (position, replacement words)
    for i, w in enumerate(words):
        if kind == "agreement":
            forms = _family(w, ARTICLES) or _adjective_forms(w)
            if forms:
                options += [(i, [f]) for f in forms if f != w]
        elif kind == "verb":
            forms = _family(w, VERB_FAMILIES)
            if forms:
                options += [(i, [f]) for f in forms if f != w]
        elif kind == "noun":
            gender = next((g for g, nouns in NOUNS_BY_GENDER.items() if w in nouns), None)
            if gender:
                options += [(i, [f]) for f in NOUNS_BY_GENDER[gender] if f != w]
        elif _family(w, VERB_FAMILIES):  # order: swap a verb with a neighbouring word
            for j in (i - 1, i + 1):
                if 0 <= j < len(words) and words[j] not in (",", ".") and words[j] != w:
                    options.append((i, j))
    if not options:
        return None
    i, change = rng.choice(options)
    new = list(words)
    if kind == "order":
        j = change
        new[i], new[j] = new[j], new[i]
        i = min(i, j)
    else:
        new[i] = change[0]
    return " ".join(new), i


def make_examples(pairs, seed: int = 0, kinds=KINDS, p_correct: float = 0.5) -> list[CheckExample]:
    """One example per (English, German) pair: the translation itself with probability
    ``p_correct``, else with one error of a kind drawn from ``kinds``."""
    kinds = checks.names("kinds", kinds, known=KINDS)
    checks.probability("p_correct", p_correct)
    rng = random.Random(seed)
    out = []
    for en, de in pairs:
        if rng.random() < p_correct:
            out.append(CheckExample(en, de, 1, "correct", -1))
            continue
        for kind in rng.sample(list(kinds), len(kinds)):  # a kind this sentence allows
            made = corrupt(de, kind, rng)
            if made is not None:
                out.append(CheckExample(en, made[0], 0, kind, made[1]))
                break
        else:
            out.append(CheckExample(en, de, 1, "correct", -1))
    return out


def _pairs(n_train: int, n_test: int, seed: int, max_words: int | None):
    """``n_train`` training and ``n_test`` held-out pairs, each with at most ``max_words``
    words in English and German together: drawn three times as many, then more until enough."""
    if not max_words:
        return grammar.train_test_split(n_train, n_test, seed)

    def short(pairs):
        return [(e, d) for e, d in pairs if len(e.split()) + len(d.split()) <= max_words]

    for extra in (3, 6, 12, 24, 48):
        train_pairs, test_pairs = grammar.train_test_split(extra * n_train, extra * n_test, seed)
        train_pairs, test_pairs = short(train_pairs), short(test_pairs)
        if len(train_pairs) >= n_train and len(test_pairs) >= n_test:
            return train_pairs, test_pairs
    raise ValueError(f"max_words={max_words}: too few sentences are that short ({len(train_pairs)} training and "
                     f"{len(test_pairs)} held-out pairs of {n_train} and {n_test} asked for); raise max_words.")


def translation_check(n_train: int, n_test: int, seed: int = 0, kinds=KINDS, max_words: int | None = None):
    """``(train, test)`` lists of ``CheckExample``; about half of each is correct. The
    held-out English sentences never occur in the training set. ``max_words``: keep only
    pairs with at most that many words in English and German together."""
    checks.count("n_train", n_train, minimum=0)
    checks.count("n_test", n_test, minimum=0)
    checks.count("max_words", max_words, minimum=2, optional=True, fix="a pair has at least one word each side")
    checks.names("kinds", kinds, known=KINDS)
    train_pairs, test_pairs = _pairs(n_train, n_test, seed, max_words)
    return (make_examples(train_pairs[:n_train], seed, kinds),
            make_examples(test_pairs[:n_test], seed + 1, kinds))


TAGS = ("none", "left", "right", "both")  # which neighbour is larger; index = 2 * right + left


class TagExample(NamedTuple):
    numbers: tuple[int, ...]
    tags: tuple[int, ...]  # index into TAGS: bit 0 = the left neighbour is larger, bit 1 = the right one

    @property
    def text(self) -> str:
        """The numbers as words: ``"3 7 1 ..."``."""
        return " ".join(map(str, self.numbers))

    @property
    def tag_text(self) -> str:
        """The tags as words: ``"right none both ..."``."""
        return " ".join(TAGS[t] for t in self.tags)


def neighbour_tag(numbers, i: int) -> int:
    """The tag of position ``i``: 1 if the left neighbour is larger, + 2 if the right one is."""
    left = int(i > 0 and numbers[i - 1] > numbers[i])
    right = int(i + 1 < len(numbers) and numbers[i + 1] > numbers[i])
    return left + 2 * right


def neighbour_tags(n_train: int, n_test: int, length: int = 10, n_values: int = 10, seed: int = 0):
    """``(train, test)`` lists of ``TagExample``: rows of ``length`` numbers drawn from
    ``0..n_values-1``, each number tagged with ``neighbour_tag``. No held-out row occurs in
    the training set; deterministic in the seed."""
    checks.count("n_train", n_train, minimum=0)
    checks.count("n_test", n_test, minimum=0)
    checks.count("length", length, minimum=2, fix="a number needs a neighbour")
    checks.count("n_values", n_values, minimum=2, fix="a comparison needs two values")
    if n_values ** length < 2 * (n_train + n_test):
        raise ValueError(f"n_values={n_values} and length={length} allow only {n_values ** length} rows, too few "
                         f"for {n_train} + {n_test} distinct examples; raise length or n_values.")
    rng = random.Random(seed)
    rows: dict[tuple[int, ...], None] = {}
    while len(rows) < n_train + n_test:
        rows.setdefault(tuple(rng.randrange(n_values) for _ in range(length)))
    made = [TagExample(r, tuple(neighbour_tag(r, i) for i in range(length))) for r in rows]
    return made[:n_train], made[n_train:]
