"""Parallel text for translation: loading pairs, building the tokenizer, encoding.

Sources: ``"generated"`` (``course_lib.grammar``, offline), a local prefix such as
``../shared/data/multi30k/train`` (line-aligned ``.en(.gz)``/``.de(.gz)`` files), or
``"talks"`` (the TED-talk pairs on the Hugging Face hub, online). One tokenizer with a
joint vocabulary serves both languages (so the embeddings can be shared), with the
special tokens ``<pad>``, ``<bos>``, ``<eos>``, ``<unk>`` (the word tokenizer puts them
first, so ``<pad>`` is 0; the byte-level BPE puts them after its merges, so the model's
``pad_id`` is taken from the tokenizer).
"""

from __future__ import annotations

from pathlib import Path

from course_lib import grammar
from course_lib.data import load_parallel
from course_lib.tokenizer import BPETokenizer, WordTokenizer, load_tokenizer

__all__ = ["SPECIALS", "load_pairs", "build_tokenizer", "load_tokenizer", "special_ids", "encode_pairs"]

SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")


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


def build_tokenizer(pairs, kind: str = "word", vocab_size: int = 8000):
    """A tokenizer for both languages, fitted on the training pairs."""
    texts = [s for p in pairs for s in p]
    if kind == "word":
        return WordTokenizer.from_texts(texts, special_tokens=SPECIALS)
    if kind == "bpe":
        return BPETokenizer.train("\n".join(texts), vocab_size=vocab_size, special_tokens=SPECIALS)
    raise ValueError(f"tokenizer kind {kind!r}: use 'word' or 'bpe'.")


def special_ids(tokenizer) -> dict[str, int]:
    ids = dict(tokenizer.special_tokens)
    missing = [s for s in SPECIALS[:3] if s not in ids]
    if missing:
        raise ValueError(f"the tokenizer lacks the special tokens {missing}; build it with special_tokens={SPECIALS}.")
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
