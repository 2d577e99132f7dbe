"""Training the encoder-decoder Transformer for translation (notebook 07 and the CLI).

    "We used the Adam optimizer with beta1 = 0.9, beta2 = 0.98 and epsilon = 10^-9. We
    varied the learning rate over the course of training, according to the formula:
    lrate = d_model^-0.5 * min(step_num^-0.5, step_num * warmup_steps^-1.5)"  (5.3)

    "During training, we employed label smoothing of value eps_ls = 0.1."  (5.4)

    "Sentence pairs were batched together by approximate sequence length."  (5.1)

One function, ``train``, serves the notebook and ``python -m course_lib.train translate``:
length-grouped padded batches, the warmup schedule, label smoothing, a progress bar
with the loss, validation loss, an atomic checkpoint (safetensors + JSON, tokenizer
beside it) per epoch and every ``checkpoint_every`` steps, and ``resume`` from the last
checkpoint, which continues exactly where the killed run stopped (same batches, same
dropout draws). bf16 autocast on CUDA (``amp=True``).
"""

from __future__ import annotations

import json
import math
import random
import warnings
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F

with warnings.catch_warnings():  # tqdm.auto warns in notebooks without ipywidgets; it then falls back
    warnings.simplefilter("ignore")
    from tqdm.auto import tqdm

from course_lib import distributed as D
from course_lib.checkpoint import check_config, load_checkpoint, set_rng_state
from course_lib.env import get_device, progress_disabled
from course_lib.transformer import COURSE_MODEL_KEYS, TransformerConfig
from course_lib.translation_data import SPECIALS, build_tokenizer, encode_pairs, special_ids

CHECKPOINT = "checkpoint.safetensors"
TOKENIZER = "tokenizer.json"


@dataclass
class TrainConfig:
    train_data: str = "generated"  # "generated", "talks" (hub), or a local prefix (path/train)
    valid_data: str | None = None  # None: generated held-out set, or the hub's / a local split
    n_train: int = 20000  # pairs to use (generated: how many to make)
    n_valid: int = 400
    tokenizer: str = "word"  # "word" or "bpe"
    bpe_vocab_size: int = 8000
    epochs: int = 10
    max_steps: int | None = None  # a fixed step budget (overrides epochs)
    batch_size: int = 64  # sentence pairs per batch
    warmup: int = 4000
    lr_scale: float = 1.0  # multiplies the paper's schedule
    learning_rate: float | None = None  # if set: the schedule's peak (reached at step = warmup)
    label_smoothing: float = 0.1
    checkpoint_every: int = 0  # also checkpoint every N steps (0: only per epoch and at the end)
    log_every: int = 10  # loss history: one averaged point per log_every steps
    seed: int = 0
    amp: bool = True  # bf16 autocast on CUDA (ignored on the CPU)
    device: str | None = None
    fsdp: bool = False  # under torchrun: FSDP instead of DDP

    def __post_init__(self):
        problems = []
        for name in ("n_train", "n_valid", "epochs", "batch_size", "warmup", "log_every"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)!r} must be an integer >= 1")
        if self.max_steps is not None and self.max_steps < 1:
            problems.append(f"max_steps={self.max_steps} must be >= 1 (or None)")
        if not 0.0 <= self.label_smoothing < 1.0:
            problems.append(f"label_smoothing={self.label_smoothing} must be in [0, 1)")
        if self.learning_rate is not None and self.learning_rate <= 0:
            problems.append(f"learning_rate={self.learning_rate} must be > 0")
        if self.tokenizer not in ("word", "bpe"):
            problems.append(f"tokenizer={self.tokenizer!r} must be 'word' or 'bpe'")
        if problems:
            raise ValueError("invalid training config: " + "; ".join(problems) + ".")


def load_config(source: str | Path | dict) -> tuple[dict, TrainConfig]:
    """Read a JSON config (ours, or the original course's names) ->
    (model config overrides, TrainConfig). Unknown keys are an error."""
    d = json.loads(Path(source).read_text(encoding="utf-8")) if not isinstance(source, dict) else dict(source)
    train_names = {f.name for f in fields(TrainConfig)}
    model_names = {f.name for f in fields(TransformerConfig)} | set(COURSE_MODEL_KEYS)
    model, train, unknown = {}, {}, []
    for key, value in d.items():
        if key in train_names:
            train[key] = value
        elif key in model_names:
            model[key] = value
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"unknown config key(s) {sorted(unknown)}; training keys: {sorted(train_names)}; "
                         f"model keys: {sorted(model_names)}.")
    TransformerConfig.from_dict({"src_vocab_size": 8, "tgt_vocab_size": 8, **model})  # validate early
    return model, TrainConfig(**train)


def noam_lr(step: int, d_model: int, warmup: int, scale: float = 1.0) -> float:
    """The paper's schedule: linear warmup, then decay with the inverse square root of the step."""
    step = max(step, 1)
    return scale * d_model**-0.5 * min(step**-0.5, step * warmup**-1.5)


def make_batches(lengths: list[tuple[int, int]], batch_size: int, seed: int) -> list[list[int]]:
    """Index batches of similar lengths: shuffle, sort within pools of 50 batches by
    length, cut into batches, shuffle the batches. Deterministic in ``seed``."""
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    pool = 50 * batch_size
    batches = []
    for i in range(0, len(order), pool):
        chunk = sorted(order[i : i + pool], key=lambda j: lengths[j])
        batches += [chunk[k : k + batch_size] for k in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def collate(examples, idx: list[int], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad a batch: ``src (B, L_src)``, ``tgt (B, L_tgt)`` (``<bos> ... <eos>``)."""
    srcs = [examples[i][0] for i in idx]
    tgts = [examples[i][1] for i in idx]
    src = torch.full((len(idx), max(map(len, srcs))), pad_id, dtype=torch.long)
    tgt = torch.full((len(idx), max(map(len, tgts))), pad_id, dtype=torch.long)
    for r, (s, t) in enumerate(zip(srcs, tgts)):
        src[r, : len(s)] = torch.tensor(s)
        tgt[r, : len(t)] = torch.tensor(t)
    return src.to(device), tgt.to(device)


def _autocast(device: torch.device, amp: bool):
    # Only CUDA autocasts here; elsewhere a null context (torch 2.4 has no MPS autocast).
    if amp and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return nullcontext()


def batch_loss(model, src, tgt, label_smoothing: float = 0.0, amp: bool = True) -> torch.Tensor:
    """Mean cross-entropy of predicting ``tgt[:, 1:]`` from ``tgt[:, :-1]`` (padding ignored)."""
    with _autocast(src.device, amp):
        logits = model(src, tgt[:, :-1])
    return F.cross_entropy(logits.float().flatten(0, 1), tgt[:, 1:].flatten(), ignore_index=model.config.pad_id,
                           label_smoothing=label_smoothing)


@torch.no_grad()
def evaluate_loss(model, examples, batch_size: int = 64, amp: bool = True) -> float:
    """Validation cross-entropy per target token (no label smoothing)."""
    if not examples:
        return float("nan")
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for idx in make_batches([(len(s), len(t)) for s, t in examples], batch_size, seed=0):
        src, tgt = collate(examples, idx, model.config.pad_id, device)
        n = int((tgt[:, 1:] != model.config.pad_id).sum())
        total += float(batch_loss(model, src, tgt, 0.0, amp)) * n
        count += n
    model.train()
    return total / count


def train(model, tokenizer, train_pairs, valid_pairs, cfg: TrainConfig, out_dir=None, resume: bool = False,
          log=print) -> dict:
    """Train ``model`` on (source, target) text pairs; returns the history
    ``{"step", "epoch", "losses": [[step, loss]], "val_losses": [[step, loss]], ...}``.

    ``out_dir``: where the checkpoint and ``tokenizer.json`` go (None: no checkpoints).
    ``resume=True`` continues from ``out_dir/checkpoint.safetensors`` if there is one.
    """
    device = torch.device(cfg.device) if cfg.device else next(model.parameters()).device
    model.to(device)
    ctx = D.current(device)  # under torchrun: this process's rank (else one process)
    step_model = D.wrap_model(model, ctx, "fsdp" if cfg.fsdp else "ddp")  # before the optimizer
    ids = special_ids(tokenizer)
    if ids["<pad>"] != model.config.pad_id:
        raise ValueError(f"the tokenizer's <pad> is id {ids['<pad>']} but the model's pad_id is "
                         f"{model.config.pad_id}; build the model with pad_id=tokenizer.special_tokens['<pad>'].")
    max_len = model.config.max_len
    examples, dropped = encode_pairs(tokenizer, train_pairs, max_len)
    if dropped:
        log(f"skipped {dropped} training pairs longer than max_len={max_len} tokens")
    if not examples:
        raise ValueError("no training pairs left (all empty or longer than max_len); check the data.")
    valid, _ = encode_pairs(tokenizer, valid_pairs or [], max_len)
    D.check_batches(cfg.batch_size, len(examples), ctx)
    lengths = [(len(s), len(t)) for s, t in examples]
    steps_per_epoch = math.ceil(len(examples) / cfg.batch_size)
    total = cfg.max_steps or cfg.epochs * steps_per_epoch
    d_model = model.config.d_model
    scale = cfg.lr_scale
    if cfg.learning_rate is not None:  # peak of the schedule = learning_rate
        scale = cfg.learning_rate / noam_lr(cfg.warmup, d_model, cfg.warmup)
    opt = torch.optim.Adam(model.parameters(), lr=noam_lr(1, d_model, cfg.warmup, scale), betas=(0.9, 0.98), eps=1e-9)
    state = {"step": 0, "epoch": 0, "batch": 0, "losses": [], "val_losses": [], "train_config": asdict(cfg)}
    ckpt_path = Path(out_dir) / CHECKPOINT if out_dir is not None else None
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        if ctx.is_main:
            tokenizer.save(Path(out_dir) / TOKENIZER)
    if resume and ckpt_path is not None and ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path, device=device)
        check_config(model.config.to_dict(), ckpt["config"], ckpt_path)
        D.load_model_state(model, ckpt["model"])
        if ckpt["optimizer"] is not None:
            D.load_optimizer_state(model, opt, ckpt["optimizer"])
        set_rng_state(ckpt["rng"])
        state.update({k: ckpt["train_state"][k] for k in ("step", "epoch", "batch", "losses", "val_losses")})
        log(f"resumed from {ckpt_path} at step {state['step']} (epoch {state['epoch']}, batch {state['batch']})")

    def checkpoint():
        if ckpt_path is not None:
            D.save(ckpt_path, model, model.config.to_dict(), opt, state)  # rank 0 writes

    def validate():
        state["val_losses"].append([state["step"], round(evaluate_loss(model, valid, cfg.batch_size, cfg.amp), 5)])

    model.train()
    bar = tqdm(total=total, initial=state["step"], disable=progress_disabled(), desc="train", unit="step")
    window = []
    while state["step"] < total:
        batches = make_batches(lengths, cfg.batch_size, seed=cfg.seed * 100003 + state["epoch"])
        while state["batch"] < len(batches) and state["step"] < total:
            idx = D.rank_part(batches[state["batch"]], ctx)  # this rank's pairs of the batch
            src, tgt = collate(examples, idx, ids["<pad>"], device)
            state["step"] += 1
            state["batch"] += 1
            for group in opt.param_groups:
                group["lr"] = noam_lr(state["step"], d_model, cfg.warmup, scale)
            loss = batch_loss(step_model, src, tgt, cfg.label_smoothing, cfg.amp)
            weight = D.token_weight((tgt[:, 1:] != ids["<pad>"]).sum(), ctx)  # ranks' token counts differ
            opt.zero_grad(set_to_none=True)
            (loss * weight).backward()
            opt.step()
            loss = D.average(loss.detach() * weight, ctx)  # the mean over all ranks' tokens
            window.append(float(loss.detach()))
            if len(window) == cfg.log_every or state["step"] == total:
                state["losses"].append([state["step"], round(sum(window) / len(window), 5)])
                window = []
            bar.update(1)
            bar.set_postfix(loss=f"{window[-1] if window else float(loss.detach()):.3f}", epoch=state["epoch"])
            if cfg.checkpoint_every and state["step"] % cfg.checkpoint_every == 0:
                checkpoint()
        if state["batch"] >= len(batches):  # end of an epoch
            state["epoch"] += 1
            state["batch"] = 0
            if valid:
                validate()
            checkpoint()
    bar.close()
    if valid and (not state["val_losses"] or state["val_losses"][-1][0] != state["step"]):
        validate()
    checkpoint()
    model.eval()
    return {k: state[k] for k in ("step", "epoch", "losses", "val_losses")} | {"steps_per_epoch": steps_per_epoch}


def plot_losses(history: dict, title: str = "translation Transformer"):
    """Training loss (averaged per ``log_every`` steps) and validation loss against steps."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    if history["losses"]:
        s, v = zip(*history["losses"])
        ax.plot(s, v, label="training loss (label-smoothed)")
    if history["val_losses"]:
        s, v = zip(*history["val_losses"])
        ax.plot(s, v, "o-", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy per token")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    return fig


def evaluate_translations(model, tokenizer, pairs, beam_size: int = 1) -> dict:
    """Translate the sources of ``pairs``; corpus BLEU (sacrebleu) and exact-match rate."""
    import sacrebleu

    from course_lib.decoding import translate

    hyps = translate(model, tokenizer, [s for s, _ in pairs], beam_size=beam_size, warn=lambda m: None)
    refs = [tokenizer.decode(tokenizer.encode(t)) for _, t in pairs]  # the reference as the tokenizer writes it
    exact = sum(h == r for h, r in zip(hyps, refs))
    bleu = sacrebleu.corpus_bleu(hyps, [refs]).score if pairs else float("nan")
    return {"bleu": bleu, "exact": exact, "n": len(pairs), "hypotheses": hyps, "references": refs}


def _parser():
    import argparse

    p = argparse.ArgumentParser(prog="python -m course_lib.train translate",
                                description="Train the encoder-decoder Transformer for translation (notebook 07).")
    p.add_argument("--config", help="JSON config (our names or the original course's: train_data, model_dim, ...)")
    p.add_argument("--data", dest="train_data", help="'generated' (default), 'talks' (hub) or a local prefix "
                   "such as ../shared/data/multi30k/train (files PREFIX.en(.gz), PREFIX.de(.gz))")
    p.add_argument("--valid-data", dest="valid_data", help="validation source (default: the matching split)")
    for name, typ in [("n_train", int), ("n_valid", int), ("bpe_vocab_size", int), ("epochs", int),
                      ("max_steps", int), ("batch_size", int), ("warmup", int), ("lr_scale", float),
                      ("learning_rate", float), ("label_smoothing", float), ("checkpoint_every", int),
                      ("log_every", int), ("seed", int)]:
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=typ)
    p.add_argument("--tokenizer", choices=["word", "bpe"])
    p.add_argument("--device")
    p.add_argument("--no-amp", dest="amp", action="store_false", default=None, help="no bf16 autocast on CUDA")
    for name, typ in [("d_model", int), ("n_heads", int), ("n_layers", int), ("d_ff", int), ("dropout", float),
                      ("max_len", int)]:
        p.add_argument("--" + name.replace("_", "-"), dest="m_" + name, type=typ)
    p.add_argument("--norm-first", dest="m_norm_first", action="store_true", default=None, help="pre-norm")
    p.add_argument("--activation", dest="m_activation", choices=["relu", "gelu"])
    p.add_argument("--out", default="runs/translate", help="folder for checkpoint.safetensors, tokenizer.json, loss.png")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.safetensors")
    p.add_argument("--fsdp", action="store_true", default=None, help="under torchrun: FSDP (default DDP)")
    return p


SMALL_MODEL = {"d_model": 64, "n_heads": 4, "n_layers": 2, "d_ff": 128, "dropout": 0.0, "max_len": 64}


def cli_main(argv=None) -> int:
    from course_lib.checkpoint import read_metadata
    from course_lib.env import seed_everything
    from course_lib.plotting import save_figure
    from course_lib.transformer import Transformer
    from course_lib.translation_data import load_pairs, load_tokenizer

    args = _parser().parse_args(argv)
    D.setup(args.device)  # joins torchrun's process group, if any; only rank 0 prints
    model_kw, train_kw = {}, {}
    if args.config:
        model_kw, tcfg = load_config(args.config)
        train_kw = asdict(tcfg)
    for key, value in vars(args).items():
        if value is None or key in ("config", "out", "resume"):
            continue
        (model_kw if key.startswith("m_") else train_kw)[key.removeprefix("m_")] = value
    cfg = TrainConfig(**train_kw)
    model_kw = {COURSE_MODEL_KEYS.get(k, k): v for k, v in model_kw.items()}  # model_dim -> d_model, ...
    out = Path(args.out)
    seed_everything(cfg.seed)
    device = get_device(cfg.device)
    train_pairs = load_pairs(cfg.train_data, "train", cfg.n_train, cfg.seed)
    valid_src = cfg.valid_data or cfg.train_data
    valid_pairs = load_pairs(valid_src, "val", cfg.n_valid, cfg.seed, n_train=cfg.n_train)
    print(f"data: {len(train_pairs)} training pairs from {cfg.train_data}, {len(valid_pairs)} validation pairs")
    if args.resume and (out / CHECKPOINT).exists():
        tokenizer = load_tokenizer(out / TOKENIZER)  # the vocabulary the checkpoint was trained with
        found = read_metadata(out / CHECKPOINT)["config"]
        mcfg = TransformerConfig.from_dict({**SMALL_MODEL, **model_kw, "src_vocab_size": tokenizer.vocab_size,
                                            "tgt_vocab_size": tokenizer.vocab_size,
                                            "pad_id": tokenizer.special_tokens["<pad>"]})
        check_config(mcfg.to_dict(), found, out / CHECKPOINT)
    else:
        tokenizer = build_tokenizer(train_pairs, cfg.tokenizer, cfg.bpe_vocab_size)
        mcfg = TransformerConfig.from_dict({**SMALL_MODEL, **model_kw, "src_vocab_size": tokenizer.vocab_size,
                                            "tgt_vocab_size": tokenizer.vocab_size,
                                            "pad_id": tokenizer.special_tokens["<pad>"]})
    model = Transformer(mcfg).to(device)
    print(f"model: {model.num_parameters():,} parameters on {device}; vocabulary {tokenizer.vocab_size}")
    history = train(model, tokenizer, train_pairs, valid_pairs, cfg, out_dir=out, resume=args.resume)
    model = D.full_model_on_main(model, lambda: Transformer(mcfg).to(device))  # rank 0 goes on alone
    if model is None:
        return 0
    save_figure(plot_losses(history), out / "loss", formats=("png",))
    if history["val_losses"]:
        print(f"step {history['step']}: validation loss {history['val_losses'][-1][1]:.4f}")
    result = evaluate_translations(model, tokenizer, valid_pairs[:200])
    print(f"greedy on {result['n']} validation pairs: BLEU {result['bleu']:.2f}, exact match "
          f"{result['exact']}/{result['n']}")
    for (src, _), hyp in list(zip(valid_pairs, result["hypotheses"]))[:3]:
        print(f"  {src}  ->  {hyp}")
    print(f"checkpoint: {out / CHECKPOINT}  (translate: python -m course_lib.translate {out} \"sentence\")")
    return 0


__all__ = ["SPECIALS", "TrainConfig", "build_tokenizer", "load_config", "noam_lr", "make_batches", "collate",
           "batch_loss", "evaluate_loss", "train", "plot_losses", "evaluate_translations", "cli_main"]
