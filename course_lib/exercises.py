"""Checking a learner's exercise solution against the course's reference solution.

In a notebook:

    def merge_once(ids, pair, new_id):
        ...  # your code

    check(merge_once, "nb01.merge_once")

``check`` runs both functions on the cases listed in ``course_lib/solutions/nbNN.py``
and prints one line: not attempted yet (the function still returns None), passed, or
the first case where the answers differ. It never raises, so "Run All" keeps going.
"""

from __future__ import annotations

import importlib

import torch


def _same(a, b) -> bool:
    if torch.is_tensor(a) or torch.is_tensor(b):
        if not (torch.is_tensor(a) and torch.is_tensor(b)) or a.shape != b.shape:
            return False
        if a.dtype.is_floating_point or b.dtype.is_floating_point:
            return torch.allclose(a.double(), b.double(), rtol=1e-4, atol=1e-5)
        return torch.equal(a, b)
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and abs(a - b) <= 1e-6 * max(1.0, abs(b))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


def solution(name: str):
    """The reference solution ``"nbNN.function"`` (look at it only after trying!)."""
    module, func = name.split(".", 1)
    return getattr(importlib.import_module(f"course_lib.solutions.{module}"), func)


def cases(name: str) -> list[tuple]:
    module, func = name.split(".", 1)
    return importlib.import_module(f"course_lib.solutions.{module}").CASES[func]


def check(fn, name: str, verbose: bool = True) -> bool:
    """Compare ``fn`` with the reference solution ``name`` on its cases; print one line."""
    ref = solution(name)
    for i, args in enumerate(cases(name)):
        try:
            got = fn(*args)
        except Exception as exc:  # a learner's bug is reported, not raised
            if verbose:
                print(f"{name}: case {i} raised {type(exc).__name__}: {exc}")
            return False
        if got is None:
            if verbose:
                print(f"{name}: not attempted yet (your function returns None)")
            return False
        want = ref(*args)
        if not _same(got, want):
            if verbose:
                print(f"{name}: case {i} differs: expected {want!r}, got {got!r}")
            return False
    if verbose:
        print(f"{name}: passed all {len(cases(name))} cases")
    return True
