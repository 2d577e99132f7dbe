"""Text for training a GPT, offline: the documentation shipped with Python itself.

Every Python installation carries the docstrings of its standard library (what
``help(json)`` shows). ``stdlib_docs()`` reads them at run time with ``inspect``, so the
course commits none of it, and gets English prose about programming that is worth
reading back from a small model. The text depends on the Python version a little.
"""

from __future__ import annotations

import importlib
import inspect
import string

STDLIB_MODULES = (
    "json", "textwrap", "string", "collections", "itertools", "functools", "pathlib", "random",
    "statistics", "datetime", "heapq", "bisect", "fractions", "decimal", "csv", "shutil", "re",
    "operator", "copy", "calendar", "difflib", "argparse", "logging", "dataclasses", "enum",
    "contextlib", "abc", "glob", "fnmatch", "tempfile", "zipfile", "gzip", "hashlib", "base64",
    "html", "pprint", "inspect", "ast", "tokenize", "unittest", "doctest", "threading", "queue",
    "subprocess", "socket", "sqlite3", "email.message", "urllib.parse", "http.client", "typing",
)
_ALLOWED = set(string.printable) - set("\r\x0b\x0c")


def _clean(text: str) -> str:
    return "".join(c if c in _ALLOWED else "?" for c in text)


class _Elided:
    def __repr__(self) -> str:
        return "..."


def _signature(obj) -> str:
    """``name(signature)`` text that is the same in every process: a default whose repr holds a
    memory address (``<function copy2 at 0x7f...>``, logging's live list of handlers) is ``...``."""
    sig = inspect.signature(obj)
    params = [p.replace(default=_Elided()) if p.default is not p.empty and " at 0x" in repr(p.default) else p
              for p in sig.parameters.values()]
    return str(sig.replace(parameters=params))


def stdlib_docs(n_chars: int | None = None, modules=STDLIB_MODULES) -> str:
    """Docstrings of standard-library modules, their classes and functions, in a fixed order.

    Each entry reads ``name(signature)`` then its documentation, like ``help()``; only
    printable ASCII is kept. ``n_chars`` truncates the result.
    """
    parts: list[str] = []
    for mod_name in modules:
        try:
            mod = importlib.import_module(mod_name)
        except ImportError:
            continue
        doc = inspect.getdoc(mod)
        if doc:
            parts.append(f"Module {mod_name}\n\n{doc}\n")
        for name in sorted(vars(mod)):
            obj = getattr(mod, name)
            if name.startswith("_") or getattr(obj, "__module__", None) != mod.__name__:
                continue
            if not (inspect.isclass(obj) or inspect.isfunction(obj)):
                continue
            doc = inspect.getdoc(obj)
            if not doc or len(doc) < 40:
                continue
            try:
                sig = _signature(obj)
            except (TypeError, ValueError):
                sig = "(...)"
            parts.append(f"{mod_name}.{name}{sig}\n\n{doc}\n")
    text = _clean("\n".join(parts))
    return text[:n_chars] if n_chars else text
