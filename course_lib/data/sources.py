"""Loaders for real data sets, each with an offline fallback to data the course makes.

- ``load_text(source)``: a text corpus: ``"stdlib"``, ``"generated"``, ``"tinyshakespeare"``
  or ``"sales_textbook"`` (Hugging Face hub), a local ``.txt`` / ``.txt.gz`` file or a
  folder holding ``input.txt``.
- ``load_parallel(source, split)``: sentence pairs for translation: ``"talks"``
  (TED talks en-de on the hub), ``"multi30k"``, ``"generated"`` (``course_lib.data.grammar``),
  a local prefix ``.../train`` (reads ``train.en[.gz]`` + ``train.de[.gz]``, line i of one
  is the translation of line i of the other) or two explicit paths.
- ``load_pairs(source, split)``: the translation trainer's view of ``load_parallel``:
  held-out generated sentences, a local ``train`` prefix's ``val`` sibling.

When the hub cannot be reached (or ``HF_HUB_OFFLINE=1``), a loader falls back within
``timeout`` seconds (5 by default) and prints one line saying what it used instead.
``$COURSE_DATA_DIR`` may point at local copies (``tinyshakespeare/input.txt``,
``multi30k/train.en.gz`` ...), which are then used before the hub.
"""

from __future__ import annotations

import gzip
import os
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path

from course_lib.data import grammar
from course_lib.data.stdlib_docs import stdlib_docs
from course_lib.data.stories import GENERATED_CHARS, generated_corpus

HUB_TEXT = {  # name -> (hub dataset, config)
    "tinyshakespeare": ("karpathy/tiny_shakespeare", None),
    "sales_textbook": ("goendalf666/sales-textbook_for_convincing_and_selling", None),
}
HUB_PARALLEL = {  # name -> (hub dataset, config, {our split: hub split})
    "talks": ("sentence-transformers/parallel-sentences-talks", "en-de", {"train": "train", "val": "dev", "test": "dev"}),
    "multi30k": ("bentrevett/multi30k", None, {"train": "train", "val": "validation", "test": "test"}),
}
GENERATED_PAIRS = 20_000
SPLIT_SEEDS = {"train": 0, "val": 1, "test": 2}


@dataclass
class TextData:
    """A text corpus and a short description of where it came from."""

    text: str
    source: str

    def __len__(self) -> int:
        return len(self.text)


class ParallelData(list):
    """A list of ``(source sentence, target sentence)`` pairs, with ``.source``."""

    def __init__(self, pairs, source: str):
        super().__init__(pairs)
        self.source = source


def short_error(exc: BaseException) -> str:
    """``'ConnectionError'`` or ``'ValueError: short message'``: an error in a few words."""
    message = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {message}" if message and len(message) <= 80 else type(exc).__name__


def call_with_timeout(fn, timeout: float):
    """``(fn(), None)`` if ``fn`` returns within ``timeout`` s, else ``(None, why not)``.

    ``fn`` runs in a daemon thread, so a network call that hangs (no internet) cannot
    block the course: after ``timeout`` s we move on and the thread is abandoned.
    """
    result: dict = {}

    def target():
        try:
            result["value"] = fn()
        except Exception as exc:  # offline, blocked, unknown name, ...
            result["error"] = short_error(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    if "value" in result:
        return result["value"], None
    return None, result.get("error", f"no answer within {timeout:g} s")


def _say(line: str, verbose: bool) -> None:
    if verbose:
        print(line)


def _hub_offline() -> str | None:
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(var, "").lower() in {"1", "true", "yes", "on"}:
            return f"{var}=1"
    return None


def _hub_describe(repo: str, timeout: float, repo_type: str) -> None:
    """Raise if the hub does not describe ``repo`` (called in a thread with a time limit)."""
    from huggingface_hub import HfApi

    HfApi().repo_info(repo, repo_type=repo_type, timeout=timeout)


def _hub_rows(repo: str, config, split: str, max_rows: int | None) -> list[dict]:
    """Rows of a hub data set (streamed when only the first ``max_rows`` are wanted)."""
    from datasets import load_dataset

    if max_rows is None:
        return list(load_dataset(repo, config, split=split))
    stream = load_dataset(repo, config, split=split, streaming=True)
    return [row for _, row in zip(range(max_rows), stream)]


def hub_unavailable(repo: str, timeout: float = 5.0, repo_type: str = "dataset") -> str | None:
    """None if the hub answers about ``repo`` within ``timeout`` s, else why not
    (``HF_HUB_OFFLINE=1``, no answer, unknown repository, ...)."""
    offline = _hub_offline()
    if offline:
        return offline
    _, error = call_with_timeout(lambda: _hub_describe(repo, timeout, repo_type), timeout)
    return error


def _string_columns(row: dict) -> list[str]:
    return [k for k, v in row.items() if isinstance(v, str)]


def _data_dir() -> Path | None:
    d = os.environ.get("COURSE_DATA_DIR")
    return Path(d) if d else None


def read_text_file(path) -> str:
    """A UTF-8 text file, gzip-compressed (``.gz``) or not."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such text file: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                         "convert it to UTF-8 or give another file.") from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise ValueError(f"{path} is not a complete gzip file ({exc}); "
                         "decompress it yourself or download it again.") from None


def load_text(source: str = "tinyshakespeare", max_chars: int | None = None, timeout: float = 5.0,
              verbose: bool = True) -> TextData:
    """A text corpus: ``"stdlib"`` (the standard library's docstrings, offline, always
    there), ``"generated"``, a hub name in ``HUB_TEXT``, a local ``.txt``/``.gz`` file, or a
    folder holding ``input.txt``."""
    if max_chars is not None and (not isinstance(max_chars, int) or isinstance(max_chars, bool) or max_chars < 1):
        raise ValueError(f"max_chars={max_chars!r} must be an integer >= 1 (or None for all the text).")
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"the text source must be a name or a path, got {type(source).__name__}.")
    source = str(source)
    if source == "stdlib":
        return TextData(stdlib_docs(max_chars), "docstrings of the Python standard library (read at run time)")
    if Path(source).is_dir() and (Path(source) / "input.txt").is_file():
        source = str(Path(source) / "input.txt")
    if source == "generated":
        n = GENERATED_CHARS if max_chars is None else max_chars
        return TextData(generated_corpus(n), f"generated corpus ({n:,} characters)")
    if source in HUB_TEXT:
        local = _data_dir() and _data_dir() / source / "input.txt"
        if local and local.is_file():
            return TextData(read_text_file(local)[:max_chars], f"{source} (local copy {local})")
        repo, config = HUB_TEXT[source]
        why = hub_unavailable(repo, timeout)
        if why is None:
            try:
                rows = []
                for split in ("train", "validation", "test"):
                    try:
                        rows += _hub_rows(repo, config, split, None)
                    except ValueError:  # a data set without this split
                        if split == "train":
                            raise
                column = "text" if rows and "text" in rows[0] else _string_columns(rows[0])[0]
                text = "\n".join(row[column] for row in rows)
                return TextData(text[:max_chars], f"{source} (hub {repo})")
            except Exception as exc:
                why = short_error(exc)
        n = GENERATED_CHARS if max_chars is None else max_chars
        _say(f"data: {source} could not be loaded from the Hugging Face hub ({why}); "
             f"using the generated corpus ({n:,} characters) instead", verbose)
        return TextData(generated_corpus(n), f"generated corpus ({n:,} characters), standing in for {source}")
    path = Path(source)
    if path.is_file():
        text = read_text_file(path)
        if not text.strip():
            raise ValueError(f"the text file {path} is empty; give a file with text to train on.")
        return TextData(text[:max_chars], str(path))
    raise ValueError(
        f"unknown text source {source!r}: use 'stdlib', 'generated', one of {sorted(HUB_TEXT)}, "
        "the path of an existing .txt / .txt.gz file, or a folder holding input.txt."
    )


def _read_lines(path: Path) -> list[str]:
    text = read_text_file(path).rstrip("\n")
    return text.split("\n") if text else []


def _find(prefix: Path, lang: str) -> Path:
    for candidate in (Path(f"{prefix}.{lang}"), Path(f"{prefix}.{lang}.gz")):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"no file {prefix}.{lang} or {prefix}.{lang}.gz for the parallel text {prefix}")


def read_parallel_files(src_path, tgt_path, max_pairs: int | None = None) -> list[tuple[str, str]]:
    """Line-aligned files: line i of ``tgt_path`` translates line i of ``src_path``."""
    src, tgt = _read_lines(Path(src_path)), _read_lines(Path(tgt_path))
    if len(src) != len(tgt):
        raise ValueError(
            f"parallel files differ in length: {src_path} has {len(src):,} lines but "
            f"{tgt_path} has {len(tgt):,}; line i of one must translate line i of the other."
        )
    if not src:
        raise ValueError(f"the parallel files {src_path} and {tgt_path} are empty; "
                         "give files with one sentence per line.")
    return list(zip(src, tgt))[:max_pairs]


def generated_pairs(n: int, split: str = "train", seed: int = 0) -> list[tuple[str, str]]:
    """``n`` (English, German) pairs from the course's grammar, one seed per split."""
    return [tuple(p) for p in grammar.generate_pairs(n, seed + 1000 * SPLIT_SEEDS.get(split, 3))]


def load_parallel(source="talks", split: str = "train", max_pairs: int | None = None,
                  src_lang: str = "en", tgt_lang: str = "de", timeout: float = 5.0,
                  verbose: bool = True) -> ParallelData:
    """Sentence pairs ``(src, tgt)``: a hub name, ``"generated"``, a local prefix or two paths.

    ``split`` is ``"train"``, ``"val"`` or ``"test"``; ``max_pairs`` keeps the first pairs.
    """
    if split not in SPLIT_SEEDS:
        raise ValueError(f"split must be one of {list(SPLIT_SEEDS)}, got {split!r}")
    if isinstance(source, (tuple, list)):
        src_path, tgt_path = source
        return ParallelData(read_parallel_files(src_path, tgt_path, max_pairs), f"{src_path} + {tgt_path}")
    if source == "generated":
        n = GENERATED_PAIRS if max_pairs is None else max_pairs
        return ParallelData(generated_pairs(n, split), f"generated pairs ({n:,}, {split})")
    if source in HUB_PARALLEL:
        local = _data_dir() and _data_dir() / source / split
        if local and any(Path(f"{local}.{src_lang}{gz}").is_file() for gz in ("", ".gz")):
            return load_parallel(str(local), split, max_pairs, src_lang, tgt_lang, timeout, verbose)
        repo, config, splits = HUB_PARALLEL[source]
        if source == "talks":  # one config per language pair, English first: en-de, en-fr, ...
            config = "en-" + (tgt_lang if src_lang == "en" else src_lang)
        why = hub_unavailable(repo, timeout)
        if why is None:
            try:
                rows = _hub_rows(repo, config, splits[split], max_pairs)
                cols = _string_columns(rows[0])
                if "english" in cols and "non_english" in cols:
                    pair = ("english", "non_english") if src_lang == "en" else ("non_english", "english")
                elif src_lang in cols and tgt_lang in cols:
                    pair = (src_lang, tgt_lang)
                else:
                    pair = tuple(cols[:2])
                data = [(row[pair[0]], row[pair[1]]) for row in rows]
                return ParallelData(data, f"{source} (hub {repo}, {splits[split]})")
            except Exception as exc:
                why = short_error(exc)
        n = GENERATED_PAIRS if max_pairs is None else max_pairs
        _say(f"data: {source} could not be loaded from the Hugging Face hub ({why}); "
             f"using {n:,} generated sentence pairs ({split}) instead", verbose)
        return ParallelData(generated_pairs(n, split), f"generated pairs ({n:,}, {split}), standing in for {source}")
    prefix = Path(source)
    if prefix.parent.is_dir() and not prefix.is_dir():
        src_path, tgt_path = _find(prefix, src_lang), _find(prefix, tgt_lang)
        return ParallelData(read_parallel_files(src_path, tgt_path, max_pairs), str(prefix))
    raise ValueError(
        f"unknown parallel source {source!r}: use 'generated', one of {sorted(HUB_PARALLEL)}, "
        "a local prefix such as data/multi30k/train (for train.en[.gz] + train.de[.gz]), "
        "or a tuple (src_path, tgt_path)."
    )


def load_pairs(source: str, split: str = "train", n: int | None = None, seed: int = 0,
               n_train: int = 20000) -> list[tuple[str, str]]:
    """(English, German) pairs from ``source``; ``split``: "train" or "val".

    ``"generated"``: ``grammar.train_test_split``, so the "val" sentences never occur in
    the ``n_train`` training pairs. Anything else goes through ``course_lib.data.load_parallel``; a
    local prefix ``.../train`` reads ``.../val`` (or ``valid``, ``dev``) for "val".
    """
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}.")
    if source == "generated":
        if split == "train":
            return grammar.generate_pairs(n or n_train, seed)
        return grammar.train_test_split(n_train, n or 400, seed)[1]
    if split == "val" and Path(source).name == "train" and Path(source).parent.is_dir():
        for name in ("val", "valid", "dev"):
            sibling = Path(source).with_name(name)
            if any(Path(f"{sibling}.en{gz}").exists() for gz in ("", ".gz")):
                return list(load_parallel(str(sibling), "val", max_pairs=n))
        raise FileNotFoundError(f"no validation files beside {source} (val.en/.de, valid.*, dev.*); "
                                "pass them with valid_data / --valid-data.")
    pairs = load_parallel(source, split, max_pairs=n)
    return [(s.strip(), t.strip()) for s, t in pairs if s.strip() and t.strip()]
