"""Device choice, reproducibility and the CPU/GPU scale switch.

- ``get_device()`` picks CUDA, then Apple's MPS (only on torch >= 2.4, where it
  trains these models correctly), then the CPU. ``COURSE_DEVICE=cpu`` (or ``cuda``,
  ``cuda:1``, ``mps``) overrides the choice.
- ``seed_everything(seed)`` seeds Python, NumPy and torch in one call.
- ``get_scale()`` is ``"small"`` on a CPU (and in CI) and ``"full"`` on a GPU;
  ``COURSE_SCALE=small|full`` overrides it. ``pick(small=..., full=...)`` returns
  the value for the current scale, which is how every notebook sizes itself.
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import numpy as np
import torch

SCALES = ("small", "full")


def _torch_version() -> tuple[int, int]:
    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    return int(major), int(minor)


def mps_is_usable() -> bool:
    """MPS is used only where it is known to train these models correctly."""
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available() and _torch_version() >= (2, 4))


class DeviceError(ValueError, RuntimeError):
    """A device was asked for that is not here (or is not a device name)."""


def get_device(prefer: str | torch.device | None = None, source: str | None = None) -> torch.device:
    """The device to run on: ``prefer``, else ``$COURSE_DEVICE``, else CUDA > MPS > CPU.

    ``source`` names where ``prefer`` came from (``"--device"`` for a command), so that an
    error about it points there; without it, ``device=...`` is named.
    """
    from_env = not prefer and bool(os.environ.get("COURSE_DEVICE"))
    choice = str(prefer) if prefer else os.environ.get("COURSE_DEVICE")
    if choice:
        if from_env:
            asked, fix = f"COURSE_DEVICE={choice!r}", "unset COURSE_DEVICE or set it to 'cpu'"
        elif source:
            asked, fix = f"{source} {choice}", f"use {source} cpu, or leave {source} out to use the best device found"
        else:
            asked, fix = f"device={choice!r}", "ask for 'cpu', or leave the device unset to use the best one found"
        try:
            device = torch.device(choice)
        except (RuntimeError, ValueError, TypeError):
            raise DeviceError(f"{asked} is not a device name; use cpu, cuda, cuda:1 or mps "
                              f"({fix.replace('set it to', 'choose')}).") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise DeviceError(f"{asked} asks for CUDA, but torch sees no CUDA GPU; {fix}.")
        if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"{asked} asks for GPU {device.index}, but torch sees "
                              f"{torch.cuda.device_count()}; {fix}.")
        if device.type == "mps" and not mps_is_usable():
            raise DeviceError(f"{asked} asks for MPS, which is not available here; {fix}.")
        if device.type not in ("cpu", "cuda", "mps"):
            raise DeviceError(f"{asked} is not a device the course runs on; use cpu, cuda or mps ({fix}).")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if mps_is_usable():
        return torch.device("mps")
    return torch.device("cpu")


def get_scale(device: torch.device | str | None = None) -> str:
    """``"full"`` on a CUDA GPU, ``"small"`` elsewhere; ``$COURSE_SCALE`` overrides."""
    scale = os.environ.get("COURSE_SCALE")
    if scale:
        if scale not in SCALES:
            raise ValueError(f"COURSE_SCALE={scale!r} is not one of {SCALES}; unset it or pick one.")
        return scale
    device = torch.device(device) if device is not None else get_device()
    return "full" if device.type == "cuda" else "small"


def pick(small, full, scale: str | None = None):
    """Return ``small`` or ``full`` according to the scale (see ``get_scale``)."""
    return full if (scale or get_scale()) == "full" else small


def train_steps(steps: int) -> int:
    """A notebook's number of training steps: ``steps``, or ``$COURSE_STEPS`` when set.

    For quick runs of the whole notebook where the trained model's quality does not matter
    (the real-browser test runs notebook 07 with ``COURSE_STEPS=200``); unset, it changes nothing.
    """
    value = os.environ.get("COURSE_STEPS", "").strip()
    if not value:
        return steps
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"COURSE_STEPS={value!r} is not a positive number of steps; unset it or fix it.")
    return int(value)


def seed_everything(seed: int = 1337) -> int:
    """Seed Python's ``random``, NumPy and torch (all devices). Returns the seed."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    return seed


def in_colab() -> bool:
    return "google.colab" in sys.modules


def export_dir(name: str = "") -> Path:
    """Folder where notebooks save their plots: ``$COURSE_EXPORT_DIR`` or ``./exports``.

    The README's headless run sets ``COURSE_EXPORT_DIR``; in a notebook the folder is
    ``exports/`` beside the notebook. ``name`` adds a sub-folder (one per notebook).
    """
    root = Path(os.environ.get("COURSE_EXPORT_DIR", "exports"))
    path = root / name if name else root
    path.mkdir(parents=True, exist_ok=True)
    return path


def shown_path(path: str | Path) -> str:
    """``path`` as the course prints it: relative to the working directory (a notebook's
    folder) when it lies under that folder or under its parent (``../exports/...``), so no
    printed line names the folders of the machine that ran it; elsewhere the full path."""
    path, here = Path(path).resolve(), Path.cwd().resolve()
    for base in (here, here.parent):
        if base != base.parent and path.is_relative_to(base):
            return os.path.relpath(path, here)
    return str(path)


def progress_disabled() -> bool:
    """True when progress bars are switched off (``TQDM_DISABLE=1``, as CI sets)."""
    return os.environ.get("TQDM_DISABLE", "").lower() in {"1", "true", "yes"}


def describe() -> str:
    """One line saying what this session runs on (printed by every notebook)."""
    device = get_device()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return (
        f"torch {torch.__version__} | device {name} | scale {get_scale(device)} | "
        f"python {sys.version.split()[0]}"
    )


def install_source(direct_url: str | None, location: str | Path) -> str:
    """Where course_lib (the package folder ``location``) came from, read from pip's ``direct_url.json`` (PEP 610): a git
    URL and commit, a local (editable) checkout, or a plain folder on ``sys.path``. Local folders are
    shown as ``shown_path`` shows them (``..`` from a notebook of this repository)."""
    import json

    if direct_url:
        try:
            info = json.loads(direct_url)
        except ValueError:
            info = {}
        url = info.get("url", "")
        vcs = info.get("vcs_info") or {}
        if vcs:
            commit = vcs.get("commit_id", "")[:10]
            return f"git+{url}" + (f" @ {commit}" if commit else "") + " (pip install)"
        if (info.get("dir_info") or {}).get("editable"):
            return f"{shown_path(url.removeprefix('file://'))} (editable install)"
        if url:
            return f"{url} (pip install)"
    return f"{shown_path(Path(location).resolve().parent)} (a folder on sys.path, not installed)"


def setup_report() -> str:
    """What the first cell of every notebook prints: where course_lib was installed from,
    the torch version and the device found (with the GPU's name and memory)."""
    from importlib import metadata

    import course_lib

    here = Path(course_lib.__file__).resolve().parent
    direct_url = None
    try:  # pip's record describes this copy only if it installed it (not a checkout on sys.path)
        dist = metadata.distribution("course_lib")
        record = dist.read_text("direct_url.json") or ""
        installed = {Path(dist.locate_file(f)).resolve() for f in dist.files or []}
        if here / "__init__.py" in installed or f"file://{here.parent}" in record:
            direct_url = record
    except metadata.PackageNotFoundError:
        pass
    device = get_device()
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        found = f"cuda ({props.name}, {props.total_memory / 2**30:.0f} GiB)"
    else:
        found = device.type + (" (no GPU found)" if device.type == "cpu" and not torch.cuda.is_available() else "")
    colab = " | Colab" if in_colab() else ""
    return (f"course_lib {course_lib.__version__} from {install_source(direct_url, here)}{colab}\n"
            f"torch {torch.__version__} | device {found} | scale {get_scale(device)}")
