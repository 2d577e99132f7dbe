"""course_lib.objectives against independent references: BERT's masking against Hugging Face's
DataCollatorForLanguageModeling (statistics over many draws), the next-token shift against a
brute-force loop and Hugging Face's collator and causal-LM loss, T5's span corruption against
T5's random-spans algorithm written out below (transformers has no span-corruption collator in
the library proper). Each check is also run on a deliberately broken variant that must fail it."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from course_lib import objectives
from course_lib.objectives import IGNORE_INDEX, mask_tokens, next_token, span_corruption, span_mask

# ---- masked LM: ours against Hugging Face's collator ------------------------------------------

V = 1000
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # ids 0..4
PAD, CLS, SEP, MASK = 0, 2, 3, 4


@pytest.fixture(scope="module")
def hf_collators(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    vocab = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    vocab.write_text("\n".join(SPECIAL_TOKENS + [f"w{i}" for i in range(V - len(SPECIAL_TOKENS))]) + "\n")
    tok = transformers.BertTokenizer(str(vocab))
    assert len(tok) == V and tok.mask_token_id == MASK and tok.pad_token_id == PAD
    mlm = transformers.DataCollatorForLanguageModeling(tok, mlm_probability=0.15, seed=0, return_tensors="pt")
    clm = transformers.DataCollatorForLanguageModeling(tok, mlm=False, return_tensors="pt")
    return mlm, clm


def _batch(seed=0, rows=500, length=40):
    ids = torch.randint(len(SPECIAL_TOKENS), V, (rows, length), generator=torch.Generator().manual_seed(seed))
    ids[:, 0] = CLS
    ids[:, length // 2] = SEP
    ids[::3, 3 * length // 4 :] = PAD
    return ids


def _counts(ids, inputs, labels):
    """The figures the rule fixes, and whether its exact parts hold (True/False)."""
    special = torch.isin(ids, torch.tensor([PAD, 1, CLS, SEP, MASK]))
    chosen = labels != IGNORE_INDEX
    exact = (not (chosen & special).any() and torch.equal(labels[chosen], ids[chosen])
             and torch.equal(inputs[~chosen], ids[~chosen]))
    picked = inputs[chosen]
    return exact, {"selected": (int(chosen.sum()), int((~special).sum())),
                   "[MASK]": (int((picked == MASK).sum()), len(picked)),
                   "random": (int(((picked != MASK) & (picked != ids[chosen])).sum()), len(picked)),
                   "unchanged": (int((picked == ids[chosen]).sum()), len(picked))}


def _same_rate(a, b, sigmas=5.0):
    """Two binomial counts (k, n) agree within ``sigmas`` standard deviations of their difference."""
    (k1, n1), (k2, n2) = a, b
    p = (k1 + k2) / (n1 + n2)
    return abs(k1 / n1 - k2 / n2) <= sigmas * math.sqrt(p * (1 - p) * (1 / n1 + 1 / n2)) + 1e-12


def _agrees_with_hf(rule, collator, seed=0):
    ids = _batch(seed)
    ours = _counts(ids, *rule(ids, MASK, V, (PAD, 1, CLS, SEP), generator=torch.Generator().manual_seed(seed + 1)))
    hf = collator([{"input_ids": row} for row in ids.tolist()])
    theirs = _counts(ids, hf["input_ids"], hf["labels"])
    assert theirs[0], "the reference itself breaks the rule's exact parts"
    return ours[0] and all(_same_rate(ours[1][k], theirs[1][k]) for k in ours[1])


@pytest.mark.parametrize("seed", [0, 1])
def test_mask_tokens_agrees_with_hugging_face(hf_collators, seed):
    assert _agrees_with_hf(mask_tokens, hf_collators[0], seed)


def _rule_90_5_5(ids, mask_id, vocab_size, special_ids, generator):
    inputs, labels = mask_tokens(ids, mask_id, vocab_size, special_ids, generator=generator)
    flip = torch.rand(ids.shape, generator=generator) < 0.5  # half of the random/unchanged -> [MASK]
    return torch.where((labels != IGNORE_INDEX) & flip, mask_id, inputs), labels


def _rule_20_percent(ids, mask_id, vocab_size, special_ids, generator):
    return mask_tokens(ids, mask_id, vocab_size, special_ids, prob=0.2, generator=generator)


def _rule_selects_padding(ids, mask_id, vocab_size, special_ids, generator):
    return mask_tokens(ids, mask_id, vocab_size, (CLS, SEP), generator=generator)


def _rule_labels_everywhere(ids, mask_id, vocab_size, special_ids, generator):
    return mask_tokens(ids, mask_id, vocab_size, special_ids, generator=generator)[0], ids.clone()


@pytest.mark.parametrize("broken", [_rule_90_5_5, _rule_20_percent, _rule_selects_padding, _rule_labels_everywhere])
def test_the_comparison_rejects_broken_masking(hf_collators, broken):
    assert not _agrees_with_hf(broken, hf_collators[0])


# ---- next token -------------------------------------------------------------------------------

def _brute_force_next_token(ids, pad_id):
    inputs, targets = [], []
    for row in ids.tolist():
        inputs.append(row[:-1])
        targets.append([IGNORE_INDEX if row[t + 1] == pad_id else row[t + 1] for t in range(len(row) - 1)])
    return torch.tensor(inputs), torch.tensor(targets)


def _shift_off_by_one(ids, pad_id):
    inputs, targets = next_token(ids, pad_id)
    return inputs, torch.cat([targets[:, 1:], targets[:, -1:]], dim=1)


def _padding_scored(ids, pad_id):
    return next_token(ids, None)


def _matches_brute_force(rule):
    ids = _batch(3, rows=20, length=12)
    ids[::3, 8:] = PAD
    want = _brute_force_next_token(ids, PAD)
    return all(torch.equal(g, w) for g, w in zip(rule(ids, PAD), want, strict=True))


def test_next_token_matches_brute_force():
    assert _matches_brute_force(next_token)


@pytest.mark.parametrize("broken", [_shift_off_by_one, _padding_scored])
def test_brute_force_rejects_broken_shifts(broken):
    assert not _matches_brute_force(broken)


def _matches_hf(rule, clm):
    """Hugging Face's causal LM: the collator's labels (padding -> -100) are shifted inside the
    loss (ForCausalLMLoss); the same logits must give the same loss through our targets."""
    from transformers.loss.loss_utils import ForCausalLMLoss

    ids = _batch(4, rows=8, length=16)
    labels = clm([{"input_ids": row} for row in ids.tolist()])["labels"]
    logits = torch.randn(*ids.shape, V, generator=torch.Generator().manual_seed(5))
    want = ForCausalLMLoss(logits, labels, V)
    inputs, targets = rule(ids, PAD)
    got = F.cross_entropy(logits[:, :-1].flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)
    return torch.equal(inputs, ids[:, :-1]) and torch.allclose(got, want, rtol=1e-6, atol=0)


def test_next_token_loss_equals_hugging_face(hf_collators):
    assert _matches_hf(next_token, hf_collators[1])
    for broken in (_shift_off_by_one, _padding_scored):
        assert not _matches_hf(broken, hf_collators[1])


# ---- span corruption: T5's algorithm, written out -----------------------------------------------

def t5_noise_mask(length, noise_density, mean_span_length, generator):
    """T5's random_spans_noise_mask: round(L * density) noise tokens (1..L-1), round(noise /
    mean) spans (at least 1); each count split into that many runs by shuffling a vector of
    (spans - 1) ones among zeros (the permutations come from ``generator``, noise first); runs
    interleaved kept, noise, kept, ...; a token is noise when an odd number of runs start at
    or before it."""
    n_noise = min(max(round(length * noise_density), 1), length - 1)
    n_spans = max(round(n_noise / mean_span_length), 1)

    def segment_lengths(n_items, n_segments):
        ones = (np.arange(n_items - 1) < n_segments - 1).astype(np.int64)
        shuffled = ones[torch.randperm(n_items - 1, generator=generator).numpy()]
        segment_id = np.cumsum(np.concatenate([[0], shuffled]))
        return np.bincount(segment_id, minlength=n_segments)

    noise = segment_lengths(n_noise, n_spans)
    kept = segment_lengths(length - n_noise, n_spans)
    span_starts = np.cumsum(np.stack([kept, noise], axis=1).reshape(-1))[:-1]
    span_number = np.cumsum(np.bincount(span_starts, minlength=length))
    return span_number % 2 == 1


def t5_replace_spans(tokens, noise, sentinels):
    """Each run of ``noise`` becomes one sentinel (the j-th run: sentinels[j])."""
    previous = np.concatenate([[False], noise[:-1]])
    first, later = noise & ~previous, noise & previous
    return np.where(first, np.asarray(sentinels)[np.cumsum(first) - 1], tokens)[~later]


def _n_runs(noise):
    return int((noise & ~np.concatenate([[False], noise[:-1]])).sum())


def t5_span_corruption(row, sentinels, generator, density=0.15, mean=3.0):
    """(input, target): the noise runs -> sentinels in the input; the kept runs -> sentinels in
    the target (so it reads s0 span0 s1 span1 ...), then the final sentinel."""
    noise = t5_noise_mask(len(row), density, mean, generator)
    targets = t5_replace_spans(row, ~noise, sentinels)
    return t5_replace_spans(row, noise, sentinels), np.append(targets, sentinels[_n_runs(noise)])


SENTINELS = list(range(V - 1, V - 101, -1))  # T5: <extra_id_0> is the last id, then descending


@pytest.mark.parametrize("density,mean", [(0.15, 3.0), (0.3, 1.0), (0.15, 5.0)])
def test_span_mask_equals_t5s_algorithm(density, mean):
    a, b = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    for length in range(2, 160):
        got = span_mask(length, density, mean, generator=a).numpy()
        want = t5_noise_mask(length, density, mean, generator=b)
        assert np.array_equal(got, want), length


def test_span_mask_counts_follow_the_formula():
    for length in (2, 10, 20, 34, 100, 512):
        noise = span_mask(length, generator=torch.Generator().manual_seed(length)).numpy()
        n_noise = min(max(round(0.15 * length), 1), length - 1)
        assert noise.sum() == n_noise and _n_runs(noise) == max(round(n_noise / 3), 1)
        assert not noise[0] and noise[-1]  # T5's runs start with kept tokens and end with noise
    assert span_mask(512).sum() == 77 and _n_runs(span_mask(512).numpy()) == 26  # 0.15 * 512 = 76.8; 77 / 3


def _reassemble(inputs, targets, sentinels, pad_id):
    """The original row from (input, target): each sentinel of the input replaced by the tokens
    that follow the same sentinel in the target. Requires sentinels[0..k-1] in order in the
    input and sentinels[0..k] in order in the target; returns None otherwise."""
    inputs = [t for t in inputs.tolist() if t != pad_id]
    targets = [t for t in targets.tolist() if t != IGNORE_INDEX]
    used = [t for t in inputs if t in sentinels]
    marks = [i for i, t in enumerate(targets) if t in sentinels]
    if used != sentinels[: len(used)] or [targets[i] for i in marks] != sentinels[: len(used) + 1] or marks[0] != 0:
        return None
    if marks[-1] != len(targets) - 1:
        return None  # the final sentinel ends the target
    pieces = {targets[i]: targets[i + 1 : j] for i, j in zip(marks, marks[1:], strict=False)}
    return [tok for t in inputs for tok in (pieces[t] if t in sentinels else [t])]


def _batch_for_spans(seed=0):
    ids = torch.randint(5, 800, (30, 60), generator=torch.Generator().manual_seed(seed))
    ids[1::4, 37:] = PAD
    ids[2::4, 12:] = PAD
    return ids


def _span_corruption_is_right(rule):
    ids = _batch_for_spans()
    inputs, targets = rule(ids, SENTINELS, pad_id=PAD, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    for row, x, y in zip(ids, inputs, targets, strict=True):
        tokens = row[row != PAD].numpy()
        want_x, want_y = t5_span_corruption(tokens, SENTINELS, g)
        if _reassemble(x, y, SENTINELS, PAD) != tokens.tolist():
            return False
        if x[x != PAD].tolist() != want_x.tolist() or y[y != IGNORE_INDEX].tolist() != want_y.tolist():
            return False
    return True


def test_span_corruption_equals_t5_and_reassembles():
    assert _span_corruption_is_right(span_corruption)


def _reused_sentinel(ids, sentinels, **kw):
    inputs, targets = span_corruption(ids, sentinels, **kw)
    s = torch.tensor(sentinels)
    return inputs.masked_fill(torch.isin(inputs, s), sentinels[0]), targets.masked_fill(torch.isin(targets, s),
                                                                                         sentinels[0])


def _no_final_sentinel(ids, sentinels, **kw):
    inputs, targets = span_corruption(ids, sentinels, **kw)
    last = (targets != IGNORE_INDEX).sum(1) - 1
    return inputs, targets.scatter(1, last[:, None], IGNORE_INDEX)


def _span_one_token_late(ids, sentinels, **kw):
    original = objectives.span_mask
    objectives.span_mask = lambda *a, **k: original(*a, **k).roll(1)
    try:
        return span_corruption(ids, sentinels, **kw)
    finally:
        objectives.span_mask = original


def _floor_not_round(ids, sentinels, **kw):
    objectives.round = math.floor  # found before the builtin: the counts are rounded down
    try:
        return span_corruption(ids, sentinels, **kw)
    finally:
        del objectives.round


@pytest.mark.parametrize("broken", [_reused_sentinel, _no_final_sentinel, _span_one_token_late, _floor_not_round])
def test_the_span_checks_reject_broken_variants(broken):
    assert not _span_corruption_is_right(broken)


def test_span_corruption_shapes_eos_and_loss_signal():
    ids = torch.randint(5, 800, (4, 100), generator=torch.Generator().manual_seed(1))
    inputs, targets = span_corruption(ids, SENTINELS, eos_id=2, generator=torch.Generator().manual_seed(2))
    # 15 noise tokens in 5 spans: input 100 - 15 + 5 (+ EOS), target 15 + 5 + 1 (+ EOS)
    assert inputs.shape == (4, 91) and targets.shape == (4, 22)
    assert (inputs[:, -1] == 2).all() and (targets[:, -1] == 2).all() and (targets[:, -2] == SENTINELS[5]).all()


@pytest.mark.parametrize("call,message", [
    (lambda: next_token(torch.ones(2, 1, dtype=torch.long)), "at least 2"),
    (lambda: next_token(torch.ones(4, dtype=torch.long)), "shape"),
    (lambda: next_token([[1, 2]]), "long tensor"),
    (lambda: next_token(torch.ones(2, 3), pad_id=0), "long"),
    (lambda: next_token(torch.ones(2, 3, dtype=torch.long), pad_id=-1), "pad_id"),
    (lambda: span_corruption(torch.ones(2, 9, dtype=torch.long), [99, 99]), "distinct"),
    (lambda: span_corruption(torch.ones(2, 9, dtype=torch.long), 99), "list of token ids"),
    (lambda: span_corruption(torch.full((2, 9), 99), [99, 98]), "never uses"),
    (lambda: span_corruption(torch.ones(1, 200, dtype=torch.long), [99, 98, 97]), "needs 11 sentinels"),
    (lambda: span_corruption(torch.ones(2, 9, dtype=torch.long), [99, 98], noise_density=1.5), "noise_density"),
    (lambda: span_corruption(torch.ones(2, 9, dtype=torch.long), [99, 98], mean_span_length=0), "mean_span_length"),
    (lambda: span_corruption(torch.tensor([[5, 6, 0], [5, 0, 0]]), [99, 98], pad_id=0), "at least 2 tokens"),
])
def test_bad_input_gets_a_clear_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_reproducible_with_a_generator():
    ids = _batch_for_spans(1)
    a = span_corruption(ids, SENTINELS, pad_id=PAD, generator=torch.Generator().manual_seed(9))
    b = span_corruption(ids, SENTINELS, pad_id=PAD, generator=torch.Generator().manual_seed(9))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


# ---- generated bad input: a valid result or an error that names the argument ---------------------

def _clear_or_valid(fn, *names):
    try:
        return fn()
    except ValueError as exc:
        assert any(n in str(exc) for n in names), f"unclear error: {exc}"
        return None


_anything = st.one_of(st.sampled_from([0, -1, 1, 2, 0.0, 0.5, 1.5, 3.0, -0.1, float("nan"), float("inf"), True,
                                       None, "1", "", [], ()]),
                      st.integers(-3, 120), st.floats(allow_nan=True, allow_infinity=True))


@settings(max_examples=60, deadline=None)
@given(density=_anything, mean=_anything, pad_id=_anything, eos_id=_anything)
def test_span_corruption_any_settings(density, mean, pad_id, eos_id):
    ids = torch.randint(1, 50, (3, 30), generator=torch.Generator().manual_seed(0))
    got = _clear_or_valid(lambda: span_corruption(ids, SENTINELS, density, mean, pad_id=pad_id, eos_id=eos_id),
                          "noise_density", "mean_span_length", "pad_id", "eos_id", "at least 2 tokens")
    if got is not None:
        assert got[0].shape[0] == 3 and (got[1] != IGNORE_INDEX).any()


@settings(max_examples=40, deadline=None)
@given(sentinels=st.one_of(_anything, st.lists(_anything, max_size=4), st.lists(st.integers(0, 200), max_size=12)))
def test_span_corruption_any_sentinels(sentinels):
    ids = torch.randint(1, 50, (2, 40), generator=torch.Generator().manual_seed(0))
    got = _clear_or_valid(lambda: span_corruption(ids, sentinels), "sentinel")
    if got is not None:
        assert len(set(sentinels)) == len(sentinels) >= 3  # 6 noise tokens in 2 spans need 3 sentinels
