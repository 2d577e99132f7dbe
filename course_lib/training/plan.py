"""Device-aware full scale: from the device found, choose precision, micro-batch and gradient
accumulation so that the estimated peak memory fits with a margin, and say so in one line.

    info = device_info()                                    # the GPU (or CPU) this runs on
    plan = plan_training(GPTConfig.preset("gpt2-124m"), info, global_batch=32, seq_len=1024, steps=600)
    print(plan.line())
    # plan: Tesla T4 (15.0 GiB, cc 7.5) | fp16 autocast + gradient scaler (compute capability 7.5:
    #   fp16 tensor cores, no bf16) | micro-batch 8 x 4 = 32 sequences of 1024 tokens | peak ~10.3 GiB
    #   of a 12.0 GiB budget | ~1.23 s/step at an assumed 35% of 65 TFLOP/s, 600 steps ~12.3 min

The micro-batch is the largest divisor of the global batch whose estimate
(``course_lib.training.memory.estimate_memory``) fits in ``(1 - margin)`` of the device's
memory less a reserve for the CUDA context and the allocator; the rest of the batch is
gradient accumulation, so the optimizer sees the same global batch on every device. The
time is the step's FLOPs over the precision's peak at an *assumed* utilisation (35% by
default; ``resources/gpu_results.md`` holds what was measured).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from course_lib import checks
from course_lib.gpt import GPTConfig
from course_lib.llama import LlamaConfig
from course_lib.training.memory import GiB, MemoryEstimate, count_parameters, estimate_memory
from course_lib.training.precision import resolve_precision
from course_lib.transformer import TransformerConfig

MiB = 2**20


@dataclass(frozen=True)
class DeviceInfo:
    """What the planner needs to know about a device."""

    name: str
    type: str  # "cuda", "cpu" or "mps"
    memory_bytes: int  # what the device offers (for a GPU, what nvidia-smi reports)
    capability: tuple[int, int] | None = None  # CUDA compute capability
    peak_tflops: dict = field(default_factory=dict)  # dense peak per precision: bf16, fp16, fp32

    @property
    def memory_gib(self) -> float:
        return self.memory_bytes / GiB

    def describe(self) -> str:
        cc = f", cc {self.capability[0]}.{self.capability[1]}" if self.capability else ""
        return f"{self.name} ({self.memory_gib:.1f} GiB{cc})"


def _gpu(name, mib, cap, bf16, fp16, fp32):
    return DeviceInfo(name, "cuda", mib * MiB, cap, {"bf16": bf16, "fp16": fp16, "fp32": fp32})


# Published figures: memory as nvidia-smi reports it, dense tensor-core peaks in TFLOP/s
# (fp32 = TF32 tensor cores where the GPU has them, which choose_precision switches on).
# The one GPU table: the planner and the trainers' MFU read it through ``known_gpu``.
GPUS: dict[str, DeviceInfo] = {
    "T4": _gpu("Tesla T4", 15360, (7, 5), None, 65.0, 8.1),  # 16 GB; no bf16, no TF32
    "L4": _gpu("NVIDIA L4", 23034, (8, 9), 121.0, 121.0, 60.0),  # 24 GB
    "A10": _gpu("NVIDIA A10", 23028, (8, 6), 125.0, 125.0, 62.5),  # 24 GB
    "A100-40GB": _gpu("NVIDIA A100-SXM4-40GB", 40960, (8, 0), 312.0, 312.0, 156.0),
    "A100-80GB": _gpu("NVIDIA A100-SXM4-80GB", 81920, (8, 0), 312.0, 312.0, 156.0),
    "H100": _gpu("NVIDIA H100 80GB HBM3", 81559, (9, 0), 989.0, 989.0, 494.0),  # SXM
    "H100-PCIe": _gpu("NVIDIA H100 PCIe", 81559, (9, 0), 756.0, 756.0, 378.0),
    "H200": _gpu("NVIDIA H200", 143771, (9, 0), 989.0, 989.0, 494.0),  # 141 GB
}
# The names CUDA gives each of them (torch.cuda.get_device_name), matched whole: an L40S is
# not an L4, an A10G not an A10; an A100's memory and an H100's form factor are in the name.
CUDA_NAMES = {
    "T4": ("Tesla T4",), "L4": ("NVIDIA L4",), "A10": ("NVIDIA A10",),
    "A100-40GB": ("NVIDIA A100-SXM4-40GB", "NVIDIA A100-PCIE-40GB"),
    "A100-80GB": ("NVIDIA A100-SXM4-80GB", "NVIDIA A100 80GB PCIe"),
    "H100": ("NVIDIA H100 80GB HBM3",), "H100-PCIe": ("NVIDIA H100 PCIe",), "H200": ("NVIDIA H200",),
}
_BY_NAME = {" ".join(n.lower().split()): key for key, names in CUDA_NAMES.items() for n in names}


def known_gpu(name: str) -> DeviceInfo | None:
    """The table's entry for a CUDA device name such as ``"NVIDIA A100-SXM4-80GB"`` (the
    whole name, case and spacing aside), or None for a GPU the table does not hold."""
    key = _BY_NAME.get(" ".join(name.lower().split()))
    return GPUS[key] if key else None


def peak_flops(name: str, precision: str = "bf16") -> float | None:
    """Dense peak FLOP/s of the CUDA device ``name`` in ``precision`` (None where unknown)."""
    entry = known_gpu(name)
    tflops = entry.peak_tflops.get(precision) if entry else None
    return None if tflops is None else tflops * 1e12


def _system_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 * GiB


def device_info(device=None) -> DeviceInfo:
    """The device this session runs on (default ``course_lib.env.get_device()``): name, memory
    and compute capability read from CUDA, peaks from ``GPUS`` where the name is known; on the
    CPU or MPS a description with the machine's memory and no peak."""
    import torch

    from course_lib.env import get_device

    device = torch.device(device) if device is not None else get_device()
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        name, cap = props.name, tuple(torch.cuda.get_device_capability(device))
        known = known_gpu(name)
        return DeviceInfo(name, "cuda", int(props.total_memory), cap, dict(known.peak_tflops) if known else {})
    if device.type == "mps":
        return DeviceInfo("Apple MPS", "mps", _system_memory())
    threads = torch.get_num_threads()
    return DeviceInfo(f"CPU ({threads} thread{'s' if threads > 1 else ''})", "cpu", _system_memory())


# ---- FLOPs -------------------------------------------------------------------------------------

def training_flops(config: GPTConfig | TransformerConfig, batch_size: int, seq_len: int,
                   src_len: int | None = None) -> float:
    """FLOPs of one forward + backward pass over ``batch_size`` sequences: 6 per parameter
    per token it touches, plus the attention matmuls (12 x layers x d_model x keys per query
    token), as ``GPT.flops_per_token`` counts them."""
    d = config.d_model
    if isinstance(config, GPTConfig):
        n = count_parameters(config).n_params - config.block_size * d  # the position table: a lookup
        return batch_size * seq_len * (6 * n + 12 * config.n_layers * d * seq_len)
    if isinstance(config, LlamaConfig):  # an untied input embedding is a lookup
        n = count_parameters(config).n_params - (0 if config.tie_embeddings else config.vocab_size * d)
        return batch_size * seq_len * (6 * n + 12 * config.n_layers * config.n_heads * config.head_size * seq_len)
    S = src_len or seq_len
    f, Vt = config.d_ff, config.tgt_vocab_size
    enc_layer = 4 * d * d + 2 * d * f
    dec_layer = 8 * d * d + 2 * d * f
    enc = batch_size * S * (6 * config.n_layers * enc_layer + 12 * config.n_layers * d * S)
    dec = batch_size * seq_len * (6 * config.decoder_layers * dec_layer + 6 * Vt * d
                                  + 12 * config.decoder_layers * d * (seq_len + S))
    return float(enc + dec)


# ---- the plan ------------------------------------------------------------------------------------

@dataclass
class Plan:
    device: DeviceInfo
    precision: str  # "bf16", "fp16" or "fp32"
    micro_batch: int  # sequences per forward/backward pass
    grad_accum: int  # micro-batches per optimizer step
    seq_len: int
    est_memory: MemoryEstimate  # at micro_batch
    budget_bytes: int
    est_seconds_per_step: float | None  # None where the peak is unknown (CPU)
    reason: str  # why this precision
    steps: int | None = None
    assumed_mfu: float = 0.35

    @property
    def global_batch(self) -> int:
        return self.micro_batch * self.grad_accum

    def line(self) -> str:
        """The one line the trainers and notebooks print."""
        kind = "float32" if self.precision == "fp32" else f"{self.precision} autocast"
        if self.precision == "fp16":
            kind += " + gradient scaler"
        parts = [
            f"plan: {self.device.describe()}",
            f"{kind} ({self.reason})",
            f"micro-batch {self.micro_batch} x {self.grad_accum} = {self.global_batch} sequences of {self.seq_len} tokens",
            f"peak ~{_size(self.est_memory.total)} of a {_size(self.budget_bytes)} budget",
        ]
        if self.est_seconds_per_step is None:
            parts.append("no time estimate on this device")
        else:
            peak = self.device.peak_tflops.get(self.precision)
            s = self.est_seconds_per_step
            t = f"~{s:.2f} s/step" if s >= 0.1 else f"~{1000 * s:.1f} ms/step"
            t += f" at an assumed {100 * self.assumed_mfu:.0f}% of {peak:g} TFLOP/s"
            if self.steps:
                total = self.steps * s
                t += f", {self.steps} steps ~{total / 60:.1f} min" if total >= 60 else f", {self.steps} steps ~{total:.0f} s"
            parts.append(t)
        return " | ".join(parts)


def _size(n: int) -> str:
    return f"{n / GiB:.1f} GiB" if n >= GiB else f"{n / MiB:.0f} MiB"


def memory_budget(device: DeviceInfo, margin: float = 0.15, reserve_gib: float = 0.75) -> int:
    """Bytes a training step may plan to use: ``(1 - margin)`` of the device's memory less a
    reserve (on a GPU: the CUDA context and the caching allocator's slack)."""
    reserve = reserve_gib * GiB if device.type == "cuda" else 0
    return int(device.memory_bytes * (1 - margin) - reserve)


def plan_training(model_config: GPTConfig | TransformerConfig, device: DeviceInfo, global_batch: int,
                  seq_len: int, *, precision: str = "auto", optimizer: str = "adamw",
                  src_len: int | None = None, steps: int | None = None, margin: float = 0.15,
                  reserve_gib: float = 0.75, assumed_mfu: float = 0.35,
                  keep_logits: bool | None = None) -> Plan:
    """Precision from the device (``resolve_precision``), then the largest micro-batch that
    divides ``global_batch`` and whose estimated peak fits the budget. A batch that does not
    fit even one sequence at a time is an error that says what would."""
    if not isinstance(device, DeviceInfo):
        raise ValueError(f"device must be a DeviceInfo (device_info() or GPUS[name]), got {type(device).__name__}; "
                         f"known GPUs: {sorted(GPUS)}.")
    checks.count("global_batch", global_batch)
    checks.count("seq_len", seq_len)
    checks.count("steps", steps, optional=True)
    checks.number("margin", margin, 0.0, 0.9)
    checks.number("reserve_gib", reserve_gib, 0.0)
    checks.number("assumed_mfu", assumed_mfu, 0.0, 1.0, above=True)
    name, reason = resolve_precision(precision, device.type, device.capability, device.name)
    budget = memory_budget(device, margin, reserve_gib)

    def estimate(b: int) -> MemoryEstimate:
        return estimate_memory(model_config, b, seq_len, name, optimizer, src_len=src_len, keep_logits=keep_logits)

    chosen = None
    for micro in (b for b in range(global_batch, 0, -1) if global_batch % b == 0):
        est = estimate(micro)
        if est.total <= budget:
            chosen = (micro, est)
            break
    if chosen is None:
        need = estimate(1).total / GiB
        raise ValueError(
            f"one sequence of {seq_len} tokens needs ~{need:.1f} GiB in {name}, more than the "
            f"{budget / GiB:.1f} GiB budget of {device.describe()}; use a shorter context, a smaller "
            "model, or shard it over several GPUs (--fsdp)."
        )
    micro, est = chosen
    peak = device.peak_tflops.get(name)
    seconds = None
    if peak:
        seconds = training_flops(model_config, global_batch, seq_len, src_len) / (peak * 1e12 * assumed_mfu)
    return Plan(device, name, micro, global_batch // micro, seq_len, est, budget, seconds, reason,
                steps, assumed_mfu)


# ---- the course's two full-scale workloads on the GPUs learners meet -------------------------

def workloads() -> dict[str, tuple]:
    """``name -> (model config, plan keyword arguments)`` for the two full-scale runs:
    notebook 08's ``gpt2-124m`` (GPT-2's vocabulary padded to 50,304 on CUDA, 32 x 1024 tokens
    per step) and notebook 07's base Transformer on Multi30k (8,000 BPE tokens per side, batches
    of 128 sentence pairs of up to 40 tokens)."""
    return {
        "gpt2-124m": (GPTConfig.preset("gpt2-124m", vocab_size=50304), dict(global_batch=32, seq_len=1024)),
        "Transformer base": (TransformerConfig(src_vocab_size=8000, tgt_vocab_size=8000, max_len=128),
                             dict(global_batch=128, seq_len=40, src_len=40)),
    }


def memory_breakdown(gpus=("T4", "L4", "A100-40GB", "H100"), loads: dict | None = None):
    """The planned peak memory, by component, of each workload on each GPU of ``GPUS``: a
    DataFrame (GiB) for ``course_lib.training.memory.plot_memory``."""
    from course_lib.training.memory import memory_table

    if isinstance(gpus, str) or not isinstance(gpus, (list, tuple)) or not gpus:
        raise ValueError(f"gpus={gpus!r} must be a non-empty tuple of names from {sorted(GPUS)}.")
    unknown = [g for g in gpus if g not in GPUS]
    if unknown:
        raise ValueError(f"unknown GPU name(s) {unknown}; the plan knows {sorted(GPUS)} "
                         "(add one to course_lib.training.plan.GPUS with its memory and peak FLOP/s).")
    rows = []
    for name, (config, kwargs) in (loads or workloads()).items():
        for gpu in gpus:
            dev = GPUS[gpu]
            plan = plan_training(config, dev, **kwargs)
            rows.append({"model": name, "device": gpu, "estimate": plan.est_memory,
                         "micro_batch": plan.micro_batch, "grad_accum": plan.grad_accum,
                         "device memory": round(dev.memory_gib, 1)})
    return memory_table(rows)


def plan_run(cfg, model_config, seq_len: int, src_len: int | None = None, accum_given: bool = False):
    """What a training command does with the plan: for this rank's share of ``cfg.batch_size``
    on the device found, the micro-batch that fits (``cfg.grad_accum`` follows it unless the
    user gave ``--grad-accum``). Returns ``(cfg, plan)``; print ``plan.line()``."""
    from dataclasses import replace

    from course_lib import scaleout as D

    per_rank = max(cfg.batch_size // D.current().world_size, 1)
    plan = plan_training(model_config, device_info(cfg.device), per_rank, seq_len, precision=cfg.precision,
                         src_len=src_len, steps=cfg.steps)
    if not accum_given:
        cfg = replace(cfg, grad_accum=plan.grad_accum)
    return cfg, plan
