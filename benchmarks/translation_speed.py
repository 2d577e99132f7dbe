"""Speed of notebook 07's CPU-scale translation model on this machine: training steps/s
through the library's trainer, and decoding sentences/s (greedy and beam 4, batched).

    python benchmarks/translation_speed.py [--steps 300] [--threads 1 2] [--sentences 300] [--record]

The model and data are notebook 07's small scale: ``PRESETS['small']`` with dropout 0.1
(182,656 parameters with the grammar's word vocabulary), 10,000 generated grammar pairs,
batches of 64, label smoothing 0.1, gradient clipping 1.0, float32. Training runs
``course_lib.training.translation.train`` (the steps are ``course_lib.training.loop.fit``'s)
from the same seed at each thread count; steps/s counts steps 2..N (the first step and the
data's encoding are setup). Decoding runs ``course_lib.decoding.translate`` (batches of 64;
beam 4 with length penalty 0.6) on held-out sentences (the notebook's 200 first), with the
model the last training run left: briefly trained, so that its outputs end with ``<eos>`` at
about the references' length; the table says how long they are.

Wall-clock figures on a shared machine are noisy; CPU time (``time.process_time``, all
threads) tells what the work costs, and at one thread what an idle core would do.
``--record`` writes resources/results/translation_speed_cpu.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from course_lib.data import grammar  # noqa: E402
from course_lib.decoding import translate  # noqa: E402
from course_lib.env import seed_everything  # noqa: E402
from course_lib.training.translation import PRESETS, TranslationTrainConfig, build_tokenizer, train  # noqa: E402
from course_lib.transformer import Transformer, TransformerConfig  # noqa: E402

N_TRAIN = 10_000  # notebook 07's training pairs at the small scale


def train_speed(tok, pairs, steps: int) -> tuple[Transformer, dict]:
    """Train a fresh model (seed 0) for ``steps`` steps; steps/s over steps 2..N."""
    config = TransformerConfig(src_vocab_size=tok.vocab_size, tgt_vocab_size=tok.vocab_size,
                               pad_id=tok.special_tokens["<pad>"], **{**PRESETS["small"], "dropout": 0.1})
    cfg = TranslationTrainConfig(steps=steps, batch_size=64, warmup=200, label_smoothing=0.1, grad_clip=1.0,
                                 seed=0, eval_every=10**6, device="cpu", precision="fp32", compile=False,
                                 progress=False)
    seed_everything(0)
    model = Transformer(config)
    clocks = []  # (wall, CPU) after each step
    state = train(model, tok, pairs, [], cfg, on_step=lambda s, m: clocks.append((time.perf_counter(),
                                                                                     time.process_time())))
    wall, cpu = (clocks[-1][i] - clocks[0][i] for i in (0, 1))
    n = len(clocks) - 1
    return model, {"train_steps_per_s": n / wall, "train_cpu_ms_per_step": 1000 * cpu / n,
                   "final_loss": state["train_losses"][-1][1]}


def decode_speed(model, tok, pairs, beam: int) -> dict:
    """Translate the sources of ``pairs`` as the library does; sentences/s and output length."""
    sources = [en for en, _ in pairs]
    t, c = time.perf_counter(), time.process_time()
    hyps = translate(model, tok, sources, beam_size=beam, warn=lambda m: None)
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    refs = [tok.decode(tok.encode(de)) for _, de in pairs]
    lengths = [len(tok.encode(h)) for h in hyps]  # tokens (words) without <eos>
    return {"sentences_per_s": len(pairs) / wall, "cpu_ms_per_sentence": 1000 * cpu / len(pairs),
            "output_tokens": sum(lengths) / len(lengths), "longest_output": max(lengths),
            "exact_match": sum(h == r for h, r in zip(hyps, refs)) / len(pairs)}


def measure(args) -> dict:
    train_pairs, held_out = grammar.train_test_split(N_TRAIN, args.sentences, seed=0)
    tok = build_tokenizer(train_pairs)
    figures = {"steps": args.steps, "sentences": args.sentences, "n_train": N_TRAIN,
               "load_average_at_start": os.getloadavg()[0],  # other processes' use of the cores
               "reference_tokens": sum(len(tok.encode(de)) for _, de in held_out) / len(held_out)}
    model = None
    for n in args.threads:
        torch.set_num_threads(n)
        model, train_figures = train_speed(tok, train_pairs, args.steps)
        figures.update({f"{k}_{n}t": v for k, v in train_figures.items()})
    figures.update(parameters=model.num_parameters(), output_limit=model.config.max_len - 1)
    for n in args.threads:
        torch.set_num_threads(n)
        for name, beam in (("greedy", 1), ("beam4", 4)):
            figures.update({f"{name}_{k}_{n}t": v for k, v in decode_speed(model, tok, held_out, beam).items()})
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()}


def print_tables(f: dict, threads: list[int]) -> None:
    print(f"notebook 07's small model ({f['parameters']:,} parameters), {f['n_train']:,} grammar pairs, "
          f"{f['steps']} steps from seed 0 per thread count; load average at the start "
          f"{f['load_average_at_start']:.1f} on {os.cpu_count()} cores")
    print("\n| threads | steps/s (wall) | CPU ms per step | loss at the last step |\n|---|---|---|---|")
    for n in threads:
        print(f"| {n} | {f[f'train_steps_per_s_{n}t']:.1f} | {f[f'train_cpu_ms_per_step_{n}t']:.1f} | "
              f"{f[f'final_loss_{n}t']:.3f} |")
    print(f"\ndecoding {f['sentences']} held-out sentences with the model trained {f['steps']} steps "
          f"(references: {f['reference_tokens']:.1f} tokens on average; "
          f"tokens are words, <eos> not counted; at most {f['output_limit']})")
    print("\n| threads | search | sentences/s (wall) | CPU ms per sentence | output tokens: mean, longest | "
          "exact match |")
    print("|---|---|---|---|---|---|")
    for n in threads:
        for name, label in (("greedy", "greedy"), ("beam4", "beam 4")):
            g = {k: f[f"{name}_{k}_{n}t"] for k in ("sentences_per_s", "cpu_ms_per_sentence", "output_tokens",
                                                     "longest_output", "exact_match")}
            print(f"| {n} | {label} | {g['sentences_per_s']:.1f} | {g['cpu_ms_per_sentence']:.2f} | "
                  f"{g['output_tokens']:.1f}, {g['longest_output']} | {g['exact_match']:.3f} |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=300, help="training steps per thread count (at least 2)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch thread counts to measure")
    p.add_argument("--sentences", type=int, default=300, help="held-out sentences to translate")
    p.add_argument("--record", action="store_true",
                   help="write resources/results/translation_speed_cpu.json")
    args = p.parse_args(argv)
    for flag, value, least in (("--steps", args.steps, 2), ("--sentences", args.sentences, 1),
                               ("--threads", min(args.threads), 1)):
        if value < least:
            print(f"error: {flag} {value}: give at least {least}", file=sys.stderr)
            return 2
    figures = measure(args)
    print_tables(figures, args.threads)
    if args.record:
        from course_lib.results import RESULTS, record

        threads = " and ".join(map(str, args.threads))
        record("translation_speed_cpu", figures, source="benchmarks/translation_speed.py", folder=RESULTS,
               device=f"CPU, {os.cpu_count()} cores, {threads} torch threads ({platform.machine()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
