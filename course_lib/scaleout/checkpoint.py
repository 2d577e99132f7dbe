"""Checkpoints of a distributed run: one full file that any number of ranks can resume.

Only rank 0 writes. ``save`` gathers the full (unsharded) model and optimizer state on
rank 0, on the CPU (``get_model_state_dict`` / ``get_optimizer_state_dict`` with
``StateDictOptions(full_state_dict=True, cpu_offload=True)``), converts the optimizer
state from parameter names to the indices a single process's ``optimizer.state_dict()``
uses, and writes it with ``course_lib.checkpoint.save_checkpoint``. ``load`` (rank 0
reads and broadcasts) or ``load_model_state`` / ``load_optimizer_state`` (every rank
has read the file) put it back into a plain, DDP or FSDP model: a run saved by 8 FSDP
ranks resumes on 2 DDP ranks or on one process.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from course_lib.checkpoint import CheckpointError, save_checkpoint, set_rng_state
from course_lib.scaleout.distributed import DistContext, barrier, current, fsdp_isinstance, unwrap


def _dcp():
    """torch.distributed.checkpoint's state-dict functions, imported when a process group
    needs them (like FSDP, 0.7 s of imports that one process never needs)."""
    from torch.distributed.checkpoint import state_dict

    return state_dict


def _options(**kw):
    return _dcp().StateDictOptions(full_state_dict=True, **kw)


class _StateDict:
    """Stands in for an optimizer where ``save_checkpoint`` asks for ``state_dict()``."""

    def __init__(self, state_dict: dict):
        self._state_dict = state_dict

    def state_dict(self) -> dict:
        return self._state_dict


def _index_keyed(osd: dict) -> dict:
    """Optimizer state keyed by parameter name -> keyed by index, as ``optimizer.state_dict()``."""
    names = [n for g in osd["param_groups"] for n in g["params"]]
    index = {n: i for i, n in enumerate(names)}
    return {
        "state": {index[n]: s for n, s in osd["state"].items()},
        "param_groups": [
            {**g, "params": [index[n] for n in g["params"]]} for g in osd["param_groups"]
        ],
    }


def _param_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The optimizer's parameters in its own order, by their names in the unwrapped model."""
    names = {}
    for name, p in unwrap(model).named_parameters():
        names.setdefault(id(p), name)
    return [names[id(p)] for g in optimizer.param_groups for p in g["params"]]


def _name_keyed(osd: dict, names: list[str]) -> dict:
    """Inverse of ``_index_keyed`` for this optimizer's parameters ``names``."""
    return {
        "state": {names[int(i)]: s for i, s in osd["state"].items()},
        "param_groups": [
            {**g, "params": [names[int(i)] for i in g["params"]]} for g in osd["param_groups"]
        ],
    }


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer | None = None):
    """Gather the full (unsharded) model and optimizer states on rank 0, on the CPU.

    Returns ``(model_state, optimizer_state)``: the same keys as a single-process
    ``model.state_dict()`` and ``optimizer.state_dict()`` (index-keyed), so the result
    loads into one process as well as into any number of ranks. Other ranks get ``{}``.
    Every rank must call this (it communicates).
    """
    if not dist.is_initialized():
        return unwrap(model).state_dict(), optimizer and optimizer.state_dict()
    model_sd = _dcp().get_model_state_dict(model, options=_options(cpu_offload=True))
    optim_sd = None
    if optimizer is not None:
        optim_sd = _dcp().get_optimizer_state_dict(model, optimizer, options=_options(cpu_offload=True))
        optim_sd = _index_keyed(optim_sd) if optim_sd else {}
    return model_sd, optim_sd


def _sharded(model: nn.Module) -> bool:
    return any(fsdp_isinstance(p, "DTensor") for p in model.parameters())


def load_model_state(model: nn.Module, state_dict: dict) -> None:
    """Load a full state dict, present on every rank, into a plain, DDP or FSDP model."""
    if _sharded(model):  # each rank keeps its own shard of every tensor
        _dcp().set_model_state_dict(model, state_dict, options=_options())
    else:
        unwrap(model).load_state_dict(state_dict)


def load_optimizer_state(model: nn.Module, optimizer, state_dict: dict) -> None:
    """Load an index-keyed optimizer state (``load_checkpoint(...)["optimizer"]``) on every rank."""
    if _sharded(model):
        named = _name_keyed(state_dict, _param_names(model, optimizer))
        _dcp().set_optimizer_state_dict(model, optimizer, named, options=_options())
    else:
        optimizer.load_state_dict(state_dict)


def full_model_on_main(model: nn.Module, build: Callable[[], nn.Module]) -> nn.Module | None:
    """After training: a plain module with the full weights on rank 0 (to evaluate or
    generate alone, without the other ranks), ``None`` on the others; on one process,
    ``model`` itself. ``build()`` makes an empty model of the same configuration."""
    if not dist.is_initialized():
        return model
    model_sd, _ = full_state(model)
    if not current().is_main:
        return None
    plain = build()
    plain.load_state_dict(model_sd)
    return plain.eval()


def save(path, model, config: dict, optimizer=None, train_state=None, ctx=None) -> Path:
    """Rank 0 writes one full checkpoint (``course_lib.checkpoint`` format); all ranks call it."""
    ctx = ctx or current()
    path = Path(path)
    model_sd, optim_sd = full_state(model, optimizer)
    if ctx.is_main:
        opt = _StateDict(optim_sd) if optimizer is not None else None
        save_checkpoint(path, model_sd, config, opt, train_state)
    barrier(ctx)
    return path


def load(path, model: nn.Module, optimizer=None, ctx: DistContext | None = None) -> dict:
    """Load a run folder or checkpoint, written by any number of ranks and in any of the
    course's layouts (``course_lib.models.read_run``), into ``model`` (wrapped or not).

    Rank 0 reads the file, checks its shared weights and broadcasts it; each rank keeps
    its own shard (FSDP) or a full copy (DDP). The RNG state is restored on every rank.
    Returns the checkpoint (``config``, ``train_state``, ...).
    """
    from course_lib.models import load_weights, read_run, shared_weight_problem

    ctx = ctx or current()
    ckpt = read_run(path) if ctx.is_main or not ctx.distributed else {}
    problem = [shared_weight_problem(unwrap(model), ckpt["model"], ckpt["file"]) if ckpt else None]
    if ctx.distributed:
        dist.broadcast_object_list(problem, src=0)  # every rank stops, not only rank 0
    if problem[0]:
        raise CheckpointError(problem[0])
    if optimizer is not None and ckpt.get("optimizer"):
        ckpt["optimizer"] = _in_order(ckpt, model, optimizer)
    if not ctx.distributed:
        load_weights(unwrap(model), ckpt["model"], ckpt["file"])
        if optimizer is not None and ckpt["optimizer"] is not None:
            optimizer.load_state_dict(ckpt["optimizer"])
    else:
        _dcp().set_model_state_dict(model, ckpt.get("model", {}), options=_options(broadcast_from_rank0=True))
        if optimizer is not None:
            osd = ckpt.get("optimizer") or {}
            osd = _name_keyed(osd, _param_names(model, optimizer)) if osd else {}
            _dcp().set_optimizer_state_dict(model, optimizer, osd, options=_options(broadcast_from_rank0=True))
        box = [{k: ckpt.get(k) for k in ("config", "train_state", "rng")}]
        dist.broadcast_object_list(box, src=0)
        ckpt = {**ckpt, **box[0]}
    set_rng_state(ckpt["rng"])
    return ckpt


def _in_order(ckpt: dict, model: nn.Module, optimizer) -> dict:
    """The checkpoint's optimizer state indexed as ``optimizer`` indexes its parameters."""
    from course_lib.models import optimizer_state_in_order

    names = iter(_param_names(model, optimizer))
    groups = [[next(names) for _ in g["params"]] for g in optimizer.param_groups]
    return optimizer_state_in_order(ckpt["optimizer"], groups, ckpt["legacy"], ckpt["file"])
