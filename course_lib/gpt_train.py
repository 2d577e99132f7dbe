"""Training a GPT: AdamW, warmup + cosine learning rate, clipping, accumulation, bf16,
torch.compile, evaluation, checkpoints and exact resume.

    "We used the Adam optimization scheme with a max learning rate of 2.5e-4. The learning
    rate was increased linearly from zero over the first 2000 updates and annealed to 0
    using a cosine schedule."  (Radford et al., 2018, GPT-1, section 4.1)

Data order is a pure function of (seed, step, micro-step, rank), so a resumed run draws
exactly the batches the uninterrupted run would have; the checkpoint also restores the
optimizer and the RNG state (dropout). The pieces a distributed run replaces are small
functions: ``is_main_process``, ``log``, ``wrap_model`` and the
``rank``/``world`` arguments of ``get_batch``.

    python -m course_lib.train gpt --preset tiny --data stdlib --steps 500
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from course_lib import distributed as D
from course_lib.checkpoint import check_config, load_checkpoint, set_rng_state
from course_lib.env import get_device, progress_disabled
from course_lib.gpt import GPT, PRESETS, GPTConfig
from course_lib.gpt_data import CharTokenizer, TiktokenTokenizer, load_corpus, load_tokenizer  # noqa: F401

PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12, "T4": 65e12}


@dataclass
class TrainConfig:
    steps: int = 1000  # optimizer steps: the length of the learning-rate schedule
    batch_size: int = 16  # sequences per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 1e-3
    min_lr: float | None = None  # end of the cosine; default lr / 10
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # 0 switches clipping off
    eval_every: int = 100
    eval_batches: int = 20
    target_loss: float | None = None  # stop once the validation loss is at or below this
    seed: int = 1337
    device: str | None = None
    bf16: bool | None = None  # None: on for CUDA, off elsewhere
    compile: bool | None = None  # None: on for CUDA, off elsewhere
    out_dir: str | None = None  # checkpoints go here (ckpt.safetensors, config.json, tokenizer.json)
    progress: bool = True
    fsdp: bool = False  # under torchrun: FSDP instead of DDP

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class TokenData:
    train: torch.Tensor  # 1-D int64 token ids
    val: torch.Tensor


def prepare_data(text: str, tokenizer, val_fraction: float = 0.1) -> TokenData:
    ids = torch.tensor(tokenizer.encode(text), dtype=torch.long)
    n_val = max(int(len(ids) * val_fraction), 1)
    return TokenData(ids[:-n_val], ids[-n_val:])


# ---- the parts a distributed run replaces -------------------------------------------------

def is_main_process() -> bool:
    return D.current().is_main


def log(msg: str) -> None:
    if is_main_process():
        from tqdm import tqdm

        tqdm.write(msg)


def wrap_model(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.nn.Module:
    """The module the training step calls: DDP or FSDP under torchrun, compiled on CUDA."""
    model = D.wrap_model(model, D.current(device), "fsdp" if cfg.fsdp else "ddp")
    if use_compile(cfg, device):
        try:
            return torch.compile(model)
        except RuntimeError as exc:  # e.g. torch 2.5 on Python 3.13: no Dynamo yet
            log(f"torch.compile is not available here ({exc}); training without it.")
    return model


# ---- data, optimizer, schedule -----------------------------------------------------------

def get_batch(tokens: torch.Tensor, batch_size: int, block_size: int, seed: int, step: int,
              micro: int = 0, rank: int = 0, split: int = 0, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """``batch_size`` random windows of ``block_size + 1`` tokens -> inputs and next-token targets.

    The offsets depend only on the arguments, never on earlier calls.
    """
    if len(tokens) <= block_size + 1:
        raise ValueError(f"only {len(tokens)} tokens, fewer than one window of {block_size + 1}; use more text.")
    g = torch.Generator().manual_seed(hash((seed, split, step, micro, rank)) & (2**62 - 1))
    start = torch.randint(len(tokens) - block_size - 1, (batch_size,), generator=g)
    chunk = tokens[start[:, None] + torch.arange(block_size + 1)]
    if torch.device(device).type == "cuda":
        chunk = chunk.pin_memory().to(device, non_blocking=True)
    else:
        chunk = chunk.to(device)
    return chunk[:, :-1], chunk[:, 1:]


def configure_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices (2-D: linear layers, embeddings) only, not on biases
    and LayerNorm gains. Fused kernel on CUDA."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    extra = {"fused": True} if device.type == "cuda" else {}
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), **extra)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup over ``warmup_steps``, then a cosine from ``lr`` down to ``min_lr``."""
    min_lr = cfg.lr / 10 if cfg.min_lr is None else cfg.min_lr
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0))) * (cfg.lr - min_lr)


def _cuda_capability(device: torch.device) -> tuple[int, int]:
    return torch.cuda.get_device_capability(device) if device.type == "cuda" else (0, 0)


def use_bf16(cfg: TrainConfig, device: torch.device) -> bool:
    """Default: on for GPUs with native bf16 (Ampere and newer; a T4 would only emulate it)."""
    return _cuda_capability(device) >= (8, 0) if cfg.bf16 is None else bool(cfg.bf16)


def use_compile(cfg: TrainConfig, device: torch.device) -> bool:
    """Default: on for CUDA GPUs that Triton supports (compute capability 7.0 and newer)."""
    return _cuda_capability(device) >= (7, 0) if cfg.compile is None else bool(cfg.compile)


def estimate_mfu(flops_per_token: float, tokens_per_s: float, device: torch.device) -> float | None:
    """Model FLOPs utilisation: achieved FLOP/s over the GPU's bf16 peak (None if unknown)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
    return None if peak is None else flops_per_token * tokens_per_s / peak


@torch.no_grad()
def evaluate(model, data: TokenData, block_size: int, cfg: TrainConfig, device, amp) -> dict[str, float]:
    """Mean loss over ``eval_batches`` fixed batches of each split."""
    was_training = model.training
    model.eval()
    out = {}
    for split, tokens in (("train", data.train), ("val", data.val)):
        total = torch.zeros((), device=device)
        for i in range(cfg.eval_batches):
            x, y = get_batch(tokens, cfg.batch_size, block_size, cfg.seed, i, split=1 + (split == "val"), device=device)
            with amp:
                total += model(x, y)[1]
        out[split] = (total / cfg.eval_batches).item()
    model.train(was_training)
    return out


# ---- the loop ------------------------------------------------------------------------------

def save(path: Path, model, optimizer, state: dict, tokenizer=None) -> None:
    """Checkpoint: model, optimizer, RNG, training state; tokenizer beside. Every rank
    calls it (the full state is gathered from all ranks); rank 0 writes."""
    D.save(path, model, model.config.to_dict(), optimizer, state)
    if tokenizer is not None and is_main_process():
        tokenizer.save(path.with_name("tokenizer.json"))


def train(model: GPT, data: TokenData, cfg: TrainConfig, tokenizer=None, resume: bool = False,
          until_step: int | None = None) -> dict:
    """Train ``model`` for ``cfg.steps`` optimizer steps (or up to ``until_step``, as if
    interrupted there). Returns the training state: ``step``, ``train_losses`` (one per
    step), ``evals`` (list of dicts), ``tokens_per_s``, ``mfu``, ``stopped`` (reason)."""
    device = get_device(cfg.device)
    model.to(device)
    step_fn = wrap_model(model, cfg, device)  # before the optimizer: FSDP replaces the parameters
    optimizer = configure_optimizer(model, cfg, device)
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16(cfg, device) else nullcontext()
    ckpt = Path(cfg.out_dir) / "ckpt.safetensors" if cfg.out_dir else None
    state = {"step": 0, "train_losses": [], "evals": [], "train_config": asdict(cfg)}
    if resume:
        if ckpt is None or not ckpt.exists():
            raise FileNotFoundError(f"--resume: no checkpoint at {ckpt}; train without --resume first.")
        loaded = load_checkpoint(ckpt, device=device)
        check_config(model.config.to_dict(), loaded["config"], ckpt)
        D.load_model_state(model, loaded["model"])
        D.load_optimizer_state(model, optimizer, loaded["optimizer"])
        set_rng_state(loaded["rng"])
        state = {**loaded["train_state"], "train_config": asdict(cfg)}
        log(f"resumed from {ckpt} at step {state['step']}")
    world = D.current(device).world_size
    block_size = model.config.block_size
    tokens_per_step = cfg.batch_size * cfg.grad_accum * block_size
    stop_step = min(cfg.steps, until_step) if until_step is not None else cfg.steps
    from tqdm import tqdm

    bar = tqdm(total=stop_step, initial=state["step"], desc="training", unit="step",
               disable=not cfg.progress or progress_disabled() or not is_main_process())
    pending: list[torch.Tensor] = []  # losses still on the device (read in batches: no sync per step)
    t0, t0_step, stopped = time.perf_counter(), state["step"], "steps"
    model.train()
    for step in range(state["step"], stop_step):
        lr = lr_at(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        step_loss = torch.zeros((), device=device)
        for micro in range(cfg.grad_accum):
            x, y = get_batch(data.train, cfg.batch_size, block_size, cfg.seed, step, micro, device=device)
            x, y = D.shard(x), D.shard(y)  # this rank's rows of the global batch
            with D.sync_gradients(step_fn, sync=micro == cfg.grad_accum - 1):  # talk on the last
                with amp:
                    _, loss = step_fn(x, y)
                (loss / cfg.grad_accum).backward()
            step_loss += loss.detach() / cfg.grad_accum
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        pending.append(D.average(step_loss))
        state["step"] = step + 1
        bar.update(1)
        last = state["step"] == stop_step
        if state["step"] % cfg.eval_every == 0 or last:
            state["train_losses"] += torch.stack(pending).tolist()
            pending = []
            elapsed = time.perf_counter() - t0
            tps = (state["step"] - t0_step) * tokens_per_step / max(elapsed, 1e-9)
            losses = evaluate(step_fn, data, block_size, cfg, device, amp)
            mfu = estimate_mfu(model.flops_per_token(), tps / world, device)
            state["evals"].append({"step": state["step"], "train": losses["train"], "val": losses["val"],
                                   "lr": lr, "tokens_per_s": tps, "mfu": mfu})
            bar.set_postfix(train=f"{losses['train']:.3f}", val=f"{losses['val']:.3f}")
            log(f"step {state['step']}: train {losses['train']:.4f}, val {losses['val']:.4f}, "
                f"lr {lr:.2e}, {tps:,.0f} tokens/s" + (f", MFU {100 * mfu:.1f}%" if mfu else ""))
            reached = cfg.target_loss is not None and losses["val"] <= cfg.target_loss
            if reached:
                stopped = f"target validation loss {cfg.target_loss} reached"
            if ckpt is not None:
                save(ckpt, model, optimizer, state, tokenizer)
            if reached:
                log(f"stopping at step {state['step']}: {stopped}")
                break
            t0, t0_step = time.perf_counter(), state["step"]
    bar.close()
    state["stopped"] = stopped
    return state


def plot_losses(state: dict, title: str = "GPT training"):
    """Training loss per step (faint), and the evaluated train/validation losses."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    ax.plot(range(1, len(state["train_losses"]) + 1), state["train_losses"], color="tab:blue", alpha=0.3,
            lw=0.8, label="train (each step)")
    steps = [e["step"] for e in state["evals"]]
    ax.plot(steps, [e["train"] for e in state["evals"]], "o-", color="tab:blue", label="train (eval)")
    ax.plot(steps, [e["val"] for e in state["evals"]], "s-", color="tab:orange", label="validation")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    return fig


# ---- command line --------------------------------------------------------------------------

def cli_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m course_lib.train gpt", description="Train a GPT.")
    p.add_argument("--preset", default="tiny", help="model preset: tiny, small-cpu, gpt2-124m, ...")
    p.add_argument("--config", help="JSON file with GPTConfig fields (overrides the preset)")
    p.add_argument("--data", default="stdlib",
                   help="'stdlib' (offline), a .txt/.gz file or folder, or 'tinyshakespeare' (hub)")
    p.add_argument("--max-chars", type=int, default=None)
    p.add_argument("--tokenizer", choices=("char", "gpt2"), default=None,
                   help="default: gpt2 for presets with GPT-2's vocabulary, else char")
    p.add_argument("--out-dir", default="runs/gpt")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out-dir")
    p.add_argument("--until-step", type=int, default=None, help="stop (and save) here, as if interrupted")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--no-bf16", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--fsdp", action="store_true", help="under torchrun: shard with FSDP (default DDP)")
    for f in fields(TrainConfig):
        if f.name in ("out_dir", "compile", "bf16", "progress", "fsdp"):
            continue  # own flags above
        typ = {"int": int, "float": float, "int | None": int, "float | None": float}.get(str(f.type), str)
        p.add_argument("--" + f.name.replace("_", "-"), type=typ, default=None)
    args = p.parse_args(argv)
    try:
        skip = ("out_dir", "compile", "bf16", "progress", "fsdp")
        overrides = {f.name: getattr(args, f.name) for f in fields(TrainConfig)
                     if f.name not in skip and getattr(args, f.name) is not None}
        D.setup(overrides.get("device"))  # joins torchrun's process group, if any
        cfg = TrainConfig(**overrides, out_dir=args.out_dir, progress=not args.no_progress, fsdp=args.fsdp,
                          compile=False if args.no_compile else None, bf16=False if args.no_bf16 else None)
        out = Path(args.out_dir)
        text, source = load_corpus(args.data, args.max_chars)
        model_fields = GPTConfig.preset(args.preset).to_dict()
        if args.config:
            model_fields.update(json.loads(Path(args.config).read_text()))
        if args.resume and (out / "tokenizer.json").exists():
            tokenizer = load_tokenizer(out / "tokenizer.json")  # the run's own vocabulary
        else:
            kind = args.tokenizer or ("gpt2" if "vocab_size" in PRESETS.get(args.preset, {}) else "char")
            tokenizer = TiktokenTokenizer("gpt2") if kind == "gpt2" else CharTokenizer.from_text(text)
        if not (args.config and "vocab_size" in json.loads(Path(args.config).read_text())):
            v = tokenizer.vocab_size  # GPT-2's 50,257 rounded up to 50,304 on CUDA: faster matmuls
            model_fields["vocab_size"] = -(-v // 64) * 64 if v > 1000 and get_device(cfg.device).type == "cuda" else v
        model_cfg = GPTConfig.from_dict(model_fields)
        data = prepare_data(text, tokenizer)
        torch.manual_seed(cfg.seed)
        model = GPT(model_cfg)
        log(f"data: {source} ({len(text):,} characters, {len(data.train):,} training tokens)")
        log(f"model: {model.num_params():,} parameters; {model_cfg}")
        state = train(model, data, cfg, tokenizer=tokenizer, resume=args.resume, until_step=args.until_step)
    except (ValueError, FileNotFoundError, IndexError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    last = state["evals"][-1] if state["evals"] else None
    if last:
        log(f"done at step {state['step']} ({state['stopped']}): val loss {last['val']:.4f}; "
            f"checkpoint {Path(args.out_dir) / 'ckpt.safetensors'}")
    return 0
