"""Runs written before a model setting existed (their config lacks the key) load and resume
as the model they trained: the key takes the value it had then (``ModelKind.old_defaults``),
not today's default."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from course_lib.checkpoint import read_metadata
from course_lib.models import load_trained
from course_lib.training import gpt as train_gpt
from course_lib.training import translation as train_translate

GPT_RUN = ["--preset", "tiny", "--data", "stdlib", "--max-chars", "20000", "--batch-size", "2", "--eval-every", "2",
           "--eval-batches", "1", "--device", "cpu", "--steps", "4"]
TRANSLATION_RUN = ["--n-train", "200", "--n-valid", "10", "--batch-size", "8", "--d-model", "16", "--n-heads", "2",
                   "--n-layers", "1", "--d-ff", "16", "--warmup", "2", "--eval-every", "2", "--device", "cpu",
                   "--steps", "4"]
# (command, its arguments, the key old runs lack, how the old run is trained, the value it had, today's default)
KINDS = {
    "gpt": (train_gpt.command, GPT_RUN, "activation", ["--activation", "gelu_tanh"], "gelu_tanh", "gelu"),
    "transformer": (train_translate.command, TRANSLATION_RUN, "share_embeddings", ["--no-share-embeddings"], False,
                    True),
}


def as_written_before(checkpoint, key):
    """Rewrite a checkpoint's model config as course_lib wrote it before ``key`` existed."""
    with safe_open(str(checkpoint), framework="pt") as f:
        meta = f.metadata()
    config = json.loads(meta["config"])
    del config[key]
    save_file(load_file(str(checkpoint)), str(checkpoint), metadata={**meta, "config": json.dumps(config)})


@pytest.mark.parametrize("kind", list(KINDS))
def test_an_old_run_loads_and_resumes_as_it_was_trained(tmp_path, kind, capsys):
    command, args, key, old_flags, old_value, default = KINDS[kind]
    out = ["--out", str(tmp_path)]
    assert command([*args, *out, *old_flags, "--until-step", "2"]) == 0
    checkpoint = tmp_path / "checkpoint.safetensors"
    as_written_before(checkpoint, key)
    trained = load_trained(tmp_path, kind=kind)
    assert getattr(trained.model.config, key) == old_value
    # today's default builds another model: loading the old run with it would change its outputs
    today = type(trained.model)(type(trained.model.config).from_dict({**trained.config, key: default}))
    assert getattr(today.config, key) == default
    if kind == "gpt":
        today.load_state_dict(trained.model.state_dict())
        x = torch.randint(0, trained.model.config.vocab_size, (1, 12))
        assert not torch.allclose(today.eval()(x)[0], trained.model(x)[0])
    assert command([*args, *out, "--resume"]) == 0  # no flag given: the run's own value
    assert "resumed" in "".join(capsys.readouterr())
    meta = read_metadata(checkpoint)
    assert meta["train_state"]["step"] == 4 and meta["config"][key] == old_value
