"""What both training commands share: settings, the run folder, checkpoints and resume,
learning-rate schedules, the trainer's setup (``Trainer``: device, wrapping, compile,
optimizer, precision, state, a checkpoint at each evaluation), logging, the loss plot,
and the command line built from the settings.

The steps themselves are ``course_lib.training.loop.fit``'s; ``course_lib.training.gpt``
and ``course_lib.training.translation`` give it their batches and their loss.

A run folder holds ``checkpoint.safetensors`` (weights, optimizer, RNG and training state;
safetensors + JSON, never pickle, written atomically), ``config.json`` (the model's
config, for people to read), ``tokenizer.json`` and ``loss.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

import torch

from course_lib import scaleout as D
from course_lib.checkpoint import (
    CHECKPOINT,
    check_config,
    config_from_dict,
    integer_problems,
    number_problems,
    read_metadata,
    resolve_checkpoint,
)
from course_lib.env import get_device
from course_lib.models import upgrade_train_state, with_old_defaults
from course_lib.training.loop import fit, micro_batches  # noqa: F401 (micro_batches: re-exported)
from course_lib.training.precision import PRECISIONS, Precision, choose_precision, compile_model

TOKENIZER = "tokenizer.json"


def setting(default, help: str, **extra):
    """A settings field with the help text (and ``choices``) its command-line flag shows."""
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class TrainConfig:
    """The settings both training commands share: the same name (and flag) for the same idea.

    ``batch_size`` is the global batch of one optimizer step, whatever the number of
    processes (split over ranks) and of ``grad_accum`` micro-batches (split again), so a
    run gives the same result on 1 or N processes, with or without accumulation.
    """

    data: str = setting("", "where the text comes from")
    out: str | None = setting(None, "run folder: checkpoint.safetensors, config.json, "
                              "tokenizer.json, loss.png")
    steps: int | None = setting(None, "optimizer steps: the length of the schedule")
    batch_size: int = setting(16, "examples per optimizer step (all ranks and micro-batches)")
    grad_accum: int = setting(1, "micro-batches per step (less memory, same result)")
    lr: float | None = setting(None, "peak learning rate")
    warmup: int = setting(100, "steps of linear learning-rate warmup")
    grad_clip: float = setting(1.0, "clip the global gradient norm to this (0: off)")
    eval_every: int = setting(100, "evaluate, log and checkpoint every N steps")
    seed: int = setting(1337, "seed of the initial weights, the batches and dropout")
    device: str | None = setting(None, "cpu, cuda, cuda:1, mps (default: the best found)")
    precision: str = setting("auto", "auto: bf16 on Ampere+, fp16 + scaler on 7.x, fp32 "
                             "elsewhere", choices=PRECISIONS)
    compile: bool | None = setting(None, "torch.compile the model (default: on CUDA GPUs)")
    fsdp: bool = setting(False, "under torchrun: shard with FSDP instead of DDP")
    progress: bool = setting(True, "show a progress bar")

    def __post_init__(self):
        problems = integer_problems(self, ("batch_size", "grad_accum", "eval_every"))
        problems += integer_problems(self, ["warmup"], minimum=0) + integer_problems(self, ["steps"], optional=True)
        problems += number_problems(self, ["lr"], above=True, optional=True)
        problems += [p + " (0 switches clipping off)" for p in number_problems(self, ["grad_clip"])]
        if self.precision not in PRECISIONS:
            problems.append(f"precision={self.precision!r} must be one of {PRECISIONS}")
        if isinstance(self.batch_size, int) and isinstance(self.grad_accum, int) and \
                self.grad_accum >= 1 and self.batch_size % self.grad_accum:
            problems.append(f"batch_size={self.batch_size} is not divisible by grad_accum={self.grad_accum}; "
                            "each micro-batch must have as many examples")
        problems += self.check()
        if problems:
            raise ValueError("invalid training config: " + "; ".join(problems) + ".")

    def check(self) -> list[str]:
        """Problems with the settings a subclass adds (none here)."""
        return []

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        return config_from_dict(cls, d, "training setting")


def new_state(cfg: TrainConfig) -> dict:
    """The training state a checkpoint carries (JSON): step, losses, evaluations."""
    return {"step": 0, "train_losses": [], "evals": [], "precision": {}, "train_config": asdict(cfg)}


# ---- learning rate -------------------------------------------------------------------------

def cosine_lr(step: int, lr: float, min_lr: float, warmup: int, steps: int) -> float:
    """Linear warmup over ``warmup`` steps, then a cosine from ``lr`` down to ``min_lr`` (GPT)."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0))) * (lr - min_lr)


def noam_lr(step: int, d_model: int, warmup: int, scale: float = 1.0) -> float:
    """The paper's schedule: ``d_model^-0.5 * min(step^-0.5, step * warmup^-1.5)`` (5.3),
    linear warmup then decay with the inverse square root of the step (1-based)."""
    step, warmup = max(step, 1), max(warmup, 1)
    return scale * d_model**-0.5 * min(step**-0.5, step * warmup**-1.5)


# ---- the run folder, checkpoints, resume -----------------------------------------------------

class RunFolder:
    """Where a run keeps its files. Checked before any work starts: a path that is a file,
    or a folder that cannot be written, is an error at once, not after training."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"the output folder {self.path} is a file; give --out a folder name.")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / f".write-test.{os.getpid()}"  # one per process: ranks share the folder
            probe.write_text("")
            probe.unlink()
        except OSError as exc:
            raise ValueError(f"cannot write to the output folder {self.path} ({exc.strerror}); "
                             "choose another --out.") from None
        self.checkpoint = self.path / CHECKPOINT
        self.tokenizer = self.path / TOKENIZER

    def existing_checkpoint(self) -> Path | None:
        """The checkpoint a resumed run continues from (older runs' file names too)."""
        try:
            return resolve_checkpoint(self.path)
        except FileNotFoundError:
            return None

    def require_checkpoint(self) -> Path:
        found = self.existing_checkpoint()
        if found is None:
            raise FileNotFoundError(f"--resume: there is no checkpoint in {self.path}; "
                                    "start the run without --resume, or point --out at the run to continue.")
        return found


PER_SESSION = ("out", "device", "compile", "progress", "fsdp")  # not taken from a run being resumed


def check_preset_on_resume(preset: str | None, values: dict, saved_model: dict) -> None:
    """``--preset`` given with ``--resume``: an error naming the settings where ``values`` (the
    preset with the model settings given beside it) and the run being resumed differ (the
    run's own settings would silently win)."""
    if preset is None or not saved_model:
        return
    differ = {k: (v, saved_model[k]) for k, v in values.items()
              if k in saved_model and k != "vocab_size" and saved_model[k] != v}
    if differ:
        shown = ", ".join(f"{k}={new!r} where the run has {old!r}" for k, (new, old) in sorted(differ.items()))
        raise ValueError(f"--preset {preset} contradicts the run being resumed ({shown}); drop --preset to "
                         "continue the run as it was trained, or give another --out for a new run.")


def saved_settings(out: str | Path) -> tuple[dict, dict]:
    """The settings the run in ``out`` was trained with: (training settings, model config),
    for ``--resume``: what is given now (flags, ``--config``) overrides them, and they
    override the defaults and the preset, so ``--out RUN --resume`` alone continues the run
    as it was started. Where and how this session runs (device, processes) is not taken."""
    meta = read_metadata(RunFolder(out).require_checkpoint())
    saved = upgrade_train_state(meta.get("train_state", {})).get("train_config")  # any layout's names
    train = {k: v for k, v in (saved if isinstance(saved, dict) else {}).items() if k not in PER_SESSION}
    return train, with_old_defaults(meta["config"])


def save_run(run: RunFolder, model, optimizer, state: dict, precision: Precision, tokenizer=None) -> None:
    """Checkpoint the run (every rank calls it: the full state is gathered; rank 0 writes)."""
    state["precision"] = precision.state_dict()
    D.save(run.checkpoint, model, model.config.to_dict(), optimizer, state)
    if tokenizer is not None and D.current().is_main:
        tokenizer.save(run.tokenizer)


def resume_run(run: RunFolder, model, optimizer, precision: Precision, cfg: TrainConfig) -> dict:
    """Load the run's checkpoint into ``model`` and ``optimizer`` (plain, DDP or FSDP),
    restore the RNG and the precision's scaler; returns the training state."""
    path = run.require_checkpoint()
    check_config(model.config.to_dict(), with_old_defaults(read_metadata(path)["config"]), path)
    ckpt = D.load(path, model, optimizer)
    state = {**new_state(cfg), **ckpt["train_state"], "train_config": asdict(cfg)}
    precision.load_state_dict(state["precision"])
    log(f"resumed from {path} at step {state['step']}")
    return state


# ---- the trainer both commands share -------------------------------------------------------

@dataclass
class Trainer:
    """What ``train gpt`` and ``train translate`` set up alike before ``fit`` runs their
    steps: the device, the model wrapped for several processes (DDP or FSDP) and compiled,
    the optimizer, the precision, the training state (new or resumed from the run folder)
    and a checkpoint after every evaluation."""

    model: torch.nn.Module
    cfg: TrainConfig
    device: torch.device
    run: RunFolder | None
    step_model: torch.nn.Module  # what runs the forward pass: wrapped and compiled
    optimizer: torch.optim.Optimizer
    precision: Precision
    state: dict

    @classmethod
    def start(cls, model, cfg: TrainConfig, make_optimizer, resume: bool = False,
              defaults: dict | None = None) -> Trainer:
        """Set up ``model`` for ``cfg``; ``make_optimizer(model)`` builds the optimizer (after
        the wrapping, as FSDP needs); ``defaults`` are the task's own state fields."""
        device = get_device(cfg.device)
        ctx = D.current(device)
        run = RunFolder(cfg.out) if cfg.out else None
        model.to(device)
        step_model = D.wrap_model(model, ctx, "fsdp" if cfg.fsdp else "ddp")  # before the optimizer
        step_model = compile_model(step_model, cfg.compile, device, log)
        optimizer = make_optimizer(model)
        precision = choose_precision(cfg.precision, device)
        state = resume_run(run, model, optimizer, precision, cfg) if resume else new_state(cfg)
        return cls(model, cfg, device, run, step_model, optimizer, precision, {**(defaults or {}), **state})

    def fit(self, batch_at, loss_of, *, steps: int, lr_at, evaluate, tokenizer=None, **options) -> dict:
        """``course_lib.training.loop.fit`` with the settings of ``cfg``; checkpoints into the
        run folder (with ``tokenizer``) after each evaluation. ``options``: ``on_step``,
        ``target_loss``, ``time_budget``."""
        cfg = self.cfg

        def save(state: dict) -> None:
            if self.run is not None:
                save_run(self.run, self.model, self.optimizer, state, self.precision, tokenizer)

        return fit(self.model, self.optimizer, batch_at, loss_of, steps=steps, lr_at=lr_at,
                   grad_clip=cfg.grad_clip, grad_accum=cfg.grad_accum, precision=self.precision,
                   evaluate=evaluate, eval_every=cfg.eval_every, on_eval=save, state=self.state,
                   progress=cfg.progress, forward_model=self.step_model, **options)


# ---- logging and the loss plot ----------------------------------------------------------------

def log(msg: str) -> None:
    """Print on rank 0 only, without breaking a progress bar."""
    if D.current().is_main:
        from tqdm import tqdm

        tqdm.write(msg)


def plot_losses(state: dict, title: str = "training"):
    """Training loss at each step (faint) and the evaluated losses, against steps."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    if state["train_losses"]:
        steps, losses = zip(*state["train_losses"])
        ax.plot(steps, losses, color="tab:blue", alpha=0.35, lw=0.8, label="training (each step)")
    evals = state["evals"]
    if any("train" in e for e in evals):
        ax.plot([e["step"] for e in evals], [e["train"] for e in evals], "o-", color="tab:blue",
                label="training (evaluated)")
    if evals:
        ax.plot([e["step"] for e in evals], [e["val"] for e in evals], "s-", color="tab:orange", label="validation")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats per token)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    return fig


def save_loss_plot(state: dict, title: str, path) -> None:
    """``plot_losses`` written as ``path``.png, then closed: a command keeps no figure open."""
    import matplotlib.pyplot as plt

    from course_lib.plotting import save_figure

    fig = plot_losses(state, title)
    save_figure(fig, path, formats=("png",))
    plt.close(fig)


# ---- the command line, built from the settings -----------------------------------------------

class UsageError(ValueError):
    """A mistake in what the user typed or pointed at; commands print it as one line."""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    def _get_help_string(self, action):  # a help text that names its default keeps it
        help_text = action.help or ""
        return help_text if "(default" in help_text else super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """argparse that reports a mistake as one ``error: ...`` line (exit 2), every flag's
    default shown in ``--help``."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


_TYPES = {"int": int, "float": float, "str": str}


def add_config_arguments(parser: argparse.ArgumentParser, cls, prefix: str = "", title: str | None = None,
                         skip: tuple[str, ...] = (), defaults: dict | None = None) -> None:
    """One ``--flag`` per field of the dataclass ``cls`` (``batch_size`` -> ``--batch-size``),
    with its help text and default (``defaults`` overrides the dataclass's, as a command
    does); booleans get ``--x/--no-x``. Unset flags stay None, so that a ``--config`` file
    and the defaults can fill them (see ``given``)."""
    group = parser.add_argument_group(title) if title else parser
    for f in fields(cls):
        if f.name in skip:
            continue
        default = (defaults or {}).get(f.name, f.default if f.default is not MISSING else None)
        help_text = f.metadata.get("help", "") + f" (default: {default})"
        flag, dest = "--" + f.name.replace("_", "-"), prefix + f.name
        base = str(f.type).replace(" | None", "")
        if base == "bool":
            group.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            group.add_argument(flag, dest=dest, type=_TYPES.get(base, str), default=None, metavar=f.name.upper(),
                               choices=f.metadata.get("choices"), help=help_text)


def given(args: argparse.Namespace, cls, prefix: str = "") -> dict:
    """The fields of ``cls`` that were given on the command line."""
    return {f.name: getattr(args, prefix + f.name) for f in fields(cls)
            if getattr(args, prefix + f.name, None) is not None}


def read_json(path: str | Path, what: str) -> dict:
    """A JSON object from a file, or a clear error naming the file."""
    path = Path(path)
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"no {what} file at {path}; check the path.") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not a valid JSON {what} file ({exc}); fix or recreate it.") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path} holds a JSON {type(value).__name__}, not an object of settings.")
    return value


def run_command(main, argv=None) -> int:
    """Run a command's ``main(argv)``; a user's mistake becomes one ``error:`` line, exit 2."""
    try:
        return main(argv) or 0
    except (ValueError, OSError, IndexError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
