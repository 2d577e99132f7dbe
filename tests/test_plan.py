"""Device-aware full scale: the choice for each GPU from its published memory and compute
capability, the device read from (mocked) CUDA, and the full-scale path (fp16 + scaler,
micro-batches with accumulation, as planned) run end to end on the CPU at tiny size."""

import types

import pytest
import torch

from course_lib.gpt import GPT, GPTConfig
from course_lib.training.loop import fit
from course_lib.training.memory import estimate_memory
from course_lib.training.plan import (
    GPUS,
    DeviceInfo,
    device_info,
    known_gpu,
    memory_budget,
    plan_training,
    training_flops,
)
from course_lib.training.precision import Precision, choose_precision
from course_lib.training.translation import batch_loss
from course_lib.transformer import Transformer, TransformerConfig

GPT2 = GPTConfig.preset("gpt2-124m", vocab_size=50304)  # the trainer pads GPT-2's vocabulary on CUDA
BASE = TransformerConfig(src_vocab_size=8000, tgt_vocab_size=8000, max_len=128)  # the paper's base model


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


# (GPU, precision, micro-batch) for gpt2-124m, 32 sequences x 1024 tokens per optimizer step
GPT2_CHOICES = [("T4", "fp16", 8), ("L4", "bf16", 16), ("A100-40GB", "bf16", 16),
                ("A100-80GB", "bf16", 32), ("H100", "bf16", 32), ("H200", "bf16", 32)]


@pytest.mark.parametrize("gpu,precision,micro", GPT2_CHOICES)
def test_gpt2_plan_for_each_gpu(gpu, precision, micro):
    dev = GPUS[gpu]
    plan = plan_training(GPT2, dev, global_batch=32, seq_len=1024, steps=600)
    assert (plan.precision, plan.micro_batch, plan.grad_accum) == (precision, micro, 32 // micro)
    # the defining property: it fits, and the next larger micro-batch that divides 32 would not
    budget = memory_budget(dev)
    assert plan.est_memory.total <= budget
    if micro < 32:
        assert estimate_memory(GPT2, 2 * micro, 1024, precision).total > budget
    line = plan.line()
    assert dev.name in line and f"micro-batch {micro} x {32 // micro}" in line and "600 steps" in line
    assert ("gradient scaler" in line) == (precision == "fp16")


@pytest.mark.parametrize("gpu", ["T4", "L4", "A100-40GB", "H100"])
def test_base_transformer_fits_whole_batches_everywhere(gpu):
    plan = plan_training(BASE, GPUS[gpu], global_batch=128, seq_len=40, src_len=40)
    assert (plan.micro_batch, plan.grad_accum) == (128, 1)
    assert plan.precision == ("fp16" if gpu == "T4" else "bf16")


def test_published_figures_in_the_table():
    gib = {k: round(v.memory_gib) for k, v in GPUS.items()}
    assert gib == {"T4": 15, "L4": 22, "A10": 22, "A100-40GB": 40, "A100-80GB": 80, "H100": 80, "H100-PCIe": 80,
                   "H200": 140}
    assert {k: v.capability for k, v in GPUS.items()} == {
        "T4": (7, 5), "L4": (8, 9), "A10": (8, 6), "A100-40GB": (8, 0), "A100-80GB": (8, 0), "H100": (9, 0),
        "H100-PCIe": (9, 0), "H200": (9, 0)}
    assert GPUS["T4"].peak_tflops["bf16"] is None and GPUS["H100"].peak_tflops["bf16"] == 989.0
    assert GPUS["H100-PCIe"].peak_tflops["bf16"] == 756.0


# CUDA's device names -> the table's entry (None: not in the table, no peak, no MFU)
CUDA_DEVICES = {
    "Tesla T4": "T4", "NVIDIA L4": "L4", "NVIDIA L40S": None, "NVIDIA L40": None, "NVIDIA A10": "A10",
    "NVIDIA A10G": None, "NVIDIA A100-SXM4-40GB": "A100-40GB", "NVIDIA A100-PCIE-40GB": "A100-40GB",
    "NVIDIA A100-SXM4-80GB": "A100-80GB", "NVIDIA A100 80GB PCIe": "A100-80GB", "NVIDIA H100 80GB HBM3": "H100",
    "NVIDIA H100 PCIe": "H100-PCIe", "NVIDIA H100 NVL": None, "NVIDIA H200": "H200", "NVIDIA H200 NVL": None,
}


def test_known_gpu_matches_whole_names():
    for name, key in CUDA_DEVICES.items():
        assert known_gpu(name) is (GPUS[key] if key else None), name
    assert known_gpu("nvidia  l4") is GPUS["L4"]  # case and spacing aside


@pytest.mark.parametrize("name", sorted(CUDA_DEVICES))
def test_the_trainers_mfu_reads_the_same_table(name, monkeypatch):
    """train gpt's MFU divides by the planner's bf16 peak for the same name, or gives None."""
    from course_lib.training.gpt import estimate_mfu

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    key = CUDA_DEVICES[name]
    peak = GPUS[key].peak_tflops["bf16"] if key else None
    mfu = estimate_mfu(6e8, 1e5, torch.device("cuda"))
    assert mfu == (None if peak is None else 6e8 * 1e5 / (peak * 1e12))
    assert estimate_mfu(6e8, 1e5, torch.device("cpu")) is None


def test_too_big_is_a_clear_error():
    with pytest.raises(ValueError, match="one sequence of 1024 tokens needs .* GiB.*shorter context"):
        plan_training(GPTConfig.preset("gpt2-medium"), GPUS["T4"], 8, 1024, margin=0.9)
    with pytest.raises(ValueError, match="bf16 needs compute capability"):
        plan_training(GPT2, GPUS["T4"], 8, 1024, precision="bf16")


def test_flops_match_the_models_own_count():
    model_flops = GPT(GPTConfig(vocab_size=100, block_size=64, n_layers=2, n_heads=4, d_model=32)).flops_per_token(64)
    assert training_flops(GPTConfig(vocab_size=100, block_size=64, n_layers=2, n_heads=4, d_model=32), 3, 64) \
        == 3 * 64 * model_flops
    # Transformer: 6 per parameter per token, by brute force over the real model's parameters
    cfg = TransformerConfig(src_vocab_size=50, tgt_vocab_size=60, d_model=16, n_heads=2, n_layers=2, d_ff=32,
                            max_len=32, tie_embeddings=False)
    m = Transformer(cfg)
    S, T, B = 10, 12, 3
    enc = sum(p.numel() for n, p in m.named_parameters() if n.startswith("encoder_layers") and p.dim() == 2)
    dec = sum(p.numel() for n, p in m.named_parameters() if n.startswith("decoder_layers") and p.dim() == 2)
    out = m.out_proj.weight.numel()
    attn = 12 * 2 * 16 * S * B * S + 12 * 2 * 16 * (T + S) * B * T
    assert training_flops(cfg, B, T, src_len=S) == 6 * (enc * B * S + (dec + out) * B * T) + attn


def _mock_cuda(monkeypatch, name, total_memory, cap):
    props = types.SimpleNamespace(name=name, total_memory=total_memory)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d=None: props)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: cap)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: name)


@pytest.mark.filterwarnings("ignore:.*GradScaler is enabled, but CUDA is not available")
def test_device_info_reads_cuda(monkeypatch):
    _mock_cuda(monkeypatch, "Tesla T4", 15_828_320_256, (7, 5))
    info = device_info("cuda")
    assert (info.name, info.type, info.capability) == ("Tesla T4", "cuda", (7, 5))
    assert info.peak_tflops["fp16"] == 65.0
    plan = plan_training(GPT2, info, 32, 1024)
    assert (plan.precision, plan.micro_batch) == ("fp16", 8)
    assert choose_precision("auto", "cuda").name == "fp16"


def test_choose_precision_on_an_ampere_gpu_switches_tf32_on(monkeypatch):
    _mock_cuda(monkeypatch, "NVIDIA A100-SXM4-40GB", 42_505_273_344, (8, 0))
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        p = choose_precision("auto", "cuda")
        assert (p.name, p.tf32, p.uses_scaler) == ("bf16", True, False)
        assert torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def test_device_info_on_the_cpu():
    info = device_info("cpu")
    assert info.type == "cpu" and info.capability is None and info.memory_bytes > 2**30
    plan = plan_training(GPTConfig(vocab_size=65, block_size=64, n_layers=2, n_heads=2, d_model=32), info, 16, 64)
    assert (plan.precision, plan.micro_batch, plan.est_seconds_per_step) == ("fp32", 16, None)
    assert "no time estimate" in plan.line()


# ---- the full-scale path, end to end on the CPU, tiny -------------------------------------------

def _tiny_gpu(config, global_batch, seq_len, fits: int, **kw) -> DeviceInfo:
    """A T4-like device whose memory fits micro-batch ``fits`` but not twice that."""
    need = estimate_memory(config, fits, seq_len, "fp16", **kw).total
    too_much = estimate_memory(config, 2 * fits, seq_len, "fp16", **kw).total
    memory = int((need + too_much) / 2 / 0.85)
    return DeviceInfo("tiny T4", "cuda", memory, (7, 5), {"bf16": None, "fp16": 65.0, "fp32": 8.1})


def _run_planned(model, plan, batch, loss_fn, steps: int) -> list[float]:
    """The trainers' step (``training.loop.fit``) as planned: precision from the plan (fp16 +
    scaler), ``plan.grad_accum`` micro-batches of ``plan.micro_batch``, clipping."""
    assert len(batch[0]) == plan.grad_accum * plan.micro_batch
    prec = Precision(plan.precision, "cpu")
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    state = fit(model, opt, lambda step: batch, loss_fn, steps=steps, grad_accum=plan.grad_accum, precision=prec,
                progress=False)
    assert prec.skipped_steps == 0
    return [loss for _, loss in state["train_losses"]]


def test_full_scale_gpt_path_on_the_cpu():
    cfg = GPTConfig(vocab_size=48, block_size=32, n_layers=2, n_heads=2, d_model=32)
    plan = plan_training(cfg, _tiny_gpu(cfg, 8, 32, fits=2), global_batch=8, seq_len=32, reserve_gib=0)
    assert (plan.precision, plan.micro_batch, plan.grad_accum) == ("fp16", 2, 4)
    torch.manual_seed(0)
    model = GPT(cfg)
    data = torch.randint(0, 48, (8, 33), generator=torch.Generator().manual_seed(0))  # one batch, learned

    losses = _run_planned(model, plan, (data[:, :-1], data[:, 1:]), lambda fn, b: fn(*b)[1], steps=6)
    assert all(map(torch.isfinite, torch.tensor(losses)))
    assert losses[-1] < losses[0] - 0.2


def test_full_scale_translation_path_on_the_cpu():
    cfg = TransformerConfig(src_vocab_size=40, tgt_vocab_size=40, d_model=32, n_heads=2, n_layers=2, d_ff=64,
                            dropout=0.1, max_len=32)
    plan = plan_training(cfg, _tiny_gpu(cfg, 8, 12, fits=4, src_len=10), global_batch=8, seq_len=12, src_len=10,
                         reserve_gib=0)
    assert (plan.precision, plan.micro_batch, plan.grad_accum) == ("fp16", 4, 2)
    torch.manual_seed(0)
    model = Transformer(cfg)
    g = torch.Generator().manual_seed(0)
    src, tgt = torch.randint(1, 40, (8, 10), generator=g), torch.randint(1, 40, (8, 13), generator=g)
    src[:, -2:] = cfg.pad_id  # padding, as a real batch has

    losses = _run_planned(model, plan, (src, tgt), lambda fn, b: batch_loss(fn, *b, label_smoothing=0.1), steps=6)
    assert all(map(torch.isfinite, torch.tensor(losses)))
    assert losses[-1] < losses[0] - 0.2
