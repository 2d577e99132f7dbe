"""The one training loop: optimizer steps for any model and any loss.

A task gives only its batches and its loss::

    state = fit(model, optimizer, batch_at, loss_of, steps=200, lr_at=schedule)

- ``batch_at(i)`` returns the batch of optimizer step ``i`` (0-based): a tensor, or a tuple
  or list of tensors whose first dimension is the examples, or ``MicroBatches`` (a batch
  the task cut itself, each part with its weight).
- ``loss_of(model, batch)`` returns the mean loss of a (micro-)batch, a scalar tensor.

Per step, ``train_step`` does what a learner writes by hand (notebooks 07 and 08): forward
and loss, backward, clip the gradient norm, step, zero the gradients. ``fit`` sets the
learning rate before each step and runs around it: micro-batches (gradient accumulation,
same result as one batch), mixed precision (``Precision``), several processes (DDP or
FSDP: gradients synchronised on the last micro-batch, the logged loss averaged over
ranks, the progress bar on rank 0), evaluation every ``eval_every`` steps and after the
last, a stop at a target loss or after a time budget, ``on_step(state)`` after each step
and ``on_eval(state)`` after each evaluation (where a caller writes its checkpoint). The
progress bar shows the last loss read from the device (every step when there is an
``on_step``, else at each evaluation) and the epoch where the task keeps one in ``state``.

The returned ``state`` is JSON: ``step``, ``train_losses`` ([step, loss] per step),
``evals`` (the dicts ``evaluate`` returned, with ``step``), ``train_seconds`` (time spent
in training steps, evaluation and callbacks not counted) and ``stopped`` (why it ended).
Passing a saved ``state`` back continues from its step.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from course_lib import scaleout as D
from course_lib.training.precision import Precision

Batch = torch.Tensor | tuple | list
FP32 = Precision("fp32", "cpu")


class MicroBatches(list):
    """A batch its task has already cut: ``[(micro_batch, weight), ...]``; the step's loss is
    the sum of ``weight * loss`` (for example each part's share of the batch's tokens, when
    a mean over tokens is wanted and the parts hold different numbers of them)."""


def micro_batches(items, grad_accum: int) -> list:
    """``items`` (a tensor's rows or a list) cut into ``grad_accum`` consecutive parts whose
    sizes differ by at most one; together they are ``items``."""
    n = len(items)
    if n < grad_accum:
        raise ValueError(f"{n} example(s) cannot fill {grad_accum} micro-batches; "
                         "use a larger --batch-size or a smaller --grad-accum.")
    base, extra = divmod(n, grad_accum)
    bounds = [m * base + min(m, extra) for m in range(grad_accum + 1)]
    return [items[bounds[m]:bounds[m + 1]] for m in range(grad_accum)]


def split_batch(batch: Batch, parts: int) -> list:
    """``batch`` cut along its first dimension into ``parts`` consecutive micro-batches whose
    sizes differ by at most one (a tuple or list is cut element by element)."""
    if isinstance(batch, (tuple, list)):
        return [type(batch)(pieces) for pieces in zip(*(micro_batches(t, parts) for t in batch))]
    return micro_batches(batch, parts)


def clip_parameters(model) -> Callable[[float], torch.Tensor]:
    """Clipping of the global gradient norm over ``model``'s parameters (one process, or
    DDP and FSDP ranks: the norm of FSDP's sharded gradients is reduced across ranks)."""
    return lambda max_norm: torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)


def train_step(model, optimizer, batch: Batch, loss_of, *, grad_clip: float = 1.0, grad_accum: int = 1,
               precision: Precision | None = None, clip_grad=None, forward_model=None,
               sync=None) -> torch.Tensor:
    """One optimizer step: forward, loss, backward (over ``grad_accum`` micro-batches, each
    loss divided by ``grad_accum``, or over the weighted parts of ``MicroBatches``), clip,
    step, zero the gradients. Returns the step's mean loss, detached, on the device.

    ``forward_model`` is what runs the forward pass (a compiled or DDP/FSDP-wrapped
    ``model``); its gradients are synchronised across ranks on the last micro-batch only
    (or as ``sync(micro)``, a context manager, says). ``clip_grad(max_norm)``: the clipping."""
    precision = precision or FP32
    forward_model = forward_model or model
    if isinstance(batch, MicroBatches):
        parts = batch
    else:
        parts = [(part, None) for part in (split_batch(batch, grad_accum) if grad_accum > 1 else [batch])]
    step_loss = None
    for micro, (part, weight) in enumerate(parts):
        talk = sync(micro) if sync else D.sync_gradients(forward_model, sync=micro == len(parts) - 1)
        with talk:
            with precision.autocast():
                loss = loss_of(forward_model, part)
            if weight is not None:
                loss = loss * weight
            elif grad_accum > 1:
                loss = loss / grad_accum
            precision.backward(loss)
        step_loss = loss.detach() if step_loss is None else step_loss + loss.detach()
    precision.step(optimizer, clip_grad or clip_parameters(model), grad_clip)
    optimizer.zero_grad(set_to_none=True)
    return step_loss


def fit(model, optimizer, batch_at: Callable[[int], Batch], loss_of, *, steps: int,
        lr_at: Callable[[int], float] | None = None, grad_clip: float = 1.0, grad_accum: int = 1,
        precision: Precision | None = None, evaluate: Callable[[], dict | None] | None = None,
        eval_every: int = 100, target_loss: float | None = None, time_budget: float | None = None,
        on_eval: Callable[[dict], None] | None = None, on_step: Callable[[dict], object] | None = None,
        state: dict | None = None, progress: bool = True, desc: str = "training", **step_options) -> dict:
    """Train ``model`` with ``optimizer`` for optimizer steps ``state['step'] + 1 .. steps``.

    ``lr_at(i)``: the learning rate of step ``i`` (0-based; None keeps the optimizer's).
    ``evaluate()``: a dict of losses (``val`` is the one ``target_loss`` compares; None
    records nothing), run every ``eval_every`` steps, after the last, and when the run
    stops early; the model is put in eval mode and gradients are off around it.
    ``time_budget``: seconds of training (``state['train_seconds']``, resumed runs
    included), checked after every step. ``on_step(state)`` runs after every step, with
    that step's loss recorded; a true answer ends the run there (after an evaluation).
    ``step_options`` go to ``train_step`` (``forward_model``, ``clip_grad``, ``sync``).
    """
    if steps < 0 or eval_every < 1 or grad_accum < 1:
        raise ValueError(f"fit: steps={steps} must be >= 0, eval_every={eval_every} and "
                         f"grad_accum={grad_accum} >= 1.")
    state = state if state is not None else {"step": 0}
    for key, empty in (("step", 0), ("train_losses", []), ("evals", []), ("train_seconds", 0.0)):
        state.setdefault(key, empty)
    state["stopped"] = "steps"
    ctx = D.current(_device_of(model))
    bar = _progress_bar(steps, state["step"], progress and ctx.is_main, desc)
    pending, clock = [], _Clock(state)
    model.train()
    for step in range(state["step"] + 1, steps + 1):
        if lr_at is not None:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step - 1)
        loss = train_step(model, optimizer, batch_at(step - 1), loss_of, grad_clip=grad_clip,
                          grad_accum=grad_accum, precision=precision, **step_options)
        state["step"] = step
        pending.append((step, D.average(loss, ctx)))
        bar.update(1)
        clock.lap()
        if time_budget is not None and state["train_seconds"] >= time_budget:
            state["stopped"] = f"time budget of {time_budget:g} s spent"
        if on_step is not None:
            _record(state, pending, bar)  # on_step sees this step's loss
            clock.lap()
            if on_step(state):
                state["stopped"] = "on_step asked to stop"
            clock.restart()
        if step % eval_every == 0 or step == steps or state["stopped"] != "steps":
            _record(state, pending, bar)
            clock.lap()  # the wait for the device is training time
            _evaluate(model, state, evaluate, target_loss, on_eval)
            clock.restart()
            if state["stopped"] != "steps":
                break
    bar.close()
    return state


def _record(state: dict, pending: list, bar) -> None:
    """Move the pending (step, loss on the device) pairs into ``state['train_losses']``; the
    progress bar shows the last loss (and the epoch, where the task keeps one in ``state``)."""
    if pending:
        values = torch.stack([v for _, v in pending]).tolist()  # one wait for the device
        state["train_losses"] += [[s, round(v, 6)] for (s, _), v in zip(pending, values)]
        pending.clear()
        if not bar.disable:
            shown = {"loss": f"{values[-1]:.3f}", **({"epoch": state["epoch"]} if "epoch" in state else {})}
            bar.set_postfix(shown, refresh=False)


def _evaluate(model, state: dict, evaluate, target_loss, on_eval) -> None:
    if evaluate is not None:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            out = evaluate()
        model.train(was_training)
        if out is not None:
            state["evals"].append({"step": state["step"], **out})
    last = state["evals"][-1] if state["evals"] else {}
    if target_loss is not None and last.get("step") == state["step"] and last.get("val", float("inf")) <= target_loss:
        state["stopped"] = f"target validation loss {target_loss} reached"
    if on_eval is not None:
        on_eval(state)


class _Clock:
    """Adds the seconds spent training to ``state['train_seconds']``: ``lap`` counts the
    time since the last mark, ``restart`` skips it (evaluation, callbacks)."""

    def __init__(self, state: dict):
        self.state, self.mark = state, time.perf_counter()

    def lap(self) -> None:
        now = time.perf_counter()
        self.state["train_seconds"] += now - self.mark
        self.mark = now

    def restart(self) -> None:
        self.mark = time.perf_counter()


def _device_of(model) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def _progress_bar(total: int, initial: int, enabled: bool, desc: str):
    from tqdm import tqdm

    from course_lib.env import progress_disabled

    return tqdm(total=total, initial=initial, desc=desc, unit="step", disable=not enabled or progress_disabled())
