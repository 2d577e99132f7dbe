"""Tiny float64 runs of the two shipped training loops under plain SGD, for the tests that
compare them exactly (accumulation, several processes). Imported by the tests, and run
as a script under torchrun by tests/test_training_exact.py:

    torchrun --nproc-per-node 2 tests/exact_runs.py OUT_DIR

which trains every (loop, strategy, variant) on 2 gloo ranks and writes rank 0's final
parameters to ``OUT_DIR/{loop}-{strategy}-{variant}.safetensors``. Variants: ``ok`` (the
shipped loop), ``scale`` (a wrong gradient scale: each rank's loss multiplied by the
world size, as if the gradients were summed instead of averaged) and ``drop`` (the last
micro-batch of every step dropped).
"""

from __future__ import annotations

import sys
from contextlib import ExitStack
from pathlib import Path
from unittest import mock

import torch

from course_lib.data.sources import generated_pairs
from course_lib.gpt import GPT, GPTConfig
from course_lib.tokenizer import CharTokenizer
from course_lib.training import gpt as gpt_loop
from course_lib.training import loop as fit_loop
from course_lib.training import translation as tr_loop
from course_lib.training.loop import micro_batches
from course_lib.training.precision import Precision
from course_lib.transformer import Transformer, TransformerConfig

STEPS = 3
LR = 0.2  # plain SGD: parameters move by lr * gradient, so any gradient error shows


def sgd(model):
    return torch.optim.SGD(model.parameters(), lr=LR)


def gpt_run(grad_accum: int = 1, strategy: str = "ddp", batch_size: int = 8) -> GPT:
    text = "the man sees the dog. the dog sees the young woman. " * 8
    tok = CharTokenizer.from_text(text)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=8, n_layers=1, n_heads=2, d_model=32)).double()
    cfg = gpt_loop.GPTTrainConfig(steps=STEPS, batch_size=batch_size, grad_accum=grad_accum, lr=LR, warmup=1,
                                  grad_clip=0.0, eval_every=1000, eval_batches=1, seed=3, device="cpu",
                                  precision="fp32", compile=False, progress=False, fsdp=strategy == "fsdp")
    gpt_loop.train(model, gpt_loop.prepare_data(text, tok), cfg, make_optimizer=sgd)
    return model


def translation_run(grad_accum: int = 1, strategy: str = "ddp", batch_size: int = 8) -> Transformer:
    pairs = generated_pairs(40, "train", seed=1)
    tok = tr_loop.build_tokenizer(pairs)
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(src_vocab_size=tok.vocab_size, tgt_vocab_size=tok.vocab_size, d_model=32,
                                          n_heads=2, n_layers=1, d_ff=64, dropout=0.0, max_len=32,
                                          pad_id=tok.special_tokens["<pad>"])).double()
    cfg = tr_loop.TranslationTrainConfig(steps=STEPS, batch_size=batch_size, grad_accum=grad_accum, lr=LR, warmup=2,
                                         grad_clip=0.0, eval_every=1000, seed=0, device="cpu", precision="fp32",
                                         compile=False, progress=False, fsdp=strategy == "fsdp",
                                         label_smoothing=0.1)
    tr_loop.train(model, tok, pairs, None, cfg, make_optimizer=sgd)
    return model


LOOPS = {"gpt": gpt_run, "translation": translation_run}


def broken(variant: str, factor: float = 2.0) -> ExitStack:
    """Patches that break the loops: ``scale`` multiplies every backward's loss by
    ``factor``; ``drop`` leaves out the last micro-batch of every step."""
    stack = ExitStack()
    if variant == "scale":
        plain = Precision.backward
        stack.enter_context(mock.patch.object(Precision, "backward", lambda self, loss: plain(self, loss * factor)))
    elif variant == "drop":
        def fewer(items, k):
            return micro_batches(items, k)[:-1]

        stack.enter_context(mock.patch.object(fit_loop, "micro_batches", fewer))  # gpt: fit cuts the batch
        stack.enter_context(mock.patch.object(tr_loop, "micro_batches", fewer))
    return stack


def params(model) -> dict[str, torch.Tensor]:
    from course_lib.scaleout.checkpoint import full_state

    return {k: v.detach().cpu().clone() for k, v in full_state(model)[0].items()}


def main(out: Path) -> None:
    from safetensors.torch import save_file

    from course_lib import scaleout as D

    ctx = D.setup("cpu")
    out.mkdir(parents=True, exist_ok=True)
    for loop, run in LOOPS.items():
        for strategy in ("ddp", "fsdp"):
            for variant in ("ok", "scale", "drop"):
                with broken(variant, factor=ctx.world_size):
                    model = run(grad_accum=2, strategy=strategy)
                state = params(model)
                if ctx.is_main:
                    save_file({k: v.contiguous() for k, v in state.items()},
                              str(out / f"{loop}-{strategy}-{variant}.safetensors"))
    D.cleanup(ctx)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
