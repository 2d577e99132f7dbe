"""Translate text with a trained checkpoint (written by ``python -m course_lib.train translate``).

    python -m course_lib.translate runs/translate "the old man sees the dog ."
    echo "today she laughs ." | python -m course_lib.translate runs/translate --beam 4

Sentences longer than the model's ``max_len`` are truncated, with a one-line warning.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from course_lib.checkpoint import load_checkpoint
from course_lib.decoding import translate
from course_lib.transformer import Transformer
from course_lib.translation_data import load_tokenizer


def load_translator(path: str | Path, device: str | torch.device = "cpu"):
    """(model, tokenizer) from a checkpoint folder or ``.safetensors`` file (tokenizer.json beside it)."""
    path = Path(path)
    ckpt_file = path / "checkpoint.safetensors" if path.is_dir() else path
    ckpt = load_checkpoint(ckpt_file, device=device)
    if ckpt["config"].get("model_type") != "transformer":
        raise ValueError(f"{ckpt_file} holds a {ckpt['config'].get('model_type')!r} model, not a translation "
                         "Transformer; give a checkpoint written by `python -m course_lib.train translate`.")
    model = Transformer.from_config(ckpt["config"]).to(device)
    model.load_state_dict(ckpt["model"])
    tok_file = ckpt_file.with_name("tokenizer.json")
    if not tok_file.exists():
        raise FileNotFoundError(f"no tokenizer.json beside {ckpt_file}; it is written with the checkpoint.")
    return model.eval(), load_tokenizer(tok_file)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m course_lib.translate", description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="checkpoint folder (or its checkpoint.safetensors)")
    p.add_argument("sentences", nargs="*", help="sentences to translate (default: one per line on stdin)")
    p.add_argument("--beam", type=int, default=1, help="beam size (1: greedy search)")
    p.add_argument("--alpha", type=float, default=0.6, help="length penalty of beam search")
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    model, tokenizer = load_translator(args.checkpoint, args.device)
    sentences = args.sentences or [line.strip() for line in sys.stdin if line.strip()]
    warn = lambda msg: print(msg, file=sys.stderr)  # noqa: E731
    for out in translate(model, tokenizer, sentences, beam_size=args.beam, max_new_tokens=args.max_new_tokens,
                         alpha=args.alpha, warn=warn):
        print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
