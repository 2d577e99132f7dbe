"""Knowledge distillation: a small student learns from a large teacher's soft targets (notebook 12).

    "we can transfer the knowledge [...] by using the class probabilities produced by the
    cumbersome model as 'soft targets' for training the small model."  "Since the magnitudes
    of the gradients produced by the soft targets scale as 1/T^2 it is important to multiply
    them by T^2 when using both hard and soft targets."  (Hinton, Vinyals and Dean, 2015,
    *Distilling the Knowledge in a Neural Network*, sections 1 and 2)

- ``soft_targets``: ``softmax(logits / T)``; a temperature T > 1 flattens the distribution,
  so the teacher's small probabilities (which wrong answers are nearly right) carry weight.
- ``distillation_loss``: ``alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(student, targets)``,
  both terms averaged over the positions whose target is not ``ignore_index``.
- ``distillation_loss_of``: the ``loss_of(model, batch)`` that ``course_lib.training.loop.fit``
  takes, calling the frozen teacher on each batch ``(x, y)`` of a GPT-style model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from course_lib import checks
from course_lib.losses import IGNORE_INDEX


def soft_targets(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """The probabilities ``softmax(logits / T)`` over the last dimension."""
    checks.number("temperature", temperature, 0.0, above=True, fix="T = 1 is the ordinary softmax")
    return F.softmax(logits.float() / temperature, dim=-1)


def _check_logits(student_logits, teacher_logits, targets) -> None:
    for name, t in (("student_logits", student_logits), ("teacher_logits", teacher_logits), ("targets", targets)):
        if not torch.is_tensor(t):
            raise ValueError(f"{name} must be a tensor, got {type(t).__name__}.")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student_logits {tuple(student_logits.shape)} and teacher_logits "
                         f"{tuple(teacher_logits.shape)} must have the same shape (the same vocabulary).")
    if targets.shape != student_logits.shape[:-1]:
        raise ValueError(f"targets {tuple(targets.shape)} must be the logits' shape without the vocabulary: "
                         f"{tuple(student_logits.shape[:-1])}.")


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
                      temperature: float = 2.0, alpha: float = 0.5, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Hinton et al.'s loss, a scalar: ``alpha`` times the soft term (the KL divergence from the
    teacher's to the student's distribution at temperature T, times T^2) plus ``1 - alpha`` times
    the cross-entropy with the hard ``targets``. Logits ``(..., vocab)``, targets ``(...)``."""
    _check_logits(student_logits, teacher_logits, targets)
    checks.number("temperature", temperature, 0.0, above=True, fix="Hinton et al. use T from 1 to 20")
    checks.probability("alpha", alpha, fix="0: hard labels only, 1: the teacher only")
    vocab = student_logits.shape[-1]
    keep = targets.reshape(-1) != ignore_index
    student = student_logits.reshape(-1, vocab)[keep].float()
    teacher = teacher_logits.reshape(-1, vocab)[keep].detach().float()
    log_p_student = F.log_softmax(student / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher / temperature, dim=-1)
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(-1).mean()  # KL(teacher || student)
    hard = F.cross_entropy(student, targets.reshape(-1)[keep])
    return alpha * temperature**2 * kl + (1 - alpha) * hard


def distillation_loss_of(teacher: nn.Module, temperature: float = 2.0, alpha: float = 0.5):
    """``loss_of(student, (x, y))`` for ``fit``: the teacher (frozen, in eval mode, no gradients)
    and the student both read ``x``; each returns ``(logits, ...)`` as ``GPT`` does."""
    if not isinstance(teacher, nn.Module):
        raise ValueError(f"teacher must be a torch nn.Module, got {type(teacher).__name__}.")
    checks.number("temperature", temperature, 0.0, above=True, fix="Hinton et al. use T from 1 to 20")
    checks.probability("alpha", alpha, fix="0: hard labels only, 1: the teacher only")
    teacher.eval().requires_grad_(False)

    def loss_of(student: nn.Module, batch) -> torch.Tensor:
        x, y = batch
        with torch.no_grad():
            teacher_logits = teacher(x)[0]
        return distillation_loss(student(x)[0], teacher_logits, y, temperature, alpha)

    return loss_of
