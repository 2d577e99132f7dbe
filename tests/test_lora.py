"""LoRA against the peft library's LoRA: same weights -> same outputs and gradients."""

import copy

import pytest
import torch
from torch import nn

from course_lib.gpt import GPT, GPTConfig
from course_lib.lora import (
    LoRALinear,
    add_lora,
    count_parameters,
    merge_lora,
    optimizer_state_bytes,
)


def _peft():
    return pytest.importorskip("peft")  # here, not at import: collecting the tests stays fast


def _gpt(seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=40, block_size=16, n_layers=2, n_heads=2, d_model=32))


def _pair(r=4, alpha=8.0, targets=("w_q", "w_v")):
    ours = add_lora(_gpt(), targets, r=r, alpha=alpha)
    peft = _peft()
    theirs = peft.inject_adapter_in_model(
        peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=list(targets)), _gpt())
    g = torch.Generator().manual_seed(1)
    for name, m in ours.named_modules():
        if isinstance(m, LoRALinear):
            with torch.no_grad():  # B is zero at the start: give it values so the update shows
                m.lora_B.copy_(0.1 * torch.randn(m.lora_B.shape, generator=g))
                peer = theirs.get_submodule(name)
                peer.lora_A["default"].weight.copy_(m.lora_A)
                peer.lora_B["default"].weight.copy_(m.lora_B)
    return ours, theirs


def test_same_outputs_and_gradients_as_peft():
    ours, theirs = _pair()
    idx = torch.randint(0, 40, (3, 12), generator=torch.Generator().manual_seed(2))
    y = torch.randint(0, 40, (3, 12), generator=torch.Generator().manual_seed(3))
    lo, lt = ours(idx, y)[1], theirs(idx, y)[1]
    torch.testing.assert_close(ours(idx)[0], theirs(idx)[0], rtol=1e-5, atol=1e-6)
    lo.backward()
    lt.backward()
    trainable_ours = {n: p for n, p in ours.named_parameters() if p.requires_grad}
    trainable_theirs = {n: p for n, p in theirs.named_parameters() if p.requires_grad}
    assert len(trainable_ours) == len(trainable_theirs) == 8  # 2 layers x (w_q, w_v) x (A, B)
    assert count_parameters(ours, trainable_only=True) == sum(p.numel() for p in trainable_theirs.values())
    for name, p in trainable_ours.items():
        peer = name.replace("lora_A", "lora_A.default.weight").replace("lora_B", "lora_B.default.weight")
        torch.testing.assert_close(p.grad, trainable_theirs[peer].grad, rtol=1e-4, atol=1e-7)
        assert p.grad.abs().sum() > 0


def test_initialisation_matches_peft_and_starts_at_the_base_model():
    peft = _peft()  # imported before the seeds below
    torch.manual_seed(5)
    base = nn.Linear(32, 24)
    torch.manual_seed(6)
    ours = LoRALinear(copy.deepcopy(base), r=4, alpha=8)
    layer = nn.Sequential(copy.deepcopy(base))
    torch.manual_seed(6)
    theirs = peft.inject_adapter_in_model(peft.LoraConfig(r=4, lora_alpha=8, target_modules=["0"]), layer)[0]
    # the same initialisation rule: A uniform in +-1/sqrt(in) (kaiming, a=sqrt(5)), B zero
    for a in (ours.lora_A, theirs.lora_A["default"].weight):
        assert a.abs().max() <= 1 / 32**0.5 and a.abs().max() > 0.8 / 32**0.5
    assert torch.all(ours.lora_B == 0) and torch.all(theirs.lora_B["default"].weight == 0)
    assert ours.scaling == theirs.scaling["default"] == 2.0
    x = torch.randn(5, 32)
    torch.testing.assert_close(ours(x), base(x))  # B = 0: the adapted model is the base model


def test_a_wrong_scaling_is_caught():
    ours, theirs = _pair(r=4, alpha=8.0)
    for m in ours.modules():
        if isinstance(m, LoRALinear):
            m.scaling = 1.0  # forgetting alpha / r
    idx = torch.randint(0, 40, (2, 8))
    assert not torch.allclose(ours(idx)[0], theirs(idx)[0], atol=1e-4)


def test_merge_gives_the_same_function_and_only_adapters_train():
    model, _ = _pair()
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert all("lora_" not in n for n in frozen)
    idx = torch.randint(0, 40, (2, 10))
    before = model(idx)[0]
    merge_lora(model)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    torch.testing.assert_close(model(idx)[0], before, rtol=1e-5, atol=1e-5)


def test_optimizer_memory_is_two_moments_per_trainable_parameter():
    model = add_lora(_gpt(), ("w_q", "w_v"), r=2, alpha=4)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    model(torch.randint(0, 40, (2, 8)), torch.randint(0, 40, (2, 8)))[1].backward()
    opt.step()
    n = count_parameters(model, trainable_only=True)
    assert n == 2 * 2 * (2 * 32 + 32 * 2)  # 2 layers x 2 targets x r (in + out)
    assert optimizer_state_bytes(opt) == 2 * 4 * n


def test_bad_targets_and_rank_are_clear_errors():
    with pytest.raises(ValueError, match="its linear layers are called"):
        add_lora(_gpt(), ("q_proj",))
    with pytest.raises(ValueError, match="rank"):
        LoRALinear(nn.Linear(4, 4), r=8)
