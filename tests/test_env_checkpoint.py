import json
import random

import numpy as np
import pytest
import torch

from course_lib import env
from course_lib.checkpoint import (
    CheckpointConfigError,
    check_config,
    load_checkpoint,
    read_metadata,
    save_checkpoint,
)


def test_seed_everything_repeats_python_numpy_torch():
    env.seed_everything(3)
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    env.seed_everything(3)
    b = (random.random(), np.random.rand(), torch.rand(1).item())
    assert a == b


def test_device_override_and_scale(monkeypatch):
    monkeypatch.setenv("COURSE_DEVICE", "cpu")
    assert env.get_device().type == "cpu"
    monkeypatch.delenv("COURSE_SCALE", raising=False)
    assert env.get_scale("cpu") == "small"
    assert env.get_scale("cuda") == "full"
    monkeypatch.setenv("COURSE_SCALE", "full")
    assert env.pick(small=1, full=2) == 2
    monkeypatch.setenv("COURSE_SCALE", "huge")
    with pytest.raises(ValueError, match="COURSE_SCALE"):
        env.get_scale()


def test_device_override_refuses_missing_cuda(monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    monkeypatch.setenv("COURSE_DEVICE", "cuda")
    with pytest.raises(RuntimeError, match="no CUDA"):
        env.get_device()


def _model_and_optimizer():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(5, 4)).pow(2).mean().backward()
        opt.step()
    return model, opt


def test_checkpoint_round_trip_restores_model_optimizer_and_rng(tmp_path):
    model, opt = _model_and_optimizer()
    path = save_checkpoint(tmp_path / "ckpt.safetensors", model, {"d": 4}, opt, {"step": 3})
    expected_draw = torch.rand(3)  # what the RNG gives right after saving
    # the file holds no pickle: it is a safetensors file with JSON metadata
    assert read_metadata(path)["train_state"] == {"step": 3}
    assert json.loads((tmp_path / "config.json").read_text()) == {"d": 4}

    ckpt = load_checkpoint(path)
    model2, opt2 = _model_and_optimizer()
    for p in model2.parameters():
        torch.nn.init.zeros_(p)
    model2.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["optimizer"])
    for p, q in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(p, q)
    for s, t in zip(opt.state.values(), opt2.state.values(), strict=True):
        assert torch.equal(s["exp_avg"], t["exp_avg"]) and torch.equal(s["exp_avg_sq"], t["exp_avg_sq"])
        assert float(s["step"]) == float(t["step"])
    from course_lib.checkpoint import set_rng_state

    set_rng_state(ckpt["rng"])
    assert torch.equal(torch.rand(3), expected_draw)


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    model, _ = _model_and_optimizer()
    path = save_checkpoint(tmp_path / "c.safetensors", model, {"d": 4})
    before = path.read_bytes()

    import course_lib.checkpoint as ck

    def crash(*a, **k):
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(ck, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, model, {"d": 4})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_checkpoint_of_another_config_is_named():
    with pytest.raises(CheckpointConfigError, match="d_model: checkpoint has 64, model has 32"):
        check_config({"d_model": 32, "n_heads": 4}, {"d_model": 64, "n_heads": 4}, "x.safetensors")


def test_tied_weights_save(tmp_path):
    emb = torch.nn.Embedding(10, 4)
    head = torch.nn.Linear(4, 10, bias=False)
    head.weight = emb.weight
    state = {"emb.weight": emb.weight, "head.weight": head.weight}
    path = save_checkpoint(tmp_path / "t.safetensors", state, {})
    loaded = load_checkpoint(path)["model"]
    assert torch.equal(loaded["emb.weight"], loaded["head.weight"])


def test_a_run_folder_resolves_to_its_checkpoint(tmp_path):
    from course_lib.checkpoint import resolve_checkpoint

    model, _ = _model_and_optimizer()
    for name in ("checkpoint.safetensors", "ckpt.safetensors"):
        run = tmp_path / name.split(".")[0]
        save_checkpoint(run / name, model, {"d": 4}, train_state={"step": 7})
        assert resolve_checkpoint(run) == run / name
        assert read_metadata(run)["train_state"] == {"step": 7}
        assert torch.equal(load_checkpoint(run)["model"]["0.weight"], model[0].weight)
    with pytest.raises(FileNotFoundError, match="no checkpoint in the folder"):
        resolve_checkpoint(tmp_path)
