"""Runs written before a model setting existed (their config lacks the key) load and resume
as the model they trained: the key takes the value it had then (``ModelKind.old_defaults``),
not today's default."""

import json
import re
import shutil

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



# ---- course_lib 0.1's layout, written here from a run of today's ------------------------------
# What 0.1 wrote differently: the GPT's file name (ckpt.safetensors); the parameter names; the
# order its layers created their parts (its optimizer state is indexed in that order); the
# training settings' names (and a GPT batch_size per micro-batch); the losses' shapes; no
# model config key added since (GPT: activation; Transformer: share_embeddings), no precision state.
OLD_GPT_NAMES = {"tok_embed": "tok_emb", "pos_embed": "pos_emb", "layers": "blocks", "final_norm": "ln_f",
                 "out_proj": "lm_head", "self_attn_norm": "ln_1", "ff_norm": "ln_2", "self_attn": "attn",
                 "ff.w_1": "mlp.c_fc", "ff.w_2": "mlp.c_proj"}
OLD_TRANSFORMER_NAMES = {"encoder_layers": {"self_attn_norm": "norm1", "ff_norm": "norm2"},
                         "decoder_layers": {"self_attn_norm": "norm1", "cross_attn_norm": "norm2", "ff_norm": "norm3"}}
# each 0.1 layer's parts, old names, in the order its __init__ created them
OLD_PART_ORDER = {"blocks": ["ln_1", "attn", "ln_2", "mlp"], "encoder_layers": ["self_attn", "ff", "norm1", "norm2"],
                  "decoder_layers": ["self_attn", "cross_attn", "ff", "norm1", "norm2", "norm3"]}


def old_name(name: str, model_type: str) -> str:
    """A parameter's name in 0.1 (today's name in, 0.1's out)."""
    parts = name.split(".")
    if model_type == "transformer":
        if parts[0] in OLD_TRANSFORMER_NAMES:  # encoder_layers.0.ff_norm.weight -> encoder_layers.0.norm2.weight
            parts[2] = OLD_TRANSFORMER_NAMES[parts[0]].get(parts[2], parts[2])
        return ".".join(parts).replace(".ff.w_1.", ".ff.linear1.").replace(".ff.w_2.", ".ff.linear2.")
    for new, old in OLD_GPT_NAMES.items():  # whole dotted parts: self_attn. is not self_attn_norm.
        name = re.sub(rf"(^|\.){re.escape(new)}\.", rf"\g<1>{old}.", name)
    return name


def old_creation_order(names: list[str]) -> list[str]:
    """Old parameter names, given in today's order, in the order 0.1's modules created them:
    the same layers in the same places, each layer's parts in ``OLD_PART_ORDER``."""
    layer_of = {n: tuple(n.split(".")[:2]) for n in names if n.split(".")[0] in OLD_PART_ORDER}
    out, done = [], set()
    for name in names:
        if name not in layer_of:
            out.append(name)
        elif layer_of[name] not in done:
            done.add(layer_of[name])
            members = [n for n in names if layer_of.get(n) == layer_of[name]]
            for part in OLD_PART_ORDER[layer_of[name][0]]:
                out += [n for n in members if n.split(".")[2] == part]
    assert sorted(out) == sorted(names)
    return out


def optimizer_groups(model) -> list[list[str]]:
    """The trainers' optimizer groups, by parameter name: GPT: matrices, then the rest (AdamW
    with weight decay on matrices); translation: one group (Adam)."""
    named = list(model.named_parameters())
    if model.config.model_type == "gpt":
        return [[n for n, p in named if p.dim() >= 2], [n for n, p in named if p.dim() < 2]]
    return [[n for n, _ in named]]


def write_as_0_1(run, model) -> None:
    """Rewrite today's run folder ``run`` (of ``model``'s config) as course_lib 0.1 wrote it."""
    path = run / "checkpoint.safetensors"
    with safe_open(str(path), framework="pt") as f:
        meta = {k: json.loads(v) for k, v in f.metadata().items()}
    tensors = load_file(str(path))
    kind = model.config.model_type
    groups = optimizer_groups(model)
    today = [n for g in groups for n in g]
    then = [n for g in groups for n in old_creation_order([old_name(x, kind) for x in g])]
    index = {today.index(n): then.index(old_name(n, kind)) for n in today}  # today's index -> 0.1's

    def reindexed(key):
        i, _, slot = key.partition(".")
        return f"{index[int(i)]}.{slot}"

    out = {}
    for key, value in tensors.items():
        prefix, _, rest = key.partition(".")
        out[key if prefix == "rng" else f"{prefix}.{old_name(rest, kind) if prefix == 'model' else reindexed(rest)}"] = value
    meta["optimizer"]["scalars"] = {reindexed(k): v for k, v in meta["optimizer"]["scalars"].items()}
    meta["config"] = {k: v for k, v in meta["config"].items() if k != KINDS[kind][2]}  # a key added since
    meta["train_state"] = old_train_state(meta["train_state"], meta["config"]["model_type"])
    path.unlink()
    name = "ckpt.safetensors" if kind == "gpt" else "checkpoint.safetensors"
    save_file(out, str(run / name), metadata={k: json.dumps(v) for k, v in meta.items()})


def old_train_state(state: dict, model_type: str) -> dict:
    cfg = dict(state["train_config"])
    if model_type == "gpt":  # 0.1: losses one per step; batch_size per micro-batch; bf16 for precision
        cfg.update(warmup_steps=cfg.pop("warmup"), out_dir=cfg.pop("out"), batch_size=cfg["batch_size"] // cfg["grad_accum"],
                   bf16=False if cfg.pop("precision") == "fp32" else None)
        for key in ("data", "max_chars", "tokenizer"):  # command-line arguments of 0.1, not saved
            cfg.pop(key)
        return {"step": state["step"], "train_losses": [v for _, v in state["train_losses"]],
                "evals": [{k: e[k] for k in ("step", "train", "val")} for e in state["evals"]], "train_config": cfg}
    cfg.update(train_data=cfg.pop("data"), max_steps=cfg.pop("steps"), learning_rate=cfg.pop("lr"),
               amp=cfg.pop("precision") != "fp32", log_every=1, checkpoint_every=0, out_dir=cfg.pop("out"))
    for key in ("eval_every", "grad_accum", "grad_clip", "schedule", "max_minutes", "average_last", "eval_beam",
                "eval_alpha", "compile", "progress"):
        cfg.pop(key)
    return {"step": state["step"], "epoch": state["epoch"], "batch": state["batch"], "losses": state["train_losses"],
            "val_losses": [[e["step"], e["val"]] for e in state["evals"]], "train_config": cfg}


OLD_RUNS = {"gpt": ["--dropout", "0.1", "--batch-size", "4", "--grad-accum", "2", "--precision", "fp32"],
            "transformer": ["--dropout", "0.1", "--precision", "fp32"]}
RESUME = {"gpt": ["--data", "stdlib", "--max-chars", "20000", "--tokenizer", "char"], "transformer": []}


def final_tensors(run) -> dict:
    return {k: v for k, v in load_file(str(run / "checkpoint.safetensors")).items() if not k.startswith("rng.")}


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_0_1_run_generates_and_resumes_as_the_same_run_in_todays_layout(tmp_path, kind):
    """The same run, stopped at step 2, once in today's layout and once rewritten as 0.1 wrote it:
    both load the same model, and both resume to the same weights and optimizer state, bit for
    bit (a mis-ordered optimizer state, a setting renamed wrongly or a batch read per micro-batch
    would change them)."""
    command, args, _, as_then = KINDS[kind][:4]  # as_then: the model 0.1 trained (its activation, ...)
    now, old = tmp_path / "now", tmp_path / "old"
    args = [*args, *as_then, *OLD_RUNS[kind], "--eval-every", "2", "--no-progress"]
    assert command([*args, "--out", str(now), "--until-step", "2"]) == 0
    shutil.copytree(now, old)
    trained = load_trained(now)
    write_as_0_1(old, trained.model)
    assert (old / "ckpt.safetensors").is_file() == (kind == "gpt")
    loaded = load_trained(old)  # what generate, translate and export-attention do
    for name, value in trained.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], value), name
    assert loaded.model.config == trained.model.config
    for run in (now, old):  # the run's own settings: what 0.1 saved, under its names
        assert command([*RESUME[kind], "--device", "cpu", "--no-progress", "--out", str(run), "--resume"]) == 0
    a, b = final_tensors(now), final_tensors(old)
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert read_metadata(old)["train_state"]["step"] == 4
    assert read_metadata(old)["train_state"]["train_losses"] == read_metadata(now)["train_state"]["train_losses"]
