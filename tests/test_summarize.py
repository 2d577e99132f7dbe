"""course_lib.summarize: ROUGE = the rouge-score package's per-example scores averaged by hand;
prompts and greedy prompting with a tiny GPT (offline)."""

import re
from collections import Counter

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from course_lib.gpt import GPT, GPTConfig
from course_lib.summarize import lead, prompt_summaries, rouge, tldr_prompt
from course_lib.tokenizer import CharTokenizer

rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")


def test_rouge_is_the_mean_of_the_packages_scores():
    preds, refs = ["anna and ben meet on friday .", "the keys are here"], ["anna and ben will meet on friday .", "x"]
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    want = (scorer.score(refs[0], preds[0])["rougeL"].fmeasure + scorer.score(refs[1], preds[1])["rougeL"].fmeasure) / 2
    assert rouge(preds, refs, ("rougeL",))["rougeL"] == pytest.approx(want)
    assert rouge(refs, refs)["rouge2"] == pytest.approx(0.5)  # "x" alone has no bigram to match
    with pytest.raises(ValueError, match="as many"):
        rouge(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="predictions is empty"):
        rouge([], [])


def test_tldr_prompt_zero_and_few_shot():
    assert tldr_prompt("a : hi\nb : hello") == "a : hi\nb : hello\nTL;DR:"
    few = tldr_prompt("c : x", [("a : hi", "a says hi ."), ("b : yo", "b says yo .")])
    assert few == "a : hi\nTL;DR: a says hi .\n\nb : yo\nTL;DR: b says yo .\n\nc : x\nTL;DR:"


def test_prompt_summaries_continue_the_prompt_greedily(one_thread):
    text = "a : hi\nTL;DR: abc .\n\nxyz"
    tok = CharTokenizer.from_text(text + "\n;LDRT:")
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layers=1, n_heads=2, d_model=16))
    got = prompt_summaries(model, tok, ["a : hi", "xyz"], shots=[("a : hi", "abc .")], max_new_tokens=8)
    assert len(got) == 2 and all("\n" not in g for g in got)
    # the same as continuing the prompt by hand, one most likely token at a time
    ids = tok.encode(tldr_prompt("xyz", [("a : hi", "abc .")]))
    with torch.no_grad():
        for _ in range(8):
            ids.append(int(model(torch.tensor([ids]))[0][0, -1].argmax()))
    assert got[1] == tok.decode(ids[-8:]).strip().split("\n")[0].strip()
    with pytest.raises(ValueError, match="no room"):
        prompt_summaries(model, tok, ["a"], max_new_tokens=64)


def _words(text):
    return re.findall(r"[a-z0-9]+", text.lower())


def _rouge1_and_l(prediction, reference):
    """ROUGE-1 and ROUGE-L F-measures written out (clipped unigram counts; LCS by dynamic programming)."""
    p, r = _words(prediction), _words(reference)
    if not p or not r:
        return 0.0, 0.0
    lcs = [[0] * (len(r) + 1) for _ in range(len(p) + 1)]
    for i, a in enumerate(p):
        for j, b in enumerate(r):
            lcs[i + 1][j + 1] = lcs[i][j] + 1 if a == b else max(lcs[i][j + 1], lcs[i + 1][j])

    def f(overlap):
        return 0.0 if overlap == 0 else 2 * overlap / (len(p) + len(r))

    return f(sum((Counter(p) & Counter(r)).values())), f(lcs[-1][-1])


def test_lead_and_rouge_agree_with_references_written_out():
    """lead-N is the first N words across line breaks (a split on spaces only, or a cut at N
    characters, fails here); its ROUGE equals counts and an LCS written out."""
    from course_lib.data import dialogues

    data = dialogues.generate_dialogues(40, seed=2)
    for d in data:
        assert lead(d.text, 7) == " ".join(re.findall(r"\S+", d.text)[:7])
    assert lead("a : hi\nb : yo", 4) == "a : hi b"
    assert lead("one two", 5) == "one two"
    preds, refs = [lead(d.text, 12) for d in data], [d.summary for d in data]
    by_hand = [_rouge1_and_l(p, r) for p, r in zip(preds, refs, strict=True)]
    got = rouge(preds, refs, ("rouge1", "rougeL"))
    assert got["rouge1"] == pytest.approx(sum(a for a, _ in by_hand) / len(data))
    assert got["rougeL"] == pytest.approx(sum(b for _, b in by_hand) / len(data))
    assert got["rouge1"] > got["rougeL"]  # the written-out LCS is not the unigram count here
    with pytest.raises(ValueError, match="n_words=0"):
        lead("a b", 0)


@settings(max_examples=40, deadline=None)
@given(text=st.one_of(st.text(max_size=30), st.none(), st.integers()),
       n_words=st.one_of(st.integers(-3, 20), st.sampled_from([True, None, 1.5, "2", float("nan")])))
def test_lead_any_arguments(text, n_words):
    """A prefix of the text's words, or a ValueError naming the argument."""
    try:
        got = lead(text, n_words)
    except ValueError as exc:
        assert "text" in str(exc) or "n_words" in str(exc), exc
        return
    assert got.split() == text.split()[:n_words]
