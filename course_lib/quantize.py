"""Making a model smaller after training: fewer bytes per weight (notebook 12).

- ``bytes_per_parameter``: what one number costs in each dtype.
- ``absmax_quantize`` / ``dequantize``: symmetric "absmax" quantization, one scale per
  output channel (row) or per group of ``group_size`` weights along a row:
  ``scale = max|w| / (2^(bits-1) - 1)``, ``q = round(w / scale)``, ``w ~ q * scale``.
  Each weight is off by at most ``scale / 2``.
- ``QuantizedLinear``: a ``nn.Linear`` whose weight is kept as int8 (or two 4-bit values
  packed in one byte) plus float32 scales; the forward pass dequantizes it.
- ``quantize_model``: every ``nn.Linear`` of a model replaced by a ``QuantizedLinear``.
- ``torch_dynamic_int8``: PyTorch's own dynamic int8 quantization (per-channel weights,
  activations quantized on the fly), the reference to compare with.
- ``state_bytes``: the size of a model's saved state (what a checkpoint would weigh).
"""

from __future__ import annotations

import copy
import io
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from course_lib import checks


def bytes_per_parameter(dtype: torch.dtype) -> int:
    """Bytes of one element of ``dtype`` (float32 4, bfloat16 and float16 2, int8 1)."""
    return torch.empty((), dtype=dtype).element_size()


def _qmax(bits: int) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in (2, 3, 4, 5, 6, 7, 8):
        raise ValueError(f"bits={bits!r}: choose an integer width from 2 to 8 (8: int8, 4: int4).")
    return 2 ** (bits - 1) - 1


def _grouped(w: torch.Tensor, group_size: int | None) -> torch.Tensor:
    """``w (out, in)`` as ``(out, groups, group_size)``; one group per row if None."""
    if not torch.is_tensor(w) or w.dim() != 2:
        raise ValueError(f"expected a weight matrix (out, in), got {tuple(w.shape) if torch.is_tensor(w) else type(w).__name__}.")
    checks.count("group_size", group_size, optional=True, fix="None keeps one scale per row")
    if group_size is None:
        return w.unsqueeze(1)
    if w.shape[1] % group_size:
        raise ValueError(f"group_size={group_size} does not divide the {w.shape[1]} inputs of each row; "
                         "pick a divisor (e.g. 32 or 64) or group_size=None (one scale per row).")
    return w.reshape(w.shape[0], w.shape[1] // group_size, group_size)


def absmax_quantize(w: torch.Tensor, bits: int = 8, group_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q, scale)``: int8 values in ``[-qmax, qmax]`` shaped like ``w``, and float32
    scales of shape ``(out, groups)`` (``groups = 1`` without ``group_size``)."""
    qmax = _qmax(bits)
    g = _grouped(w.detach().float(), group_size)
    scale = g.abs().amax(-1) / qmax
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero group stays zero
    q = torch.round(g / scale.unsqueeze(-1)).clamp(-qmax, qmax).to(torch.int8)
    return q.reshape(w.shape), scale


def dequantize(q: torch.Tensor, scale: torch.Tensor, group_size: int | None = None) -> torch.Tensor:
    """Float32 weights ``q * scale`` (the inverse of ``absmax_quantize`` up to rounding)."""
    return (_grouped(q.float(), group_size) * scale.unsqueeze(-1)).reshape(q.shape)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Two signed 4-bit values (in -8..7) per byte: ``(out, in)`` int8 -> ``(out, in/2)`` uint8."""
    if q.shape[-1] % 2:
        raise ValueError("packing 4-bit values needs an even number of columns.")
    u = (q.to(torch.int16) & 0xF).to(torch.uint8)
    return u[..., 0::2] | (u[..., 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    lo, hi = (packed & 0xF).to(torch.int16), (packed >> 4).to(torch.int16)
    both = torch.stack([lo, hi], -1).reshape(*packed.shape[:-1], packed.shape[-1] * 2)
    return torch.where(both > 7, both - 16, both).to(torch.int8)


class QuantizedLinear(nn.Module):
    """``y = x W^T + b`` with ``W`` stored as integers and float32 scales (buffers, so
    nothing here trains). 8 bits: one int8 per weight; 4 bits: two per byte."""

    def __init__(self, in_features: int, out_features: int, bits: int = 8, group_size: int | None = None,
                 bias: bool = True):
        super().__init__()
        _qmax(bits)
        if bits not in (4, 8):
            raise ValueError(f"QuantizedLinear stores 8 or 4 bits, not {bits}.")
        checks.count("in_features", in_features)
        checks.count("out_features", out_features)
        checks.count("group_size", group_size, optional=True, fix="None keeps one scale per row")
        if group_size is not None and in_features % group_size:
            raise ValueError(f"group_size={group_size} does not divide in_features={in_features}; pick a divisor.")
        if bits == 4 and in_features % 2:
            raise ValueError(f"4-bit weights are packed two to a byte: in_features={in_features} must be even.")
        self.in_features, self.out_features, self.bits, self.group_size = in_features, out_features, bits, group_size
        groups = 1 if group_size is None else in_features // group_size
        cols = in_features if bits == 8 else in_features // 2
        self.register_buffer("qweight", torch.zeros(out_features, cols, dtype=torch.int8 if bits == 8 else torch.uint8))
        self.register_buffer("scale", torch.ones(out_features, groups))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)

    @classmethod
    def from_linear(cls, linear: nn.Linear, bits: int = 8, group_size: int | None = None) -> QuantizedLinear:
        layer = cls(linear.in_features, linear.out_features, bits, group_size, bias=linear.bias is not None)
        q, scale = absmax_quantize(linear.weight, bits, group_size)
        layer.qweight.copy_(q if bits == 8 else pack_int4(q))
        layer.scale.copy_(scale)
        if linear.bias is not None:
            layer.bias.copy_(linear.bias.detach())
        return layer.to(linear.weight.device)

    def weight_int(self) -> torch.Tensor:
        return self.qweight if self.bits == 8 else unpack_int4(self.qweight)

    def dequantized_weight(self) -> torch.Tensor:
        return dequantize(self.weight_int(), self.scale, self.group_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantized_weight().to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, " \
               f"group_size={self.group_size}"


def _linear_names(model: nn.Module, skip: tuple[str, ...]) -> list[str]:
    return [name for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and not any(name == s or name.endswith("." + s) for s in skip)]


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def quantize_model(model: nn.Module, bits: int = 8, group_size: int | None = None,
                   skip: tuple[str, ...] = ("out_proj",)) -> nn.Module:
    """A copy of ``model`` whose ``nn.Linear`` layers (except those named in ``skip``: by
    default the GPT's output head, which shares its matrix with the embedding) are
    ``QuantizedLinear``. The original is left as it was."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"quantize_model takes a torch nn.Module, got {type(model).__name__}.")
    _qmax(bits)
    checks.count("group_size", group_size, optional=True, fix="None keeps one scale per row")
    if isinstance(skip, str):
        raise ValueError(f"skip={skip!r} must be a tuple of layer names; write ({skip!r},) for one.")
    out = copy.deepcopy(model).eval()
    names = _linear_names(out, skip)
    if not names:
        raise ValueError("the model has no nn.Linear layer to quantize (check skip=...).")
    for name in names:
        _replace(out, name, QuantizedLinear.from_linear(out.get_submodule(name), bits, group_size))
    return out


def torch_dynamic_int8(model: nn.Module, skip: tuple[str, ...] = ("out_proj",)) -> nn.Module | None:
    """PyTorch's dynamic quantization of the same layers: int8 per-channel weights, and
    activations quantized per batch at run time (CPU only). None, with one printed line,
    where this torch no longer ships ``torch.ao.quantization``."""
    try:
        with warnings.catch_warnings():  # deprecated in favour of torchao, still the reference here
            warnings.simplefilter("ignore")
            from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

            spec = {name: per_channel_dynamic_qconfig for name in _linear_names(model, skip)}
            return quantize_dynamic(copy.deepcopy(model).cpu().eval(), spec, dtype=torch.qint8)
    except (ImportError, RuntimeError, AttributeError) as exc:
        print(f"PyTorch's dynamic quantization is not available here ({type(exc).__name__}); skipping it.")
        return None


def state_bytes(model: nn.Module) -> int:
    """Bytes of the model's state as ``torch.save`` writes it (shared tensors once)."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def tensor_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and buffers in memory (shared tensors once)."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        key = (t.data_ptr(), t.numel(), t.dtype)
        if key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
    return total
