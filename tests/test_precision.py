"""The precision policy: which precision each device gets, the fp16 + gradient-scaler path
(run on the CPU: numerics close to float32, overflowing steps skipped), compile fallback."""

import pytest
import torch
from torch import nn

from course_lib.gpt import GPT, GPTConfig
from course_lib.training.precision import (
    CompiledOrEager,
    Precision,
    choose_precision,
    maybe_compile,
    resolve_precision,
    use_compile,
)


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


@pytest.mark.parametrize("cap,expected", [((9, 0), "bf16"), ((8, 9), "bf16"), ((8, 0), "bf16"),
                                          ((7, 5), "fp16"), ((7, 0), "fp16"), ((6, 1), "fp32")])
def test_auto_on_cuda_follows_compute_capability(cap, expected):
    assert resolve_precision("auto", "cuda", cap, "GPU")[0] == expected


@pytest.mark.parametrize("device_type", ["cpu", "mps"])
def test_auto_elsewhere_is_float32(device_type):
    assert resolve_precision("auto", device_type, None)[0] == "fp32"


def test_impossible_requests_are_clear_errors():
    with pytest.raises(ValueError, match="bf16 needs compute capability >= 8.0.*Tesla T4.*fp16"):
        resolve_precision("bf16", "cuda", (7, 5), "Tesla T4")
    with pytest.raises(ValueError, match="fp16 needs compute capability >= 7.0"):
        resolve_precision("fp16", "cuda", (6, 0), "P100")
    with pytest.raises(ValueError, match="MPS"):
        resolve_precision("fp16", "mps", None)
    with pytest.raises(ValueError, match="unknown precision 'half'.*auto, bf16, fp16, fp32"):
        resolve_precision("half", "cpu", None)
    # explicit requests a device can do are kept (fp16 on the CPU is how the tests run it)
    assert resolve_precision("fp16", "cpu", None)[0] == "fp16"
    assert resolve_precision("fp32", "cuda", (9, 0))[0] == "fp32"


def test_choose_precision_on_cpu():
    p = choose_precision("auto", "cpu")
    assert (p.name, p.dtype, p.uses_scaler, p.tf32) == ("fp32", torch.float32, False, False)
    p16 = choose_precision("fp16", "cpu")
    assert (p16.dtype, p16.uses_scaler) == (torch.float16, True)
    assert choose_precision("bf16", "cpu").scaler is None  # only fp16 needs a scaler
    assert "gradient scaler" in p16.describe()


def test_autocast_contexts():
    lin = nn.Linear(4, 4)
    x = torch.randn(2, 4)
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        with Precision(name, "cpu").autocast():
            assert lin(x).dtype == dtype


def _train(prec: Precision, optimizer: str = "adamw", steps: int = 8) -> list[float]:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=32, block_size=16, n_layers=2, n_heads=2, d_model=32))
    if optimizer == "adamw":
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    data = torch.randint(0, 32, (1, 4, 17), generator=g).expand(steps, -1, -1)  # one batch, learned
    losses = []
    for s in range(steps):
        with prec.autocast():
            _, loss = model(data[s, :, :-1], data[s, :, 1:])
        prec.backward(loss)
        assert prec.step(opt, grad_clip=5.0) is True
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def check_follows_float32(make_precision, optimizer: str) -> None:
    ref, half = _train(Precision("fp32", "cpu"), optimizer), _train(make_precision(), optimizer)
    assert ref[-1] < ref[0] - 0.3  # it learns
    assert half == pytest.approx(ref, abs=1e-2), "fp16 + scaler must follow the float32 losses"


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_fp16_with_scaler_on_cpu_follows_float32(optimizer):
    check_follows_float32(lambda: Precision("fp16", "cpu"), optimizer)
    assert _train(Precision("bf16", "cpu"), optimizer) == pytest.approx(_train(Precision("fp32", "cpu"), optimizer),
                                                                        abs=5e-2)


def test_a_scaler_that_is_not_undone_fails_the_numerics_check():
    class NoUnscale(Precision):  # steps on gradients still multiplied by the scale
        def step(self, optimizer, clip_grad=None, grad_clip=0.0):
            optimizer.step()
            return True

    with pytest.raises(AssertionError, match="follow the float32"):
        check_follows_float32(lambda: NoUnscale("fp16", "cpu"), "sgd")


def test_backward_scales_the_loss_so_small_fp16_gradients_survive():
    """Weight gradients of ~1e-9 underflow to zero in an fp16 matmul; scaled by 65,536 first
    they are representable, and unscaling in float32 recovers them."""
    torch.manual_seed(0)
    lin = nn.Linear(8, 8, bias=False)
    x = torch.full((4, 8), 1e-4)

    def grads(scaled: bool) -> torch.Tensor:
        lin.weight.grad = None
        prec = Precision("fp16", "cpu")
        with prec.autocast():
            loss = (lin(x).float() * 1e-5).sum()
        if scaled:
            prec.backward(loss)
            prec.scaler.unscale_(torch.optim.SGD(lin.parameters(), lr=0.0))
        else:
            loss.backward()
        return lin.weight.grad.clone()

    assert torch.count_nonzero(grads(scaled=False)) == 0  # underflow without the scaler
    scaled = grads(scaled=True)
    assert torch.allclose(scaled, torch.full_like(scaled, 4e-9), rtol=1e-2)


def _overflow_step(prec: Precision):
    """One step whose gradient holds an inf; returns what a caller can observe."""
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    with prec.autocast():
        loss = model(torch.randn(5, 4)).float().pow(2).mean()
    prec.backward(loss)
    model.weight.grad[0, 0] = float("inf")  # as an fp16 overflow would leave it
    scale = prec.scaler.get_scale() if prec.uses_scaler else None
    clipped = []
    result = prec.step(opt, lambda max_norm: clipped.append(max_norm), grad_clip=1.0)
    assert clipped in ([1.0], [])  # the loop's own clipping (e.g. distributed) is the one called
    after = list(model.parameters())
    return result, before, after, opt, scale


def check_overflow_is_skipped(prec: Precision) -> None:
    result, before, after, opt, scale = _overflow_step(prec)
    assert result is False, "an overflowing step must report itself as skipped"
    for b, a in zip(before, after, strict=True):
        assert torch.equal(b, a), "an overflowing step must not change the parameters"
    assert not opt.state, "an overflowing step must not create or change optimizer state"
    assert prec.scaler.get_scale() == scale / 2, "the scale must be halved after an overflow"
    assert prec.skipped_steps == 1


def test_fp16_overflow_is_skipped_and_the_scale_reduced():
    check_overflow_is_skipped(Precision("fp16", "cpu"))


def test_a_policy_that_applies_the_inf_step_fails_the_check():
    class Broken(Precision):
        def step(self, optimizer, clip_grad=None, grad_clip=0.0):  # forgets the scaler
            optimizer.step()
            return True

    with pytest.raises(AssertionError, match="skipped"):
        check_overflow_is_skipped(Broken("fp16", "cpu"))


def test_scaler_state_round_trips_through_json():
    import json

    p = Precision("fp16", "cpu")
    _overflow_step(p)
    state = json.loads(json.dumps(p.state_dict()))
    q = Precision("fp16", "cpu")
    q.load_state_dict(state)
    assert q.scaler.get_scale() == p.scaler.get_scale() == 32768.0
    assert Precision("bf16", "cpu").state_dict() == {}  # nothing to keep without a scaler


def test_use_compile_defaults():
    assert use_compile(None, "cpu") is False
    assert use_compile(True, "cpu") is True
    assert use_compile(False, "cpu") is False


def test_compile_failure_falls_back_in_one_line(monkeypatch):
    model = nn.Linear(3, 2)

    def broken_compile(module, **kwargs):
        def call(*a, **k):
            raise RuntimeError("Dynamo is not supported on this Python\nlong traceback")
        return call

    monkeypatch.setattr(torch, "compile", broken_compile)
    lines = []
    fn = maybe_compile(model, True, log=lines.append)
    x = torch.randn(4, 3)
    assert torch.equal(fn(x), model(x))
    assert len(lines) == 1 and "running eagerly" in lines[0] and "long traceback" not in lines[0]
    assert not fn.compiled and fn.weight is model.weight
    fn(x)
    assert len(lines) == 1  # said once


def test_genuine_model_errors_are_not_hidden(monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda module, **k: module)
    fn = CompiledOrEager(nn.Linear(3, 2), log=lambda s: None)
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        fn(torch.randn(4, 5))
    assert maybe_compile(nn.Linear(3, 2), False).__class__ is nn.Linear
