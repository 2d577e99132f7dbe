"""Ring all-reduce (course_lib.scaleout.ring) and the all-reduce's cost (comm_cost) on 3 gloo
processes, against ``dist.all_reduce`` and numpy's weighted least squares.

A ring without its all-gather half (a deliberately broken variant) must differ from
``dist.all_reduce``: the comparison can fail.
"""

import numpy as np
import pytest
import torch
import torch.distributed as dist

from course_lib.scaleout import ring as R
from course_lib.scaleout import setup
from course_lib.scaleout.comm_cost import fit_latency_bandwidth, time_all_reduce

SIZES = (1, 2, 3, 7, 1001)  # fewer elements than ranks, and sizes the ranks do not divide


def three_ranks():
    ctx = setup()
    out = {"exact": [], "close": [], "sent": []}
    for n in SIZES:
        ints = torch.randint(-50, 50, (n,), generator=torch.Generator().manual_seed(ctx.rank)).float()
        floats = torch.randn(n, generator=torch.Generator().manual_seed(10 + ctx.rank), dtype=torch.float64)
        for kind, t in (("exact", ints), ("close", floats)):
            ref, mine = t.clone(), t.clone()
            dist.all_reduce(ref)
            sent = R.ring_all_reduce(mine)
            out[kind].append(float((mine - ref).abs().max()))
        out["sent"].append(sent)
    grid = torch.arange(12.0).reshape(3, 4) * (ctx.rank + 1)
    R.ring_all_reduce(grid)  # a 2-D tensor: its flat view is reduced
    out["grid"] = grid
    whole = R.ring_steps
    R.ring_steps = lambda n: whole(n)[: n - 1]  # broken: reduce-scatter only
    t = torch.ones(9) * (ctx.rank + 1)
    R.ring_all_reduce(t)
    R.ring_steps = whole
    out["broken"] = t
    out["seconds"] = time_all_reduce((1024, 4096), repeats=2)
    try:
        R.ring_all_reduce(torch.zeros(4, 4).t())
    except ValueError as err:
        out["error"] = str(err)
    return out


@pytest.fixture(scope="module")
def ranks(launch_ranks):
    return launch_ranks(three_ranks, 3, timeout_s=120)


def test_ring_equals_dist_all_reduce(ranks):
    for r in ranks:
        assert max(r["exact"]) == 0.0  # integer-valued floats: any order of the sums is exact
        assert max(r["close"]) < 1e-12  # float64 sums in another order
        torch.testing.assert_close(r["grid"], torch.arange(12.0).reshape(3, 4) * 6)


def test_a_ring_without_its_all_gather_is_caught(ranks):
    full = torch.full((9,), 6.0)
    for r in ranks:
        assert not torch.equal(r["broken"], full)


def test_each_rank_sends_two_n_minus_one_over_n_of_the_tensor(ranks):
    """Counted by hand: 2 (N - 1) chunk sends of about size / N elements."""
    for rank, r in enumerate(ranks):
        for n, sent in zip(SIZES, r["sent"], strict=True):
            chunks = [len(c) for c in np.array_split(np.arange(n), 3)]
            by_hand = sum(chunks[c] for _, _, sends in R.ring_steps(3) for c in [sends[rank]])
            assert sent == 8 * by_hand  # float64: the last tensor reduced
            assert abs(sent - R.ring_bytes_per_rank(8 * n, 3)) <= 8 * 2 * 2  # within a value per send
    assert R.ring_bytes_per_rank(3 * 2**20, 3) == 2 * 2**20 * 2


def test_bad_input_is_named(ranks):
    assert "contiguous" in ranks[0]["error"]


def test_timings_are_the_slowest_rank_s(ranks):
    seconds = [r["seconds"] for r in ranks]
    assert all(s == seconds[0] for s in seconds) and all(t > 0 for t in seconds[0])


def test_fit_agrees_with_numpys_weighted_least_squares():
    nbytes = np.array([2.0**k for k in range(10, 27, 2)])
    rng = np.random.default_rng(0)
    exact = 50e-6 + nbytes / 2e9
    assert fit_latency_bandwidth(nbytes, exact) == pytest.approx((50e-6, 2e9), rel=1e-9)
    noisy = exact * rng.lognormal(0, 0.2, nbytes.size)
    per_byte, latency = np.polyfit(nbytes, noisy, 1, w=1 / noisy)
    assert fit_latency_bandwidth(nbytes, noisy) == pytest.approx((latency, 1 / per_byte), rel=1e-6)
    with pytest.raises(ValueError, match="at least two sizes"):
        fit_latency_bandwidth([1024], [1e-4])
