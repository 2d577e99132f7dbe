"""Scaling out: data parallelism with PyTorch's own engine (DDP and FSDP).

Every process (a *rank*) runs the same training script on its own part of each batch.

- **DDP** (DistributedDataParallel): every rank holds the whole model, its gradients
  and the optimizer state; after ``backward`` the gradients are averaged across ranks
  (all-reduce), so every rank takes the same optimizer step.
- **FSDP** (fully sharded data parallel, ZeRO stage 3 in Rajbhandari et al., 2020:
  "partition the model states ... across data parallel processes"): each rank keeps
  only a 1/N shard of every parameter, gradient and optimizer state. A block's full
  parameters are gathered just before it runs and freed after; gradients are
  reduce-scattered so each rank gets the averaged gradient of its own shard.

Launch with ``torchrun`` (it sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
MASTER_PORT); without it, ``setup()`` returns a single process (world size 1, no
process group) and everything here is a no-op, so one script serves both cases.

    ctx = setup()                                      # from torchrun's environment
    model = wrap_model(model, ctx, "fsdp")             # or "ddp" (default)
    optimizer = torch.optim.AdamW(model.parameters())  # after wrapping
    x = shard(global_batch, ctx)                       # this rank's rows
    with sync_gradients(model, sync=last_micro_batch): ...  # forward and backward of a micro-batch
    # (course_lib.training.loop.train_step runs a step so: one process or several)
    # checkpoints: course_lib.scaleout.checkpoint (rank 0 writes one full file)
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import functools
import os
import sys
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from course_lib.env import get_device

# FSDP2 (``fully_shard``, ``FSDPModule``) and ``DTensor`` are imported on first use: 0.7 s
# of imports that a run on one process never needs, so every command and notebook starts
# sooner. Nothing can be an FSDPModule or a DTensor before torch has imported them.
_FSDP_NAMES = ("fully_shard", "FSDPModule", "DTensor")


@functools.cache
def _fsdp_api() -> dict:
    try:  # torch >= 2.6
        from torch.distributed.fsdp import FSDPModule, fully_shard
    except ImportError:  # torch 2.4 / 2.5
        from torch.distributed._composable.fsdp import FSDPModule, fully_shard
    try:  # torch >= 2.5
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch 2.4
        from torch.distributed._tensor import DTensor
    return {"fully_shard": fully_shard, "FSDPModule": FSDPModule, "DTensor": DTensor}


def __getattr__(name: str):  # D.fully_shard, D.FSDPModule, D.DTensor (PEP 562)
    if name in _FSDP_NAMES:
        return _fsdp_api()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def fsdp_isinstance(obj, name: str) -> bool:
    """``isinstance(obj, D.DTensor)`` (``name``: or ``"FSDPModule"``), without importing FSDP to find out."""
    loaded = any(m in sys.modules for m in ("torch.distributed.tensor", "torch.distributed._tensor"))
    return loaded and isinstance(obj, _fsdp_api()[name])


STRATEGIES = ("ddp", "fsdp")
MIN_PARAMS_PER_RANK = 1024  # below this, sharding costs more in messages than it saves


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: its rank among ``world_size`` and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None  # None: a single process, no process group

    @property
    def is_main(self) -> bool:
        """Rank 0 prints, shows progress and writes checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def print(self, *args, **kwargs) -> None:
        if self.is_main:
            print(*args, **kwargs, flush=True)


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return default if value in (None, "") else int(value)


def setup(
    device: str | torch.device | None = None, timeout_s: float | None = None, quiet: bool = True
) -> DistContext:
    """Join the process group described by torchrun's environment variables.

    NCCL on CUDA (one GPU per rank: ``cuda:LOCAL_RANK``), gloo on the CPU. Without
    torchrun (no ``WORLD_SIZE``, or 1) this is a single process with no process group.
    ``timeout_s`` (default ``$COURSE_DIST_TIMEOUT`` or 300 s) bounds the rendezvous.
    ``quiet``: ranks other than 0 print nothing and show no progress bar (their
    warnings and errors still reach stderr).
    """
    world_size, rank = _env_int("WORLD_SIZE", 1), _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", rank)
    device = torch.device(device) if device is not None else get_device()
    if device.type == "mps":  # no collective backend for MPS: ranks talk through the CPU
        device = torch.device("cpu") if world_size > 1 else device
    if world_size <= 1:
        return DistContext(device=device)
    if dist.is_initialized():
        raise RuntimeError("a process group already exists; call cleanup() before setup() again.")
    missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(v)]
    if missing:
        raise RuntimeError(
            f"WORLD_SIZE={world_size} but {' and '.join(missing)} is not set, so the ranks cannot "
            "meet. Launch with torchrun (`torchrun --nproc-per-node N -m course_lib train ...`), "
            "which sets them, or export MASTER_ADDR=<host of rank 0> MASTER_PORT=<free port>."
        )
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    timeout_s = float(timeout_s or os.environ.get("COURSE_DIST_TIMEOUT", 300))
    try:
        timeout = datetime.timedelta(seconds=timeout_s)
        gpu = {"device_id": device} if backend == "nccl" else {}  # binds the rank to its GPU
        dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=timeout, **gpu)
    except (RuntimeError, dist.DistError) as exc:
        host, port = os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"]
        raise RuntimeError(
            f"rank {rank} of {world_size} could not meet the others at {host}:{port} within "
            f"{timeout_s:g} s ({type(exc).__name__}). Check that rank 0 runs and that host and port "
            "are reachable from every machine (same --rdzv-endpoint / MASTER_ADDR:MASTER_PORT on "
            "all nodes, port open in the firewall), or raise COURSE_DIST_TIMEOUT."
        ) from exc
    atexit.register(cleanup)  # leave the group cleanly however the script ends
    if quiet and rank != 0:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the life of the process)
        os.environ["TQDM_DISABLE"] = "1"
    return DistContext(rank, world_size, local_rank, device, backend)


def current(device: str | torch.device | None = None) -> DistContext:
    """The context of this process in the process group ``setup()`` joined (or a single process).

    Training code deep inside a library can ask for it instead of having it passed down.
    """
    if not dist.is_initialized():
        return DistContext(device=torch.device(device) if device is not None else get_device())
    rank, backend = dist.get_rank(), dist.get_backend()
    if backend == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
    return DistContext(rank, dist.get_world_size(), _env_int("LOCAL_RANK", rank), device, backend)


def cleanup(ctx: DistContext | None = None) -> None:
    """Leave the process group (safe to call on a single process)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext | None = None) -> None:
    if (ctx or current()).distributed:
        dist.barrier()


# ---------------------------------------------------------------------------- data
def rank_slice(global_batch: int, rank: int, world_size: int, accum_steps: int = 1) -> slice:
    """Rows of the global batch that ``rank`` reads: the ``rank``-th of ``world_size`` equal parts.

    The parts of all ranks, in rank order, are the global batch: N ranks together see
    exactly the batch a single process would.
    """
    if global_batch % (world_size * accum_steps) != 0:
        raise ValueError(
            f"the global batch of {global_batch} rows cannot be split evenly over {world_size} "
            f"rank(s) x {accum_steps} accumulation step(s): each rank must read the same number "
            f"of rows for the averaged gradient to equal the single-process one. Pick a batch "
            f"size that is a multiple of {world_size * accum_steps}, or change the number of "
            "processes (--nproc-per-node) or of accumulation steps."
        )
    per_rank = global_batch // world_size
    return slice(rank * per_rank, (rank + 1) * per_rank)


def shard(
    batch: torch.Tensor, ctx: DistContext | None = None, accum_steps: int = 1
) -> torch.Tensor:
    """This rank's rows (dim 0) of a global batch (or of a tensor of sample indices)."""
    ctx = ctx or current()
    return batch[rank_slice(batch.shape[0], ctx.rank, ctx.world_size, accum_steps)]


def check_batches(batch_size: int, n_items: int, ctx: DistContext | None = None, accum_steps: int = 1) -> None:
    """Before training on batches that may end short: the ranks (and each rank's
    ``accum_steps`` micro-batches) must split a full batch evenly, and the short batch must
    still give every micro-batch of every rank at least one item."""
    ctx = ctx or current()
    rank_slice(batch_size, 0, ctx.world_size, accum_steps)  # raises unless they divide it
    need = ctx.world_size * accum_steps
    if 0 < n_items % batch_size < need:
        raise ValueError(
            f"{n_items} examples in batches of {batch_size} leave a last batch of "
            f"{n_items % batch_size}, fewer than the {need} micro-batches of all ranks; use a number of "
            f"examples whose remainder by {batch_size} is 0 or at least {need}."
        )


def rank_part(items, ctx: DistContext | None = None):
    """This rank's contiguous part of ``items``, for batches that may not split evenly.

    Sizes differ by at most one (the first ranks get the extra items). Weight each rank's
    mean loss by its share of the batch's items (tokens) so that unequal parts still give
    the single-process gradient.
    """
    from course_lib.training.core import micro_batches  # the one splitter

    ctx = ctx or current()
    n, world = len(items), ctx.world_size
    if n < world:
        raise ValueError(
            f"a batch of {n} item(s) cannot feed {world} ranks (each needs at least one); "
            "use a larger batch or fewer processes."
        )
    return micro_batches(items, world)[ctx.rank]


def average(t: torch.Tensor, ctx: DistContext | None = None) -> torch.Tensor:
    """Mean of a (device) tensor over ranks, staying on the device (no wait for the host)."""
    ctx = ctx or current()
    if not ctx.distributed:
        return t
    t = t.detach().clone()
    dist.all_reduce(t)
    return t / ctx.world_size


# ---------------------------------------------------------------------------- model
def find_blocks(model: nn.Module) -> list[nn.Module]:
    """The model's repeated blocks: every element of every ``nn.ModuleList``."""
    return [m for lst in model.modules() if isinstance(lst, nn.ModuleList) for m in lst]


def wrap_model(
    model: nn.Module,
    ctx: DistContext,
    strategy: str = "ddp",
    blocks: list[nn.Module] | None = None,
    reshard_after_forward: bool = True,
) -> nn.Module:
    """Move ``model`` to the rank's device and wrap it with DDP or FSDP (``fully_shard``).

    FSDP shards each block (``blocks``, default ``find_blocks(model)``) then the root,
    so one block's full parameters exist at a time (with ``reshard_after_forward=False``,
    FSDP's SHARD_GRAD_OP, a block's stay whole from its forward to its backward pass). On
    one process the model is returned unwrapped. Build the optimizer *after* wrapping.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy={strategy!r} is not one of {STRATEGIES}.")
    model = model.to(ctx.device)
    if strategy == "fsdp":
        blocks = find_blocks(model) if blocks is None else blocks
        n_params = sum(p.numel() for p in model.parameters())
        if ctx.world_size > 1 and not blocks:
            raise ValueError(
                f"FSDP shards a model block by block, and {type(model).__name__} has no block to "
                "shard (no nn.ModuleList). Keep its layers in an nn.ModuleList, pass blocks=[...], "
                "or use DDP (drop --fsdp)."
            )
        if n_params < ctx.world_size * MIN_PARAMS_PER_RANK:
            raise ValueError(
                f"{type(model).__name__} has {n_params} parameters, too few to shard over "
                f"{ctx.world_size} ranks (FSDP wants at least {MIN_PARAMS_PER_RANK} per rank: "
                f"{ctx.world_size * MIN_PARAMS_PER_RANK}). Use DDP (drop --fsdp) for a model this "
                "small, or fewer ranks."
            )
    if not ctx.distributed:
        return model
    if strategy == "ddp":
        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        return _DDP(model, device_ids=ids)
    # FSDP warns whenever a wrapped module returns a view (any nn.Linear on a 3-D input
    # does); it matters only for in-place ops on that output, which the course never does.
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
    fully_shard = _fsdp_api()["fully_shard"]
    for block in blocks:
        fully_shard(block, reshard_after_forward=reshard_after_forward)
    fully_shard(model, reshard_after_forward=reshard_after_forward)
    return model


class _DDP(DDP):
    """DDP that lets the model's own attributes through (``ddp.config`` is ``model.config``)."""

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "module":
                raise
            return getattr(self.module, name)


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside DDP (FSDP keeps the module itself)."""
    return model.module if isinstance(model, DDP) else model


@contextlib.contextmanager
def sync_gradients(model: nn.Module, sync: bool = True):
    """Gradient accumulation: communicate gradients only on the last micro-step.

    Inside ``sync_gradients(model, False)`` the backward pass only accumulates local
    gradients (DDP's ``no_sync``, FSDP's ``set_requires_gradient_sync(False)``);
    the final micro-step's backward (``sync=True``) averages the sum across ranks.
    """
    model = getattr(model, "_orig_mod", model)  # the module inside torch.compile
    if sync or not (isinstance(model, DDP) or fsdp_isinstance(model, "FSDPModule")):
        yield
    elif isinstance(model, DDP):
        with model.no_sync():
            yield
    else:
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)


def clip_grad_norm(model: nn.Module, max_norm: float) -> float:
    """Clip the *global* gradient norm; returns it before clipping, same on all ranks.

    Under DDP every rank holds the averaged gradients already; under FSDP the gradients
    are DTensor shards and ``clip_grad_norm_`` reduces their norms across ranks.
    """
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    if fsdp_isinstance(norm, "DTensor"):
        norm = norm.full_tensor()
    return float(norm)


__all__ = [
    "DistContext", "setup", "current", "cleanup", "barrier", "rank_slice", "shard",
    "check_batches", "rank_part", "average", "find_blocks", "wrap_model",
    "unwrap", "sync_gradients", "clip_grad_norm", "fsdp_isinstance",
]  # fmt: skip
