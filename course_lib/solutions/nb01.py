"""Solutions of notebook 01 (tokenization). Try the exercises before reading these!"""

from __future__ import annotations


def count_pairs(ids: list[int]) -> dict:
    """How often each adjacent pair occurs: ``[5, 6, 5, 6]`` -> ``{(5, 6): 2, (6, 5): 1}``."""
    counts: dict = {}
    for a, b in zip(ids, ids[1:]):
        counts[(a, b)] = counts.get((a, b), 0) + 1
    return counts


def merge_pair(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace each occurrence of ``pair`` (scanning left to right) by ``new_id``."""
    out, i = [], 0
    while i < len(ids):
        if tuple(ids[i : i + 2]) == tuple(pair):
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def train_bpe(text: str, n_merges: int) -> list[tuple[int, int]]:
    """The plain BPE loop on the UTF-8 bytes of ``text`` (no pre-splitting): merge the most
    frequent pair, the smaller pair on ties, ``n_merges`` times; merge i makes id 256 + i."""
    ids = list(text.encode("utf-8"))
    merges = []
    for i in range(n_merges):
        counts = count_pairs(ids)
        if not counts:
            break
        pair = min(counts, key=lambda p: (-counts[p], p))
        ids = merge_pair(ids, pair, 256 + i)
        merges.append(pair)
    return merges


CASES = {
    "count_pairs": [([1, 2, 3, 1, 2],), ([7, 7, 7, 7],), ([42],), (list(b"hello hello"),)],
    "merge_pair": [
        ([1, 2, 3, 1, 2], (1, 2), 256),
        ([7, 7, 7], (7, 7), 300),
        ([5, 6, 5], (6, 7), 257),
        (list(b"aaabdaaabac"), (97, 97), 256),
    ],
    "train_bpe": [("aaabdaaabac", 3), ("hello hello hello world", 5), ("abababab", 4)],
}
