"""BPE training speed: incremental pair-count updates vs recounting every pair.

    python benchmarks/bench_bpe.py                      # ~1 MB, 1,000 merges each
    python benchmarks/bench_bpe.py --text input.txt --naive-merges 200

Both trainers (``course_lib.bpe.train_merges`` and ``train_merges_naive``) count each
distinct chunk once, weighted by its frequency; they differ only in what happens after
a merge (update the chunks that contain the pair, or recount everything). The script
checks that they learn identical merges (on the common prefix when the naive trainer
is given fewer merges) and prints a table with the times and their ratio. The text is
``--text``, else ``$COURSE_DATA_DIR/tinyshakespeare/input.txt`` when present, else the
generated corpus.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from course_lib import bpe  # noqa: E402
from course_lib.data import generated_corpus, read_text_file  # noqa: E402


def pick_text(path: str | None, n_chars: int) -> tuple[str, str]:
    if path:
        return read_text_file(path)[:n_chars], path
    local = Path(os.environ.get("COURSE_DATA_DIR", "")) / "tinyshakespeare" / "input.txt"
    if os.environ.get("COURSE_DATA_DIR") and local.is_file():
        return read_text_file(local)[:n_chars], str(local)
    return generated_corpus(n_chars), "generated corpus"


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text", help="a .txt or .txt.gz file (default: see above)")
    parser.add_argument("--chars", type=int, default=1_000_000)
    parser.add_argument("--merges", type=int, default=1000)
    parser.add_argument("--naive-merges", type=int, default=None, help="default: --merges")
    parser.add_argument("--record", action="store_true", help="write resources/results/bench_bpe.json")
    args = parser.parse_args(argv)
    naive_n = args.merges if args.naive_merges is None else args.naive_merges

    text, name = pick_text(args.text, args.chars)
    chunks = bpe.chunk_counts(text)
    print(f"text: {name}, {len(text):,} characters, {sum(chunks.values()):,} chunks "
          f"({len(chunks):,} distinct)")
    fast, t_fast = timed(bpe.train_merges, text, args.merges)
    slow, t_slow = timed(bpe.train_merges_naive, text, naive_n)
    common = min(len(fast), len(slow))
    same = fast[:common] == slow[:common]
    per_fast, per_slow = t_fast / len(fast), t_slow / len(slow)

    print()
    print("| trainer | merges | seconds | ms per merge |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| incremental (train_merges) | {len(fast):,} | {t_fast:.2f} | {1000 * per_fast:.2f} |")
    print(f"| naive recount (train_merges_naive) | {len(slow):,} | {t_slow:.2f} | {1000 * per_slow:.2f} |")
    print()
    scope = "all" if len(slow) == len(fast) else f"the first {common:,}"
    print(f"identical merges ({scope}): {same}")
    print(f"speed-up per merge: {per_slow / per_fast:.1f}x"
          + ("" if len(slow) == len(fast) else f" (naive time for {len(fast):,} merges estimated "
             f"at {per_slow * len(fast):.0f} s)"))
    if args.record:
        from course_lib.results import RESULTS, record

        record("bench_bpe", {"text": name if args.text else Path(name).name, "characters": len(text),
                             "merges": len(fast), "naive_merges": len(slow), "incremental_s": round(t_fast, 3),
                             "naive_s": round(t_slow, 3), "speedup": round(per_slow / per_fast, 2),
                             "identical_merges": same}, source="benchmarks/bench_bpe.py", folder=RESULTS)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
