"""Solutions of notebook 01 (tokenization). Try the exercises before reading these!

A merge list ``merges[i] = (left_id, right_id)`` makes token ``256 + i``; ids 0..255
are the single bytes.
"""

from __future__ import annotations


def token_bytes(merges: list[tuple[int, int]]) -> list[bytes]:
    """The byte string of every token: 256 single bytes, then one per merge."""
    vocab = [bytes([i]) for i in range(256)]
    for left, right in merges:
        vocab.append(vocab[left] + vocab[right])
    return vocab


def decode_ids(ids: list[int], merges: list[tuple[int, int]]) -> str:
    """Token ids -> text; bytes that are not valid UTF-8 become '\ufffd'."""
    vocab = token_bytes(merges)
    return b"".join(vocab[i] for i in ids).decode("utf-8", errors="replace")


def encode_chunk(text: str, merges: list[tuple[int, int]]) -> list[int]:
    """Encode ``text`` as one chunk: start from its UTF-8 bytes and, while some adjacent
    pair has a merge, apply the earliest merge (lowest id) to all its occurrences."""
    rank = {tuple(pair): 256 + i for i, pair in enumerate(merges)}
    ids = list(text.encode("utf-8"))
    while True:
        pairs = [p for p in zip(ids, ids[1:]) if p in rank]
        if not pairs:
            return ids
        pair = min(pairs, key=rank.get)
        out, i = [], 0
        while i < len(ids):
            if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
                out.append(rank[pair])
                i += 2
            else:
                out.append(ids[i])
                i += 1
        ids = out


# "aaabdaaabac" -> aa, ab, aa+ab;  "hello world" -> ll, he, he+ll, hell+o, " w", " w"+o
MERGES_A = [(97, 97), (97, 98), (256, 257)]
MERGES_HELLO = [(108, 108), (104, 101), (257, 256), (258, 111), (32, 119), (260, 111)]

CASES = {
    "token_bytes": [(MERGES_A,), (MERGES_HELLO,), ([],)],
    "decode_ids": [
        ([256, 257, 100, 258], MERGES_A),
        ([259, 261, 114, 108, 100], MERGES_HELLO),
        ([104, 195, 169, 33], []),
        ([104, 195], []),
    ],
    "encode_chunk": [
        ("aaabdaaabac", MERGES_A),
        ("hello world", MERGES_HELLO),
        ("hello hello, ll!", MERGES_HELLO),
        ("aaaaaaa", MERGES_A),
        ("héllo 🤗", MERGES_HELLO),
    ],
}
