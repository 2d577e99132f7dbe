"""training.loop.fit against loops written out by hand, in float64 under plain SGD (a wrong
gradient scale moves SGD's parameters by as much: nothing hides it).

- one batch per step: fit gives the hand-written loop's parameters bit for bit (schedule,
  hand-written clipping of the global norm, SGD written as ``p -= lr * grad``);
- ``grad_accum`` micro-batches, and ``MicroBatches`` of unequal sizes weighted by their
  share, give the parameters of one batch (to 1e-12);
- the train gpt command's steps are the GPT loop written out (AdamW, cosine schedule,
  accumulation, clipping, dropout), bit for bit;
- the stops: target loss, time budget, ``on_step``; a resumed state continues exactly;
  evaluation runs in eval mode without gradients.

Each comparison is shown able to fail: a loop broken on purpose (the loss not divided by
the number of micro-batches, the clipping left out) misses by far more than the tolerance.
"""

import pytest
import torch
import torch.nn.functional as F

from course_lib.training.loop import MicroBatches, fit

STEPS, LR, CLIP = 6, 0.3, 0.5


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).double()


def batch_at(i: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + i)
    return torch.randn(8, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (8,), generator=g)


def loss_of(model, batch) -> torch.Tensor:
    x, y = batch
    return F.cross_entropy(model(x), y)


def lr_at(i: int) -> float:
    return LR * min(1.0, (i + 1) / 3) * (1 - i / (2 * STEPS))  # warmup, then down


def by_hand(clip: bool = True) -> tuple[list, list[float]]:
    """The loop a learner writes: lr, forward, loss, backward, clip, step, zero."""
    model = tiny_model()
    params, losses = list(model.parameters()), []
    for i in range(STEPS):
        loss = loss_of(model, batch_at(i))
        loss.backward()
        if clip:
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
            scale = torch.clamp(CLIP / (norm + 1e-6), max=1.0)
            for p in params:
                p.grad.mul_(scale)
        with torch.no_grad():
            for p in params:
                p.add_(p.grad, alpha=-lr_at(i))
                p.grad = None
        losses.append(loss.item())
    return params, losses


def with_fit(grad_accum: int = 1, batches=batch_at, steps: int = STEPS, **kw):
    model = tiny_model()
    state = fit(model, torch.optim.SGD(model.parameters(), lr=LR), batches, loss_of, steps=steps, lr_at=lr_at,
                grad_clip=CLIP, grad_accum=grad_accum, progress=False, **kw)
    return list(model.parameters()), state


def max_diff(a, b) -> float:
    return max(float((p - q).detach().abs().max()) for p, q in zip(a, b, strict=True))


def test_fit_is_the_hand_written_loop_bit_for_bit(one_thread):
    want, losses = by_hand()
    got, state = with_fit()
    assert all(torch.equal(p, q) for p, q in zip(got, want, strict=True))
    assert [v for _, v in state["train_losses"]] == [round(v, 6) for v in losses]
    assert [s for s, _ in state["train_losses"]] == list(range(1, STEPS + 1))
    assert state["stopped"] == "steps" and state["step"] == STEPS
    unclipped, _ = by_hand(clip=False)  # the clipping bites: leaving it out is seen
    assert max_diff(unclipped, want) > 1e-3


def test_micro_batches_give_the_parameters_of_one_batch(one_thread):
    want, _ = with_fit(grad_accum=1)
    for k in (2, 4):
        got, _ = with_fit(grad_accum=k)
        assert max_diff(got, want) < 1e-12, k

    def uneven(i, weights=None):  # 3 + 5 rows, each mean weighted by its share of the batch
        x, y = batch_at(i)
        return MicroBatches([((x[:3], y[:3]), weights or 3 / 8), ((x[3:], y[3:]), weights or 5 / 8)])

    got, _ = with_fit(batches=uneven)
    assert max_diff(got, want) < 1e-12
    summed, _ = with_fit(batches=lambda i: uneven(i, weights=1.0))  # loss not divided: the sum of means
    assert max_diff(summed, want) > 1e-3


def test_a_resumed_state_continues_exactly(one_thread):
    want, full = with_fit()
    model = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    state = fit(model, optimizer, batch_at, loss_of, steps=2, lr_at=lr_at, grad_clip=CLIP, progress=False)
    state = fit(model, optimizer, batch_at, loss_of, steps=STEPS, lr_at=lr_at, grad_clip=CLIP, progress=False,
                state=state)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), want, strict=True))
    assert state["train_losses"] == full["train_losses"]


def test_target_loss_time_budget_and_on_step_end_the_run_with_an_evaluation(one_thread):
    seen = []

    def evaluate():
        seen.append((torch.is_grad_enabled(), model.training))
        return {"val": 1.0 / len(seen)}

    model = tiny_model()
    saved = []
    state = fit(model, torch.optim.SGD(model.parameters(), lr=LR), batch_at, loss_of, steps=50, eval_every=2,
                evaluate=evaluate, target_loss=0.3, on_eval=lambda st: saved.append(st["step"]), progress=False)
    assert state["step"] == 8 and [e["step"] for e in state["evals"]] == [2, 4, 6, 8] and saved == [2, 4, 6, 8]
    assert state["stopped"] == "target validation loss 0.3 reached"
    assert seen[0] == (False, False) and model.training  # evaluated without gradients, in eval mode
    _, state = with_fit(steps=50, time_budget=0.0, evaluate=lambda: {"val": 1.0}, eval_every=10)
    assert (state["step"], state["evals"][-1]["step"]) == (1, 1) and "time budget" in state["stopped"]
    assert state["train_seconds"] > 0
    _, state = with_fit(steps=50, on_step=lambda st: st["train_losses"][-1][0] == 3, evaluate=lambda: None)
    assert state["step"] == 3 and state["evals"] == [] and state["stopped"] == "on_step asked to stop"
    with pytest.raises(ValueError, match="grad_accum=0"):
        with_fit(grad_accum=0)


def test_train_gpt_is_the_gpt_loop_written_out(one_thread):
    """``training.gpt.train``'s steps: AdamW (configure_optimizer), the cosine schedule,
    two micro-batches of loss / 2, clipping, dropout on; bit for bit."""
    from course_lib.gpt import GPT, GPTConfig
    from course_lib.tokenizer import CharTokenizer
    from course_lib.training import gpt as G

    text = "the man sees the dog. the dog sees the young woman. " * 10
    tok = CharTokenizer.from_text(text)
    data = G.prepare_data(text, tok)
    cfg = G.GPTTrainConfig(steps=5, batch_size=8, grad_accum=2, lr=3e-3, warmup=2, grad_clip=0.1, eval_every=100,
                           eval_batches=1, seed=3, device="cpu", precision="fp32", compile=False, progress=False)

    def model():
        torch.manual_seed(0)
        return GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=8, n_layers=1, n_heads=2, d_model=16, dropout=0.2))

    def written_out(divide: bool = True):
        m = model()
        optimizer = G.configure_optimizer(m, cfg, torch.device("cpu"))
        for i in range(cfg.steps):
            for group in optimizer.param_groups:
                group["lr"] = G.lr_at(i, cfg)
            x, y = G.get_batch(data.train, cfg.batch_size, 8, cfg.seed, i)
            for xm, ym in ((x[:4], y[:4]), (x[4:], y[4:])):
                loss = m(xm, ym)[1]
                (loss / 2 if divide else loss).backward()
            torch.nn.utils.clip_grad_norm_(m.parameters(), cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return m.state_dict()

    trained = model()
    G.train(trained, data, cfg)
    want = written_out()
    assert all(torch.equal(v, want[k]) for k, v in trained.state_dict().items())
    wrong = written_out(divide=False)  # AdamW hides most of a wrong scale, but not all of it
    assert any(not torch.equal(v, wrong[k]) for k, v in trained.state_dict().items())
