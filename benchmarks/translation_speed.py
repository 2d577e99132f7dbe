"""Training speed of notebook 07's CPU-scale translation model (steps per second).

    python benchmarks/translation_speed.py [--steps 200] [--threads 1 2]

Prints wall-clock and CPU-time steps/s per thread count. On a shared machine the wall
clock is noisy; CPU time (``time.process_time``) tells what an idle core would do.
"""

from __future__ import annotations

import argparse
import time

import torch
from course_lib.translation_data import build_tokenizer
from course_lib.translation_train import TrainConfig, train

from course_lib import grammar
from course_lib.transformer import Transformer, TransformerConfig


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = p.parse_args()
    pairs, _ = grammar.train_test_split(20000, 400, seed=0)
    tok = build_tokenizer(pairs)
    print("| threads | steps | wall s | steps/s (wall) | CPU s | steps per CPU-second |")
    print("| --- | --- | --- | --- | --- | --- |")
    for n in args.threads:
        torch.set_num_threads(n)
        torch.manual_seed(0)
        model = Transformer(TransformerConfig(src_vocab_size=tok.vocab_size, tgt_vocab_size=tok.vocab_size,
                                              d_model=64, n_heads=4, n_layers=2, d_ff=128, dropout=0.0, max_len=64))
        cfg = TrainConfig(max_steps=args.steps, batch_size=64, warmup=400, log_every=50)
        t, c = time.perf_counter(), time.process_time()
        train(model, tok, pairs, [], cfg, log=lambda m: None)
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        print(f"| {n} | {args.steps} | {wall:.1f} | {args.steps / wall:.1f} | {cpu:.1f} | {args.steps / cpu:.1f} |")


if __name__ == "__main__":
    main()
