"""Checkpoints: safetensors for tensors, JSON for everything else, written atomically.

A checkpoint is one ``.safetensors`` file. Its tensors are the model's state (keys
``model.*``), and optionally the optimizer's tensors (``optim.*``) and RNG states
(``rng.*``); its metadata holds JSON: the model config (``config``), and the training
state (``train_state``: step, epoch, losses, the optimizer's scalars, ...). A
readable ``config.json`` is written beside it. No pickle anywhere: loading a
checkpoint never runs code.

Writes go to a temporary file in the same folder, are flushed to disk, then moved
over the old file with ``os.replace``, so a run killed mid-write leaves the previous
checkpoint intact. The temporary file's name carries the host and process id
(``.checkpoint.safetensors.HOST.PID.XXXX.tmp``); the next write into the folder removes
the ones left by processes of this host that are no longer running (a ``kill -9``).

Errors: a missing file is a ``FileNotFoundError``; a file that is not a checkpoint of the
course (empty, truncated, another format, no course metadata) is a ``CheckpointError``,
and one written for another model configuration a ``CheckpointConfigError``: both are
``ValueError`` subclasses whose message names the file, what is wrong and what to do.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import socket
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file


class CheckpointError(ValueError):
    """A file that is not a checkpoint of the course (or is damaged)."""


class CheckpointConfigError(CheckpointError):
    """A checkpoint was written for another model configuration."""


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # someone else's process (or we cannot tell): leave its file alone
    return True


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Delete the temporary files of writes to ``path`` whose process (on this host) is
    gone, i.e. was killed mid-write. Returns what was removed."""
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\.[^.]+\.tmp$")
    removed = []
    try:
        candidates = list(path.parent.iterdir())
    except OSError:
        return removed
    for candidate in candidates:
        match = pattern.match(candidate.name)
        if match and match["host"] == _host() and not _pid_alive(int(match["pid"])):
            try:
                candidate.unlink()
                removed.append(candidate)
            except OSError:
                pass
    return removed


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_host()}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, SafetensorError) as exc:  # a full disk, a folder that became read-only
        kept = " (the previous one is kept)" if path.exists() else ""
        raise CheckpointError(f"cannot write {path}{kept}: {getattr(exc, 'strerror', None) or exc}; free some "
                              "space or write to another folder (--out).") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_text(path: str | Path, text: str) -> None:
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    _atomic_write(Path(path), write)


def _contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses shared storage (tied weights) and non-contiguous tensors.
    out, seen = {}, {}
    for key, t in tensors.items():
        t = t.detach()
        ptr = (t.data_ptr(), t.dtype, tuple(t.shape)) if t.numel() else None
        if ptr is not None and ptr in seen:
            t = t.clone()
        elif ptr is not None:
            seen[ptr] = key
        out[key] = t.contiguous().cpu()
    return out


def flatten_optimizer_state(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split ``optimizer.state_dict()`` into tensors (for safetensors) and JSON."""
    tensors, scalars = {}, {}
    for pid, pstate in state_dict["state"].items():
        for name, value in pstate.items():
            if torch.is_tensor(value):
                tensors[f"{pid}.{name}"] = value
            else:
                scalars[f"{pid}.{name}"] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def unflatten_optimizer_state(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    """Inverse of ``flatten_optimizer_state``: a dict for ``optimizer.load_state_dict``."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in list(tensors.items()) + list(meta["scalars"].items()):
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def rng_state() -> dict[str, torch.Tensor]:
    """torch's CPU (and CUDA) RNG states as tensors, so that a resumed run draws the same."""
    states = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            states[f"cuda{i}"] = s
    return states


def set_rng_state(states: dict[str, torch.Tensor]) -> None:
    if "cpu" in states:
        torch.set_rng_state(states["cpu"].to(torch.uint8))
    cuda_keys = sorted((k for k in states if k.startswith("cuda")), key=lambda k: int(k[4:]))
    cuda = [states[k].to(torch.uint8) for k in cuda_keys]  # device order: cuda2 before cuda10
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def save_checkpoint(
    path: str | Path,
    model: torch.nn.Module | dict[str, torch.Tensor],
    config: dict,
    optimizer: torch.optim.Optimizer | None = None,
    train_state: dict | None = None,
    save_rng: bool = True,
) -> Path:
    """Write ``model`` (module or state dict), ``config`` and the training state to ``path``.

    ``config`` must be JSON-serialisable (a dataclass's ``asdict``). ``config.json`` is
    written beside the checkpoint for people to read; loading uses the copy inside.
    """
    path = Path(path)
    state = model.state_dict() if isinstance(model, torch.nn.Module) else model
    tensors = {f"model.{k}": v for k, v in state.items()}
    meta: dict[str, Any] = {"config": config, "train_state": dict(train_state or {})}
    if optimizer is not None:
        opt_tensors, opt_meta = flatten_optimizer_state(optimizer.state_dict())
        tensors.update({f"optim.{k}": v for k, v in opt_tensors.items()})
        meta["optimizer"] = opt_meta
    if save_rng:
        tensors.update({f"rng.{k}": v for k, v in rng_state().items()})
    metadata = {k: json.dumps(v) for k, v in meta.items()}
    tensors = _contiguous(tensors)
    _atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    atomic_write_text(path.with_name("config.json"), json.dumps(config, indent=2) + "\n")
    return path


CHECKPOINT = "checkpoint.safetensors"  # in a run folder
CHECKPOINT_NAMES = (CHECKPOINT, "ckpt.safetensors")  # the second: runs of course_lib 0.1


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file from a file path or a run folder (``checkpoint.safetensors`` or
    ``ckpt.safetensors`` inside it)."""
    path = Path(path)
    if path.is_dir():
        for name in CHECKPOINT_NAMES:
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(
            f"no checkpoint in the folder {path} (looked for {', '.join(CHECKPOINT_NAMES)}); "
            "train first or pass the .safetensors file itself."
        )
    return path


def _not_ours(path: Path, what: str) -> CheckpointError:
    return CheckpointError(
        f"{path} is not a checkpoint of this course ({what}); point to the checkpoint.safetensors "
        "of a run folder written by `python -m course_lib train`, or train again."
    )


def read_metadata(path: str | Path) -> dict:
    """The JSON parts of a checkpoint (``config``, ``train_state``, ...), without tensors.
    ``path`` is the file or its run folder."""
    path = resolve_checkpoint(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}; train first or check the path.")
    if not path.is_file():
        raise _not_ours(path, "it is not a file")
    if path.stat().st_size == 0:
        raise _not_ours(path, "the file is empty: a write was interrupted or it was truncated")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
    except Exception as exc:  # safetensors' own error type: a damaged or foreign file
        raise _not_ours(path, f"not a readable safetensors file: {str(exc).splitlines()[0][:200]}") from None
    meta = {}
    for key, value in raw.items():
        try:
            meta[key] = json.loads(value)
        except (json.JSONDecodeError, RecursionError):
            raise _not_ours(path, f"its metadata entry {key!r} is not JSON") from None
    if not isinstance(meta.get("config"), dict):
        raise _not_ours(path, "a safetensors file without the course's model config in its metadata")
    if not isinstance(meta.get("train_state", {}), dict):
        raise _not_ours(path, "its train_state is not a JSON object")
    return meta


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> dict:
    """Read a checkpoint: ``{"model": state_dict, "config", "train_state", "optimizer", "rng"}``.

    ``optimizer`` is a dict ready for ``optimizer.load_state_dict`` (or None).
    """
    path = resolve_checkpoint(path)
    meta = read_metadata(path)
    try:
        tensors = load_file(str(path), device=str(device))
    except Exception as exc:  # truncated or damaged tensor data
        raise _not_ours(path, f"its tensors cannot be read: {str(exc).splitlines()[0][:200]}") from None
    groups: dict[str, dict[str, torch.Tensor]] = {"model": {}, "optim": {}, "rng": {}}
    for key, value in tensors.items():
        prefix, _, name = key.partition(".")
        if prefix not in groups or not name:
            raise _not_ours(path, f"unexpected tensor {key[:80]!r} (ours start with model., optim. or rng.)")
        groups[prefix][name] = value
    if not groups["model"]:
        raise _not_ours(path, "it holds no model weights")
    optimizer = None
    if "optimizer" in meta:
        try:
            optimizer = unflatten_optimizer_state(groups["optim"], meta["optimizer"])
        except (KeyError, ValueError, TypeError, AttributeError):
            raise _not_ours(path, "its optimizer state is damaged") from None
    return {
        "model": groups["model"],
        "config": meta.get("config", {}),
        "train_state": meta.get("train_state", {}),
        "optimizer": optimizer,
        "rng": {k: v.cpu() for k, v in groups["rng"].items()},
    }


# ---- the checks the configs share (model and training settings) ----------------------------
# Each returns one message per field that breaks the rule, for the config to join into one error.

def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def integer_problems(config, names, minimum: int = 1, optional: bool = False) -> list[str]:
    """``name=value must be an integer >= minimum`` for each field that is not one
    (``optional``: None is allowed too)."""
    values = [(n, getattr(config, n)) for n in names]
    return [f"{n}={v!r} must be an integer >= {minimum}" for n, v in values
            if not (optional and v is None) and (not isinstance(v, int) or isinstance(v, bool) or v < minimum)]


def number_problems(config, names, low: float = 0.0, high: float | None = None, above: bool = False,
                    optional: bool = False) -> list[str]:
    """``name=value must be in [low, high)`` (or ``> low`` with ``above``, else ``>= low``)
    for each field that is not such a number (``optional``: None is allowed too)."""
    rule = f"in [{low:g}, {high:g})" if high is not None else f"{'>' if above else '>='} {low:g}"

    def ok(v) -> bool:
        return _is_number(v) and (v > low if above else v >= low) and (high is None or v < high)

    values = [(n, getattr(config, n)) for n in names]
    return [f"{n}={v!r} must be {rule}" for n, v in values if not (optional and v is None) and not ok(v)]


def heads_problems(d_model: int, n_heads: int, aliases: tuple[str, str] = ("", "")) -> list[str]:
    """d_model must split evenly into n_heads heads (checked once both are integers >= 1);
    ``aliases`` follow each value (the original course's names, say)."""
    if d_model % n_heads:
        return [f"d_model={d_model}{aliases[0]} is not divisible by n_heads={n_heads}{aliases[1]}; "
                "each head gets d_model / n_heads dimensions"]
    return []


def config_from_dict(cls, d: dict, what: str):
    """``cls(**d)`` for a config dataclass, refusing keys it has no field for: one error
    naming them and the known ones (``what``: "GPT config field", "training setting")."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown {what}(s) {unknown}; known: {sorted(known)}.")
    return cls(**d)


class ModelConfig:
    """``from_dict``, ``preset`` and ``to_dict`` for a model's config dataclass, which sets
    ``model_type`` (a dict saved for another model is refused), ``name`` (in error messages)
    and ``presets`` (its named configurations) as plain class attributes."""

    model_type = ""
    name = ""
    presets: dict = {}

    @classmethod
    def from_dict(cls, d: dict):
        if d.get("model_type", cls.model_type) != cls.model_type:
            raise ValueError(f"config has model_type={d['model_type']!r}, not {cls.model_type!r}; "
                             "use that model's class.")
        return config_from_dict(cls, d, f"{cls.name} config field")

    @classmethod
    def preset(cls, name: str, **overrides):
        if name not in cls.presets:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(cls.presets)}.")
        return cls(**{**cls.presets[name], **overrides})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def check_config(expected: dict, found: dict, path: str | Path = "checkpoint") -> None:
    """Raise ``CheckpointConfigError`` naming every field where the two configs differ."""
    keys = sorted(set(expected) | set(found))
    diffs = [
        f"{k}: checkpoint has {found.get(k, '<missing>')!r}, model has {expected.get(k, '<missing>')!r}"
        for k in keys
        if expected.get(k) != found.get(k)
    ]
    if diffs:
        raise CheckpointConfigError(
            f"{path} was written for another model configuration ("
            + "; ".join(diffs)
            + "). Build the model from the checkpoint's own config, or point to a checkpoint "
            "of this configuration."
        )
