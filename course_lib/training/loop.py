"""The one training loop: optimizer steps for any model and any loss.

A task gives only its batches and its loss::

    state = fit(model, optimizer, batch_at, loss_of, steps=200, lr_at=schedule)

- ``batch_at(i)`` returns the batch of optimizer step ``i`` (0-based): a tensor, or a tuple
  or list of tensors whose first dimension is the examples.
- ``loss_of(model, batch)`` returns the mean loss of a (micro-)batch, a scalar tensor.

Per step, ``fit`` does what a learner writes by hand (notebooks 07 and 08): set the
learning rate, forward and loss, backward, clip the gradient norm, step, zero the
gradients. Around it: micro-batches (gradient accumulation, same result as one batch),
mixed precision (``Precision``), evaluation every ``eval_every`` steps and after the last,
a stop at a target loss or after a time budget, a progress bar, and ``on_eval(state)``
where a caller writes its checkpoint.

The returned ``state`` is JSON: ``step``, ``train_losses`` ([step, loss] per step),
``evals`` (the dicts ``evaluate`` returned, with ``step``) and ``stopped`` (why it ended).
Passing a saved ``state`` back continues from its step.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from course_lib.training.precision import Precision

Batch = torch.Tensor | tuple | list


def split_batch(batch: Batch, parts: int) -> list:
    """``batch`` cut along its first dimension into ``parts`` consecutive micro-batches whose
    sizes differ by at most one (a tuple or list is cut element by element)."""
    from course_lib.training.core import micro_batches

    if isinstance(batch, (tuple, list)):
        return [type(batch)(pieces) for pieces in zip(*(micro_batches(t, parts) for t in batch))]
    return micro_batches(batch, parts)


def clip_parameters(model) -> Callable[[float], torch.Tensor]:
    """Clipping of the global gradient norm over ``model``'s parameters (one process)."""
    return lambda max_norm: torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)


def train_step(model, optimizer, batch: Batch, loss_of, *, grad_clip: float = 1.0, grad_accum: int = 1,
               precision: Precision | None = None, clip_grad=None, forward_model=None,
               sync=None) -> torch.Tensor:
    """One optimizer step: forward, loss, backward (over ``grad_accum`` micro-batches), clip,
    step, zero the gradients. Returns the step's mean loss, detached, on the device.

    ``forward_model`` is what runs the forward pass (a compiled or DDP-wrapped ``model``);
    ``sync(micro)`` a context manager that says whether gradients are synchronised on
    micro-batch ``micro`` (distributed runs); ``clip_grad(max_norm)`` the clipping."""
    precision = precision or Precision("fp32", "cpu")
    forward_model = forward_model or model
    step_loss = None
    for micro, part in enumerate(split_batch(batch, grad_accum) if grad_accum > 1 else [batch]):
        with sync(micro) if sync else _nothing():
            with precision.autocast():
                loss = loss_of(forward_model, part)
            precision.backward(loss / grad_accum)
        piece = loss.detach() / grad_accum
        step_loss = piece if step_loss is None else step_loss + piece
    precision.step(optimizer, clip_grad or clip_parameters(model), grad_clip)
    optimizer.zero_grad(set_to_none=True)
    return step_loss


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def fit(model, optimizer, batch_at: Callable[[int], Batch], loss_of, *, steps: int,
        lr_at: Callable[[int], float] | None = None, grad_clip: float = 1.0, grad_accum: int = 1,
        precision: Precision | None = None, evaluate: Callable[[], dict] | None = None,
        eval_every: int = 100, target_loss: float | None = None, time_budget: float | None = None,
        on_eval: Callable[[dict], None] | None = None, state: dict | None = None,
        progress: bool = True, desc: str = "training", **step_options) -> dict:
    """Train ``model`` with ``optimizer`` for optimizer steps ``state['step'] + 1 .. steps``.

    ``lr_at(i)``: the learning rate of step ``i`` (0-based; None keeps the optimizer's).
    ``evaluate()``: a dict of losses (``val`` is the one ``target_loss`` compares), run
    every ``eval_every`` steps and after the last; the model is put in eval mode and
    gradients are off around it. ``time_budget``: seconds, checked at each evaluation.
    ``step_options`` go to ``train_step`` (``forward_model``, ``clip_grad``, ``sync``).
    """
    if steps < 0 or eval_every < 1 or grad_accum < 1:
        raise ValueError(f"fit: steps={steps} must be >= 0, eval_every={eval_every} and "
                         f"grad_accum={grad_accum} >= 1.")
    state = state if state is not None else {"step": 0, "train_losses": [], "evals": []}
    state.setdefault("train_losses", [])
    state.setdefault("evals", [])
    state["stopped"] = "steps"
    bar = _progress_bar(steps, state["step"], progress, desc)
    pending, started = [], time.perf_counter()
    model.train()
    for step in range(state["step"] + 1, steps + 1):
        if lr_at is not None:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step - 1)
        loss = train_step(model, optimizer, batch_at(step - 1), loss_of, grad_clip=grad_clip,
                          grad_accum=grad_accum, precision=precision, **step_options)
        state["step"] = step
        pending.append((step, loss))
        bar.update(1)
        if step % eval_every == 0 or step == steps:
            values = torch.stack([v.float() for _, v in pending]).tolist()  # one wait for the device
            state["train_losses"] += [[s, round(v, 6)] for (s, _), v in zip(pending, values)]
            pending = []
            if evaluate is not None:
                state["evals"].append({"step": step, **_evaluated(model, evaluate)})
            if target_loss is not None and state["evals"] and state["evals"][-1].get("val", float("inf")) <= target_loss:
                state["stopped"] = f"target validation loss {target_loss} reached"
            elif time_budget is not None and time.perf_counter() - started >= time_budget:
                state["stopped"] = f"time budget of {time_budget:g} s spent"
            if on_eval is not None:
                on_eval(state)
            if state["stopped"] != "steps":
                break
    bar.close()
    return state


def _evaluated(model, evaluate) -> dict:
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = evaluate()
    model.train(was_training)
    return out


def _progress_bar(total: int, initial: int, enabled: bool, desc: str):
    from tqdm import tqdm

    from course_lib.env import progress_disabled

    return tqdm(total=total, initial=initial, desc=desc, unit="step", disable=not enabled or progress_disabled())
