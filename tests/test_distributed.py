"""Data parallelism (DDP, FSDP) on 2 CPU processes (gloo) against one plain process.

Reference: a plain single-process PyTorch loop on the whole global batch (no
course_lib.distributed). Two ranks, each reading half of every batch (and
accumulating over micro-batches), must give the same losses and parameters to
float32 rounding; a checkpoint written by 2 ranks must continue the same run on 1
and on 2 ranks. All 2-rank scenarios share one launch (spawning costs seconds).

SGD with momentum is used for comparisons with the one-process reference: its step is
linear in the gradient, so a wrong gradient scale (a missing 1/accum, a sum instead of
a mean over ranks, a per-shard clipping norm) shows, and rounding noise is not
amplified. (AdamW ignores the gradient's scale and turns rounding noise on a
near-zero gradient into a full step: its checkpoint round trip is tested run-to-run.)
"""

import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from course_lib import scaleout as D
from course_lib.checkpoint import load_checkpoint
from course_lib.gpt import GPT, GPTConfig
from course_lib.scaleout import free_port
from course_lib.scaleout.rank_memory import memory_report

VOCAB, D_MODEL, N_HEADS, T, BATCH = 11, 16, 2, 6, 8
STEPS, SAVE_AT, ACCUM, CLIP = 4, 2, 2, 0.75


def global_batch(step):
    g = torch.Generator().manual_seed(1000 + step)
    x = torch.randint(0, VOCAB, (BATCH, T + 1), generator=g)
    return x[:, :-1], x[:, 1:]


def new_model():
    """A 2-layer course GPT without biases (a key bias gets no gradient)."""
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=VOCAB, block_size=T, n_layers=2, n_heads=N_HEADS, d_model=D_MODEL, bias=False))


def new_optimizer(model, kind="sgd"):
    if kind == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    return torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9, weight_decay=0.01)


def reference_run(clip=None, steps=STEPS):
    """One process, whole batch, plain PyTorch: the run every variant must reproduce."""
    model = new_model()
    opt = new_optimizer(model)
    losses, norms = [], []
    for step in range(steps):
        x, y = global_batch(step)
        loss = F.cross_entropy(model(x)[0].flatten(0, 1), y.flatten())
        loss.backward()
        norms.append(
            float(torch.nn.utils.clip_grad_norm_(model.parameters(), clip or float("inf")))
        )
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses, model.state_dict(), norms


def course_run(
    strategy,
    ctx,
    start_from=None,
    save_to=None,
    clip=None,
    optim="sgd",
    accum=ACCUM,
    every_rank=False,
):
    """The course's distributed loop: shard the batch, accumulate, clip, step, checkpoint."""
    model = D.wrap_model(new_model(), ctx, strategy)
    opt = new_optimizer(model, optim)
    start = 0
    if start_from and every_rank:  # each rank reads the file itself
        ckpt = load_checkpoint(start_from)
        D.load_model_state(model, ckpt["model"])
        D.load_optimizer_state(model, opt, ckpt["optimizer"])
        start = ckpt["train_state"]["step"]
    elif start_from:  # rank 0 reads it and broadcasts
        start = D.load(start_from, model, opt, ctx)["train_state"]["step"]
    losses = []
    for step in range(start, STEPS):
        x, y = (D.shard(t, ctx, accum) for t in global_batch(step))
        micro = x.shape[0] // accum
        total = 0.0
        for i in range(accum):
            with D.sync_gradients(model, sync=i == accum - 1):
                xi, yi = x[i * micro : (i + 1) * micro], y[i * micro : (i + 1) * micro]
                loss = F.cross_entropy(model(xi)[0].flatten(0, 1), yi.flatten()) / accum
                loss.backward()
            total += loss.item()
        if clip:
            D.clip_grad_norm(model, clip)
        opt.step()
        opt.zero_grad()
        losses.append(float(D.average(torch.tensor(total), ctx)))
        if save_to and step + 1 == SAVE_AT:
            D.save(save_to, model, {"model_type": "tiny"}, opt, {"step": step + 1}, ctx)
    params, _ = D.full_state(model)
    shapes = {
        n: tuple(getattr(p, "to_local", lambda p=p: p)().shape) for n, p in model.named_parameters()
    }
    return {
        "losses": losses,
        "params": params,
        "shapes": shapes,
        "memory": memory_report(model, opt),
    }


def two_rank_scenarios(folder):
    ctx = D.setup(timeout_s=60)
    assert ctx.world_size == 2 and ctx.backend == "gloo"
    path = {name: os.path.join(folder, f"{name}.safetensors") for name in ("ddp", "fsdp", "adamw")}
    out = {
        "ddp": course_run("ddp", ctx, save_to=path["ddp"]),
        "fsdp": course_run("fsdp", ctx, save_to=path["fsdp"]),
        "ddp_clip": course_run("ddp", ctx, clip=CLIP),
        "fsdp_clip": course_run("fsdp", ctx, clip=CLIP),
        "fsdp_adamw": course_run("fsdp", ctx, clip=CLIP, optim="adamw", save_to=path["adamw"]),
    }
    out["fsdp_resumed"] = course_run("fsdp", ctx, start_from=path["fsdp"])
    out["ddp_from_fsdp"] = course_run("ddp", ctx, start_from=path["fsdp"])
    out["fsdp_from_ddp"] = course_run("fsdp", ctx, start_from=path["ddp"])
    out["fsdp_every_rank"] = course_run("fsdp", ctx, start_from=path["fsdp"], every_rank=True)
    out["ddp_every_rank"] = course_run("ddp", ctx, start_from=path["fsdp"], every_rank=True)
    out["adamw_resumed"] = course_run(
        "fsdp", ctx, start_from=path["adamw"], clip=CLIP, optim="adamw"
    )
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory, launch_ranks):
    folder = tmp_path_factory.mktemp("dist")
    ranks = launch_ranks(two_rank_scenarios, 2, (str(folder),))
    return {"ranks": ranks, "folder": folder, "reference": reference_run(),
            "reference_clip": reference_run(clip=CLIP)}  # fmt: skip


def assert_same_run(result, reference, first_step=0):
    ref_losses, ref_params = reference[:2]
    torch.testing.assert_close(
        torch.tensor(result["losses"]), torch.tensor(ref_losses[first_step:])
    )
    assert result["params"].keys() == ref_params.keys()
    for name, p in ref_params.items():
        torch.testing.assert_close(result["params"][name], p, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
@pytest.mark.parametrize("clip", [False, True])
def test_two_ranks_equal_one_process(runs, strategy, clip):
    """Accumulation over 2 micro-batches on each of 2 ranks; clipping by the global norm."""
    name, reference = (
        (f"{strategy}_clip", runs["reference_clip"]) if clip else (strategy, runs["reference"])
    )
    if clip:  # the clipping bites on some steps and not on others
        assert min(reference[2]) < CLIP < max(reference[2]), reference[2]
    rank0, rank1 = runs["ranks"][0][name], runs["ranks"][1][name]
    assert_same_run(rank0, reference)
    assert rank1["losses"] == rank0["losses"]  # every rank reports the global loss
    assert rank1["params"] == {}  # only rank 0 gathers the full state


def test_fsdp_shards_and_ddp_replicates(runs):
    n_params = sum(p.numel() for p in new_model().parameters())
    for rank in (0, 1):
        ddp, fsdp = runs["ranks"][rank]["ddp"], runs["ranks"][rank]["fsdp"]
        assert ddp["memory"]["parameters"] == 4 * n_params
        assert ddp["memory"]["optimizer"] == 4 * n_params  # SGD: one momentum buffer
        # FSDP splits dim 0 of every parameter like torch.chunk: rank 0 gets the larger part
        for name, p in new_model().named_parameters():
            assert fsdp["shapes"][name] == tuple(torch.chunk(p, 2)[rank].shape), name
    fsdp_params = [runs["ranks"][r]["fsdp"]["memory"]["parameters"] for r in (0, 1)]
    assert sum(fsdp_params) == 4 * n_params
    assert sum(runs["ranks"][r]["fsdp"]["memory"]["optimizer"] for r in (0, 1)) == 4 * n_params


def test_checkpoint_of_two_ranks_resumes_on_two_ranks(runs):
    ref = runs["reference"]
    assert_same_run(runs["ranks"][0]["fsdp_resumed"], ref, first_step=SAVE_AT)
    assert_same_run(runs["ranks"][0]["ddp_from_fsdp"], ref, first_step=SAVE_AT)
    assert_same_run(runs["ranks"][0]["fsdp_from_ddp"], ref, first_step=SAVE_AT)
    assert_same_run(runs["ranks"][0]["fsdp_every_rank"], ref, first_step=SAVE_AT)
    assert_same_run(runs["ranks"][0]["ddp_every_rank"], ref, first_step=SAVE_AT)


def test_adamw_state_round_trips_through_a_checkpoint(runs):
    """AdamW (exp_avg, exp_avg_sq, a 0-dim step) gathered from FSDP shards and re-sharded."""
    resumed, uninterrupted = runs["ranks"][0]["adamw_resumed"], runs["ranks"][0]["fsdp_adamw"]
    assert resumed["losses"] == uninterrupted["losses"][SAVE_AT:]
    for name, p in uninterrupted["params"].items():
        torch.testing.assert_close(resumed["params"][name], p, rtol=0, atol=0)
    ckpt = load_checkpoint(runs["folder"] / "adamw.safetensors")
    model = new_model()
    opt = new_optimizer(model, "adamw")
    opt.load_state_dict(ckpt["optimizer"])  # loads into one plain process, index-keyed
    first = opt.state[next(model.parameters())]
    assert float(first["step"]) == SAVE_AT and first["exp_avg"].shape == (VOCAB, D_MODEL)


def test_checkpoint_of_two_ranks_resumes_on_one_process(runs):
    path = runs["folder"] / "fsdp.safetensors"
    ckpt = load_checkpoint(path)
    assert ckpt["train_state"] == {"step": SAVE_AT}
    # plain PyTorch: the optimizer state is index-keyed like optimizer.state_dict()
    model = new_model()
    model.load_state_dict(ckpt["model"])
    opt = new_optimizer(model)
    opt.load_state_dict(ckpt["optimizer"])
    for step in range(SAVE_AT, STEPS):
        x, y = global_batch(step)
        F.cross_entropy(model(x)[0].flatten(0, 1), y.flatten()).backward()
        opt.step()
        opt.zero_grad()
    for name, p in runs["reference"][1].items():
        torch.testing.assert_close(model.state_dict()[name], p, rtol=1e-5, atol=1e-6)
    # the course's loop on one process (world size 1, no process group)
    ctx = D.setup()
    assert not ctx.distributed and ctx.backend is None
    assert_same_run(course_run("fsdp", ctx, start_from=path), runs["reference"], first_step=SAVE_AT)


def test_world_size_must_divide_the_batch():
    assert D.rank_slice(8, 1, 2) == slice(4, 8)
    with pytest.raises(ValueError, match="global batch of 10 rows cannot be split evenly over 4"):
        D.rank_slice(10, 0, 4)
    with pytest.raises(ValueError, match="multiple of 8"):
        D.shard(torch.zeros(12, 3), D.DistContext(rank=0, world_size=4), accum_steps=2)


@pytest.mark.parametrize("n,world", [(7, 2), (10, 4), (3, 3), (64, 8)])
def test_rank_part_covers_an_uneven_batch_once_in_order(n, world):
    items = list(range(n))
    parts = [D.rank_part(items, D.DistContext(rank=r, world_size=world)) for r in range(world)]
    assert [len(p) for p in parts] == [len(c) for c in torch.arange(n).tensor_split(world)]
    assert sum(parts, []) == items
    with pytest.raises(ValueError, match="a batch of 1 item.*cannot feed 2 ranks"):
        D.rank_part([0], D.DistContext(rank=0, world_size=2))


def test_fsdp_refuses_a_model_too_small_to_shard():
    ctx = D.DistContext(rank=0, world_size=2)  # checked before any communication
    with pytest.raises(ValueError, match="no block to shard"):
        D.wrap_model(nn.Sequential(nn.Linear(64, 64)), ctx, "fsdp")
    tiny = nn.Module()
    tiny.blocks = nn.ModuleList([nn.Linear(4, 4)])
    with pytest.raises(ValueError, match="20 parameters, too few to shard over 2 ranks"):
        D.wrap_model(tiny, ctx, "fsdp")
    with pytest.raises(ValueError, match="strategy"):
        D.wrap_model(tiny, ctx, "zero")


def test_missing_rendezvous_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    with pytest.raises(RuntimeError, match="MASTER_ADDR and MASTER_PORT is not set.*torchrun"):
        D.setup(device="cpu")
    # a master nobody runs: rank 1 gives up after the timeout instead of hanging
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    with pytest.raises(RuntimeError, match="could not meet the others at 127.0.0.1"):
        D.setup(device="cpu", timeout_s=1)
    assert not torch.distributed.is_initialized()
