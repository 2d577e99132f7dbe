"""Absmax quantization against PyTorch's own quantized tensors and dynamic quantization."""

import warnings

import pytest
import torch
from torch import nn

from course_lib.gpt import GPT, GPTConfig
from course_lib.quantize import (
    QuantizedLinear,
    absmax_quantize,
    bytes_per_parameter,
    dequantize,
    pack_int4,
    quantize_model,
    state_bytes,
    tensor_bytes,
    torch_dynamic_int8,
    unpack_int4,
)


def _w(seed=0, shape=(24, 64)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g) * torch.logspace(-2, 0, shape[0])[:, None]  # rows of unequal size


def test_bytes_per_parameter_from_the_bit_widths():
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        assert bytes_per_parameter(dtype) == torch.finfo(dtype).bits // 8
    assert bytes_per_parameter(torch.int8) == torch.iinfo(torch.int8).bits // 8 == 1


def test_int8_per_channel_matches_torch_quantize_per_channel():
    """Scale and integers both from PyTorch: its per-channel symmetric observer (range
    [-127, 127]) picks each row's scale, ``torch.quantize_per_channel`` rounds with it."""
    from torch.ao.quantization.observer import PerChannelMinMaxObserver

    w = _w()
    q, scale = absmax_quantize(w, bits=8)
    observer = PerChannelMinMaxObserver(ch_axis=0, dtype=torch.qint8, qscheme=torch.per_channel_symmetric,
                                        quant_min=-127, quant_max=127)
    observer(w)
    ref_scale, zero_point = observer.calculate_qparams()
    assert torch.equal(zero_point, torch.zeros_like(zero_point))
    assert torch.equal(scale[:, 0], ref_scale.float()), (scale[:, 0] - ref_scale).abs().max()  # bit for bit
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = torch.quantize_per_channel(w, ref_scale.double(), zero_point, 0, torch.qint8)
    assert torch.equal(q, ref.int_repr())  # bit for bit
    torch.testing.assert_close(dequantize(q, scale), ref.dequantize())
    assert torch.all((w - dequantize(q, scale)).abs() <= scale / 2 + 1e-7)  # at most half a step off
    assert q.abs().amax(1).eq(127).all()  # every row uses the full range


def test_per_channel_beats_one_scale_per_tensor():
    w = _w()
    err_rows = (w - dequantize(*absmax_quantize(w))).abs()
    scale_tensor = w.abs().max() / 127  # a deliberately coarser scheme: one scale for the matrix
    err_tensor = (w - (w / scale_tensor).round() * scale_tensor).abs()
    assert err_rows.mean() < err_tensor.mean() / 3


def test_groupwise_4bit_by_brute_force_and_packing():
    w = _w(1, (6, 32))
    q, scale = absmax_quantize(w, bits=4, group_size=8)
    assert scale.shape == (6, 4) and q.abs().max() <= 7
    for i in range(6):
        for g in range(4):
            chunk = w[i, 8 * g:8 * g + 8]
            s = chunk.abs().max().item() / 7
            assert scale[i, g].item() == pytest.approx(s, rel=1e-6)
            assert q[i, 8 * g:8 * g + 8].tolist() == [max(-7, min(7, round(v / s))) for v in chunk.tolist()]
    every = torch.arange(-8, 8, dtype=torch.int8).repeat(2).reshape(2, 16)
    assert torch.equal(unpack_int4(pack_int4(every)), every)
    assert pack_int4(every).dtype == torch.uint8 and pack_int4(every).numel() == every.numel() // 2
    with pytest.raises(ValueError, match="group_size"):
        absmax_quantize(w, bits=4, group_size=5)


def test_quantized_linear_is_the_linear_layer_with_rounded_weights():
    torch.manual_seed(0)
    lin = nn.Linear(64, 24)
    for bits, group in ((8, None), (4, 16)):
        ql = QuantizedLinear.from_linear(lin, bits, group)
        x = torch.randn(5, 64)
        w = dequantize(*absmax_quantize(lin.weight, bits, group), group)
        torch.testing.assert_close(ql(x), x @ w.t() + lin.bias)
        assert not any(True for _ in ql.parameters())  # nothing trains


def _gpt():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=50, block_size=16, n_layers=2, n_heads=2, d_model=64)).eval()


def test_quantized_gpt_is_smaller_and_close_to_torchs_dynamic_quantization():
    model = _gpt()
    idx = torch.randint(0, 50, (2, 16))
    ref_logits = model(idx)[0]
    ours = quantize_model(model, bits=8)
    theirs = torch_dynamic_int8(model)
    assert theirs is not None
    with torch.no_grad():
        lo, lt = ours(idx)[0], theirs(idx)[0]
    scale = ref_logits.abs().max()
    assert (lo - ref_logits).abs().max() < 0.02 * scale
    assert (lt - ref_logits).abs().max() < 0.03 * scale
    # the integer weights agree with PyTorch's to one step (its scale is absmax / 127.5)
    for name, m in ours.named_modules():
        if isinstance(m, QuantizedLinear):
            peer = theirs.get_submodule(name).weight()
            assert (m.qweight.int() - peer.int_repr().int()).abs().max() <= 1
    linear = sum(m.weight.numel() for n, m in model.named_modules() if isinstance(m, nn.Linear) and n != "out_proj")
    saved = tensor_bytes(model) - tensor_bytes(ours)
    assert saved == 3 * linear - 4 * sum(m.scale.numel() for m in ours.modules() if isinstance(m, QuantizedLinear))
    assert state_bytes(ours) < 0.5 * state_bytes(model) and state_bytes(theirs) < 0.5 * state_bytes(model)
    assert all(isinstance(ours.get_submodule(n), nn.Linear) for n in ("out_proj",))  # tied head kept


def test_the_original_model_is_untouched():
    model = _gpt()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    quantize_model(model, bits=4, group_size=32)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def _torch_groupwise(w, bits, group_size):
    """Group-wise symmetric quantization from PyTorch's pieces: each group of ``group_size``
    weights along a row is one "channel" of its per-channel symmetric observer (range
    [-qmax, qmax]), and ``torch.quantize_per_channel`` rounds with those scales."""
    from torch.ao.quantization.observer import PerChannelMinMaxObserver

    qmax = 2 ** (bits - 1) - 1
    groups = w.reshape(-1, group_size)
    observer = PerChannelMinMaxObserver(ch_axis=0, dtype=torch.qint8, qscheme=torch.per_channel_symmetric,
                                        quant_min=-qmax, quant_max=qmax)
    observer(groups)
    scale, zero_point = observer.calculate_qparams()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = torch.quantize_per_channel(groups, scale.double(), zero_point, 0, torch.qint8)
    return q.int_repr().reshape(w.shape), scale.float().reshape(w.shape[0], -1)


def _matches_torch(quantize, w, bits=4, group_size=16) -> bool:
    q, scale = quantize(w, bits, group_size)
    ref_q, ref_scale = _torch_groupwise(w, bits, group_size)
    return torch.equal(q, ref_q) and torch.equal(scale, ref_scale)


def _row_scale_for_every_group(w, bits, group_size):  # broken: the row's scale, not the group's
    q, scale = absmax_quantize(w, bits)
    return q, scale.expand(-1, w.shape[1] // group_size).contiguous()


def _groups_down_the_columns(w, bits, group_size):  # broken: groups cut along the wrong axis
    q, scale = absmax_quantize(w.t().contiguous(), bits, group_size)
    return q.t().contiguous(), scale


def _qmax_eight(w, bits, group_size):  # broken: 4 bits given 16 levels on one side (-8..8 overflows)
    g = w.reshape(w.shape[0], -1, group_size)
    scale = g.abs().amax(-1) / 8
    return torch.round(g / scale.unsqueeze(-1)).clamp(-8, 7).to(torch.int8).reshape(w.shape), scale


@pytest.mark.parametrize("bits,group_size", [(4, 16), (4, 32), (8, 16), (3, 8)])
def test_groupwise_matches_torchs_observer_per_group(bits, group_size):
    w = _w(2, (12, 64))
    assert _matches_torch(absmax_quantize, w, bits, group_size)  # scales and integers bit for bit


@pytest.mark.parametrize("broken", [_row_scale_for_every_group, _groups_down_the_columns, _qmax_eight])
def test_broken_group_quantizers_fail_the_same_check(broken):
    w = _w(3, (16, 64))
    assert _matches_torch(absmax_quantize, w)
    assert not _matches_torch(broken, w)


def test_int4_bytes_are_half_a_byte_per_weight_plus_the_scales():
    torch.manual_seed(0)
    lin = nn.Linear(64, 24)
    for group, groups in ((None, 1), (16, 4)):
        ql = QuantizedLinear.from_linear(lin, 4, group)
        assert ql.qweight.dtype == torch.uint8 and ql.qweight.shape == (24, 32)
        assert tensor_bytes(ql) == 24 * 64 // 2 + 4 * 24 * groups + 4 * 24  # packed weights, scales, bias
        assert torch.equal(unpack_int4(ql.qweight), absmax_quantize(lin.weight, 4, group)[0])
