"""Text for training a GPT, offline: the documentation shipped with Python itself.

Every Python installation carries the docstrings of its standard library (what
``help(json)`` shows). ``stdlib_docs()`` reads them at run time with ``inspect``, so the
course commits none of it, and gets English prose about programming that is worth
reading back from a small model. The text depends on the Python version a little.

``load_corpus`` reads local files and tiny Shakespeare through ``course_lib.data.load_text``.
"""

from __future__ import annotations

import importlib
import inspect
import string
from pathlib import Path

# the tokenizers GPT code uses, re-exported for course_lib.gpt_train and course_lib.generate
from course_lib.data import load_text
from course_lib.tokenizer import CharTokenizer, TiktokenTokenizer, load_tokenizer  # noqa: F401

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
                sig = str(inspect.signature(obj))
            except (TypeError, ValueError):
                sig = "(...)"
            parts.append(f"{mod_name}.{name}{sig}\n\n{doc}\n")
    text = _clean("\n".join(parts))
    return text[:n_chars] if n_chars else text


def load_corpus(source: str, n_chars: int | None = None) -> tuple[str, str]:
    """``(text, where it came from)`` for ``source``: ``"stdlib"`` (offline, always there),
    a local .txt/.gz file or folder holding input.txt, or a name ``course_lib.data``
    knows ("tinyshakespeare", "generated"; hub with a local fallback)."""
    if source == "stdlib":
        return stdlib_docs(n_chars), "docstrings of the Python standard library (read at run time)"
    path = Path(source)
    if path.is_dir() and (path / "input.txt").exists():
        source = str(path / "input.txt")
    loaded = load_text(source, max_chars=n_chars)  # local .txt/.gz files and hub names alike
    return loaded.text, loaded.source

