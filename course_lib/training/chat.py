"""A small chat model end to end: pretrain a base GPT, fine-tune it on conversations (SFT),
then tune its style with preference pairs (DPO). Every stage trains through ``fit``.

    python -m course_lib train chat --out runs/chat     # a few minutes on a laptop CPU
    python -m course_lib chat runs/chat                 # talk to it

The data are the generated instructions of ``course_lib.data.instructions``: the base model
reads them as plain text (an instruction line, an answer line), SFT teaches the chat
template with replies that are mostly wordy ("the answer is ..."), and DPO prefers the bare
answer. The run folder holds the final model, its tokenizer and ``chat_metrics.json``.
"""

from __future__ import annotations

import copy
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from course_lib import align
from course_lib.chat import SPECIAL_TOKENS, generate_replies
from course_lib.checkpoint import (
    atomic_write_text,
    integer_problems,
    number_problems,
    save_checkpoint,
)
from course_lib.data import instructions as data
from course_lib.gpt import GPT, GPTConfig
from course_lib.tokenizer import CharTokenizer
from course_lib.training.core import Parser, RunFolder, cosine_lr, log
from course_lib.training.loop import fit

SCALES = {  # model (GPTConfig fields), steps of each stage, amounts of data
    "small": dict(n_layers=3, n_heads=4, d_model=96, batch_size=16, base_steps=400, sft_steps=200, dpo_steps=30),
    "full": dict(n_layers=6, n_heads=8, d_model=256, batch_size=64, base_steps=3000, sft_steps=1000,
                 dpo_steps=100, n_train=20000, n_pairs=2048, n_test=400),
}


@dataclass
class ChatTrainConfig:
    n_layers: int = 3
    n_heads: int = 4
    d_model: int = 96
    block_size: int = 72
    base_steps: int = 400
    sft_steps: int = 200
    dpo_steps: int = 30
    batch_size: int = 16
    lr: float = 3e-3
    dpo_lr: float = 5e-5
    beta: float = 0.1
    p_verbose: float = 0.7  # share of wordy replies in the SFT data
    n_train: int = 4000
    n_test: int = 200
    n_pairs: int = 512  # preference pairs DPO trains on
    seed: int = 1337

    def __post_init__(self):
        problems = integer_problems(self, ("n_layers", "n_heads", "d_model", "block_size", "batch_size",
                                           "n_train", "n_test", "n_pairs"))
        problems += integer_problems(self, ("base_steps", "sft_steps", "dpo_steps"), minimum=0)
        problems += number_problems(self, ("lr", "dpo_lr", "beta"), above=True)
        if not isinstance(self.p_verbose, (int, float)) or not 0 <= self.p_verbose <= 1:
            problems.append(f"p_verbose={self.p_verbose!r} must be a probability in [0, 1]")
        if problems:
            raise ValueError("invalid chat training settings: " + "; ".join(problems) + ".")

    def model_config(self, vocab_size: int) -> GPTConfig:
        return GPTConfig(vocab_size=vocab_size, block_size=self.block_size, n_layers=self.n_layers,
                         n_heads=self.n_heads, d_model=self.d_model)


def make_tokenizer() -> CharTokenizer:
    """Characters of the instructions and replies, plus the chat template's special tokens."""
    chars = "abcdefghijklmnopqrstuvwxyz0123456789 :+\n"
    return CharTokenizer.from_text(chars, special_tokens=SPECIAL_TOKENS)


def _schedule(lr: float, steps: int):
    return lambda i: cosine_lr(i, lr, lr / 10, max(1, steps // 10), steps)


def pretrain(model, tokenizer, items, cfg: ChatTrainConfig, device="cpu") -> dict:
    """Next-token prediction on the instructions as plain text (``data.base_text``)."""
    from course_lib.training.gpt import get_batch

    tokens = torch.tensor(tokenizer.encode(data.base_text(items)), dtype=torch.long)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.1)
    return fit(model, opt, lambda i: get_batch(tokens, cfg.batch_size, model.config.block_size, cfg.seed, i,
                                               device=device),
               lambda m, b: m(*b)[1], steps=cfg.base_steps, lr_at=_schedule(cfg.lr, cfg.base_steps),
               eval_every=max(1, cfg.base_steps), desc="base")


def sft_batches(tokenizer, conversations, batch_size: int, seed: int, device="cpu"):
    """``batch_at(i)``: ``batch_size`` conversations drawn at random (depends only on seed and i)."""
    def batch_at(i: int):
        rng = random.Random(seed * 1_000_003 + i)
        ids, targets = align.sft_batch(tokenizer, rng.sample(conversations, batch_size))
        return ids.to(device), targets.to(device)

    return batch_at


def sft(model, tokenizer, conversations, cfg: ChatTrainConfig, device="cpu") -> dict:
    """Supervised fine-tuning: cross-entropy on the assistant's tokens only."""
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr / 3, weight_decay=0.1)
    return fit(model, opt, sft_batches(tokenizer, conversations, cfg.batch_size, cfg.seed, device),
               align.sft_loss, steps=cfg.sft_steps, lr_at=_schedule(cfg.lr / 3, cfg.sft_steps),
               eval_every=max(1, cfg.sft_steps), desc="sft")


def dpo(model, tokenizer, train_pairs, test_pairs, cfg: ChatTrainConfig, device="cpu", eval_every: int = 10) -> dict:
    """DPO against a frozen copy of ``model`` as it is now. Evaluates on ``test_pairs`` every
    ``eval_every`` steps: ``accuracy`` (share of pairs whose chosen reply has the higher
    reward) and ``margin`` (mean chosen minus rejected reward)."""
    reference = copy.deepcopy(model).eval().requires_grad_(False)
    ids, mask = (t.to(device) for t in align.pair_tensors(tokenizer, train_pairs))
    ref_logps = align.pair_logprobs(reference, ids, mask)
    test_ids, test_mask = (t.to(device) for t in align.pair_tensors(tokenizer, test_pairs))
    test_ref = align.pair_logprobs(reference, test_ids, test_mask)

    def batch_at(i: int):
        rows = torch.randperm(len(ids), generator=torch.Generator().manual_seed(cfg.seed + i))[:cfg.batch_size]
        rows = rows.to(device)
        return ids[rows], mask[rows], ref_logps[rows]

    def evaluate() -> dict:
        r = align.rewards(model, test_ids, test_mask, test_ref, cfg.beta)
        return {"accuracy": float((r[:, 0] > r[:, 1]).float().mean()), "margin": float((r[:, 0] - r[:, 1]).mean())}

    opt = torch.optim.AdamW(model.parameters(), lr=cfg.dpo_lr, weight_decay=0.0)
    state = {"step": 0, "train_losses": [], "evals": [{"step": 0, **evaluate()}]}
    return fit(model, opt, batch_at, lambda m, b: align.dpo_batch_loss(m, b, cfg.beta), steps=cfg.dpo_steps,
               lr_at=_schedule(cfg.dpo_lr, cfg.dpo_steps), evaluate=evaluate, eval_every=eval_every,
               state=state, desc="dpo")


def reply_metrics(model, tokenizer, items) -> dict:
    """On held-out instructions: share of replies that keep to the template, task accuracy,
    share of bare (not wordy) replies, mean reply length in characters."""
    replies = generate_replies(model, tokenizer, [it.prompt for it in items])
    parsed = [data.parse_reply(text) for text, _ in replies]
    n = len(items)
    return {"template": sum(f for _, f in replies) / n,
            "accuracy": sum(a == it.answer for (a, _), it in zip(parsed, items)) / n,
            "bare": sum(not v for _, v in parsed) / n,
            "length": sum(len(text) for text, _ in replies) / n}


def train_chat(cfg: ChatTrainConfig, device="cpu", say=log) -> tuple[GPT, CharTokenizer, dict]:
    """All three stages; returns the model, its tokenizer and the measured figures."""
    tokenizer = make_tokenizer()
    train_items, test_items = data.split(cfg.n_train, cfg.n_test, cfg.seed)
    torch.manual_seed(cfg.seed)
    model = GPT(cfg.model_config(tokenizer.vocab_size)).to(device)
    figures = {}
    for stage in ("base", "sft", "dpo"):
        if stage == "base":
            state = pretrain(model, tokenizer, train_items, cfg, device)
        elif stage == "sft":
            state = sft(model, tokenizer, data.conversations(train_items, cfg.p_verbose, cfg.seed), cfg, device)
        else:
            state = dpo(model, tokenizer, data.preference_pairs(train_items[:cfg.n_pairs]),
                        data.preference_pairs(test_items), cfg, device, eval_every=max(1, cfg.dpo_steps))
        figures[stage] = {"last_loss": state["train_losses"][-1][1] if state["train_losses"] else None,
                          **reply_metrics(model, tokenizer, test_items)}
        if state["evals"]:
            figures[stage]["preference"] = state["evals"][-1]
        say(f"{stage}: " + ", ".join(f"{k} {v:.3f}" for k, v in figures[stage].items() if isinstance(v, float)))
    return model, tokenizer, figures


def build_parser() -> Parser:
    p = Parser(prog="python -m course_lib train chat",
               description="Train a small chat model: base GPT, then SFT, then DPO (notebook 14).")
    p.add_argument("--out", default="runs/chat", help="run folder to write")
    p.add_argument("--scale", choices=sorted(SCALES), default=None,
                   help="model size and steps (default: full on a CUDA GPU, small elsewhere)")
    for name, what in (("base_steps", "pretraining"), ("sft_steps", "SFT"), ("dpo_steps", "DPO")):
        sizes = ", ".join(f"{SCALES[s][name]} {s}" for s in sorted(SCALES, reverse=True))
        p.add_argument("--" + name.replace("_", "-"), type=int, default=None,
                       help=f"optimizer steps of {what} (default: by --scale: {sizes})")
    p.add_argument("--seed", type=int, default=ChatTrainConfig.seed, help="seed of the weights and the data")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: the best found)")
    return p


def command(argv=None) -> int:
    """``python -m course_lib train chat``: the whole pipeline into a run folder."""
    from course_lib.env import get_device, get_scale

    args = build_parser().parse_args(argv)
    device = get_device(args.device, source="--device")
    run = RunFolder(args.out)  # a file, or a folder that cannot be written, is an error now
    given = {k: v for k, v in vars(args).items() if k in ChatTrainConfig.__dataclass_fields__ and v is not None}
    cfg = ChatTrainConfig(**{**SCALES[args.scale or get_scale(device)], **given})
    model, tokenizer, figures = train_chat(cfg, device)
    save_checkpoint(run.checkpoint, model, model.config.to_dict(), train_state={"chat": asdict(cfg)})
    tokenizer.save(run.tokenizer)
    atomic_write_text(Path(run.path) / "chat_metrics.json", json.dumps(figures, indent=2) + "\n")
    log(f"run folder {run.path} (talk to it: python -m course_lib chat {run.path})")
    return 0
