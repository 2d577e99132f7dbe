"""Notebook 07's training loop, written out as the learner writes it, against the
library's translation trainer (course_lib.training.translation.train): the same seed,
data and steps give the same losses (to 1e-6) and the same weights.

The loop below is the notebook's: length-grouped batches reshuffled each epoch, teacher
forcing, label-smoothed cross-entropy, backward, gradient clipping, Adam with the paper's
warmup schedule. If either side changes what it computes (batching, schedule, clipping,
smoothing, the order of dropout's random draws), this test fails.
"""

import pytest
import torch
import torch.nn.functional as F

from course_lib.data.copy_task import copy_pairs
from course_lib.training.core import noam_lr
from course_lib.training.translation import (
    TranslationTrainConfig,
    build_tokenizer,
    collate,
    encode_pairs,
    make_batches,
    train,
)
from course_lib.transformer import Transformer, TransformerConfig

STEPS, BATCH, WARMUP, SMOOTHING, CLIP = 20, 16, 10, 0.1, 0.5  # 120 pairs: 8 batches an epoch, 3 epochs


def inline_loop(model, examples, steps, batch_size, lr_at, label_smoothing, grad_clip, seed=0):
    pad = model.config.pad_id
    optimizer = torch.optim.Adam(model.parameters(), lr=lr_at(1), betas=(0.9, 0.98), eps=1e-9)
    lengths = [(len(s), len(t)) for s, t in examples]
    losses, step, epoch = [], 0, 0
    model.train()
    while step < steps:
        for idx in make_batches(lengths, batch_size, seed=seed * 100003 + epoch):
            step += 1
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step)
            src, tgt = collate(examples, idx, pad, "cpu")
            logits = model(src, tgt[:, :-1])
            loss = F.cross_entropy(logits.flatten(0, 1), tgt[:, 1:].flatten(), ignore_index=pad,
                                   label_smoothing=label_smoothing)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
            if step == steps:
                break
        epoch += 1
    return losses


def setup(seed=0):
    pairs = copy_pairs(120, min_len=2, max_len=6, seed=5)
    tok = build_tokenizer(pairs, "word")
    torch.manual_seed(seed)
    model = Transformer(TransformerConfig(src_vocab_size=tok.vocab_size, tgt_vocab_size=tok.vocab_size, d_model=16,
                                          n_heads=2, n_layers=2, d_ff=32, dropout=0.1, max_len=16,
                                          pad_id=tok.special_tokens["<pad>"]))
    return pairs, tok, model


def library_run(seed=0):
    pairs, tok, model = setup(seed)
    cfg = TranslationTrainConfig(steps=STEPS, batch_size=BATCH, warmup=WARMUP, label_smoothing=SMOOTHING,
                                 grad_clip=CLIP, seed=seed, eval_every=10**6, device="cpu", progress=False)
    state = train(model, tok, pairs, [], cfg)
    return [loss for _, loss in state["train_losses"]], model


def inline_run(seed=0, warmup=WARMUP, **changes):
    pairs, tok, model = setup(seed)
    examples, _ = encode_pairs(tok, pairs, model.config.max_len)
    args = dict(steps=STEPS, batch_size=BATCH, lr_at=lambda step: noam_lr(step, model.config.d_model, warmup),
                label_smoothing=SMOOTHING, grad_clip=CLIP, seed=seed)
    return inline_loop(model, examples, **{**args, **changes}), model


@pytest.fixture(scope="module")
def library():
    return library_run()


def test_inline_loop_gives_the_library_trainers_losses_and_weights(library):
    lib_losses, lib_model = library
    losses, model = inline_run()
    assert len(losses) == len(lib_losses) == STEPS
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(lib_losses), rtol=0, atol=1e-6)
    for (name, a), b in zip(model.state_dict().items(), lib_model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)


@pytest.mark.parametrize("change", [dict(grad_clip=1e9), dict(label_smoothing=0.0), dict(warmup=20),
                                    dict(seed=1)])
def test_a_different_loop_is_caught(library, change):
    """Each piece of the loop matters: leave one out or change it and the losses differ."""
    losses, _ = inline_run(**change)
    assert (torch.tensor(losses) - torch.tensor(library[0])).abs().max() > 1e-4
