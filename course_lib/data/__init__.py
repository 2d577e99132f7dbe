"""Data: what the course generates itself, and loaders for real data sets.

- ``stories``: short English stories from the project's own templates (``generated_corpus``).
- ``grammar``: English -> German sentence pairs with a known translation.
- ``stdlib_docs``: the docstrings of Python's standard library, read at run time.
- ``sources``: ``load_text``, ``load_parallel``, ``load_pairs``: local files, the Hugging
  Face hub, and a fallback within seconds to the generated data when offline.
"""

from course_lib.data import grammar
from course_lib.data.sources import (
    GENERATED_PAIRS,
    ParallelData,
    TextData,
    call_with_timeout,
    load_pairs,
    load_parallel,
    load_text,
    read_parallel_files,
    read_text_file,
    short_error,
)
from course_lib.data.stdlib_docs import stdlib_docs
from course_lib.data.stories import GENERATED_CHARS, generated_corpus

__all__ = [
    "GENERATED_CHARS", "GENERATED_PAIRS", "ParallelData", "TextData", "call_with_timeout",
    "generated_corpus", "grammar", "load_pairs", "load_parallel", "load_text",
    "read_parallel_files", "read_text_file", "short_error", "stdlib_docs",
]  # fmt: skip
