"""Mixed precision: one policy for both training loops, and where ``torch.compile`` is used.

    auto  ->  bf16 autocast        on CUDA GPUs of compute capability >= 8.0 (A100, L4, H100, ...)
              fp16 autocast + a gradient scaler   on compute capability 7.x (V100, T4)
              float32              otherwise (older GPUs, the CPU, Apple's MPS)

What stays float32 on a CUDA GPU (the weights, and every matmul outside autocast) may use
TF32 tensor cores (10-bit mantissa inputs, float32 accumulation), which is switched on here.

bf16 has float32's exponent range, so its gradients never overflow; fp16 has a 5-bit
exponent (largest value 65,504; smallest subnormal 6e-8), so small gradients underflow to
zero. The gradient scaler multiplies the loss by a large factor S before ``backward`` and
divides the gradients by S before the optimizer step; when a gradient is inf or NaN the
step is skipped and S is halved (and S doubles again after 2,000 clean steps).

The training loop calls the same four things whatever the precision::

    prec = choose_precision("auto", device)
    with prec.autocast():
        loss = model(x, y)[1]
    prec.backward(loss / grad_accum)            # scaled for fp16, plain otherwise
    applied = prec.step(optimizer, clip_grad, grad_clip=1.0)   # False: skipped (fp16 overflow)
    optimizer.zero_grad(set_to_none=True)
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def cuda_capability(device: torch.device | str) -> tuple[int, int]:
    """(major, minor) of a CUDA device; (0, 0) for anything else."""
    device = torch.device(device)
    return tuple(torch.cuda.get_device_capability(device)) if device.type == "cuda" else (0, 0)


def resolve_precision(requested: str, device_type: str, capability: tuple[int, int] | None,
                      device_name: str = "") -> tuple[str, str]:
    """The policy as a pure function: ``(name, reason)`` for a device described by its type
    (``"cuda"``, ``"cpu"``, ``"mps"``) and CUDA compute capability. Used both for the device
    found (``choose_precision``) and for a GPU from a table (``course_lib.training.plan``).

    An explicit request the device cannot do is an error that says what to use instead:
    bf16 below compute capability 8.0 (it would be emulated, slowly), any autocast on MPS,
    fp16 on a CUDA GPU below 7.0. fp16 and bf16 on the CPU are allowed (slow; tests use them).
    """
    if requested not in PRECISIONS:
        raise ValueError(f"unknown precision {requested!r}; use one of {', '.join(PRECISIONS)}.")
    what = device_name or device_type
    if device_type == "cuda":
        cap = capability or (0, 0)
        cc = f"compute capability {cap[0]}.{cap[1]}"
        if requested == "auto":
            if cap >= (8, 0):
                return "bf16", f"{cc}: bf16 tensor cores"
            if cap >= (7, 0):
                return "fp16", f"{cc}: fp16 tensor cores, no bf16"
            return "fp32", f"{cc}: no tensor cores"
        if requested == "bf16" and cap < (8, 0):
            raise ValueError(f"--precision bf16 needs compute capability >= 8.0 (Ampere or newer); {what} has "
                             f"{cap[0]}.{cap[1]}. Use --precision fp16 (or auto, which picks it).")
        if requested == "fp16" and cap < (7, 0):
            raise ValueError(f"--precision fp16 needs compute capability >= 7.0 (tensor cores); {what} has "
                             f"{cap[0]}.{cap[1]}. Use --precision fp32 (or auto).")
        return requested, f"asked for, {cc}"
    if device_type == "mps":
        if requested in ("bf16", "fp16"):
            raise ValueError(f"--precision {requested} is not supported on Apple's MPS here; "
                             "use --precision fp32 (or auto).")
        return "fp32", "MPS: float32"
    if requested == "auto":
        return "fp32", f"{device_type.upper()}: autocast only pays on a GPU"
    return requested, f"asked for; slow on the {device_type.upper()}, meant for tests"


@dataclass
class Precision:
    """How a training step computes: ``name`` (bf16, fp16, fp32), the autocast dtype, the
    device type, and for fp16 a gradient scaler (``choose_precision`` makes one)."""

    name: str  # "bf16", "fp16" or "fp32"
    device_type: str
    scaler: torch.amp.GradScaler | None = field(default=None, repr=False)
    reason: str = ""
    tf32: bool = False
    skipped_steps: int = 0  # optimizer steps skipped because a gradient overflowed (fp16)

    def __post_init__(self):
        if self.name not in DTYPES:
            raise ValueError(f"precision name must be one of {sorted(DTYPES)}, got {self.name!r}.")
        if self.scaler is None and self.name == "fp16":
            self.scaler = torch.amp.GradScaler(self.device_type)

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.name]

    @property
    def uses_scaler(self) -> bool:
        return self.scaler is not None and self.scaler.is_enabled()

    def autocast(self):
        """The context a forward pass runs in (a null context for float32)."""
        if self.name == "fp32":
            return nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        """``loss.backward()``, on the scaled loss under fp16."""
        (self.scaler.scale(loss) if self.uses_scaler else loss).backward()

    def step(self, optimizer: torch.optim.Optimizer, clip_grad=None, grad_clip: float = 0.0) -> bool:
        """Unscale (fp16), clip with ``clip_grad(max_norm)`` if ``grad_clip > 0`` (default: the
        optimizer's parameters, one process), step, update the scale. Returns False when the
        step was skipped because fp16 gradients overflowed (the parameters and the optimizer
        state are then unchanged)."""
        if self.uses_scaler:
            self.scaler.unscale_(optimizer)
        if grad_clip > 0:
            if clip_grad is None:
                params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
                torch.nn.utils.clip_grad_norm_(params, grad_clip)
            else:
                clip_grad(grad_clip)
        if not self.uses_scaler:
            optimizer.step()
            return True
        before = self.scaler.get_scale()
        self.scaler.step(optimizer)  # skips optimizer.step() if any gradient is inf/NaN
        self.scaler.update()
        if self.scaler.get_scale() < before:  # the scale only shrinks after an overflow
            self.skipped_steps += 1
            return False
        return True

    def state_dict(self) -> dict:
        """JSON-able state for a checkpoint (the scaler's factor and growth counter)."""
        return {} if not self.uses_scaler else {k: float(v) if torch.is_tensor(v) else v
                                                for k, v in self.scaler.state_dict().items()}

    def load_state_dict(self, state: dict) -> None:
        if self.uses_scaler and state:
            self.scaler.load_state_dict(state)

    def describe(self) -> str:
        extra = " + gradient scaler" if self.uses_scaler else ""
        tf32 = ", TF32 for float32 matmuls" if self.tf32 else ""
        kind = "float32" if self.name == "fp32" else f"{self.name} autocast"
        return f"{kind}{extra}{tf32}" + (f" ({self.reason})" if self.reason else "")


def enable_tf32() -> None:
    """Let float32 matmuls and convolutions use TF32 tensor cores (CUDA, Ampere and newer)."""
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def choose_precision(requested: str = "auto", device: torch.device | str | None = None,
                     tf32: bool = True) -> Precision:
    """The precision for ``device`` (default: ``course_lib.env.get_device()``); see the module text.
    On CUDA, TF32 is switched on for what stays float32 (``tf32=False`` leaves it alone)."""
    if device is None:
        from course_lib.env import get_device

        device = get_device()
    device = torch.device(device)
    cap = cuda_capability(device)
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    name, reason = resolve_precision(requested, device.type, cap, dev_name)
    use_tf32 = bool(tf32 and device.type == "cuda" and cap >= (8, 0))
    if use_tf32:
        enable_tf32()
    return Precision(name, device.type, reason=reason, tf32=use_tf32)


# ---- torch.compile ------------------------------------------------------------------------

def use_compile(requested: bool | None, device: torch.device | str) -> bool:
    """``requested`` if given; by default on for CUDA GPUs that Triton supports (compute
    capability >= 7.0), where it fuses elementwise work and saves activation memory."""
    if requested is not None:
        return bool(requested)
    return cuda_capability(device) >= (7, 0)


class CompiledOrEager:
    """Calls ``torch.compile(module)``; if compiling fails on the first call (no Triton, no
    C compiler, an unsupported Python), says so in one line and calls ``module`` itself from
    then on. Attributes (``train``, ``eval``, ``no_sync``, ...) are those of the module."""

    def __init__(self, module: torch.nn.Module, log: Callable[[str], None] = print, **compile_kwargs):
        self._eager = module
        self._log = log
        self._checked = False
        try:
            self._current = torch.compile(module, **compile_kwargs)
        except Exception as exc:  # e.g. torch 2.5 on Python 3.13: no Dynamo yet
            self._fallback(exc)

    def _fallback(self, exc: BaseException) -> None:
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        self._log(f"torch.compile is not available here ({type(exc).__name__}: {first}); running eagerly.")
        self._current, self._checked = self._eager, True

    @property
    def _orig_mod(self) -> torch.nn.Module:  # as torch.compile's wrapper names the module inside
        return self._eager

    @property
    def compiled(self) -> bool:
        return self._current is not self._eager

    def __call__(self, *args, **kwargs):
        if self._checked:
            return self._current(*args, **kwargs)
        try:
            out = self._current(*args, **kwargs)
        except Exception as exc:
            self._fallback(exc)
            out = self._eager(*args, **kwargs)  # a genuine error in the model raises again here
        self._checked = True
        return out

    def __getattr__(self, name):
        current = self.__dict__.get("_current")
        if current is None:
            raise AttributeError(name)
        return getattr(current, name)


def maybe_compile(module: torch.nn.Module, enabled: bool, log: Callable[[str], None] = print, **kwargs):
    """``CompiledOrEager(module)`` when ``enabled``, else ``module`` unchanged."""
    return CompiledOrEager(module, log, **kwargs) if enabled else module


def compile_model(model: torch.nn.Module, requested: bool | None, device, log=print):
    """``torch.compile(model)`` where ``use_compile`` says so, falling back to the model itself
    with one line if compiling fails (at ``torch.compile`` or at the first call)."""
    return maybe_compile(model, use_compile(requested, device), log)
