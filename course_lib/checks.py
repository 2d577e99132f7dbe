"""Argument checks at the boundary of the public functions: each mistake is a ``ValueError``
that names the argument, the value given and what to give instead.

    count("n_test", n_test, minimum=0)        # an integer >= 0, not a bool or a float
    probability("p_correct", p_correct)        # a number in [0, 1]
    texts("predictions", predictions)          # a list of strings, not one string
"""

from __future__ import annotations

import math
from collections.abc import Iterable


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def count(name: str, value, minimum: int = 1, optional: bool = False, fix: str = "") -> None:
    """``value`` must be an integer >= ``minimum`` (or None with ``optional``)."""
    if optional and value is None:
        return
    if not _is_int(value) or value < minimum:
        raise ValueError(f"{name}={value!r} must be an integer >= {minimum}" + (f"; {fix}" if fix else "") + ".")


def number(name: str, value, low: float | None = None, high: float | None = None, above: bool = False,
           fix: str = "") -> None:
    """``value`` must be a finite number, ``>= low`` (``> low`` with ``above``) and ``<= high``."""
    bad = not _is_number(value)
    if not bad and low is not None:
        bad = value <= low if above else value < low
    if not bad and high is not None:
        bad = value > high
    if bad:
        rule = "a finite number"
        if low is not None:
            rule += f" {'>' if above else '>='} {low:g}"
        if high is not None:
            rule += f"{' and' if low is not None else ''} <= {high:g}"
        raise ValueError(f"{name}={value!r} must be {rule}" + (f"; {fix}" if fix else "") + ".")


def probability(name: str, value, fix: str = "") -> None:
    """``value`` must be a number in [0, 1]."""
    if not _is_number(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}={value!r} must be a probability in [0, 1]" + (f"; {fix}" if fix else "") + ".")


def flag(name: str, value) -> None:
    """``value`` must be True or False (not the string "false", not 0 or 1)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name}={value!r} must be true or false (a boolean, not {type(value).__name__}).")


def texts(name: str, value, allow_empty: bool = False) -> list[str]:
    """``value`` must be a list (or tuple) of strings; returns it as a list. One string
    alone is refused: it would be taken one character at a time."""
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise ValueError(f"{name} must be a list of strings, got {type(value).__name__}"
                         + (f" {value[:40]!r}; wrap one text in a list: [text]" if isinstance(value, str) else "") + ".")
    bad = [i for i, v in enumerate(value) if not isinstance(v, str)]
    if bad:
        raise ValueError(f"{name}[{bad[0]}] is a {type(value[bad[0]]).__name__}, not a string.")
    if not value and not allow_empty:
        raise ValueError(f"{name} is empty; give at least one text.")
    return list(value)


def names(name: str, value, known: Iterable[str] | None = None) -> tuple[str, ...]:
    """``value`` must be a non-empty tuple or list of strings (each in ``known`` if given)."""
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not value:
        hint = f"; write ({value!r},) for one name" if isinstance(value, str) else ""
        raise ValueError(f"{name}={value!r} must be a non-empty tuple of names{hint}.")
    if not all(isinstance(v, str) for v in value):
        raise ValueError(f"{name}={value!r} must hold strings only.")
    if known is not None:
        unknown = sorted(set(value) - set(known))
        if unknown:
            raise ValueError(f"{name}: unknown {unknown}; choose from {sorted(known)}.")
    return tuple(value)
