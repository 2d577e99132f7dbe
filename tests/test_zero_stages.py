"""ZeRO's stages (course_lib.scaleout.zero, rank_memory.measure) on 2 gloo processes.

References: a plain single-process AdamW loop on the whole batch (losses and weights), the
parameter counts of the model's modules (bytes by hand), and torch's own
ZeroRedundancyOptimizer partition. One launch serves every test (spawning costs seconds).
"""

import functools
import math

import pytest
import torch
import torch.nn.functional as F

from course_lib import scaleout as D
from course_lib.gpt import GPT, GPTConfig
from course_lib.scaleout.rank_memory import SMALL_GPT, batch, measure
from course_lib.scaleout.zero import STAGES, zero_bytes_per_parameter

B, T, STEPS, LR = 8, 16, 3, 1e-3
CONFIG = GPTConfig(**SMALL_GPT, block_size=T)


@functools.cache
def reference_run():
    """One process, the whole batch, plain PyTorch."""
    torch.manual_seed(0)
    model = GPT(CONFIG)
    opt = torch.optim.AdamW(model.parameters(), lr=LR)
    losses = []
    for step in range(STEPS):
        tokens = batch(step, B, T, CONFIG.vocab_size)
        logits = model(tokens[:, :-1])[0]
        loss = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses, model.state_dict()


def two_ranks():
    rows = measure(batch_size=B, seq_len=T, steps=STEPS, lr=LR)
    ctx = D.current()
    # broken on purpose: each rank steps on its own half, without talking
    torch.manual_seed(0)
    alone = GPT(CONFIG)
    opt = torch.optim.AdamW(alone.parameters(), lr=LR)
    for step in range(STEPS):
        tokens = D.shard(batch(step, B, T, CONFIG.vocab_size), ctx)
        alone(tokens[:, :-1], tokens[:, 1:])[1].backward()
        opt.step()
        opt.zero_grad()
    return {"rows": rows, "alone": alone.state_dict() if ctx.is_main else None}


def greedy_shares(sizes, world_size):
    """ZeroRedundancyOptimizer's documented partition, by hand: the largest tensor first,
    each to the rank with the fewest elements so far."""
    shares = [0] * world_size
    for n in sorted(sizes, reverse=True):
        shares[shares.index(min(shares))] += n
    return shares


@pytest.fixture(scope="module")
def ranks(launch_ranks):
    return launch_ranks(two_ranks, 2, timeout_s=120)


def max_diff(a, b):
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_trains_as_one_process(ranks, stage):
    losses, weights = reference_run()
    row = next(r for r in ranks[0]["rows"] if r["stage"] == stage)
    assert row["losses"] == pytest.approx(losses, abs=1e-5)
    assert max_diff(row["weights"], weights) < 1e-5


def test_the_comparison_catches_ranks_that_do_not_talk(ranks):
    _, weights = reference_run()
    assert max_diff(ranks[0]["alone"], weights) > 1e-4


def test_bytes_per_rank_match_the_model_counted_by_hand(ranks):
    """float32 AdamW on 2 ranks; every dimension of this model splits evenly in two."""
    model = GPT(CONFIG)
    n = model.num_parameters()
    root = n - sum(p.numel() for p in model.layers.parameters())  # embeddings, final norm
    block = sum(p.numel() for p in model.layers[0].parameters())
    expected = {  # (parameters at the peak, at rest, gradients, optimizer)
        "ddp": (4 * n, 4 * n, 4 * n, 8 * n),
        "zero2": (4 * n, 2 * n, 2 * n, 4 * n),  # all gathered from the forward to the backward
        "zero3": (2 * n + 2 * (root + block), 2 * n, 2 * n, 4 * n),  # + the root and one block gathered
    }
    for rank, result in enumerate(ranks):
        rows = {r["stage"]: r for r in result["rows"]}
        for stage, want in expected.items():
            row = rows[stage]
            got = (row["parameters"], row["parameters_at_rest"], row["gradients"], row["optimizer"])
            assert got == want, (stage, rank)
        zero1 = rows["zero1"]
        assert (zero1["parameters"], zero1["gradients"]) == (4 * n, 4 * n)
        assert zero1["optimizer"] == 8 * greedy_shares([p.numel() for p in model.parameters()], 2)[rank]
    assert sum(r["rows"][1]["optimizer"] for r in ranks) == 8 * n  # zero1's state: all of it, once


def test_formula_is_the_papers():
    """Figure 1 of the ZeRO paper: 7.5 B parameters, 64 ranks, mixed-precision Adam (2, 2, 12)."""
    psi, gb = 7.5e9, 1e9
    totals = [sum(zero_bytes_per_parameter(s, 64, 2, 2, 12).values()) * psi / gb for s in STAGES]
    assert [round(t, 1) for t in totals] == [120.0, 31.4, 16.6, 1.9]
    assert zero_bytes_per_parameter("zero3", 1) == zero_bytes_per_parameter("ddp", 1)
    assert math.isclose(sum(zero_bytes_per_parameter("zero1", 2).values()), 12)
    with pytest.raises(ValueError, match="stage='zero4' is not one of"):
        zero_bytes_per_parameter("zero4", 2)
