"""Instructions with answers a program can check, for teaching a model to follow them (notebook 14).

Four tasks on short lower-case words and small numbers:

- ``reverse: cat dog sun`` -> ``sun dog cat``
- ``sort: pear fig apple`` -> ``apple fig pear``
- ``count: cat dog sun`` -> ``3``
- ``add: 12+7`` -> ``19``

A reply is the bare answer, or the same answer in a wordier style, ``the answer is ...``: the
measurable property that preference tuning changes. ``split(n_train, n_test, seed)`` gives
training and held-out instructions (no held-out prompt occurs in the training set);
``conversations`` the supervised fine-tuning data, ``preference_pairs`` the (chosen, rejected)
replies, ``choices`` the options of a multiple-choice question, ``base_text`` the plain text a
base model is pretrained on (the same tasks, without the chat template).
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

TASKS = ("reverse", "sort", "count", "add")
WORDS = ("cat", "dog", "sun", "sky", "red", "fig", "owl", "bee", "cup", "hat", "map", "pen",
         "box", "ice", "egg", "oak", "pear", "lime", "frog", "moon", "star", "rain", "tree",
         "ship", "bird", "lake", "rose", "wolf", "milk", "salt")
VERBOSE = "the answer is "
LARGEST = 19  # add: numbers 0..LARGEST


@dataclass(frozen=True)
class Instruction:
    task: str
    prompt: str  # what the user writes
    answer: str  # the bare answer


def _check_count(name: str, value, least: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        raise ValueError(f"{name}={value!r} must be an integer >= {least}.")


def _check_probability(name: str, value) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}={value!r} must be a probability in [0, 1].")


def _check_tasks(tasks) -> None:
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown or not tasks:
        raise ValueError(f"tasks must be a non-empty subset of {TASKS}, got {tasks!r}.")


def instruction(rng: random.Random, task: str) -> Instruction:
    """One random instruction of ``task`` with its answer."""
    if task == "add":
        a, b = rng.randint(0, LARGEST), rng.randint(0, LARGEST)
        return Instruction(task, f"add: {a}+{b}", str(a + b))
    words = rng.sample(WORDS, rng.randint(2, 4))
    answer = {"reverse": lambda w: " ".join(reversed(w)), "sort": lambda w: " ".join(sorted(w)),
              "count": lambda w: str(len(w))}[task](words)
    return Instruction(task, f"{task}: {' '.join(words)}", answer)


def instructions(n: int, seed: int = 0, tasks=TASKS) -> list[Instruction]:
    """``n`` instructions, the tasks in turn, deterministic in ``seed``."""
    _check_count("n", n, least=0)
    _check_tasks(tasks)
    rng = random.Random(seed)
    return [instruction(rng, tasks[i % len(tasks)]) for i in range(n)]


def split(n_train: int, n_test: int, seed: int = 0, tasks=TASKS) -> tuple[list[Instruction], list[Instruction]]:
    """Training instructions and held-out ones whose prompts never occur in the training set
    (nor twice among themselves)."""
    _check_count("n_train", n_train)
    _check_count("n_test", n_test)
    _check_tasks(tasks)
    rng = random.Random(seed + 7_919)
    test, seen = [], set()
    for i in range(100 * n_test):
        if len(test) == n_test:
            break
        item = instruction(rng, tasks[i % len(tasks)])
        if item.prompt not in seen:
            seen.add(item.prompt)
            test.append(item)
    train_rng, train = random.Random(seed), []
    while len(train) < n_train:
        item = instruction(train_rng, tasks[len(train) % len(tasks)])
        if item.prompt not in seen:
            train.append(item)
    return train, test


def reply(item: Instruction, verbose: bool = False) -> str:
    return VERBOSE + item.answer if verbose else item.answer


def conversations(items, p_verbose: float = 0.7, seed: int = 0) -> list[list[dict]]:
    """One (user, assistant) conversation per instruction; the reply is wordy with
    probability ``p_verbose``."""
    _check_probability("p_verbose", p_verbose)
    rng = random.Random(seed)
    return [[{"role": "user", "content": it.prompt},
             {"role": "assistant", "content": reply(it, rng.random() < p_verbose)}] for it in items]


def preference_pairs(items) -> list[tuple[str, str, str]]:
    """``(prompt, chosen, rejected)``: the same correct answer, bare (chosen) and wordy (rejected)."""
    return [(it.prompt, reply(it), reply(it, verbose=True)) for it in items]


def parse_reply(text: str) -> tuple[str, bool]:
    """``(answer, verbose)`` from a model's reply."""
    text = text.strip()
    return (text[len(VERBOSE):], True) if text.startswith(VERBOSE) else (text, False)


def choices(item: Instruction, n: int = 4, seed: int = 0) -> tuple[list[str], int]:
    """``n`` distinct options for a multiple-choice question, and the index of the right one.
    Wrong options look right: other orders of the same words (then one word swapped for
    another), or nearby numbers."""
    _check_count("n", n, least=2)
    rng = random.Random(f"{seed}:{item.prompt}")
    near, far = _distractors(item)
    wrong = rng.sample(near, min(n - 1, len(near)))
    wrong += rng.sample(far, n - 1 - len(wrong))
    options = [item.answer] + wrong
    rng.shuffle(options)
    return options, options.index(item.answer)


def _distractors(item: Instruction) -> tuple[list[str], list[str]]:
    """Wrong answers: those to use first, then others."""
    if item.answer.isdigit():
        a = int(item.answer)
        return [str(k) for k in range(max(0, a - 6), a + 7) if k != a], []
    words = item.answer.split()
    orders = {" ".join(p) for p in itertools.permutations(words)} - {item.answer}
    swapped = {" ".join([w] + words[1:]) for w in WORDS if w not in words}
    return sorted(orders), sorted(swapped)


def base_text(items) -> str:
    """The plain text a base model is pretrained on: each instruction on one line, its answer
    on the next, a blank line between them; no roles, no special tokens."""
    return "".join(f"{it.prompt}\n{it.answer}\n\n" for it in items)
