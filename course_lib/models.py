"""One way to load a trained model: a run folder (or its checkpoint file) gives back the
model, its tokenizer and its config, whichever kind it is.

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


# Parameter names of course_lib 0.1 checkpoints -> today's (one naming scheme since 0.2).
LEGACY_NAMES = [
    (r"^tok_emb\.", "tok_embed."), (r"^pos_emb\.", "pos_embed."), (r"^blocks\.", "layers."),
    (r"^ln_f\.", "final_norm."), (r"^lm_head\.", "out_proj."), (r"\.attn\.", ".self_attn."),
    (r"\.ln_1\.", ".self_attn_norm."), (r"\.ln_2\.", ".ff_norm."), (r"\.mlp\.c_fc\.", ".ff.w_1."),
    (r"\.mlp\.c_proj\.", ".ff.w_2."), (r"\.ff\.linear1\.", ".ff.w_1."), (r"\.ff\.linear2\.", ".ff.w_2."),
]
LEGACY_DECODER_NORMS = {"norm1": "self_attn_norm", "norm2": "cross_attn_norm", "norm3": "ff_norm"}
LEGACY_ENCODER_NORMS = {"norm1": "self_attn_norm", "norm2": "ff_norm"}


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
    file = resolve_checkpoint(path)
    ckpt = load_checkpoint(file, device=device)
    config = dict(ckpt["config"])
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
    config = with_old_defaults(config)
    try:
        model_config = found.config.from_dict(config)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{file}: its model config is not valid ({exc}); the file is damaged or was "
                              "edited: retrain or use another checkpoint.") from None
    model = found.model(model_config)
    state = upgrade_state_dict(ckpt["model"])
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"{file}: the weights do not fit its own config ({str(exc).splitlines()[0]}); "
                         "the file is damaged or was edited: retrain or use another checkpoint.") from None
    # Shared weights (one tensor under several names) are stored once per name; a name
    # whose stored values differ from the loaded tensor was overwritten by another name.
    loaded = model.state_dict()
    differ = [k for k, v in state.items() if k in loaded and not torch.equal(loaded[k], v.to(loaded[k]))]
    if differ:
        raise CheckpointError(f"{file}: the weights {differ} are shared in the model its config builds, but differ "
                         "in the file; the config does not match the weights (e.g. share_embeddings or "
                         "tie_embeddings edited): fix config or retrain.")
    tok_file = file.with_name("tokenizer.json")
    tokenizer = load_tokenizer(tok_file) if tok_file.exists() else None
    return Trained(model.to(device).eval(), tokenizer, config, model_type, file, ckpt["train_state"])
