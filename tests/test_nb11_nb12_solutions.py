"""Notebooks 11 and 12: exercise solutions against independent references."""

import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from course_lib.exercises import check
from course_lib.lora import LoRALinear
from course_lib.solutions import nb11, nb12


def test_training_flops_against_the_flop_counter():
    for n, d in nb11.CASES["training_flops"]:
        assert nb11.training_flops(n, d) == 6 * n * d
    lin = nn.Linear(32, 16, bias=False)  # a model of matrix products only: the counter is exact
    x = torch.randn(10, 32, requires_grad=True)  # inside a network: the input needs its gradient too
    with FlopCounterMode(display=False) as counter:
        lin(x).sum().backward()
    assert counter.get_total_flops() == nb11.training_flops(lin.weight.numel(), 10)


def test_chinchilla_split_by_brute_force():
    for c, k in nb11.CASES["chinchilla_split"]:
        n, d = nb11.chinchilla_split(c, k)
        assert 6 * n * d == pytest.approx(c) and d / n == pytest.approx(k)
    # Chinchilla itself: 5.76e23 FLOPs at 20 tokens per parameter is about 70B parameters, 1.4T tokens
    n, d = nb11.chinchilla_split(5.76e23, 20.0)
    assert 65e9 < n < 75e9 and 1.3e12 < d < 1.5e12


def test_power_law_exponent_against_polyfit():
    for x, y in nb11.CASES["power_law_exponent"]:
        slope = np.polyfit(np.log(x), np.log(y), 1)[0]
        assert nb11.power_law_exponent(x, y) == pytest.approx(-slope)


def test_absmax_rows_against_torch_quantize_per_channel():
    for w, bits in nb12.CASES["absmax_rows"]:
        q, scale = nb12.absmax_rows(w, bits)
        qmax = 2 ** (bits - 1) - 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = torch.quantize_per_channel(w, scale.double(), torch.zeros(len(w), dtype=torch.long), 0,
                                             torch.qint8)
        assert torch.equal(q, ref.int_repr().clamp(-qmax, qmax))
        assert q.abs().max() <= qmax


def test_lora_param_count_against_built_adapters():
    for shapes, r in nb12.CASES["lora_param_count"]:
        built = [LoRALinear(nn.Linear(d_in, d_out), r=r) for d_out, d_in in shapes]
        assert nb12.lora_param_count(shapes, r) == sum(p.numel() for m in built for p in m.parameters()
                                                       if p.requires_grad)


def test_adamw_training_bytes_against_a_real_optimizer():
    model = nn.Linear(10, 10)
    n = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 10)).sum().backward()
    opt.step()
    held = sum(p.numel() * p.element_size() * 2 for p in model.parameters())  # weights + gradients
    held += sum(v.numel() * v.element_size() for s in opt.state.values() for v in s.values() if v.dim() > 0)
    assert nb12.adamw_training_bytes(n, 4) == held
    assert nb12.adamw_training_bytes(124_439_808, 4) == 16 * 124_439_808


@pytest.mark.parametrize("name", ["nb11.training_flops", "nb11.chinchilla_split", "nb11.power_law_exponent",
                                  "nb12.absmax_rows", "nb12.lora_param_count", "nb12.adamw_training_bytes"])
def test_check_accepts_the_solution_and_reports_an_unattempted_one(name, capsys):
    module, func = name.split(".")
    assert check(getattr({"nb11": nb11, "nb12": nb12}[module], func), name)
    assert not check(lambda *a: None, name)
    assert "not attempted yet" in capsys.readouterr().out
