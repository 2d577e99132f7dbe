"""Training a GPT: AdamW, warmup + cosine learning rate, clipping, accumulation, mixed
precision, torch.compile, evaluation, checkpoints and exact resume.

    "We used the Adam optimization scheme with a max learning rate of 2.5e-4. The learning
    rate was increased linearly from zero over the first 2000 updates and annealed to 0
    using a cosine schedule."  (Radford et al., 2018, GPT-1, section 4.1)

Data order is a pure function of (seed, step), so a resumed run draws exactly the
batches the uninterrupted run would have; the checkpoint also restores the optimizer and
the RNG state (dropout). This file gives the batches and the loss; the steps are
``course_lib.training.loop.fit``'s, set up by ``course_lib.training.core.Trainer`` (run
folder, checkpoints, precision, several processes).

    python -m course_lib train gpt --preset tiny --data stdlib --steps 500
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from course_lib import llama
from course_lib import scaleout as D
from course_lib.checkpoint import integer_problems, load_checkpoint, number_problems
from course_lib.env import get_device
from course_lib.gpt import GPT, PRESETS, GPTConfig
from course_lib.training.core import (
    Parser,
    RunFolder,
    TrainConfig,
    Trainer,
    add_config_arguments,
    check_preset_on_resume,
    cosine_lr,
    given,
    log,
    read_json,
    save_loss_plot,
    saved_settings,
    setting,
)

# --arch: the model's design -> (config class, model class, presets)
ARCHS = {"gpt": (GPTConfig, GPT, PRESETS), "llama": (llama.LlamaConfig, llama.Llama, llama.PRESETS)}


@dataclass
class GPTTrainConfig(TrainConfig):
    data: str = setting("stdlib", "'stdlib' (offline), a .txt/.gz file or a folder with "
                        "input.txt, 'generated', or 'tinyshakespeare' (hub)")
    steps: int | None = setting(1000, "optimizer steps: the length of the schedule")
    lr: float | None = setting(1e-3, "peak learning rate")
    max_chars: int | None = setting(None, "use only the first N characters of the text")
    tokenizer: str | None = setting(None, "char or gpt2 (default: gpt2 for presets with "
                                    "GPT-2's vocabulary, else char)", choices=("char", "gpt2"))
    min_lr: float | None = setting(None, "end of the cosine (default: lr / 10)")
    weight_decay: float = setting(0.1, "AdamW weight decay on matrices")
    beta1: float = setting(0.9, "AdamW beta1")
    beta2: float = setting(0.95, "AdamW beta2")
    eval_batches: int = setting(20, "batches per evaluation of each split")
    target_loss: float | None = setting(None, "stop once the validation loss is at or below this")
    keep_best: bool = setting(False, "write best.safetensors (in --out) at each new lowest validation loss, "
                              "and end the run with those weights")
    patience: int | None = setting(None, "stop after this many evaluations in a row without a new lowest "
                                   "validation loss")

    def check(self) -> list[str]:
        if self.steps is None:
            return ["steps=None must be an integer >= 1"]
        problems = integer_problems(self, ["eval_batches"]) + integer_problems(self, ["max_chars"], optional=True)
        problems += integer_problems(self, ["patience"], optional=True)
        if self.keep_best and not self.out:
            problems.append("keep_best=True writes best.safetensors into the run folder; give out (--out)")
        problems += number_problems(self, ["min_lr"], optional=True) + number_problems(self, ["weight_decay"])
        problems += number_problems(self, ("beta1", "beta2"), 0, 1)
        if self.tokenizer not in (None, "char", "gpt2"):
            problems.append(f"tokenizer={self.tokenizer!r} must be 'char' or 'gpt2'")
        return problems


@dataclass
class TokenData:
    train: torch.Tensor  # 1-D int64 token ids
    val: torch.Tensor


def prepare_data(text: str, tokenizer, val_fraction: float = 0.1) -> TokenData:
    ids = torch.tensor(tokenizer.encode(text), dtype=torch.long)
    n_val = max(int(len(ids) * val_fraction), 1)
    return TokenData(ids[:-n_val], ids[-n_val:])


def get_batch(tokens: torch.Tensor, batch_size: int, block_size: int, seed: int, step: int,
              split: int = 0, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """``batch_size`` random windows of ``block_size + 1`` tokens -> inputs and next-token
    targets. The offsets depend only on the arguments, never on earlier calls."""
    if len(tokens) <= block_size + 1:
        raise ValueError(f"only {len(tokens)} tokens, fewer than one window of {block_size + 1}; use more text.")
    g = torch.Generator().manual_seed(hash((seed, split, step)) & (2**62 - 1))
    start = torch.randint(len(tokens) - block_size - 1, (batch_size,), generator=g)
    chunk = tokens[start[:, None] + torch.arange(block_size + 1)]
    if torch.device(device).type == "cuda":
        chunk = chunk.pin_memory().to(device, non_blocking=True)
    else:
        chunk = chunk.to(device)
    return chunk[:, :-1], chunk[:, 1:]


def configure_optimizer(model: torch.nn.Module, cfg: GPTTrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices (2-D: linear layers, embeddings) only, not on biases
    and LayerNorm gains."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    # the fused kernel (one pass over all parameters) on CUDA and the CPU; elsewhere the
    # multi-tensor (foreach) path. Either saves Python's per-parameter work, which for a
    # small model is a good part of a step.
    extra = {"fused": True} if device.type in ("cuda", "cpu") else {"foreach": True}
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), **extra)


def lr_at(step: int, cfg: GPTTrainConfig) -> float:
    return cosine_lr(step, cfg.lr, cfg.lr / 10 if cfg.min_lr is None else cfg.min_lr, cfg.warmup, cfg.steps)


def estimate_mfu(flops_per_token: float, tokens_per_s: float, device: torch.device) -> float | None:
    """Model FLOPs utilisation: achieved FLOP/s over the GPU's bf16 peak (None if unknown)."""
    from course_lib.training.plan import peak_flops  # the one GPU table

    peak = peak_flops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    return None if peak is None else flops_per_token * tokens_per_s / peak


@torch.no_grad()
def evaluate(model, data: TokenData, cfg: GPTTrainConfig, device, precision) -> dict[str, float]:
    """Mean loss over ``eval_batches`` fixed batches of each split."""
    was_training = model.training
    model.eval()
    out = {}
    for split, tokens in (("train", data.train), ("val", data.val)):
        total = torch.zeros((), device=device)
        for i in range(cfg.eval_batches):
            x, y = get_batch(tokens, cfg.batch_size, model.config.block_size, cfg.seed, i,
                             split=1 + (split == "val"), device=device)
            with precision.autocast():
                total += model(x, y)[1]
        out[split] = (total / cfg.eval_batches).item()
    model.train(was_training)
    return out


# ---- training --------------------------------------------------------------------------------

BEST = "best.safetensors"  # in a run folder, with keep_best


def note_best(trainer: Trainer, val: float) -> None:
    """After an evaluation (not yet in ``state['evals']``): ``state['best']`` (step and validation
    loss of the lowest so far); with ``keep_best`` a new lowest writes ``best.safetensors``; with
    ``patience`` that many evaluations in a row without one end the run."""
    cfg, state = trainer.cfg, trainer.state
    vals = [e["val"] for e in state["evals"]] + [val]
    best = min(range(len(vals)), key=vals.__getitem__)  # the first of equal lowest values
    if best == len(vals) - 1:
        state["best"] = {"step": state["step"], "val": val}
        if cfg.keep_best:
            D.save(trainer.run.path / BEST, trainer.model, trainer.model.config.to_dict(), None, state)
    if cfg.patience is not None and len(vals) - 1 - best >= cfg.patience:
        state["stopped"] = (f"no lower validation loss in {cfg.patience} evaluations (lowest "
                            f"{state['best']['val']:.4f} at step {state['best']['step']})")

def train(model: GPT, data: TokenData, cfg: GPTTrainConfig, tokenizer=None, resume: bool = False,
          until_step: int | None = None, make_optimizer=None) -> dict:
    """Train ``model`` for ``cfg.steps`` optimizer steps (or up to ``until_step``, as if
    interrupted there). Returns the training state: ``step``, ``train_losses`` ([step,
    loss] per step), ``evals`` (dicts), ``stopped`` (why it ended); with ``cfg.keep_best`` or
    ``cfg.patience`` also ``best`` (the step and validation loss of the lowest evaluation),
    and with ``keep_best`` the model ends with that evaluation's weights.

    ``make_optimizer(model)``: another optimizer than AdamW (the tests use plain SGD,
    under which a wrong gradient scale cannot hide); the schedule still sets its lr."""
    def adamw(m):
        return configure_optimizer(m, cfg, next(m.parameters()).device)

    trainer = Trainer.start(model, cfg, make_optimizer or adamw, resume)
    device, ctx, block_size = trainer.device, D.current(trainer.device), model.config.block_size

    def batch_at(i: int):
        x, y = get_batch(data.train, cfg.batch_size, block_size, cfg.seed, i, device=device)
        return D.shard(x, ctx, cfg.grad_accum), D.shard(y, ctx, cfg.grad_accum)  # this rank's rows

    clock = {"step": trainer.state["step"], "seconds": trainer.state.get("train_seconds", 0.0)}

    def evaluate_now() -> dict:
        state = trainer.state
        steps, seconds = state["step"] - clock["step"], state["train_seconds"] - clock["seconds"]
        clock.update(step=state["step"], seconds=state["train_seconds"])
        tps = steps * cfg.batch_size * block_size / max(seconds, 1e-9)
        losses = evaluate(trainer.step_model, data, cfg, device, trainer.precision)
        mfu = estimate_mfu(model.flops_per_token(), tps / ctx.world_size, device)
        log(f"step {state['step']}: train {losses['train']:.4f}, val {losses['val']:.4f}, {tps:,.0f} tokens/s"
            + (f", MFU {100 * mfu:.1f}%" if mfu else ""))
        if cfg.keep_best or cfg.patience is not None:
            note_best(trainer, losses["val"])
        return {**losses, "lr": trainer.optimizer.param_groups[0]["lr"], "tokens_per_s": tps, "mfu": mfu}

    state = trainer.fit(batch_at, lambda m, b: m(*b)[1], steps=min(cfg.steps, until_step or cfg.steps),
                        lr_at=lambda i: lr_at(i, cfg), evaluate=evaluate_now, tokenizer=tokenizer,
                        target_loss=cfg.target_loss)
    best = state.get("best", {}).get("step")
    if cfg.keep_best and best is not None and best != state["evals"][-1]["step"]:
        D.load_model_state(trainer.model, load_checkpoint(trainer.run.path / BEST)["model"])
        log(f"restored the weights of step {best} (validation loss {state['best']['val']:.4f}) from {BEST}")
    return state


# ---- command line --------------------------------------------------------------------------

COMMAND_DEFAULTS = {"out": "runs/gpt"}  # the command writes a run folder; the library only if asked


def build_parser() -> Parser:
    p = Parser(prog="python -m course_lib train gpt", description="Train a GPT (notebook 08).")
    p.add_argument("--arch", default=None, choices=sorted(ARCHS),
                   help="gpt: GPT-2's design; llama: RMSNorm, RoPE, SwiGLU, grouped-query attention "
                   "(notebook 13) (default: gpt, or the resumed run's)")
    p.add_argument("--preset", default=None, choices=sorted(set(PRESETS) | set(llama.PRESETS)),
                   help="model size (of the --arch; default: tiny, or the resumed run's)")
    p.add_argument("--config", help="JSON file of settings: training fields and model fields (GPTConfig)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run saved in --out, with its own settings (flags given now override them)")
    p.add_argument("--until-step", type=int, default=None, help="stop (and save) at this step, as if interrupted")
    add_config_arguments(p, GPTTrainConfig, title="training", defaults=COMMAND_DEFAULTS)
    add_config_arguments(p, GPTConfig, prefix="model_", title="model (overrides the preset)",
                         skip=("model_type", "vocab_size"))
    add_config_arguments(p, llama.LlamaConfig, prefix="model_", title="model, --arch llama only",
                         skip=tuple(GPTConfig.__dataclass_fields__))
    return p


def gpt2_tokenizer():
    """tiktoken's GPT-2 tokenizer, or a clear error when it can be neither read from the
    cache nor downloaded (offline)."""
    from course_lib.tokenizer import TiktokenTokenizer, load_tiktoken

    encoding, why = load_tiktoken("gpt2")
    if encoding is None:
        raise ValueError(f"--tokenizer gpt2 needs tiktoken's GPT-2 vocabulary, which cannot be loaded here "
                         f"({why}); connect to the internet once so that tiktoken caches it, "
                         "or use --tokenizer char.")
    return TiktokenTokenizer(encoding)


def command(argv=None) -> int:
    """``python -m course_lib train gpt``: text -> tokenizer -> GPT -> trained run folder."""
    from course_lib.data import load_text
    from course_lib.tokenizer import CharTokenizer, load_tokenizer
    from course_lib.training.plan import plan_run

    args = build_parser().parse_args(argv)
    file_values = read_json(args.config, "settings") if args.config else {}
    model_names = set(GPTConfig.__dataclass_fields__) | set(llama.LlamaConfig.__dataclass_fields__)
    train_values = {k: v for k, v in file_values.items() if k not in model_names}
    out = given(args, GPTTrainConfig).get("out") or train_values.get("out") or COMMAND_DEFAULTS["out"]
    saved_train, saved_model = saved_settings(out) if args.resume else ({}, {})  # the run's own settings
    train_values = {**COMMAND_DEFAULTS, **saved_train, **train_values, **given(args, GPTTrainConfig)}
    cfg = GPTTrainConfig.from_dict(train_values)
    run = RunFolder(cfg.out)  # checked before any work: a file, or not writable, is an error now
    if args.resume:
        run.require_checkpoint()
    if args.until_step is not None and args.until_step < 1:
        raise ValueError(f"--until-step {args.until_step} must be >= 1.")
    get_device(cfg.device, source="--device")  # a device that is not here is an error now
    D.setup(cfg.device)  # joins torchrun's process group, if any
    arch = args.arch or saved_model.get("model_type") or "gpt"
    config_class, model_class, presets = ARCHS[arch]
    preset = args.preset or "tiny"
    if preset not in presets:
        raise ValueError(f"--preset {preset} is not a preset of --arch {arch}; choose one of {sorted(presets)}.")
    asked = {**{k: v for k, v in file_values.items() if k in model_names},
             **given(args, GPTConfig, "model_"), **given(args, llama.LlamaConfig, "model_")}
    check_preset_on_resume(args.preset, {**presets[preset], **asked}, saved_model)
    model_values = {**presets[preset], **saved_model, **asked}
    config_class.from_dict({"vocab_size": 256, **model_values})  # a mistake in the model's settings: now, not after the data
    text = load_text(cfg.data, max_chars=cfg.max_chars)
    if args.resume and run.tokenizer.exists():
        tokenizer = load_tokenizer(run.tokenizer)  # the run's own vocabulary
    else:
        kind = cfg.tokenizer or ("gpt2" if "vocab_size" in presets[preset] else "char")
        tokenizer = gpt2_tokenizer() if kind == "gpt2" else CharTokenizer.from_text(text.text)
    if "vocab_size" not in file_values and "vocab_size" not in saved_model:
        v = tokenizer.vocab_size  # GPT-2's 50,257 rounded up to 50,304 on CUDA: faster matmuls
        model_values["vocab_size"] = -(-v // 64) * 64 if v > 1000 and get_device(cfg.device).type == "cuda" else v
    model_cfg = config_class.from_dict(model_values)
    cfg, plan = plan_run(cfg, model_cfg, model_cfg.block_size, accum_given="grad_accum" in train_values)
    log(plan.line())  # precision, micro-batch x accumulation, memory and time on this device
    data = prepare_data(text.text, tokenizer)
    torch.manual_seed(cfg.seed)
    model = model_class(model_cfg)
    log(f"data: {text.source} ({len(text.text):,} characters, {len(data.train):,} training tokens)")
    log(f"model: {model.num_parameters():,} parameters; {model_cfg}")
    state = train(model, data, cfg, tokenizer=tokenizer, resume=args.resume, until_step=args.until_step)
    if D.current().is_main and state["evals"]:
        save_loss_plot(state, "GPT training", Path(cfg.out) / "loss")
        log(f"done at step {state['step']} ({state['stopped']}): val loss {state['evals'][-1]['val']:.4f}; "
            f"run folder {cfg.out} (sample: python -m course_lib generate {cfg.out})")
        if "best" in state:
            kept = f"; weights in {Path(cfg.out) / BEST}" if cfg.keep_best else ""
            log(f"lowest val loss {state['best']['val']:.4f} at step {state['best']['step']}{kept}")
    return 0
