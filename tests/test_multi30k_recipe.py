"""The Multi30k CPU recipe's pieces: checkpoint averaging, the training clock and an early
stop, the shipped recipe file and its preset, and the command on the real data (skipped
without ../shared/data)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from course_lib.checkpoint import read_metadata
from course_lib.data import grammar
from course_lib.models import load_trained
from course_lib.training.translation import (
    PRESETS,
    TranslationTrainConfig,
    average_weights,
    build_tokenizer,
    load_config,
    train,
)
from course_lib.transformer import Transformer, TransformerConfig

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "resources" / "recipes" / "multi30k_cpu.json"
pytestmark = pytest.mark.usefixtures("one_thread")


def _setup():
    pairs = grammar.generate_pairs(120, seed=0)
    tok = build_tokenizer(pairs)
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(src_vocab_size=tok.vocab_size, tgt_vocab_size=tok.vocab_size, d_model=16,
                                          n_heads=2, n_layers=1, d_ff=32, dropout=0.0, max_len=40))
    return pairs, tok, model


def test_average_last_is_the_mean_of_the_last_evaluation_checkpoints(tmp_path):
    pairs, tok, model = _setup()
    seen = {}

    def on_step(state, m):  # called before the evaluation (and the averaging) of a step
        seen[state["step"]] = {k: v.clone() for k, v in m.state_dict().items()}

    cfg = TranslationTrainConfig(steps=8, batch_size=16, warmup=2, eval_every=2, average_last=3, progress=False,
                                 out=str(tmp_path))
    state = train(model, tok, pairs, pairs[:8], cfg, on_step=on_step)
    assert state["averaged_steps"] == [4, 6, 8]
    for name, value in model.state_dict().items():
        want = (seen[4][name] + seen[6][name] + seen[8][name]) / 3  # by hand, not average_weights
        torch.testing.assert_close(value, want, rtol=1e-6, atol=1e-7, msg=name)
    assert not torch.equal(model.state_dict()["out_proj.weight"], seen[8]["out_proj.weight"])
    # the checkpoint holds the averaged model, and its loss is the one evaluated last
    saved = load_trained(tmp_path).model.state_dict()
    torch.testing.assert_close(saved["out_proj.weight"], model.state_dict()["out_proj.weight"], rtol=0, atol=0)
    # an interrupted run (until_step) does not average: it is not the end
    pairs, tok, model = _setup()
    state = train(model, tok, pairs, [], cfg.__class__(**{**cfg.__dict__, "out": None}), until_step=6)
    assert "averaged_steps" not in state


def test_average_weights_keeps_dtypes_and_shared_names():
    a = {"w": torch.ones(2), "n": torch.tensor([1, 3])}
    b = {"w": torch.zeros(2), "n": torch.tensor([3, 5])}
    out = average_weights([a, b])
    assert out["w"].tolist() == [0.5, 0.5] and out["n"].tolist() == [2, 4] and out["n"].dtype == torch.long


def test_time_budget_and_early_stop_end_the_run_with_an_evaluation(tmp_path):
    pairs, tok, model = _setup()
    cfg = TranslationTrainConfig(steps=1000, batch_size=16, warmup=2, eval_every=500, max_minutes=1e-6,
                                 progress=False, out=str(tmp_path))
    state = train(model, tok, pairs, pairs[:8], cfg)
    assert state["step"] == 1 and state["evals"][-1]["step"] == 1 and state["train_seconds"] > 0
    assert read_metadata(tmp_path / "checkpoint.safetensors")["train_state"]["step"] == 1
    pairs, tok, model = _setup()
    cfg = TranslationTrainConfig(steps=1000, batch_size=16, warmup=2, eval_every=500, progress=False)
    state = train(model, tok, pairs, pairs[:8], cfg, on_step=lambda st, m: st["step"] == 3)
    assert state["step"] == 3 and [e["step"] for e in state["evals"]] == [3]
    with pytest.raises(ValueError, match="max_minutes"):
        TranslationTrainConfig(max_minutes=0)
    with pytest.raises(ValueError, match="eval_beam"):
        TranslationTrainConfig(eval_beam=0)


def test_the_shipped_recipe_is_valid():
    raw = json.loads(RECIPE.read_text())
    assert raw["preset"] in PRESETS
    train_kw, model_kw = load_config(RECIPE)
    cfg = TranslationTrainConfig.from_dict(train_kw)
    assert cfg.tokenizer == "bpe" and cfg.eval_beam == 4 and cfg.average_last > 1 and cfg.max_minutes
    assert cfg.n_train >= 29000  # all of Multi30k's training pairs
    mcfg = TransformerConfig.from_dict({**PRESETS[raw["preset"]], **model_kw, "src_vocab_size": 8000,
                                        "tgt_vocab_size": 8000})
    assert mcfg.share_embeddings and mcfg.tie_embeddings  # the paper's 3.4, one joint vocabulary


def _env():
    return {**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def test_the_recipe_command_on_multi30k(shared_data, tmp_path):
    """The recipe file as a user runs it, cut down to seconds: its preset, the real data, a
    joint BPE, averaging, a beam-search evaluation; the run folder loads with sharing on."""
    data = shared_data / "multi30k" / "train"
    cmd = [sys.executable, "-m", "course_lib", "train", "translate", "--config", str(RECIPE), "--data", str(data),
           "--n-train", "256", "--n-valid", "6", "--bpe-vocab-size", "400", "--steps", "4", "--eval-every", "2",
           "--batch-size", "32", "--eval-beam", "2", "--out", str(tmp_path / "run")]
    res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "averaged the weights of steps [2, 4]" in res.stdout
    assert "beam 2 (length penalty 0.6) on 6 validation pairs" in res.stdout
    trained = load_trained(tmp_path / "run")
    assert trained.model.config.d_model == PRESETS["multi30k-cpu"]["d_model"]
    assert trained.model.src_embed.weight is trained.model.out_proj.weight
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**json.loads(RECIPE.read_text()), "preset": "huge"}))
    res = subprocess.run([sys.executable, "-m", "course_lib", "train", "translate", "--config", str(bad)],
                         env=_env(), capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "preset 'huge'" in res.stderr


def test_linear_schedule_warms_up_then_falls_to_zero_at_the_end():
    pairs, tok, model = _setup()
    cfg = TranslationTrainConfig(steps=10, batch_size=16, warmup=2, lr=1e-3, schedule="linear", eval_every=1,
                                 progress=False)
    state = train(model, tok, pairs, pairs[:4], cfg)
    got = [e["lr"] for e in state["evals"]]
    want = [1e-3 * min(1, s / 2) * (1 - (s - 1) / 10) for s in range(1, 11)]
    assert got == pytest.approx(want, rel=1e-12)
    assert got[1] == max(got) and got[-1] == pytest.approx(1e-4)
    # with a time budget the clock can end the schedule first: at 1e-6 minutes the first
    # step already spent it, so the lr of the second step (were there one) would be 0
    pairs, tok, model = _setup()
    cfg = TranslationTrainConfig(**{**cfg.__dict__, "max_minutes": 1e-6})
    assert train(model, tok, pairs, pairs[:4], cfg)["step"] == 1
