"""Notebook 09's exercise solutions against independent references: torch.chunk (what
FSDP uses to cut parameters), the memory a real model and optimizer hold, and the
numbers of the ZeRO paper (Rajbhandari et al., 2020, Figure 1)."""

import pytest
import torch

from course_lib.exercises import check
from course_lib.solutions import nb09


@pytest.mark.parametrize("batch,world_size", [(8, 1), (8, 2), (8, 4), (24, 3), (48, 8), (48, 6)])
def test_rank_rows_cover_the_batch_once_in_order(batch, world_size):
    parts = torch.arange(batch).chunk(world_size)
    for rank in range(world_size):
        start, stop = nb09.rank_rows(batch, rank, world_size)
        assert torch.equal(torch.arange(batch)[start:stop], parts[rank])


@pytest.mark.parametrize("rows", [1, 3, 5, 8, 11, 64, 65])
@pytest.mark.parametrize("world_size", [1, 2, 3, 4, 8])
def test_shard_rows_are_torch_chunk(rows, world_size):
    chunks = [c.shape[0] for c in torch.chunk(torch.zeros(rows), world_size)]
    assert nb09.shard_rows(rows, world_size) == chunks + [0] * (world_size - len(chunks))


def test_bytes_per_rank_match_a_real_adamw_model():
    model = torch.nn.Sequential(torch.nn.Linear(10, 20), torch.nn.Linear(20, 3))
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(4, 10)).sum().backward()
    opt.step()
    n = sum(p.numel() for p in model.parameters())
    measured = {
        "parameters": sum(p.numel() * p.element_size() for p in model.parameters()),
        "gradients": sum(p.grad.numel() * p.grad.element_size() for p in model.parameters()),
        "optimizer": sum(
            v.numel() * v.element_size() for s in opt.state.values() for v in s.values() if v.dim()
        ),
    }
    assert nb09.bytes_per_rank(n, 1, "ddp") == measured
    assert nb09.bytes_per_rank(n, 8, "ddp") == measured


def test_bytes_per_rank_match_the_zero_paper():
    # 7.5B parameters, mixed-precision Adam (2 + 2 + 12 bytes), 64 GPUs:
    # 120 GB per GPU with plain data parallelism, 1.9 GB with parameters, gradients
    # and optimizer states partitioned (ZeRO stage 3 = FSDP).
    ddp = sum(nb09.bytes_per_rank(7_500_000_000, 64, "ddp", 2, 2, 12).values())
    fsdp = sum(nb09.bytes_per_rank(7_500_000_000, 64, "fsdp", 2, 2, 12).values())
    assert ddp / 1e9 == 120.0
    assert round(fsdp / 1e9, 1) == 1.9


def test_check_reports_stubs(capsys):
    # (that the solutions equal independent references: tests/test_solutions_independent.py)
    for name in ("rank_rows", "bytes_per_rank", "shard_rows"):
        assert not check(lambda *args: None, f"nb09.{name}")
    assert "not attempted yet" in capsys.readouterr().out
