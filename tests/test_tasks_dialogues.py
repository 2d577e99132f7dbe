"""The generated classification task and dialogue corpus: known answers by construction,
checked by independent rules (the grammar's own word lists, re-parsing the dialogues)."""

import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from course_lib.data import dialogues, grammar, tasks

_anything = st.one_of(st.integers(-3, 60), st.sampled_from([0, 1, 2, True, None, 0.5, float("nan"), "3", []]))


def test_corruptions_differ_from_the_translation_in_one_place():
    rng = random.Random(0)
    for _, de in grammar.generate_pairs(300, seed=3):
        for kind in tasks.KINDS:
            made = tasks.corrupt(de, kind, rng)
            if made is None:
                continue
            new, i = made
            a, b = de.split(), new.split()
            assert len(a) == len(b) and new != de
            changed = [j for j in range(len(a)) if a[j] != b[j]]
            if kind == "order":
                assert changed == [i, i + 1] and (a[i], a[i + 1]) == (b[i + 1], b[i])
            else:
                assert changed == [i]


def test_each_kind_of_error_changes_the_right_kind_of_word():
    articles = {w for group in tasks.ARTICLES for w in group}
    verbs = {w for family in tasks.VERB_FAMILIES for w in family}
    nouns = {n[1]: n[2] for n in grammar.NOUNS}
    rng = random.Random(1)
    for _, de in grammar.generate_pairs(200, seed=4):
        words = de.split()
        if (made := tasks.corrupt(de, "agreement", rng)) is not None:
            old, new = words[made[1]], made[0].split()[made[1]]
            assert (old in articles and new in articles) or old[:3] == new[:3]  # article or adjective ending
        if (made := tasks.corrupt(de, "verb", rng)) is not None:
            assert words[made[1]] in verbs and made[0].split()[made[1]] in verbs
        if (made := tasks.corrupt(de, "noun", rng)) is not None:
            old, new = words[made[1]], made[0].split()[made[1]]
            assert nouns[old] == nouns[new]  # same gender: the German stays grammatical


def test_translation_check_is_balanced_held_out_and_deterministic():
    train, test = tasks.translation_check(600, 200, seed=2)
    assert train == tasks.translation_check(600, 200, seed=2)[0]
    assert not {e.english for e in test} & {e.english for e in train}
    reference = dict(grammar.generate_pairs(600, seed=2))  # the training pairs' true translations
    for ex in train:
        assert (ex.german == reference[ex.english]) == (ex.label == 1)
    share = sum(e.label for e in train) / len(train)
    assert 0.4 < share < 0.6
    assert {e.kind for e in train} == {"correct", *tasks.KINDS}
    short, held = tasks.translation_check(100, 10, seed=2, max_words=12)
    assert (len(short), len(held)) == (100, 10)  # as many as asked, however few sentences are short
    assert all(len(e.english.split()) + len(e.german.split()) <= 12 for e in short)
    with pytest.raises(ValueError, match="kinds"):
        tasks.make_examples([("a .", "b .")], kinds=("spelling",))


def test_dialogues_are_deterministic_and_held_out():
    train, test = dialogues.train_test_split(500, 100, seed=0)
    assert train == dialogues.generate_dialogues(500, seed=0)
    assert not {d.text for d in test} & {d.text for d in train}
    assert {d.scenario for d in train} == set(dialogues.SCENARIOS)
    assert all(len({who for who, _ in d.turns}) >= 2 for d in train)
    with pytest.raises(ValueError, match="n=-1 must be"):
        dialogues.generate_dialogues(-1)


def test_summaries_follow_from_the_dialogue():
    """Read the outcome back from the dialogue by an independent rule: the day two people
    meet on is the last day named; the summary is never a copy of a turn."""
    days = "|".join(dialogues.DAYS)
    for d in dialogues.generate_dialogues(400, seed=5):
        assert all(said not in d.summary for _, said in d.turns if len(said.split()) > 3)
        assert d.summary not in d.text
        names = set(re.findall(r"^(\w+) :", d.text, flags=re.M))
        assert {w for w in d.summary.split() if w in dialogues.NAMES} <= names
        if d.scenario == "meet" and " will meet " in d.summary:
            assert re.findall(days, d.text)[-1] == re.findall(days, d.summary)[-1]
        if d.scenario == "late":
            assert re.search(r"\b(five|ten|fifteen|twenty|thirty)\b", d.text.split("\n")[-1]).group(1) in d.summary


def _tags_by_pairs(numbers):
    """Neighbour tags by another route: compare each adjacent pair once, then add the bits."""
    bigger_before = [False] + [a > b for a, b in zip(numbers, numbers[1:], strict=False)]
    bigger_after = [a < b for a, b in zip(numbers, numbers[1:], strict=False)] + [False]
    return tuple(tasks.TAGS.index({(0, 0): "none", (1, 0): "left", (0, 1): "right", (1, 1): "both"}[lb, ra])
                 for lb, ra in zip(map(int, bigger_before), map(int, bigger_after), strict=True))


def test_neighbour_tags_follow_the_neighbours_and_are_held_out():
    train, test = tasks.neighbour_tags(300, 100, length=6, n_values=5, seed=3)
    assert len(train) == 300 and len(test) == 100
    for e in train + test:
        assert e.tags == _tags_by_pairs(e.numbers)
        assert e.text.split() == [str(n) for n in e.numbers] and len(e.tag_text.split()) == 6
    assert not {e.numbers for e in test} & {e.numbers for e in train}  # held out, by brute force
    assert len({e.numbers for e in train}) == 300
    assert (train, test) == tasks.neighbour_tags(300, 100, length=6, n_values=5, seed=3)
    # left and right are not interchangeable: a row that rises tags "left" nowhere
    assert tasks.TagExample((1, 2, 3), tuple(tasks.neighbour_tag((1, 2, 3), i) for i in range(3))).tag_text \
        == "right right none"
    with pytest.raises(ValueError, match="length=1"):
        tasks.neighbour_tags(5, 5, length=1)
    with pytest.raises(ValueError, match="too few"):
        tasks.neighbour_tags(10, 10, length=2, n_values=3)


def test_shifted_dialogues_differ_in_names_topics_and_length():
    train = dialogues.generate_dialogues(2000, seed=0)
    shifted = dialogues.shifted_dialogues(300, seed=0)
    assert shifted == dialogues.shifted_dialogues(300, seed=0)
    train_words = {w for d in train for w in (d.text + " " + d.summary).split()}
    shifted_names = {who for d in shifted for who, _ in d.turns}
    assert shifted_names and not shifted_names & train_words  # no held-out name occurs anywhere in training
    assert {d.scenario for d in shifted} == set(dialogues.HELD_OUT_SCENARIOS)
    assert not {d.scenario for d in shifted} & {d.scenario for d in train}
    words = [len(d.text.split()) for d in shifted]
    assert min(words) > sum(len(d.text.split()) for d in train) / len(train)  # each longer than the training mean
    for d in shifted:  # the summary names only people of the dialogue, and never copies a turn
        assert {w for w in d.summary.split() if w in dialogues.HELD_OUT_NAMES} <= {who for who, _ in d.turns}
        assert d.summary not in d.text
    with pytest.raises(ValueError, match="n=-1 must be"):
        dialogues.shifted_dialogues(-1)


@settings(max_examples=40, deadline=None)
@given(n_train=_anything, n_test=_anything, length=_anything, n_values=_anything)
def test_neighbour_tags_and_shifted_dialogues_any_arguments(n_train, n_test, length, n_values):
    """Generated arguments: a valid result of the asked size, or a ValueError naming the argument."""
    if all(isinstance(v, int) for v in (n_train, n_test)) and max(n_train, n_test) > 40:
        return  # sizes are cheap to check, costly to fill
    try:
        train, test = tasks.neighbour_tags(n_train, n_test, length=length, n_values=n_values)
        assert (len(train), len(test)) == (n_train, n_test)
        assert all(len(e.tags) == length and max(e.numbers) < n_values for e in train + test)
    except ValueError as exc:
        assert re.search(r"n_train|n_test|length|n_values", str(exc)), exc
    try:
        assert len(dialogues.shifted_dialogues(n_test)) == n_test
    except ValueError as exc:
        assert "n=" in str(exc), exc
