"""Mixed precision: one policy for both training loops.

- ``auto``: bf16 autocast on GPUs that compute in bf16 natively (compute capability
  >= 8.0: Ampere, Ada, Hopper); fp16 autocast with a gradient scaler on compute capability
  7.x (a T4, a V100), whose tensor cores do fp16 but not bf16; float32 elsewhere (the CPU,
  MPS). What stays float32 on CUDA may use TF32 matrix units.
- fp16 needs the scaler: gradients below 6e-8 underflow to zero in float16, so the loss
  is multiplied by a large factor before ``backward`` and the gradients divided by it
  before the step; a step whose gradients overflowed (inf/NaN) is skipped and the factor
  halved.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field

import torch

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def cuda_capability(device: torch.device) -> tuple[int, int]:
    """(major, minor) of a CUDA device; (0, 0) for anything else."""
    return torch.cuda.get_device_capability(device) if device.type == "cuda" else (0, 0)


@dataclass
class Precision:
    """How a training step computes: ``name`` (bf16, fp16, fp32), the autocast dtype, the
    device type, and for fp16 a gradient scaler."""

    name: str
    device_type: str
    scaler: torch.amp.GradScaler | None = field(default=None, repr=False)

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.name]

    def autocast(self):
        """The context a forward pass runs in (a null context for float32)."""
        if self.name == "fp32":
            return nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, optimizer: torch.optim.Optimizer, clip_grad, grad_clip: float) -> bool:
        """Unscale (fp16), clip with ``clip_grad(max_norm)`` if ``grad_clip > 0``, step.

        Returns False when the step was skipped because the gradients overflowed.
        """
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)
        if grad_clip > 0:
            clip_grad(grad_clip)
        if self.scaler is None:
            optimizer.step()
            return True
        scale = self.scaler.get_scale()
        self.scaler.step(optimizer)  # skipped if any gradient is inf or NaN
        self.scaler.update()
        return self.scaler.get_scale() >= scale  # the scale drops only after an overflow

    def state_dict(self) -> dict:
        """JSON-able state for a checkpoint (the scaler's factor and growth counter)."""
        return {} if self.scaler is None else {k: float(v) if torch.is_tensor(v) else v
                                               for k, v in self.scaler.state_dict().items()}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


def choose_precision(requested: str, device: torch.device) -> Precision:
    """The precision for ``requested`` (auto, bf16, fp16, fp32) on ``device``."""
    if requested not in PRECISIONS:
        raise ValueError(f"precision {requested!r} is not one of {PRECISIONS}; use --precision auto.")
    device = torch.device(device)
    cc = cuda_capability(device)
    if requested == "auto":
        requested = "bf16" if cc >= (8, 0) else "fp16" if cc >= (7, 0) else "fp32"
    if requested == "bf16" and device.type == "cuda" and cc < (8, 0):
        raise ValueError(f"this GPU (compute capability {cc[0]}.{cc[1]}) has no native bf16; "
                         "use --precision fp16 (with a gradient scaler) or auto.")
    if requested != "fp32" and device.type == "mps":
        raise ValueError("mixed precision is not used on MPS here; use --precision fp32 or auto.")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # what stays float32 uses TF32 units
        torch.backends.cudnn.allow_tf32 = True
    scaler = torch.amp.GradScaler(device.type) if requested == "fp16" else None
    return Precision(requested, device.type, scaler)


def use_compile(requested: bool | None, device: torch.device) -> bool:
    """``torch.compile`` by default only on CUDA GPUs that Triton supports (capability >= 7.0)."""
    return cuda_capability(torch.device(device)) >= (7, 0) if requested is None else bool(requested)


def compile_model(model: torch.nn.Module, requested: bool | None, device, log=print) -> torch.nn.Module:
    """``torch.compile(model)`` where ``use_compile`` says so; falls back with one line."""
    if not use_compile(requested, device):
        return model
    try:
        return torch.compile(model)
    except RuntimeError as exc:  # e.g. a Python that Dynamo does not support yet
        log(f"torch.compile is not available here ({str(exc).splitlines()[0]}); training without it.")
        return model
