"""Knowledge distillation's loss against independent references: a brute-force sum over the
vocabulary in float64 Python, F.kl_div with log_target and torch.distributions' KL; broken
variants (no T^2, the KL reversed, the teacher not softened) must disagree with them."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Categorical, kl_divergence

from course_lib.distill import distillation_loss, distillation_loss_of, soft_targets
from course_lib.gpt import GPT, GPTConfig
from course_lib.training.loop import fit


def _logits(seed=0, shape=(3, 5, 11)):
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(shape, generator=g) * 2
    teacher = torch.randn(shape, generator=g) * 3
    targets = torch.randint(0, shape[-1], shape[:-1], generator=g)
    return student, teacher, targets


def _brute_force(student, teacher, targets, temperature, alpha):
    """The formula position by position and word by word, in Python floats."""
    total_kl, total_ce, n = 0.0, 0.0, 0
    for s_row, t_row, y in zip(student.reshape(-1, student.shape[-1]).tolist(),
                               teacher.reshape(-1, teacher.shape[-1]).tolist(), targets.reshape(-1).tolist(), strict=True):
        zs = sum(math.exp(v / temperature) for v in s_row)
        zt = sum(math.exp(v / temperature) for v in t_row)
        p_s = [math.exp(v / temperature) / zs for v in s_row]
        p_t = [math.exp(v / temperature) / zt for v in t_row]
        total_kl += sum(pt * math.log(pt / ps) for pt, ps in zip(p_t, p_s, strict=True))
        total_ce += -(s_row[y] - math.log(sum(math.exp(v) for v in s_row)))
        n += 1
    return alpha * temperature**2 * total_kl / n + (1 - alpha) * total_ce / n


def _library_references(student, teacher, targets, temperature, alpha):
    """The same loss from PyTorch's own pieces: F.kl_div (log_target) and distributions' KL."""
    v = student.shape[-1]
    s, t = student.reshape(-1, v).double() / temperature, teacher.reshape(-1, v).double() / temperature
    kl_div = F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="batchmean")
    kl_dist = kl_divergence(Categorical(logits=t), Categorical(logits=s)).mean()
    ce = F.cross_entropy(student.reshape(-1, v).double(), targets.reshape(-1))
    return [alpha * temperature**2 * kl + (1 - alpha) * ce for kl in (kl_div, kl_dist)]


def _agrees(loss_fn, temperature=4.0, alpha=0.7) -> bool:
    student, teacher, targets = _logits()
    want = _brute_force(student, teacher, targets, temperature, alpha)
    got = loss_fn(student, teacher, targets, temperature, alpha).item()
    refs = [r.item() for r in _library_references(student, teacher, targets, temperature, alpha)]
    return all(abs(x - want) < 1e-5 * max(1.0, abs(want)) for x in [got, *refs])


def _no_t_squared(s, t, y, temperature, alpha):
    return distillation_loss(s, t, y, temperature, alpha) - alpha * (temperature**2 - 1) * _kl(t, s, temperature)


def _kl(p_logits, q_logits, temperature):
    v = p_logits.shape[-1]
    lp = F.log_softmax(p_logits.reshape(-1, v) / temperature, -1)
    lq = F.log_softmax(q_logits.reshape(-1, v) / temperature, -1)
    return (lp.exp() * (lp - lq)).sum(-1).mean()


def _reversed_kl(s, t, y, temperature, alpha):  # KL(student || teacher)
    return alpha * temperature**2 * _kl(s, t, temperature) + (1 - alpha) * F.cross_entropy(s.reshape(-1, s.shape[-1]),
                                                                                            y.reshape(-1))


def _teacher_not_softened(s, t, y, temperature, alpha):
    return distillation_loss(s, t * temperature, y, temperature, alpha)


def test_distillation_loss_equals_brute_force_and_torchs_kl():
    for temperature, alpha in ((1.0, 0.5), (2.0, 0.9), (4.0, 0.7), (0.5, 1.0)):
        assert _agrees(distillation_loss, temperature, alpha), (temperature, alpha)


@pytest.mark.parametrize("broken", [_no_t_squared, _reversed_kl, _teacher_not_softened])
def test_broken_variants_disagree_with_the_references(broken):
    assert _agrees(distillation_loss)  # the same check passes for the right loss
    assert not _agrees(broken)


def test_alpha_zero_is_cross_entropy_and_a_perfect_student_costs_only_its_cross_entropy():
    student, teacher, targets = _logits(1)
    ce = F.cross_entropy(student.reshape(-1, 11), targets.reshape(-1))
    torch.testing.assert_close(distillation_loss(student, teacher, targets, 3.0, 0.0), ce)
    torch.testing.assert_close(distillation_loss(student, student, targets, 3.0, 0.5), 0.5 * ce)


def test_t_squared_keeps_the_soft_gradient_the_same_size_at_any_high_temperature():
    """Hinton et al.: the soft term's gradient scales as 1/T^2; times T^2 it stays level."""
    student, teacher, targets = _logits(2)
    norms = []
    for temperature in (8.0, 16.0, 32.0):
        s = student.clone().requires_grad_(True)
        distillation_loss(s, teacher, targets, temperature, alpha=1.0).backward()
        norms.append(s.grad.norm().item())
    assert max(norms) / min(norms) < 1.05, norms
    s = student.clone().requires_grad_(True)
    (_kl(teacher, s, 16.0)).backward()  # without T^2: 1/256 of it
    assert s.grad.norm().item() < norms[1] / 200


def test_ignored_positions_count_in_neither_term():
    student, teacher, targets = _logits(3)
    masked = targets.clone()
    masked[0, :2] = -100
    keep = masked != -100
    got = distillation_loss(student, teacher, masked, 2.0, 0.5)
    want = distillation_loss(student[keep], teacher[keep], targets[keep], 2.0, 0.5)
    torch.testing.assert_close(got, want)


def test_soft_targets_flatten_with_temperature():
    logits = torch.tensor([3.0, 1.0, 0.0])
    torch.testing.assert_close(soft_targets(logits, 1.0), torch.softmax(logits, -1))
    assert soft_targets(logits, 4.0).max() < soft_targets(logits, 1.0).max()
    with pytest.raises(ValueError, match="temperature"):
        soft_targets(logits, 0.0)


def test_bad_arguments_are_named():
    student, teacher, targets = _logits()
    with pytest.raises(ValueError, match="alpha"):
        distillation_loss(student, teacher, targets, 2.0, 1.5)
    with pytest.raises(ValueError, match="same shape"):
        distillation_loss(student, teacher[..., :5], targets)
    with pytest.raises(ValueError, match="targets"):
        distillation_loss(student, teacher, targets[:, :2])


def test_fit_with_the_teachers_loss_trains_the_student_and_leaves_the_teacher():
    torch.manual_seed(0)
    teacher = GPT(GPTConfig(vocab_size=13, block_size=8, n_layers=1, n_heads=2, d_model=16))
    student = GPT(GPTConfig(vocab_size=13, block_size=8, n_layers=1, n_heads=2, d_model=8))
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    x, y = torch.randint(0, 13, (4, 8)), torch.randint(0, 13, (4, 8))
    loss_of = distillation_loss_of(teacher, temperature=2.0, alpha=0.5)
    with torch.no_grad():
        torch.testing.assert_close(loss_of(student, (x, y)),
                                   distillation_loss(student(x)[0], teacher(x)[0], y, 2.0, 0.5))
    opt = torch.optim.AdamW(student.parameters(), lr=1e-2)
    state = fit(student, opt, lambda i: (x, y), loss_of, steps=20, progress=False)
    assert state["train_losses"][-1][1] < state["train_losses"][0][1]
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert all(p.grad is None for p in teacher.parameters())
