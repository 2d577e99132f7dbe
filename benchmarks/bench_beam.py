"""Beam search speed on the CPU: one sentence at a time (before) against sentences and
beams batched together (``course_lib.decoding.batched_beam_search``), on a trained run.

    python benchmarks/bench_beam.py RUN [--n 1000] [--beam 4] [--threads 2]
    python benchmarks/bench_beam.py runs/translate --data generated   # the grammar model

RUN is a run folder of ``python -m course_lib train translate`` (for instance
``runs/multi30k``, written by the Multi30k recipe). The sentences are
the first N of Multi30k's validation set when ../shared/data (or $COURSE_DATA_DIR) has
it, else generated pairs. Prints one table: seconds and sentences/s for greedy search,
the one-at-a-time beam search and the batched one, and how many outputs are identical.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from course_lib.data import load_pairs  # noqa: E402
from course_lib.decoding import beam_search, translate  # noqa: E402
from course_lib.models import load_trained  # noqa: E402
from course_lib.tokenizer import special_ids  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", nargs="?")
    p.add_argument("--data", default=None, help="where the sentences come from (default: Multi30k's validation "
                   "set if at hand, else 'generated')")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--beam", type=int, default=4)
    p.add_argument("--alpha", type=float, default=0.6)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data = Path(os.environ.get("COURSE_DATA_DIR", ROOT.parent / "shared" / "data")) / "multi30k" / "train"
    source = args.data or (str(data) if Path(f"{data}.en.gz").exists() else "generated")
    sentences = [s for s, _ in load_pairs(source, "val", args.n)]
    trained = load_trained(args.run, kind="transformer")
    model, tok = trained.model, trained.tokenizer
    ids = special_ids(tok)

    def timed(fn):
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        return out, time.perf_counter() - t, time.process_time() - c

    greedy, g_wall, g_cpu = timed(lambda: translate(model, tok, sentences, beam_size=1, batch_size=args.batch_size))
    batched, b_wall, b_cpu = timed(lambda: translate(model, tok, sentences, beam_size=args.beam, alpha=args.alpha,
                                                     batch_size=args.batch_size))

    def one_at_a_time():
        out = []
        for s in sentences:
            src = torch.tensor([tok.encode(s)[: model.config.max_len - 1] + [ids["<eos>"]]])
            limit = min(model.config.max_len - 1, src.shape[1] + 50)
            found = beam_search(model, src, ids["<bos>"], ids["<eos>"], args.beam, limit, args.alpha)
            out.append(tok.decode([t for t in found if t != ids["<eos>"]]))
        return out

    single, s_wall, s_cpu = timed(one_at_a_time)
    same = sum(a == b for a, b in zip(single, batched))
    lengths = [len(tok.encode(t)) + 1 for t in batched]
    print(f"{len(sentences)} sentences from {source}, {model.num_parameters():,}-parameter model "
          f"({args.run}), outputs of {sum(lengths) / len(lengths):.1f} "
          f"tokens on average (source: {sum(len(tok.encode(s)) + 1 for s in sentences) / len(sentences):.1f}), "
          f"{args.threads} thread(s), {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print("| decoder | wall s | sentences/s | CPU s |")
    print("|---|---|---|---|")
    print(f"| greedy, batches of {args.batch_size} | {g_wall:.1f} | {len(sentences) / g_wall:.1f} | {g_cpu:.1f} |")
    print(f"| beam {args.beam}, one sentence at a time | {s_wall:.1f} | {len(sentences) / s_wall:.1f} | {s_cpu:.1f} |")
    print(f"| beam {args.beam}, batched ({args.batch_size} sentences x {args.beam} beams) | {b_wall:.1f} | "
          f"{len(sentences) / b_wall:.1f} | {b_cpu:.1f} |")
    print(f"speed-up of batching: {s_wall / b_wall:.1f}x wall, {s_cpu / b_cpu:.1f}x CPU; "
          f"identical translations: {same}/{len(sentences)}")


if __name__ == "__main__":
    main()
