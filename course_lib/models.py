"""One way to load a trained model: a run folder (or its checkpoint file) gives back the
model, its tokenizer and its config, whichever kind it is.

``read_run`` reads a checkpoint of any layout the course has written (course_lib 0.1's
included) as today's, and ``load_weights`` puts its weights into a model after checking its
shared weights; ``load_trained`` (generate, translate, export-attention, the notebooks) and
``--resume`` (``course_lib.scaleout.checkpoint.load``) both go through them.

The kinds of model are a fixed registry, here in the library: a checkpoint's
``model_type`` selects one of them and nothing else. Nothing read from a checkpoint,
config or tokenizer file imports a module or names code to run; the files are data
(safetensors tensors, JSON).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from course_lib import gpt, transformer
from course_lib.checkpoint import CheckpointError, load_checkpoint, resolve_checkpoint
from course_lib.gpt import GPT, GPTConfig
from course_lib.llama import Llama, LlamaConfig
from course_lib.tokenizer import Tokenizer, load_tokenizer
from course_lib.transformer import Transformer, TransformerConfig


@dataclass(frozen=True)
class ModelKind:
    """A kind of model the course trains: its config and model classes, and the commands
    that train it and use it."""

    config: type
    model: type
    trained_by: str
    used_by: str
    # config keys newer than some checkpoints: the value that rebuilds a checkpoint without them
    old_defaults: dict = field(default_factory=dict)


KINDS: dict[str, ModelKind] = {
    "gpt": ModelKind(GPTConfig, GPT, "python -m course_lib train gpt", "python -m course_lib generate",
                     gpt.CHECKPOINT_DEFAULTS),
    "llama": ModelKind(LlamaConfig, Llama, "python -m course_lib train gpt --arch llama", "python -m course_lib generate"),
    "transformer": ModelKind(TransformerConfig, Transformer, "python -m course_lib train translate",
                             "python -m course_lib translate", transformer.CHECKPOINT_DEFAULTS),
}


def with_old_defaults(config: dict) -> dict:
    """A checkpoint's model config with the keys it predates filled in with the values its
    model was trained with (``ModelKind.old_defaults``), so that it rebuilds that model."""
    model_type = config.get("model_type")
    found = KINDS.get(model_type) if isinstance(model_type, str) else None
    return {**found.old_defaults, **config} if found else dict(config)


# ---- earlier layouts: what course_lib 0.1 wrote, brought to today's --------------------------
# A 0.1 run folder: ``ckpt.safetensors`` (GPT) with other parameter names, registered in another
# order (so its optimizer state is indexed in that order), training settings under other names
# and losses in other shapes. ``read_run`` reads any of them as today's.

# Parameter names of course_lib 0.1 checkpoints -> today's (one naming scheme since 0.2).
LEGACY_NAMES = [
    (r"^tok_emb\.", "tok_embed."), (r"^pos_emb\.", "pos_embed."), (r"^blocks\.", "layers."),
    (r"^ln_f\.", "final_norm."), (r"^lm_head\.", "out_proj."), (r"\.attn\.", ".self_attn."),
    (r"\.ln_1\.", ".self_attn_norm."), (r"\.ln_2\.", ".ff_norm."), (r"\.mlp\.c_fc\.", ".ff.w_1."),
    (r"\.mlp\.c_proj\.", ".ff.w_2."), (r"\.ff\.linear1\.", ".ff.w_1."), (r"\.ff\.linear2\.", ".ff.w_2."),
]
LEGACY_DECODER_NORMS = {"norm1": "self_attn_norm", "norm2": "cross_attn_norm", "norm3": "ff_norm"}
LEGACY_ENCODER_NORMS = {"norm1": "self_attn_norm", "norm2": "ff_norm"}
# The order in which a 0.1 layer registered its parts (today's names): its optimizer state's order.
LEGACY_LAYER_ORDER = {
    "layers": ("self_attn_norm", "self_attn", "ff_norm", "ff"),
    "encoder_layers": ("self_attn", "ff", "self_attn_norm", "ff_norm"),
    "decoder_layers": ("self_attn", "cross_attn", "ff", "self_attn_norm", "cross_attn_norm", "ff_norm"),
}
# 0.1 training settings -> today's name, or a function of the value giving today's {name: value}
LEGACY_TRAIN_KEYS = {
    "warmup_steps": "warmup", "train_data": "data", "max_steps": "steps", "learning_rate": "lr",
    "out_dir": lambda v: {},  # where this session writes: never taken from a saved run
    "log_every": lambda v: {}, "checkpoint_every": lambda v: {},  # today: every eval_every steps
    "bf16": lambda v: {} if v is None else {"precision": "bf16" if v else "fp32"},
    "amp": lambda v: {} if v else {"precision": "fp32"},
}


def upgrade_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the parameters of a checkpoint written by course_lib 0.1 (no-op otherwise)."""
    out = {}
    for key, value in state.items():
        for old, new in LEGACY_NAMES:
            key = re.sub(old, new, key)
        norms = LEGACY_DECODER_NORMS if key.startswith("decoder_layers.") else LEGACY_ENCODER_NORMS
        match = re.search(r"\.(norm[123])\.", key)
        if match and match.group(1) in norms:
            key = key.replace(match.group(0), f".{norms[match.group(1)]}.")
        out[key] = value
    return out


def legacy_parameter_order(names: list[str]) -> list[str]:
    """Today's parameter ``names`` (in today's order) in the order course_lib 0.1 registered
    them: within each layer its parts came in another order (``LEGACY_LAYER_ORDER``)."""
    first: dict[str, int] = {}

    def key(item):
        i, name = item
        match = re.match(r"^(\w+)\.(\d+)\.(\w+)\.", name)
        parts = LEGACY_LAYER_ORDER.get(match[1], ()) if match else ()
        if not match or match[3] not in parts:
            return (i, 0, i)
        return (first.setdefault(f"{match[1]}.{match[2]}", i), parts.index(match[3]), i)

    return [name for _, name in sorted(enumerate(names), key=key)]


def upgrade_train_config(saved: dict) -> dict:
    """A run's saved training settings under today's names and meanings (0.1's: ``warmup_steps``,
    ``train_data``, ``bf16``, a ``batch_size`` per micro-batch, ...)."""
    out = {}
    for key, value in saved.items():
        rename = LEGACY_TRAIN_KEYS.get(key, key)
        out.update(rename(value) if callable(rename) else {rename: value})
    if "warmup_steps" in saved and isinstance(out.get("batch_size"), int) and isinstance(out.get("grad_accum"), int):
        out["batch_size"] *= out["grad_accum"]  # 0.1's GPT batch was one micro-batch; today's is the step's
    return out


def upgrade_train_state(state: dict) -> dict:
    """A checkpoint's training state in today's shape: ``train_losses`` as [step, loss] pairs,
    ``evals`` as dicts, settings under today's names (``upgrade_train_config``)."""
    state = dict(state)
    if "losses" in state and "train_losses" not in state:  # 0.1's translation trainer
        state["train_losses"] = state.pop("losses")
        state["evals"] = [{"step": s, "val": v} for s, v in state.pop("val_losses", [])]
    losses = state.get("train_losses", [])
    if losses and not isinstance(losses[0], list):  # 0.1's GPT trainer: one loss per step, from step 1
        state["train_losses"] = [[i + 1, v] for i, v in enumerate(losses)]
    if isinstance(state.get("train_config"), dict):
        state["train_config"] = upgrade_train_config(state["train_config"])
    return state


def read_run(path: str | Path, device: str | torch.device = "cpu") -> dict:
    """``load_checkpoint`` of a run folder or checkpoint file, whichever layout wrote it, in
    today's: parameter names, the model config's keys it predates (``with_old_defaults``),
    the training state's shape. ``legacy`` says whether its optimizer state is indexed in
    0.1's parameter order (``load_optimizer_state`` reorders it); ``file``: the file read."""
    file = resolve_checkpoint(path)
    ckpt = load_checkpoint(file, device=device)
    state = upgrade_state_dict(ckpt["model"])
    return {**ckpt, "model": state, "config": with_old_defaults(ckpt["config"]), "file": file,
            "train_state": upgrade_train_state(ckpt["train_state"]), "legacy": list(state) != list(ckpt["model"])}


def shared_weight_problem(model: nn.Module, state: dict[str, torch.Tensor], file) -> str | None:
    """Shared weights (one parameter under several names, e.g. a tied output projection) are
    stored once per name: a message if the file gives them different values (its config says
    they are shared, its weights say they are not), else None."""
    names: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    for group in names.values():
        stored = [n for n in group if n in state]
        if any(not torch.equal(state[stored[0]], state[n]) for n in stored[1:]):
            return (f"{file}: the weights {stored} are one shared tensor in the model its config builds, but "
                    "differ in the file; the config does not match the weights (e.g. share_embeddings or "
                    "tie_embeddings edited): fix the config or retrain.")
    return None


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], file) -> None:
    """``model.load_state_dict(state)`` after the shared-weight check, with a ``CheckpointError``
    naming the file where the weights do not fit the model."""
    problem = shared_weight_problem(model, state, file)
    if problem:
        raise CheckpointError(problem)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"{file}: the weights do not fit its own config ({str(exc).splitlines()[0]}); "
                              "the file is damaged or was edited: retrain or use another checkpoint.") from None


def optimizer_state_in_order(osd: dict, groups_names: list[list[str]], legacy: bool, file) -> dict:
    """An index-keyed optimizer state for an optimizer whose groups hold the parameters
    ``groups_names`` (today's names, in its order): reindexed from 0.1's parameter order when
    ``legacy``; a ``CheckpointError`` when its groups do not match."""
    sizes = [len(g["params"]) for g in osd["param_groups"]]
    if sizes != [len(names) for names in groups_names]:
        raise CheckpointError(f"{file}: its optimizer state has groups of {sizes} parameters, the optimizer "
                              f"{[len(n) for n in groups_names]}; resume with the optimizer the run was trained with.")
    if not legacy:
        return osd
    today = [n for names in groups_names for n in names]
    then = [n for names in groups_names for n in legacy_parameter_order(names)]
    index = {name: i for i, name in enumerate(today)}
    offsets = [sum(sizes[:g]) for g in range(len(sizes))]
    return {"state": {index[then[int(i)]]: s for i, s in osd["state"].items()},
            "param_groups": [{**g, "params": list(range(o, o + n))}
                             for g, o, n in zip(osd["param_groups"], offsets, sizes, strict=True)]}


@dataclass
class Trained:
    """A trained model with everything needed to use it."""

    model: nn.Module
    tokenizer: Tokenizer | None
    config: dict
    kind: str
    path: Path
    train_state: dict = field(default_factory=dict, repr=False)


def load_trained(path: str | Path, device: str | torch.device = "cpu", kind: str | tuple[str, ...] | None = None,
                 command: str | None = None) -> Trained:
    """The model of a run folder or checkpoint file, in eval mode, with its tokenizer
    (``tokenizer.json`` beside the checkpoint, or None) and config.

    ``kind``: the kind (or kinds) the caller needs ("gpt", "transformer"); another kind is an error
    that says which kind the checkpoint holds and which command uses it (``command``: the
    caller's name, for that message).
    """
    ckpt = read_run(path, device=device)
    file, config = ckpt["file"], ckpt["config"]
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or model_type not in KINDS:
        raise CheckpointError(f"{file} holds a model of type {model_type!r}, which is not one of the course's "
                              f"kinds {sorted(KINDS)}; give a checkpoint written by `python -m course_lib train`.")
    found = KINDS[model_type]
    kinds = (kind,) if isinstance(kind, str) else kind
    if kinds is not None and model_type not in kinds:
        raise ValueError(f"{path} holds a {model_type!r} model (trained by `{found.trained_by}`), not a "
                         f"{' or '.join(map(repr, kinds))} model{f' for `{command}`' if command else ''}; use `{found.used_by} {path}` "
                         "for this one.")
    try:
        model_config = found.config.from_dict(config)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{file}: its model config is not valid ({exc}); the file is damaged or was "
                              "edited: retrain or use another checkpoint.") from None
    model = found.model(model_config)
    load_weights(model, ckpt["model"], file)
    tok_file = file.with_name("tokenizer.json")
    tokenizer = load_tokenizer(tok_file) if tok_file.exists() else None
    return Trained(model.to(device).eval(), tokenizer, config, model_type, file, ckpt["train_state"])
