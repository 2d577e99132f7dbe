"""The course's commands, one vocabulary for all of them:

    python -m course_lib train gpt ...          # train a GPT into a run folder (notebook 08)
    python -m course_lib train translate ...    # train a translator (notebook 07)
    python -m course_lib generate RUN "ROMEO:"  # sample text from a GPT run
    python -m course_lib translate RUN "the man sees the dog ."
    python -m course_lib export-attention RUN "text" [--target "..."] --out FOLDER
    python -m course_lib train chat --out runs/chat  # base GPT, SFT, DPO (notebook 14)
    python -m course_lib chat RUN                # talk to a chat model, a message per line

A run folder (``--out`` of the training commands) holds ``checkpoint.safetensors``,
``config.json`` and ``tokenizer.json``; every command that reads a run takes the folder
(or the checkpoint file) first. A mistake in what was typed gives one ``error: ...`` line
and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from course_lib.training.core import Parser, UsageError, run_command

COMMANDS = ("train", "generate", "translate", "export-attention", "chat")


def _device(args):
    from course_lib.env import get_device

    return get_device(args.device, source="--device")


def _run_arguments(p: Parser, text_help: str, nargs="?") -> None:
    p.add_argument("run", help="run folder (or its checkpoint.safetensors)")
    p.add_argument("text", nargs=nargs, help=text_help)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: the best found)")


def generate_command(argv=None) -> int:
    """``python -m course_lib generate RUN [PROMPT]``: sample from a trained GPT."""
    from course_lib.generate import check_sampling_args, generate
    from course_lib.models import load_trained

    p = Parser(prog="python -m course_lib generate", description="Sample text from a trained GPT.")
    _run_arguments(p, "the prompt (default: a newline)")
    p.add_argument("--max-new-tokens", type=int, default=200, help="tokens to add")
    p.add_argument("--temperature", type=float, default=0.8, help="0: greedy")
    p.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens")
    p.add_argument("--top-p", type=float, default=None, help="sample among the most likely tokens of this mass")
    p.add_argument("--num-samples", type=int, default=1, help="how many samples")
    p.add_argument("--seed", type=int, default=1337, help="seed of the sampling")
    p.add_argument("--cache", action=argparse.BooleanOptionalAction, default=True,
                   help="keep keys and values of earlier positions (--no-cache: recompute the context each step)")
    args = p.parse_args(argv)
    check_sampling_args(args.temperature, args.top_k, args.top_p)
    if args.num_samples < 1:
        raise UsageError(f"--num-samples {args.num_samples} must be >= 1.")
    if args.max_new_tokens < 0:
        raise UsageError(f"--max-new-tokens {args.max_new_tokens} must be >= 0.")
    device = _device(args)
    trained = load_trained(args.run, device, kind=("gpt", "llama"), command="generate")
    tok = trained.tokenizer
    if tok is None:
        raise FileNotFoundError(f"no tokenizer.json beside {trained.path}; it is written with the checkpoint.")
    prompt = "\n" if args.text is None else args.text
    ids = tok.encode(prompt)
    if not ids:
        raise UsageError("the prompt encodes to no tokens; give a non-empty prompt.")
    idx = torch.tensor([ids] * args.num_samples, dtype=torch.long, device=device)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    out = generate(trained.model, idx, args.max_new_tokens, args.temperature, args.top_k, args.top_p,
                   use_cache=args.cache, generator=gen, vocab_size=tok.vocab_size)
    for row in out.tolist():
        print(tok.decode(row))
        print("-" * 40)
    return 0


def translate_command(argv=None) -> int:
    """``python -m course_lib translate RUN [SENTENCE ...]``: translate with a trained model."""
    from course_lib.decoding import translate
    from course_lib.models import load_trained

    p = Parser(prog="python -m course_lib translate",
               description="Translate sentences with a trained encoder-decoder (default: one per line on stdin).")
    _run_arguments(p, "sentences to translate", nargs="*")
    p.add_argument("--beam", type=int, default=1, help="beam size (1: greedy search)")
    p.add_argument("--alpha", type=float, default=0.6, help="length penalty of beam search")
    p.add_argument("--max-new-tokens", type=int, default=None, help="longest translation (default: by the source)")
    args = p.parse_args(argv)
    if args.beam < 1:
        raise UsageError(f"--beam {args.beam} must be >= 1 (1: greedy search).")
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens {args.max_new_tokens} must be >= 1.")
    trained = load_trained(args.run, _device(args), kind="transformer", command="translate")
    if trained.tokenizer is None:
        raise FileNotFoundError(f"no tokenizer.json beside {trained.path}; it is written with the checkpoint.")
    sentences = args.text or [line.strip() for line in sys.stdin if line.strip()]
    if not sentences:
        raise UsageError("no sentence to translate; give one as an argument or on standard input.")
    for out in translate(trained.model, trained.tokenizer, sentences, beam_size=args.beam,
                         max_new_tokens=args.max_new_tokens, alpha=args.alpha,
                         warn=lambda msg: print(msg, file=sys.stderr)):
        print(out)
    return 0


def export_attention_command(argv=None) -> int:
    """``python -m course_lib export-attention RUN TEXT``: every attention map, one input."""
    import matplotlib

    matplotlib.use("Agg")
    from course_lib.export_attention import build_inputs, export_attention_maps
    from course_lib.models import load_trained

    p = Parser(prog="python -m course_lib export-attention",
               description="Export every attention map of a trained model for one input.")
    _run_arguments(p, "the input text (the source sentence, for a translator)", nargs=None)
    p.add_argument("--target", default=None, help="the decoder's input text, for a translator")
    p.add_argument("--out", default="exports/attention", help="folder to write the maps into")
    p.add_argument("--formats", nargs="+", default=["png"], choices=["png", "svg", "pdf"], help="file formats")
    args = p.parse_args(argv)
    device = _device(args)
    trained = load_trained(args.run, device)
    if trained.tokenizer is None:
        raise FileNotFoundError(f"no tokenizer.json beside {trained.path}; it is written with the checkpoint.")
    inputs, src_labels, tgt_labels = build_inputs(trained.model, trained.tokenizer, args.text, args.target)
    index = export_attention_maps(trained.model, *(t.to(device) for t in inputs), tokens=src_labels,
                                  target_tokens=tgt_labels, out_dir=args.out, formats=args.formats)
    n = sum(len(m["files"]) for m in index["modules"]) + sum(len(g["files"]) for g in index["grids"])
    print(f"{trained.kind}: {len(index['modules'])} attention modules, "
          f"{sum(m['heads'] for m in index['modules'])} heads -> {n} figures in {Path(args.out).resolve()}")
    return 0


def train_command(argv=None) -> int:
    """``python -m course_lib train gpt|translate ...``."""
    from course_lib.training import chat, gpt, translation

    tasks = {"gpt": gpt.command, "translate": translation.command, "chat": chat.command}
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in tasks:
        if argv and argv[0] in ("-h", "--help"):
            print("usage: python -m course_lib train {gpt,translate,chat} [--help] ...")
            return 0
        raise UsageError(f"name what to train first: python -m course_lib train {{{','.join(tasks)}}} ...")
    return tasks[argv[0]](argv[1:])


HANDLERS = {"train": train_command, "generate": generate_command, "translate": translate_command,
            "export-attention": export_attention_command}


def chat_command(argv=None) -> int:
    from course_lib.chat import command

    return command(argv)


HANDLERS["chat"] = chat_command


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    if argv[0] not in HANDLERS:
        print(f"error: unknown command {argv[0]!r}; use one of {', '.join(COMMANDS)} "
              "(python -m course_lib --help)", file=sys.stderr)
        return 2
    handler = HANDLERS[argv[0]]
    return run_command(handler, argv[1:])
