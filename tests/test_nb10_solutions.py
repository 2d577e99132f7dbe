"""Notebook 10's reference solutions against independent references: loops, F.cross_entropy,
and the rouge-score package."""

import pytest
import torch
import torch.nn.functional as F

from course_lib.exercises import cases, check
from course_lib.solutions import nb10

EXERCISES = [f"nb10.{f}" for f in nb10.CASES]


@pytest.mark.parametrize("name", EXERCISES)
def test_checker_reports_a_stub_and_a_wrong_answer(name, capsys):
    assert len(cases(name)) >= 2
    assert check(lambda *args: None, name) is False
    assert "not attempted yet" in capsys.readouterr().out
    assert check(lambda *args: torch.zeros(1), name, verbose=False) is False


@pytest.mark.parametrize("args", nb10.CASES["apply_80_10_10"])
def test_apply_80_10_10_matches_a_loop(args):
    ids, selected, u, random_ids, mask_id = args
    want = ids.clone()
    for i in range(ids.shape[0]):
        for j in range(ids.shape[1]):
            if selected[i, j] and u[i, j] < 0.8:
                want[i, j] = mask_id
            elif selected[i, j] and u[i, j] < 0.9:
                want[i, j] = random_ids[i, j]
    assert torch.equal(nb10.apply_80_10_10(*args), want)


@pytest.mark.parametrize("args", nb10.CASES["masked_lm_loss"])
def test_masked_lm_loss_matches_cross_entropy(args):
    logits, labels = args
    want = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
    torch.testing.assert_close(nb10.masked_lm_loss(logits, labels), want)


@pytest.mark.parametrize("args", nb10.CASES["last_token_index"])
def test_last_token_index_matches_a_loop(args):
    ids, pad_id = args
    want = [max(j for j, t in enumerate(row) if t != pad_id) for row in ids.tolist()]
    assert nb10.last_token_index(ids, pad_id).tolist() == want


@pytest.mark.parametrize("args", nb10.CASES["rouge1_f"] + [("Hello, World!", "hello world again")])
def test_rouge1_matches_the_rouge_score_package(args):
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    candidate, reference = args
    want = rouge_scorer.RougeScorer(["rouge1"]).score(reference, candidate)["rouge1"].fmeasure
    assert abs(nb10.rouge1_f(candidate, reference) - want) < 1e-12

