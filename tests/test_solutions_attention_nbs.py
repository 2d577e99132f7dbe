"""The reference solutions of notebooks 04-06 (attention, masking, multi-head attention),
each checked against an independent reference: PyTorch's own layers and functions
(F.scaled_dot_product_attention, nn.Transformer's mask, nn.MultiheadAttention with
FlopCounterMode) or brute-force loops."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from course_lib.exercises import cases, check
from course_lib.solutions import nb04, nb05, nb06

EXERCISES = [f"{m.__name__.rsplit('.', 1)[1]}.{f}" for m in (nb04, nb05, nb06) for f in m.CASES]


@pytest.mark.parametrize("name", EXERCISES)
def test_checker_runs_cases_and_reports_a_stub(name, capsys):
    assert len(cases(name)) >= 2
    assert check(lambda *args: None, name) is False
    assert "not attempted yet" in capsys.readouterr().out
    assert check(lambda *args: torch.zeros(1), name, verbose=False) is False  # a wrong answer fails


# ---------------------------------------------------------------- nb04: attention by hand


def _brute_scores(q, k):
    out = torch.empty(*q.shape[:-1], k.shape[-2], dtype=torch.float64)
    for idx in torch.cartesian_prod(*[torch.arange(n) for n in q.shape[:-1]]).view(-1, q.dim() - 1).tolist():
        *lead, i = idx
        for j in range(k.shape[-2]):
            dot = sum(float(a) * float(b) for a, b in zip(q[(*lead, i)], k[(*lead, j)], strict=True))
            out[(*lead, i, j)] = dot / math.sqrt(q.shape[-1])
    return out


@pytest.mark.parametrize("args", nb04.CASES["scaled_scores"])
def test_scaled_scores_matches_brute_force(args):
    q, k = args
    torch.testing.assert_close(nb04.scaled_scores(q, k).double(), _brute_scores(q, k), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("args", nb04.CASES["softmax_rows"])
def test_softmax_rows_matches_torch_softmax(args):
    (scores,) = args
    got = nb04.softmax_rows(scores)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, torch.softmax(scores, dim=-1))


def test_softmax_rows_is_stable_where_naive_exp_overflows():
    big = torch.tensor([[1000.0, 1001.0, 999.0]])
    assert torch.isnan(big.exp() / big.exp().sum(-1, keepdim=True)).any()  # the naive formula fails
    torch.testing.assert_close(nb04.softmax_rows(big), torch.softmax(big, -1))


@pytest.mark.parametrize("args", nb04.CASES["attention"])
def test_attention_matches_torch_sdpa(args):
    q, k, v = args
    torch.testing.assert_close(nb04.attention(q, k, v), F.scaled_dot_product_attention(q, k, v))


# ---------------------------------------------------------------- nb05: masks


@pytest.mark.parametrize("L", [1, 2, 5, 9])
def test_causal_mask_matches_nn_transformer(L):
    reference = nn.Transformer.generate_square_subsequent_mask(L) == 0  # float mask: 0 = allowed
    got = nb05.causal_mask(L)
    assert got.dtype == torch.bool and torch.equal(got, reference)


@pytest.mark.parametrize("lengths,L", [([3, 1, 5], 5), ([2, 2], 4), ([0, 3], 3), ([7], 7)])
def test_lengths_to_mask_matches_loops(lengths, L):
    reference = torch.tensor([[j < n for j in range(L)] for n in lengths])
    assert torch.equal(nb05.lengths_to_mask(lengths, L), reference)


def _brute_masked_softmax(scores, mask):
    mask = torch.broadcast_to(mask, scores.shape)
    out = torch.zeros_like(scores, dtype=torch.float64)
    flat_s, flat_m, flat_o = scores.reshape(-1, scores.shape[-1]), mask.reshape(-1, mask.shape[-1]), out.view(-1, out.shape[-1])
    for r in range(flat_s.shape[0]):
        allowed = [j for j in range(flat_s.shape[1]) if flat_m[r, j]]
        if not allowed:
            continue  # a fully masked row stays all zeros
        top = max(float(flat_s[r, j]) for j in allowed)
        total = sum(math.exp(float(flat_s[r, j]) - top) for j in allowed)
        for j in allowed:
            flat_o[r, j] = math.exp(float(flat_s[r, j]) - top) / total
    return out


@pytest.mark.parametrize("args", nb05.CASES["masked_softmax"])
def test_masked_softmax_matches_brute_force(args):
    scores, mask = args
    got = nb05.masked_softmax(scores, mask)
    assert not got.isnan().any()
    torch.testing.assert_close(got.double(), _brute_masked_softmax(scores, mask), rtol=1e-5, atol=1e-6)


def test_masked_softmax_has_finite_gradients_on_fully_masked_rows():
    scores = torch.randn(3, 4, requires_grad=True)
    mask = torch.tensor([[True, False, True, False], [False] * 4, [True] * 4])
    nb05.masked_softmax(scores, mask).pow(2).sum().backward()
    assert torch.isfinite(scores.grad).all()
    assert (scores.grad[1] == 0).all()


# ---------------------------------------------------------------- nb06: heads and FLOPs


@pytest.mark.parametrize("args", nb06.CASES["split_heads"])
def test_split_heads_matches_column_chunks(args):
    x, n_heads = args
    reference = torch.stack(x.chunk(n_heads, dim=-1), dim=1)  # head h = the h-th block of columns
    assert torch.equal(nb06.split_heads(x, n_heads), reference)


@pytest.mark.parametrize("args", nb06.CASES["merge_heads"])
def test_merge_heads_matches_concat(args):
    (x,) = args
    reference = torch.cat(x.unbind(dim=1), dim=-1)  # Concat(head_1, ..., head_h)
    assert torch.equal(nb06.merge_heads(x), reference)
    assert torch.equal(nb06.split_heads(nb06.merge_heads(x), x.shape[1]), x)


def _torch_mha_flops(B, L, d_model, n_heads):
    flop_counter = pytest.importorskip("torch.utils.flop_counter")
    mha = nn.MultiheadAttention(d_model, n_heads, batch_first=True)  # training mode: no fused fast path
    x = torch.randn(B, L, d_model)
    counter = flop_counter.FlopCounterMode(display=False)
    with counter:
        mha(x, x, x, need_weights=True, average_attn_weights=False)
    counts = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    linear = sum(n for op, n in counts.items() if op in ("aten.mm", "aten.addmm"))
    attention = sum(n for op, n in counts.items() if op in ("aten.bmm", "aten.baddbmm"))
    return linear, attention, counter.get_total_flops()


@pytest.mark.parametrize("B,L,d_model,n_heads", [(1, 10, 64, 4), (2, 7, 48, 6), (3, 16, 32, 1)])
def test_mha_flops_matches_flop_counter_on_nn_multiheadattention(B, L, d_model, n_heads):
    linear, attention, total = _torch_mha_flops(B, L, d_model, n_heads)
    got = nb06.mha_flops(B, L, d_model, n_heads)
    assert set(got) == {"qkv", "scores", "weighted_sum", "out"}
    assert got["qkv"] + got["out"] == linear
    assert got["scores"] + got["weighted_sum"] == attention
    assert sum(got.values()) == total
    assert got["qkv"] == 3 * got["out"] and got["scores"] == got["weighted_sum"]
