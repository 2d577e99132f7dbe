"""Tokenizers: text -> token ids -> text, all with one interface.

Every tokenizer here has ``encode(text, allowed_special="none") -> list[int]``,
``decode(ids) -> str``, ``vocab_size``, ``special_tokens`` (name -> id),
``token_to_id(token)``, ``id_to_token(id)``, ``tokens(text)`` (the pieces, for display),
``save(path)`` (JSON) and ``load_tokenizer(path)`` to read any of them back.

- ``BPETokenizer``: byte-level BPE trained by the course (``course_lib.bpe``); its ids
  equal those of a ``tiktoken.Encoding`` built from the same merges (``to_tiktoken()``).
- ``CharTokenizer``: one token per character.  ``WordTokenizer``: one per word or mark.
- ``TiktokenTokenizer``: OpenAI's GPT-2 tokenizer through tiktoken.
- ``get_tokenizer()``: GPT-2's tokenizer when tiktoken can load it (cached or online),
  otherwise a course BPE trained on the generated corpus; it prints which.

``allowed_special`` says which special token strings in the text become their special
id: ``"none"`` (default: they are encoded as ordinary text), ``"all"``, or a set of names.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

from course_lib import bpe
from course_lib.data import call_with_timeout, generated_corpus

ENDOFTEXT = "<|endoftext|>"


class Tokenizer:
    """The common interface; subclasses define ``_encode_ordinary``, ``_piece`` and ``_to_dict``."""

    kind = "base"
    special_tokens: dict[str, int]

    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    def __len__(self) -> int:
        return self.vocab_size

    # -- special tokens -------------------------------------------------------------
    def _allowed(self, allowed_special) -> set[str]:
        if allowed_special in ("none", None):
            return set()
        if allowed_special == "all":
            return set(self.special_tokens)
        if isinstance(allowed_special, str):
            allowed_special = {allowed_special}
        unknown = sorted(set(allowed_special) - set(self.special_tokens))
        if unknown:
            raise ValueError(
                f"unknown special token(s) {unknown}; this tokenizer's special tokens are "
                f"{sorted(self.special_tokens)} (use one of them, or 'all' / 'none')."
            )
        return set(allowed_special)

    def encode(self, text: str, allowed_special="none") -> list[int]:
        """Text -> token ids. Allowed special token strings become their special ids."""
        if not isinstance(text, str):
            raise TypeError(f"encode() takes a str, got {type(text).__name__}")
        allowed = self._allowed(allowed_special)
        if not allowed:
            return self._encode_ordinary(text)
        pattern = "|".join(re.escape(s) for s in sorted(allowed, key=len, reverse=True))
        ids: list[int] = []
        start = 0
        for match in re.finditer(pattern, text):
            ids += self._encode_ordinary(text[start : match.start()])
            ids.append(self.special_tokens[match.group()])
            start = match.end()
        return ids + self._encode_ordinary(text[start:])

    def _check_ids(self, ids) -> list[int]:
        if hasattr(ids, "tolist"):  # a torch tensor or NumPy array
            ids = ids.tolist()
        ids = [ids] if isinstance(ids, int) else list(ids)
        for i in ids:
            if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < self.vocab_size:
                raise ValueError(
                    f"token id {i!r} is outside the vocabulary (ids 0..{self.vocab_size - 1}); "
                    "decode with the tokenizer that produced the ids."
                )
        return ids

    def token_to_id(self, token: str) -> int:
        """The id of a special token (or of any single token of the vocabulary)."""
        if token in self.special_tokens:
            return self.special_tokens[token]
        i = self._lookup(token)
        if i is None:
            raise ValueError(
                f"{token!r} is not a token of this tokenizer; its special tokens are "
                f"{sorted(self.special_tokens)}."
            )
        return i

    def id_to_token(self, i: int) -> str:
        """The text of one token (bytes that are not whole UTF-8 characters show as '\ufffd')."""
        return self._piece(self._check_ids([i])[0])

    def tokens(self, text: str, allowed_special="none") -> list[str]:
        """The pieces ``text`` is cut into, e.g. ``['Hello', ',', ' world']``."""
        return [self.id_to_token(i) for i in self.encode(text, allowed_special)]

    def save(self, path) -> Path:
        """Write the tokenizer as JSON; ``load_tokenizer(path)`` reads it back."""
        from course_lib.checkpoint import atomic_write_text

        path = Path(path)  # written atomically: a killed write leaves the old file whole
        atomic_write_text(path, json.dumps(self._to_dict(), ensure_ascii=False, indent=1))
        return path

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, special_tokens={self.special_tokens})"


class BPETokenizer(Tokenizer):
    """Byte-level BPE: ids 0..255 are bytes, 256 + i is merge i, then the special tokens."""

    kind = "bpe"

    def __init__(self, merges, special_tokens=(), pattern: str = "gpt2", merge_counts=None):
        self.pattern = bpe.resolve_pattern(pattern)
        self._compiled = bpe.regex.compile(self.pattern)
        self.merges = [tuple(pair) for pair in merges]
        self.merge_counts = list(merge_counts) if merge_counts is not None else None
        self.vocab = [bytes([i]) for i in range(256)]
        self.ranks: dict[tuple[int, int], int] = {}
        for i, (a, b) in enumerate(self.merges):
            if not (0 <= a < 256 + i and 0 <= b < 256 + i):
                raise ValueError(f"merge {i} {(a, b)} uses a token that does not exist yet")
            self.ranks[(a, b)] = 256 + i
            self.vocab.append(self.vocab[a] + self.vocab[b])
        if isinstance(special_tokens, dict):  # given with their ids (e.g. loaded from JSON)
            self.special_tokens = {s: int(i) for s, i in special_tokens.items()}
        else:  # names: ids follow the merges
            self.special_tokens = {s: len(self.vocab) + j for j, s in enumerate(special_tokens)}
        self._bytes_to_id = {b: i for i, b in enumerate(self.vocab)}
        self._cache: dict[str, list[int]] = {}

    @classmethod
    def train(cls, text: str, vocab_size: int, special_tokens=(), pattern: str = "gpt2"):
        """Learn ``vocab_size - 256 - len(special_tokens)`` merges from ``text``."""
        special_tokens = tuple(special_tokens)
        least = 256 + len(special_tokens)
        if not isinstance(vocab_size, int) or vocab_size < least:
            raise ValueError(
                f"vocab_size={vocab_size!r} is too small: a byte-level BPE has the 256 byte "
                f"tokens plus {len(special_tokens)} special token(s), so use vocab_size >= {least} "
                "(each token above that is one merge)."
            )
        learned = bpe.train_merges(text, vocab_size - least, pattern, special_tokens)
        return cls([p for p, _ in learned], special_tokens, pattern, [c for _, c in learned])

    @property
    def vocab_size(self) -> int:
        return len(self.vocab) + len(self.special_tokens)

    def _encode_ordinary(self, text: str) -> list[int]:
        ids: list[int] = []
        cache = self._cache
        for chunk in self._compiled.findall(text):
            if chunk not in cache:
                if len(cache) > 200_000:
                    cache.clear()
                cache[chunk] = bpe.encode_chunk(chunk.encode("utf-8"), self.ranks)
            ids += cache[chunk]
        return ids

    def decode_bytes(self, ids) -> bytes:
        inverse = {i: s.encode("utf-8") for s, i in self.special_tokens.items()}
        return b"".join(inverse[i] if i in inverse else self.vocab[i] for i in self._check_ids(ids))

    def decode(self, ids) -> str:
        """Token ids -> text (an incomplete UTF-8 sequence decodes to '\ufffd')."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def _piece(self, i: int) -> str:
        return self.decode([i])

    def _lookup(self, token: str):
        return self._bytes_to_id.get(token.encode("utf-8"))

    def to_tiktoken(self, name: str = "course-bpe"):
        """The same tokenizer as a ``tiktoken.Encoding`` (ranks keyed by token bytes)."""
        import tiktoken

        ranks = {b: i for i, b in enumerate(self.vocab)}
        return tiktoken.Encoding(
            name, pat_str=self.pattern, mergeable_ranks=ranks, special_tokens=dict(self.special_tokens)
        )

    def _to_dict(self) -> dict:
        return {
            "type": self.kind,
            "pattern": self.pattern,
            "merges": [list(p) for p in self.merges],
            "merge_counts": self.merge_counts,
            "special_tokens": self.special_tokens,
        }


class _VocabTokenizer(Tokenizer):
    """A tokenizer with an explicit list of string tokens (characters or words)."""

    def __init__(self, vocab, special_tokens=()):
        self.itos = list(vocab)
        self.stoi = {s: i for i, s in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            raise ValueError("the vocabulary has duplicate tokens")
        missing = [s for s in special_tokens if s not in self.stoi]
        if missing:
            raise ValueError(f"special tokens {missing} are not in the vocabulary")
        self.special_tokens = {s: self.stoi[s] for s in special_tokens}
        self.unk_id = self.special_tokens.get("<unk>")

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def _id(self, piece: str, what: str) -> int:
        i = self.stoi.get(piece)
        if i is not None:
            return i
        if self.unk_id is not None:
            return self.unk_id
        raise ValueError(
            f"{what} {piece!r} is not in the vocabulary; build the tokenizer from a text "
            "that contains it, or add '<unk>' to special_tokens."
        )

    def _lookup(self, token: str):
        return self.stoi.get(token)

    def _piece(self, i: int) -> str:
        return self.itos[i]

    def _to_dict(self) -> dict:
        return {"type": self.kind, "vocab": self.itos, "special_tokens": list(self.special_tokens)}


class CharTokenizer(_VocabTokenizer):
    """One token per character: the special tokens first, then the sorted characters."""

    kind = "char"

    @classmethod
    def from_text(cls, text: str, special_tokens=()):
        if not text:
            raise ValueError("cannot build a character vocabulary from an empty text")
        return cls(list(special_tokens) + sorted(set(text) - set(special_tokens)), special_tokens)

    def _encode_ordinary(self, text: str) -> list[int]:
        return [self._id(c, "character") for c in text]

    def decode(self, ids) -> str:
        return "".join(self.itos[i] for i in self._check_ids(ids))


WORD_RE = re.compile(r"\w+|[^\w\s]")


class WordTokenizer(_VocabTokenizer):
    """One token per word or punctuation mark (case kept unless ``lower=True``).

    The vocabulary is the special tokens, then the words by falling frequency (ties in
    alphabetical order), keeping words seen ``min_freq`` times, at most ``max_size`` tokens.
    Unknown words become ``<unk>``. ``decode`` joins words with single spaces.
    """

    kind = "word"

    def __init__(self, vocab, special_tokens=(), lower: bool = False):
        super().__init__(vocab, special_tokens)
        self.lower = lower

    @classmethod
    def from_texts(cls, texts, special_tokens=("<pad>", "<bos>", "<eos>", "<unk>"), min_freq: int = 1,
                   max_size: int | None = None, lower: bool = False):
        texts = [texts] if isinstance(texts, str) else texts
        counts: Counter = Counter()
        for text in texts:
            counts.update(WORD_RE.findall(text.lower() if lower else text))
        words = sorted((w for w, c in counts.items() if c >= min_freq and w not in special_tokens),
                       key=lambda w: (-counts[w], w))
        if max_size is not None:
            words = words[: max(0, max_size - len(special_tokens))]
        if not words:
            raise ValueError("no words to build a vocabulary from (empty texts or min_freq too high)")
        return cls(list(special_tokens) + words, special_tokens, lower)

    def split(self, text: str) -> list[str]:
        return WORD_RE.findall(text.lower() if self.lower else text)

    def _encode_ordinary(self, text: str) -> list[int]:
        return [self._id(w, "word") for w in self.split(text)]

    def decode(self, ids) -> str:
        text = " ".join(self.itos[i] for i in self._check_ids(ids))
        return re.sub(r" ([.,!?;:])", r"\1", text)

    def _to_dict(self) -> dict:
        return {**super()._to_dict(), "lower": self.lower}


class TiktokenTokenizer(Tokenizer):
    """A ``tiktoken.Encoding`` (GPT-2's by default) behind the course's interface."""

    kind = "tiktoken"

    def __init__(self, encoding="gpt2"):
        if isinstance(encoding, str):
            import tiktoken

            encoding = tiktoken.get_encoding(encoding)
        self.encoding = encoding
        self.name = encoding.name
        self.special_tokens = {s: encoding.encode_single_token(s) for s in sorted(encoding.special_tokens_set)}

    @property
    def vocab_size(self) -> int:
        return self.encoding.n_vocab

    def encode(self, text: str, allowed_special="none") -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"encode() takes a str, got {type(text).__name__}")
        return self.encoding.encode(text, allowed_special=self._allowed(allowed_special), disallowed_special=())

    def decode(self, ids) -> str:
        return self.encoding.decode(self._check_ids(ids))

    def _piece(self, i: int) -> str:
        return self.encoding.decode_single_token_bytes(i).decode("utf-8", errors="replace")

    def _lookup(self, token: str):
        try:
            return self.encoding.encode_single_token(token.encode("utf-8"))
        except KeyError:
            return None

    def _to_dict(self) -> dict:
        return {"type": self.kind, "name": self.name}


class TokenizerFileError(ValueError):
    """A file that is not a tokenizer written by ``Tokenizer.save`` (or is damaged)."""


def _bad_tokenizer(path, what: str) -> TokenizerFileError:
    return TokenizerFileError(f"{path} is not a tokenizer file of this course ({what}); write it with "
                              "tokenizer.save(path), or train the run again to recreate it.")


def _list_of(value, kind, what: str, path) -> list:
    if not isinstance(value, list) or not all(isinstance(v, kind) and not isinstance(v, bool) for v in value):
        raise _bad_tokenizer(path, f"{what} must be a list of {kind.__name__}")
    return value


_FIELDS_OF = {"bpe": ("merges", "special_tokens", "pattern"), "char": ("vocab", "special_tokens"),
              "word": ("vocab", "special_tokens"), "tiktoken": ("name",)}


def load_tokenizer(path) -> Tokenizer:
    """Read a tokenizer written by ``save(path)``. A missing file is a ``FileNotFoundError``;
    anything else that is not one of ours a ``TokenizerFileError`` (a ``ValueError``)
    naming the file and what is wrong."""
    path = Path(path)
    d = _read_tokenizer_json(path)
    kind = _tokenizer_kind(d, path)
    try:
        if kind == "bpe":
            return _bpe_from_dict(d, path)
        if kind == "tiktoken":
            return _tiktoken_from_dict(d, path)
        return _vocab_tokenizer_from_dict(kind, d, path)
    except TokenizerFileError:
        raise
    # the ValueError of an unloadable tiktoken encoding is reported here too, cut to 200 characters
    except (ValueError, TypeError, KeyError, IndexError, OverflowError, bpe.regex.error) as exc:
        raise _bad_tokenizer(path, str(exc)[:200]) from None


def _read_tokenizer_json(path: Path) -> dict:
    """The JSON object in the tokenizer file ``path``."""
    if not path.is_file():
        raise FileNotFoundError(f"no tokenizer file at {path}; it is written beside the checkpoint "
                                "(tokenizer.json): check the path or train again.")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise _bad_tokenizer(path, f"not valid JSON: {str(exc)[:120]}") from None
    if not isinstance(d, dict):
        raise _bad_tokenizer(path, f"a JSON {type(d).__name__}, not an object")
    return d


def _tokenizer_kind(d: dict, path: Path) -> str:
    """The ``type`` of a tokenizer dict, once it is known and has all its fields."""
    kind = d.get("type")
    if not isinstance(kind, str) or kind not in _FIELDS_OF:
        raise _bad_tokenizer(path, f"unknown tokenizer type {kind!r}; expected bpe, char, word or tiktoken")
    missing = [f for f in _FIELDS_OF[kind] if f not in d]
    if missing:
        raise _bad_tokenizer(path, f"a {kind} tokenizer without the field(s) {missing}")
    return kind


def _bpe_from_dict(d: dict, path: Path) -> BPETokenizer:
    merges = _list_of(d["merges"], list, "merges", path)
    if not all(len(m) == 2 and all(isinstance(x, int) and not isinstance(x, bool) for x in m)
               for m in merges):
        raise _bad_tokenizer(path, "each merge must be a pair of token ids")
    specials = d["special_tokens"]
    if not isinstance(specials, dict) or not all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) for k, v in specials.items()):
        raise _bad_tokenizer(path, "special_tokens must map names to ids")
    first = 256 + len(merges)
    if sorted(specials.values()) != list(range(first, first + len(specials))):
        raise _bad_tokenizer(path, f"special token ids must follow the merges (ids {first}...)")
    if not isinstance(d["pattern"], str):
        raise _bad_tokenizer(path, "pattern must be a string")
    counts = d.get("merge_counts")
    if counts is not None:
        _list_of(counts, int, "merge_counts", path)
    return BPETokenizer(merges, specials, d["pattern"], counts)


def _tiktoken_from_dict(d: dict, path: Path) -> TiktokenTokenizer:
    if not isinstance(d["name"], str):
        raise _bad_tokenizer(path, "name must be a string")
    encoding, why = load_tiktoken(d["name"])
    if encoding is None:
        raise ValueError(f"{path} names tiktoken's {d['name']!r} tokenizer, which cannot be loaded here "
                         f"({why}); connect to the internet once so that tiktoken caches it.")
    return TiktokenTokenizer(encoding)


def _vocab_tokenizer_from_dict(kind: str, d: dict, path: Path) -> Tokenizer:
    """A ``char`` or ``word`` tokenizer."""
    vocab = _list_of(d["vocab"], str, "vocab", path)
    specials = _list_of(d["special_tokens"], str, "special_tokens", path)
    if not vocab:
        raise _bad_tokenizer(path, "the vocabulary is empty")
    if kind == "char":
        return CharTokenizer(vocab, specials)
    if not isinstance(d.get("lower", False), bool):
        raise _bad_tokenizer(path, "lower must be true or false")
    return WordTokenizer(vocab, specials, d.get("lower", False))


def load_tiktoken(name: str = "gpt2", timeout: float = 5.0):
    """``(encoding, None)`` if tiktoken loads ``name`` within ``timeout`` s, else ``(None, why)``."""
    def get_encoding():
        import tiktoken

        return tiktoken.get_encoding(name)

    return call_with_timeout(get_encoding, timeout)  # a hung download cannot block us


_COURSE_BPE: dict = {}
COURSE_BPE_CHARS = 400_000


def course_bpe(vocab_size: int = 1024, n_chars: int = COURSE_BPE_CHARS, seed: int = 0) -> BPETokenizer:
    """A BPE with ``<|endoftext|>`` trained on the generated corpus (cached in memory)."""
    key = (vocab_size, n_chars, seed)
    if key not in _COURSE_BPE:
        _COURSE_BPE[key] = BPETokenizer.train(generated_corpus(n_chars, seed), vocab_size, (ENDOFTEXT,))
    return _COURSE_BPE[key]


def get_tokenizer(name: str = "gpt2", timeout: float = 5.0, vocab_size: int = 1024, verbose: bool = True) -> Tokenizer:
    """tiktoken's ``name`` tokenizer if it can be had, else the course BPE; prints which.

    ``name="course"`` always returns the course BPE (``vocab_size`` tokens, including
    ``<|endoftext|>``), which makes a run independent of the network.
    """
    why = "the course BPE was asked for"
    if name != "course":
        encoding, why = load_tiktoken(name, timeout)
        if encoding is not None:
            if verbose:
                print(f"tokenizer: tiktoken {name} ({encoding.n_vocab:,} tokens)")
            return TiktokenTokenizer(encoding)
        why = f"tiktoken {name} not available ({why})"
    tok = course_bpe(vocab_size)
    if verbose:
        print(f"tokenizer: {why}; using a course BPE with {tok.vocab_size:,} tokens trained on the generated corpus")
    return tok


# The special tokens of a translation model's joint vocabulary (notebook 07).
SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")


def special_ids(tokenizer) -> dict[str, int]:
    """``{"<pad>": id, "<bos>": id, "<eos>": id, ...}``; an error if the first three are missing."""
    ids = dict(tokenizer.special_tokens)
    missing = [s for s in SPECIALS[:3] if s not in ids]
    if missing:
        raise ValueError(f"the tokenizer lacks the special tokens {missing}; build it with special_tokens={SPECIALS}.")
    return ids
