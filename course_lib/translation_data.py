"""Parallel text for translation: loading pairs, building the tokenizer, encoding.

Sources: ``"generated"`` (``course_lib.grammar``, offline), a local prefix such as
``../shared/data/multi30k/train`` (line-aligned ``.en(.gz)``/``.de(.gz)`` files), or
``"talks"`` (the TED-talk pairs on the Hugging Face hub, online). One tokenizer with a
joint vocabulary serves both languages (so the embeddings can be shared), with the
special tokens ``<pad>`` (id 0), ``<bos>``, ``<eos>``, ``<unk>``.
"""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

from course_lib import grammar

SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")


def _read_lines(path: Path) -> list[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


def read_parallel_files(prefix: str | Path, src_lang: str = "en", tgt_lang: str = "de") -> list[tuple[str, str]]:
    """Pairs from ``prefix.en(.gz)`` and ``prefix.de(.gz)``: line i translates line i."""
    prefix = Path(prefix)
    paths = []
    for lang in (src_lang, tgt_lang):
        found = [p for p in (Path(f"{prefix}.{lang}"), Path(f"{prefix}.{lang}.gz")) if p.exists()]
        if not found:
            raise FileNotFoundError(f"no {prefix}.{lang} or {prefix}.{lang}.gz; give the path prefix of "
                                    f"line-aligned files (e.g. ../shared/data/multi30k/train).")
        paths.append(found[0])
    src, tgt = (_read_lines(p) for p in paths)
    if len(src) != len(tgt):
        raise ValueError(f"misaligned parallel files: {paths[0]} has {len(src)} lines but {paths[1]} has "
                         f"{len(tgt)}; line i of one must translate line i of the other.")
    return [(s.strip(), t.strip()) for s, t in zip(src, tgt) if s.strip() and t.strip()]


def load_pairs(source: str, split: str = "train", n: int | None = None, seed: int = 0) -> list[tuple[str, str]]:
    """(English, German) pairs from ``source`` (see the module's docstring)."""
    if source == "generated":
        train, test = grammar.train_test_split(n or 20000, 400, seed) if split == "train" else \
            grammar.train_test_split(20000, n or 400, seed)
        return train if split == "train" else test
    try:
        from course_lib.data import load_parallel  # the course's shared loader, when present
    except ImportError:
        load_parallel = None
    if load_parallel is not None and source != "generated":
        return load_parallel(source, split=split, max_pairs=n)
    if source == "talks":
        from datasets import load_dataset

        ds = load_dataset("sentence-transformers/parallel-sentences-talks", "en-de", split="train")
        pairs = [(r["english"], r["non_english"]) for r in ds]
        cut = max(1, len(pairs) // 100)  # the last 1% as validation
        pairs = pairs[:-cut] if split == "train" else pairs[-cut:]
        return pairs[:n] if n else pairs
    if split != "train" and Path(source).name == "train":  # .../train -> .../val (or valid, dev)
        for name in ("val", "valid", "dev"):
            sibling = Path(source).with_name(name)
            if any(Path(f"{sibling}.en{gz}").exists() for gz in ("", ".gz")):
                source = str(sibling)
                break
        else:
            raise FileNotFoundError(f"no validation files beside {source}; pass them with valid_data / --valid-data.")
    pairs = read_parallel_files(source)
    return pairs[:n] if n else pairs


class SimpleWordTokenizer:
    """Word-level tokenizer (words and punctuation marks), with a joint vocabulary."""

    def __init__(self, vocab: list[str]):
        self.itos = list(vocab)
        self.stoi = {w: i for i, w in enumerate(self.itos)}
        self.special_tokens = {s: self.stoi[s] for s in SPECIALS if s in self.stoi}

    @classmethod
    def from_texts(cls, texts, special_tokens=SPECIALS) -> SimpleWordTokenizer:
        words = sorted({w for t in texts for w in cls.split(t)} - set(special_tokens))
        return cls(list(special_tokens) + words)

    @staticmethod
    def split(text: str) -> list[str]:
        return re.findall(r"\w+|[^\w\s]", text)

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def encode(self, text: str) -> list[int]:
        unk = self.stoi["<unk>"]
        return [self.stoi.get(w, unk) for w in self.split(text)]

    def decode(self, ids) -> str:
        return " ".join(self.itos[i] for i in ids if self.itos[i] not in SPECIALS)

    def save(self, path) -> None:
        Path(path).write_text(json.dumps({"type": "word", "vocab": self.itos}, ensure_ascii=False), encoding="utf-8")


def build_tokenizer(pairs, kind: str = "word", vocab_size: int = 8000):
    """A tokenizer for both languages, fitted on the training pairs."""
    texts = [s for p in pairs for s in p]
    if kind == "word":
        return SimpleWordTokenizer.from_texts(texts)
    try:
        from course_lib.tokenizer import BPETokenizer
    except ImportError:
        raise RuntimeError("tokenizer='bpe' needs course_lib.tokenizer.BPETokenizer, which this "
                           "checkout lacks; use tokenizer='word'.") from None
    return BPETokenizer.train("\n".join(texts), vocab_size=vocab_size, special_tokens=SPECIALS)


def load_tokenizer(path):
    d = json.loads(Path(path).read_text(encoding="utf-8"))
    if d.get("type") == "word" and "vocab" in d:
        return SimpleWordTokenizer(d["vocab"])
    from course_lib.tokenizer import load_tokenizer as load

    return load(path)


def special_ids(tokenizer) -> dict[str, int]:
    ids = dict(tokenizer.special_tokens)
    missing = [s for s in SPECIALS[:3] if s not in ids]
    if missing:
        raise ValueError(f"the tokenizer lacks the special tokens {missing}; build it with special_tokens={SPECIALS}.")
    if ids["<pad>"] != 0:
        raise ValueError(f"<pad> must be id 0 (the model's pad_id), got {ids['<pad>']}.")
    return ids


def encode_pairs(tokenizer, pairs, max_len: int):
    """``[(src ids + <eos>, <bos> + tgt ids + <eos>)]``; pairs longer than ``max_len`` are
    dropped. Returns (examples, number dropped)."""
    ids = special_ids(tokenizer)
    out, dropped = [], 0
    for s, t in pairs:
        src = tokenizer.encode(s) + [ids["<eos>"]]
        tgt = [ids["<bos>"]] + tokenizer.encode(t) + [ids["<eos>"]]
        if len(src) > max_len or len(tgt) > max_len or len(src) < 2:
            dropped += 1
            continue
        out.append((src, tgt))
    return out, dropped
