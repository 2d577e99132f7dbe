"""The memory estimator: parameter, gradient and optimizer-state bytes exactly against real
tensors after a real step; the analytic count of the peak against PyTorch's fake-tensor
measurement (the real model code under FakeTensorMode + MemTracker), for both models and
all three precisions; every component needed (dropping one breaks the agreement)."""

import dataclasses

import matplotlib
import pytest
import torch
import torch.nn.functional as F

from course_lib.gpt import GPT, GPTConfig
from course_lib.training.memory import (
    COMPONENTS,
    count_parameters,
    estimate_memory,
    measure_memory,
    memory_table,
    plot_memory,
)
from course_lib.transformer import Transformer, TransformerConfig

matplotlib.use("Agg")


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


CONFIGS = {
    "gpt": GPTConfig(vocab_size=512, block_size=64, n_layers=2, n_heads=4, d_model=64),
    "gpt-no-bias": GPTConfig(vocab_size=300, block_size=32, n_layers=2, n_heads=2, d_model=32, bias=False),
    "gpt-small-vocab": GPTConfig(vocab_size=16, block_size=128, n_layers=3, n_heads=4, d_model=64),
    "transformer": TransformerConfig(src_vocab_size=300, tgt_vocab_size=280, d_model=64, n_heads=4, n_layers=2,
                                     d_ff=128, dropout=0.0, max_len=64, tie_embeddings=False),
    "transformer-pre-gelu": TransformerConfig(src_vocab_size=30, tgt_vocab_size=30, d_model=64, n_heads=4,
                                              n_layers=2, n_decoder_layers=3, d_ff=256, dropout=0.0, max_len=64,
                                              norm_first=True, activation="gelu"),
    "transformer-base-like": TransformerConfig(src_vocab_size=200, tgt_vocab_size=200, d_model=32, n_heads=4,
                                               n_layers=2, d_ff=128, dropout=0.1, max_len=64),
}


def _model(cfg):
    return GPT(cfg) if isinstance(cfg, GPTConfig) else Transformer(cfg)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_parameter_count_from_the_config_equals_the_model(name):
    cfg = CONFIGS[name]
    model = _model(cfg)
    params = list(model.parameters())  # unique: a tied matrix once
    pc = count_parameters(cfg)
    assert pc.n_params == sum(p.numel() for p in params)
    assert pc.n_tensors == len(params)
    assert pc.buffer_bytes == sum(b.numel() * b.element_size() for b in model.buffers())
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert pc.matmul_weights == linear  # every Linear's weight, the tied head included


def test_gpt2_parameters():
    assert count_parameters(GPTConfig.preset("gpt2-124m")).n_params == 124_439_808


def _real_step(model, optimizer: str, cfg):
    opt = {"adamw": lambda p: torch.optim.AdamW(p, lr=1e-3), "adam": lambda p: torch.optim.Adam(p, lr=1e-3),
           "sgd": lambda p: torch.optim.SGD(p, lr=1e-3, momentum=0.9)}[optimizer](model.parameters())
    if isinstance(cfg, GPTConfig):
        x = torch.randint(0, cfg.vocab_size, (2, 9))
        loss = model(x[:, :-1], x[:, 1:])[1]
    else:
        src, tgt = torch.randint(1, cfg.src_vocab_size, (2, 7)), torch.randint(1, cfg.tgt_vocab_size, (2, 9))
        loss = F.cross_entropy(model(src, tgt[:, :-1]).flatten(0, 1), tgt[:, 1:].flatten())
    loss.backward()
    opt.step()
    return opt


def _nbytes(tensors):
    return sum(t.numel() * t.element_size() for t in tensors)


@pytest.mark.parametrize("optimizer", ["adamw", "adam", "sgd"])
@pytest.mark.parametrize("name", ["gpt", "gpt-no-bias", "transformer", "transformer-base-like"])
def test_weights_gradients_and_optimizer_state_are_exact(name, optimizer):
    cfg = CONFIGS[name]
    torch.manual_seed(0)
    model = _model(cfg)
    opt = _real_step(model, optimizer, cfg)
    est = estimate_memory(cfg, 2, 8, "fp32", optimizer)
    assert est.weights == _nbytes(model.parameters()) + _nbytes(model.buffers())
    assert est.gradients == _nbytes(p.grad for p in model.parameters())
    state = [v for s in opt.state.values() for v in s.values() if torch.is_tensor(v)]  # moments and step counters
    assert est.optimizer == _nbytes(state)


# (config, batch, seq_len, keyword arguments, precisions compared)
CASES = {
    "gpt": ("gpt", 4, 64, {}, ("fp32", "bf16", "fp16")),
    "gpt-no-bias": ("gpt-no-bias", 3, 32, {}, ("bf16",)),
    "gpt-small-vocab": ("gpt-small-vocab", 4, 128, {}, ("fp32",)),  # the peak moves into the last layer
    "gpt-logits-dropped": ("gpt", 4, 48, {"keep_logits": False}, ("bf16",)),
    "transformer": ("transformer", 4, 24, {"src_len": 20, "label_smoothing": 0.1}, ("fp32", "bf16", "fp16")),
    "transformer-pre-gelu": ("transformer-pre-gelu", 4, 40, {"src_len": 30}, ("bf16",)),
}
TOLERANCE = 0.03


@pytest.fixture(scope="module")
def measured():
    cache = {}

    def get(case, precision):
        if (case, precision) not in cache:
            name, b, t, kw, _ = CASES[case]
            cache[case, precision] = measure_memory(CONFIGS[name], b, t, precision, **kw)
        return cache[case, precision]

    return get


def _estimate(case, precision):
    name, b, t, kw, _ = CASES[case]
    return estimate_memory(CONFIGS[name], b, t, precision, **kw)


def check_agrees(est, meas) -> None:
    assert est.weights == meas["parameters"] + meas["buffers"]
    assert est.gradients == meas["gradients"]
    assert est.optimizer == meas["optimizer"]
    rel = est.total / meas["total"] - 1
    assert abs(rel) <= TOLERANCE, f"analytic peak {est.total:,} vs measured {meas['total']:,} ({100 * rel:+.1f}%)"


@pytest.mark.parametrize("case,precision", [(c, p) for c, v in CASES.items() for p in v[-1]])
def test_analytic_count_agrees_with_the_fake_tensor_measurement(case, precision, measured):
    check_agrees(_estimate(case, precision), measured(case, precision))


@pytest.mark.parametrize("case,precision,component", [
    ("gpt", "bf16", "weight_copies"), ("gpt", "bf16", "activations"), ("gpt", "fp32", "logits"),
    ("transformer", "bf16", "activations"), ("transformer", "fp32", "logits"),
])
def test_every_component_is_needed(case, precision, component, measured):
    """A count that forgot a component would fail the comparison above."""
    broken = dataclasses.replace(_estimate(case, precision), **{component: 0})
    with pytest.raises(AssertionError, match="analytic peak"):
        check_agrees(broken, measured(case, precision))


def test_the_fake_measurement_sees_what_the_model_does(measured):
    """Independent of the count: bf16 saves less than float32, a bigger batch more."""
    assert measured("gpt", "bf16")["total"] < measured("gpt", "fp32")["total"]
    name, b, t, kw, _ = CASES["gpt"]
    bigger = measure_memory(CONFIGS[name], 2 * b, t, "bf16", **kw)
    assert bigger["total"] > measured("gpt", "bf16")["total"]
    assert bigger["parameters"] == measured("gpt", "bf16")["parameters"]


@pytest.mark.parametrize("case", ["gpt", "transformer"])
def test_the_measurement_models_the_gpu_kernels_on_a_multithreaded_cpu(case, measured, monkeypatch):
    """On a CPU with several threads the model writes short attention out (keeping the T x T
    weights, which no GPU kernel keeps); the measurement must not count that path: the same
    bytes as on one thread, still within the count's tolerance."""
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    name, b, t, kw, precisions = CASES[case]
    meas = measure_memory(CONFIGS[name], b, t, precisions[0], **kw)
    assert meas == measured(case, precisions[0])
    check_agrees(_estimate(case, precisions[0]), meas)


def test_peak_counter_agrees_with_pytorchs_memtracker():
    """PeakBytes against PyTorch's own tracker (torch.distributed._tools.mem_tracker) on the
    same fake step: a second, independent implementation of the counting."""
    mem_tracker = pytest.importorskip("torch.distributed._tools.mem_tracker")
    from unittest import mock

    from torch._subclasses.fake_tensor import FakeTensorMode

    import course_lib.embeddings as E
    from course_lib.training.memory import PeakBytes

    cfg = CONFIGS["gpt-no-bias"]
    peaks = {}
    for which in ("ours", "pytorch"):
        with mock.patch.object(E, "_check_ids", lambda ids, v: None), FakeTensorMode():
            model = GPT(cfg)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=False)
            for p in model.parameters():
                p.grad = torch.zeros_like(p)
            opt.step()
            opt.zero_grad(set_to_none=True)
            x = torch.randint(0, cfg.vocab_size, (3, 33))
            if which == "ours":
                tracker = PeakBytes()
                tracker.track([list(model.parameters()), [v for s in opt.state.values() for v in s.values()]])
            else:
                tracker = mem_tracker.MemTracker()
                tracker.track_external(model, opt)
            with tracker:
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    logits, loss = model(x[:, :-1], x[:, 1:])
                loss.backward()
                opt.step()
            peaks[which] = tracker.peak if which == "ours" else tracker.get_tracker_snapshot("peak")[
                torch.device("cpu")]["Total"]
    assert peaks["ours"] == peaks["pytorch"]


def test_bad_arguments_are_clear():
    cfg = CONFIGS["gpt"]
    with pytest.raises(ValueError, match="resolve 'auto' first"):
        estimate_memory(cfg, 2, 8, "auto")
    with pytest.raises(ValueError, match="unknown optimizer 'lion'"):
        estimate_memory(cfg, 2, 8, "fp32", "lion")
    with pytest.raises(ValueError, match="longer than the model's context of 64"):
        estimate_memory(cfg, 2, 65)
    with pytest.raises(TypeError, match="GPTConfig or TransformerConfig"):
        count_parameters({"d_model": 8})


def test_table_and_stacked_bars():
    est = estimate_memory(GPTConfig.preset("gpt2-124m"), 8, 1024, "bf16")
    table = memory_table([{"model": "gpt2-124m", "device": "T4", "estimate": est, "micro_batch": 8,
                           "device memory": 15.0}])
    assert list(table.columns)[-7:] == [*COMPONENTS, "total"]
    assert table.loc[0, "total"] == pytest.approx(est.total / 2**30, abs=0.01)
    fig = plot_memory(table)
    ax = fig.axes[0]
    assert len(ax.patches) == len(COMPONENTS)  # one bar per component, stacked
    top = max(p.get_y() + p.get_height() for p in ax.patches)
    assert top == pytest.approx(sum(table.loc[0, c] for c in COMPONENTS))
    matplotlib.pyplot.close(fig)


def test_the_gpu_measurement_runs_its_code_path_on_the_cpu():
    """measure_cuda_memory is what gpu_check runs on the GPU; here its step (fp16 + scaler,
    accumulation, the compile switch) runs on the CPU so that a crash in it shows up in CI."""
    for cfg, kw in ((CONFIGS["gpt-no-bias"], {}), (CONFIGS["transformer-base-like"], {"src_len": 8})):
        out = _measure_cuda(cfg, kw)
        assert out["total"] is None and out["tokens_per_s"] > 0


def _measure_cuda(cfg, kw):
    from course_lib.training.memory import measure_cuda_memory

    return measure_cuda_memory(cfg, 2, 8, "fp16", device="cpu", compile=False, **kw)
