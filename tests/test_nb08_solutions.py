"""Notebook 08's exercise solutions against independent references."""

import math

import torch

from course_lib.exercises import check
from course_lib.gpt import GPT, GPTConfig
from course_lib.solutions import nb08


def test_param_count_matches_built_models():
    for args in nb08.CASES["gpt2_param_count"]:
        vocab, block, layers, d = args
        with torch.device("meta"):
            model = GPT(GPTConfig(vocab_size=vocab, block_size=block, n_layers=layers, n_heads=1, d_model=d))
        assert nb08.gpt2_param_count(*args) == sum(p.numel() for p in model.parameters())
    assert nb08.gpt2_param_count(50257, 1024, 12, 768) == 124_439_808


def test_top_p_mask_brute_force():
    for probs, p in nb08.CASES["top_p_mask"]:
        rows = probs.reshape(-1, probs.shape[-1])
        got = nb08.top_p_mask(probs, p).reshape(rows.shape)
        for row, mask in zip(rows, got, strict=True):
            ranked = sorted(range(len(row)), key=lambda i: -row[i].item())
            kept, total = [], 0.0
            for i in ranked:  # add tokens, most likely first, until the mass reaches p
                if total >= p - 1e-9:
                    break
                kept.append(i)
                total += row[i].item()
            assert set(mask.nonzero().flatten().tolist()) == set(kept)


def test_next_token_loss_by_hand():
    for logits, tokens in nb08.CASES["next_token_loss"]:
        B, T, _ = logits.shape
        terms = [-math.log(torch.softmax(logits[b, t].double(), -1)[tokens[b, t + 1]].item())
                 for b in range(B) for t in range(T - 1)]
        assert abs(nb08.next_token_loss(logits, tokens).item() - sum(terms) / len(terms)) < 1e-5


def test_check_reports_unattempted_and_passing(capsys):
    assert not check(lambda *a: None, "nb08.top_p_mask")
    assert check(lambda logits, tokens: torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2),
                                                                         tokens[:, 1:]), "nb08.next_token_loss")
    assert "not attempted yet" in capsys.readouterr().out
