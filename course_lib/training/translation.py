"""Training the encoder-decoder Transformer for translation (notebook 07 and the command).

    "We used the Adam optimizer with beta1 = 0.9, beta2 = 0.98 and epsilon = 10^-9. We
    varied the learning rate over the course of training, according to the formula:
    lrate = d_model^-0.5 * min(step_num^-0.5, step_num * warmup_steps^-1.5)"  (5.3)

    "During training, we employed label smoothing of value eps_ls = 0.1."  (5.4)

    "Sentence pairs were batched together by approximate sequence length."  (5.1)

One function, ``train``, serves the notebook and ``python -m course_lib train translate``:
length-grouped padded batches weighted by their target tokens, the warmup schedule, label
smoothing; the steps are ``course_lib.training.loop.fit``'s, set up by
``course_lib.training.core.Trainer`` (run folder, checkpoints and exact resume, precision). One tokenizer with a joint vocabulary serves both languages, so the
embeddings can be shared.
"""

from __future__ import annotations

import math
import random
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from course_lib import scaleout as D
from course_lib.checkpoint import integer_problems, number_problems
from course_lib.env import get_device
from course_lib.losses import IGNORE_INDEX
from course_lib.tokenizer import SPECIALS, BPETokenizer, WordTokenizer, special_ids
from course_lib.training.core import (
    Parser,
    RunFolder,
    TrainConfig,
    Trainer,
    add_config_arguments,
    check_preset_on_resume,
    given,
    log,
    micro_batches,
    noam_lr,
    read_json,
    save_loss_plot,
    saved_settings,
    setting,
)
from course_lib.training.loop import MicroBatches
from course_lib.transformer import COURSE_MODEL_KEYS, COURSE_TRAIN_KEYS, TransformerConfig, our_name

PRESETS = {
    "small": dict(d_model=64, n_heads=4, n_layers=2, d_ff=128, dropout=0.0, max_len=64),  # CPU, notebook 07
    # Multi30k on a laptop's CPU (resources/recipes/multi30k_cpu.json holds its training settings)
    "multi30k-cpu": dict(d_model=256, n_heads=4, n_layers=3, d_ff=1024, dropout=0.1, norm_first=True, max_len=128),
    "base": {},  # the paper's base model: TransformerConfig's defaults (Table 3)
}


@dataclass
class TranslationTrainConfig(TrainConfig):
    data: str = setting("generated", "'generated' (offline), 'talks' (hub) or a local prefix "
                        "such as ../shared/data/multi30k/train (PREFIX.en/.de[.gz])")
    steps: int | None = setting(None, "optimizer steps (default: epochs x steps per epoch)")
    batch_size: int = setting(64, "sentence pairs per optimizer step (all ranks and micro-batches)")
    warmup: int = setting(4000, "steps of linear learning-rate warmup")
    lr: float | None = setting(None, "peak learning rate (default: the paper's formula)")
    grad_clip: float = setting(0.0, "clip the global gradient norm to this (0: off, as the paper)")
    eval_every: int = setting(250, "evaluate, log and checkpoint every N steps")
    seed: int = setting(0, "seed of the initial weights, the batches and dropout")
    valid_data: str | None = setting(None, "validation pairs (default: the matching split of --data)")
    n_train: int = setting(20000, "training pairs to use (generated: how many to make)")
    n_valid: int = setting(400, "validation pairs to use")
    tokenizer: str = setting("word", "joint vocabulary: word or bpe", choices=("word", "bpe"))
    bpe_vocab_size: int = setting(8000, "vocabulary size of --tokenizer bpe")
    epochs: int = setting(10, "passes over the data when --steps is not given")
    lr_scale: float = setting(1.0, "multiplies the paper's schedule (when --lr is not given)")
    label_smoothing: float = setting(0.1, "label smoothing (5.4)")
    schedule: str = setting("noam", "learning rate: noam (the paper's: warmup, then 1/sqrt(step)) or linear "
                            "(warmup, then straight down to 0 at the end of --steps or --max-minutes, whichever "
                            "comes first)", choices=("noam", "linear"))
    max_minutes: float | None = setting(None, "stop after this many minutes of training (evaluation not counted; "
                                        "one process only)")
    average_last: int = setting(0, "at the end, average the weights of the last N evaluation checkpoints "
                                "(0 or 1: off)")
    eval_beam: int = setting(4, "beam size of the final BLEU evaluation (1: greedy)")
    eval_alpha: float = setting(0.6, "length penalty of the final beam search (6.1)")

    def check(self) -> list[str]:
        problems = integer_problems(self, ("n_train", "n_valid", "epochs", "bpe_vocab_size", "eval_beam"))
        problems += integer_problems(self, ["average_last"], minimum=0)
        if self.tokenizer not in ("word", "bpe"):
            problems.append(f"tokenizer={self.tokenizer!r} must be 'word' or 'bpe'")
        if self.schedule not in ("noam", "linear"):
            problems.append(f"schedule={self.schedule!r} must be 'noam' or 'linear'")
        problems += number_problems(self, ["max_minutes"], above=True, optional=True)
        return problems + number_problems(self, ["label_smoothing"], 0, 1)


def load_config(source: str | Path | dict) -> tuple[dict, dict]:
    """A JSON config (our names, or the original course's: ``train_data``, ``model_dim``,
    ...) -> (training settings, model settings), both with our names."""
    d = read_json(source, "config") if not isinstance(source, dict) else dict(source)
    d.pop("preset", None)  # the command reads it (a model size from PRESETS)
    train_names = set(TranslationTrainConfig.__dataclass_fields__)
    model_names = set(TransformerConfig.__dataclass_fields__)
    train, model, unknown = {}, {}, []
    for key, value in d.items():
        name = our_name(key)
        target = train if name in train_names else model if name in model_names else None
        if target is None:
            unknown.append(key)
        elif name in target and target[name] != value:
            raise ValueError(f"config gives {name} twice with different values ({target[name]!r}, {value!r}).")
        else:
            target[name] = value
    if unknown:
        raise ValueError(f"unknown config key(s) {sorted(unknown)}; training keys: {sorted(train_names)} "
                         f"(or {sorted(COURSE_TRAIN_KEYS)}); model keys: {sorted(model_names)} "
                         f"(or {sorted(COURSE_MODEL_KEYS)}).")
    where = "config" if isinstance(source, dict) else f"config file {source}"
    try:  # each field's type and range now, before any data loads
        TranslationTrainConfig.from_dict(train)
        TransformerConfig.from_dict({"src_vocab_size": 8, "tgt_vocab_size": 8, **model})
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    return train, model


# ---- data ------------------------------------------------------------------------------------

def build_tokenizer(pairs, kind: str = "word", vocab_size: int = 8000):
    """One tokenizer for both languages, fitted on the training pairs."""
    texts = [s for p in pairs for s in p]
    if kind == "word":
        return WordTokenizer.from_texts(texts, special_tokens=SPECIALS)
    if kind == "bpe":
        return BPETokenizer.train("\n".join(texts), vocab_size=vocab_size, special_tokens=SPECIALS)
    raise ValueError(f"tokenizer kind {kind!r}: use 'word' or 'bpe'.")


def encode_pairs(tokenizer, pairs, max_len: int):
    """``[(src ids + <eos>, <bos> + tgt ids + <eos>)]``; pairs longer than ``max_len`` are
    dropped. Returns (examples, number dropped)."""
    ids = special_ids(tokenizer)
    out, dropped = [], 0
    for s, t in pairs:
        src = tokenizer.encode(s) + [ids["<eos>"]]
        tgt = [ids["<bos>"]] + tokenizer.encode(t) + [ids["<eos>"]]
        if len(src) > max_len or len(tgt) > max_len or len(src) < 2:
            dropped += 1
            continue
        out.append((src, tgt))
    return out, dropped


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


def batch_loss(model, src, tgt, label_smoothing: float = 0.0, precision=None) -> torch.Tensor:
    """Mean cross-entropy of predicting ``tgt[:, 1:]`` from ``tgt[:, :-1]`` (padding ignored)."""
    with precision.autocast() if precision is not None else nullcontext():
        logits = model(src, tgt[:, :-1])
    return target_loss(logits, tgt, model.config.pad_id, label_smoothing)


def target_loss(logits, tgt, pad_id: int, label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy of ``logits`` (B, T, V) against ``tgt[:, 1:]``, padding ignored,
    taken in float32 at least."""
    wide = logits if logits.dtype == torch.float64 else logits.float()
    target = tgt[:, 1:].masked_fill(tgt[:, 1:] == pad_id, IGNORE_INDEX)
    return F.cross_entropy(wide.flatten(0, 1), target.flatten(), ignore_index=IGNORE_INDEX,
                           label_smoothing=label_smoothing)


@torch.no_grad()
def evaluate_loss(model, examples, batch_size: int = 64, precision=None) -> float:
    """Validation cross-entropy per target token (no label smoothing)."""
    if not examples:
        return float("nan")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for idx in make_batches([(len(s), len(t)) for s, t in examples], batch_size, seed=0):
        src, tgt = collate(examples, idx, model.config.pad_id, device)
        n = int((tgt[:, 1:] != model.config.pad_id).sum())
        total += float(batch_loss(model, src, tgt, 0.0, precision)) * n
        count += n
    model.train(was_training)
    return total / count


# ---- training --------------------------------------------------------------------------------

def average_weights(snapshots: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The element-wise mean of several state dicts (checkpoint averaging: "we used a single
    model obtained by averaging the last 5 checkpoints", 6.1)."""
    if not isinstance(snapshots, (list, tuple)) or not snapshots:
        raise ValueError("average_weights needs a non-empty list of state dicts (the checkpoints to average).")
    keys, shapes = set(snapshots[-1]), {k: v.shape for k, v in snapshots[-1].items()}
    for i, snap in enumerate(snapshots):
        if set(snap) != keys or any(snap[k].shape != shapes[k] for k in keys):
            raise ValueError(f"snapshot {i} has other parameters (names or shapes) than the last one; "
                             "average checkpoints of the same model only.")
    return {k: torch.stack([s[k].float() for s in snapshots]).mean(0).to(snapshots[-1][k].dtype)
            for k in snapshots[-1]}


def train(model, tokenizer, train_pairs, valid_pairs, cfg: TranslationTrainConfig, resume: bool = False,
          until_step: int | None = None, make_optimizer=None, on_step=None) -> dict:
    """Train ``model`` on (source, target) text pairs, checkpointing into ``cfg.out`` (if
    set). Returns the training state: ``step``, ``epoch``, ``train_losses`` ([step, loss]
    per step), ``evals`` (dicts with the validation loss), ``steps_per_epoch``,
    ``train_seconds`` (time spent training, evaluation not counted).

    ``cfg.max_minutes`` ends the run at the first step past that much training time;
    ``cfg.average_last = N`` replaces the final weights by the mean of the last N
    evaluation checkpoints' (kept in memory; a resumed run averages those since it
    resumed). ``on_step(state, model)``, if given, is called after every step, outside
    the training clock; a true answer ends the run there, as running out of time does.

    ``make_optimizer(model)``: another optimizer than the paper's Adam (the tests use plain
    SGD, under which a wrong gradient scale cannot hide); the schedule still sets its lr."""
    examples, valid = encode_for_training(model, tokenizer, train_pairs, valid_pairs, cfg)
    steps_per_epoch = math.ceil(len(examples) / cfg.batch_size)
    schedule_end = cfg.steps or cfg.epochs * steps_per_epoch
    lr_of = learning_rate(cfg, model.config.d_model, schedule_end)

    def adam(m):
        return torch.optim.Adam(m.parameters(), lr=lr_of(1), betas=(0.9, 0.98), eps=1e-9)

    trainer = Trainer.start(model, cfg, make_optimizer or adam, resume, defaults={"epoch": 0, "batch": 0})
    if trainer.run is not None and D.current(trainer.device).is_main:
        tokenizer.save(trainer.run.tokenizer)
    state = trainer.state
    epochs = Epochs(examples, cfg, model.config.pad_id, trainer.device, state)

    def after_step(state: dict) -> bool:
        state["batch"] += 1
        stop = bool(on_step(state, model)) if on_step is not None else False
        epochs.advance(state)
        return stop

    trainer.fit(epochs.batch_at, lambda m, b: batch_loss(m, *b, cfg.label_smoothing),
                steps=min(schedule_end, until_step or schedule_end), on_step=after_step,
                lr_at=lambda i: lr_of(i + 1, state["train_seconds"]),
                evaluate=evaluator(trainer, valid, schedule_end),
                time_budget=60 * cfg.max_minutes if cfg.max_minutes else None)
    model.eval()
    return {**state, "steps_per_epoch": steps_per_epoch}


def encode_for_training(model, tokenizer, train_pairs, valid_pairs, cfg: TranslationTrainConfig):
    """The training and validation examples (token ids), after the checks that must pass
    before any work: the tokenizer's <pad> is the model's, pairs are left, the batches
    split over the processes and micro-batches."""
    ctx = D.current(get_device(cfg.device))
    pad = special_ids(tokenizer)["<pad>"]
    if pad != model.config.pad_id:
        raise ValueError(f"the tokenizer's <pad> is id {pad} but the model's pad_id is {model.config.pad_id}; "
                         "build the model with pad_id=tokenizer.special_tokens['<pad>'].")
    examples, dropped = encode_pairs(tokenizer, train_pairs, model.config.max_len)
    if dropped:
        log(f"skipped {dropped} training pairs longer than max_len={model.config.max_len} tokens")
    if not examples:
        raise ValueError("no training pairs left (all empty or longer than max_len); check the data.")
    valid, _ = encode_pairs(tokenizer, valid_pairs or [], model.config.max_len)
    D.check_batches(cfg.batch_size, len(examples), ctx, cfg.grad_accum)
    if ctx.world_size > 1 and (cfg.max_minutes or cfg.average_last > 1):
        raise ValueError("max_minutes and average_last work in one process only; leave them out under torchrun.")
    return examples, valid


def learning_rate(cfg: TranslationTrainConfig, d_model: int, planned: int):
    """``lr_at(step, seconds)`` (1-based step; seconds of training so far): the paper's
    schedule (noam), or warmup then a straight line down to 0 at the end of ``planned``
    steps or of ``cfg.max_minutes``, whichever comes first (linear); scaled so that its
    peak is ``cfg.lr`` when given."""
    peak = noam_lr(cfg.warmup, d_model, cfg.warmup)  # the paper's schedule peaks at step = warmup
    scale = cfg.lr_scale if cfg.lr is None else cfg.lr / peak

    def lr_at(step: int, seconds: float = 0.0) -> float:
        if cfg.schedule == "noam":
            return noam_lr(step, d_model, cfg.warmup, scale)
        done = (step - 1) / planned  # the share of the budget spent before this step
        if cfg.max_minutes:
            done = max(done, seconds / (60 * cfg.max_minutes))
        return scale * peak * min(1.0, step / max(1, cfg.warmup)) * max(0.0, 1.0 - done)

    return lr_at


class Epochs:
    """The batches of each epoch (length-grouped, in the order of the epoch's seed); the
    training state's ``epoch`` and ``batch`` say which comes next, so a resumed run
    continues where the interrupted one stopped."""

    def __init__(self, examples, cfg: TranslationTrainConfig, pad_id: int, device, state: dict):
        self.examples, self.cfg, self.pad, self.device, self.state = examples, cfg, pad_id, device, state
        self.lengths = [(len(s), len(t)) for s, t in examples]
        self.ctx = D.current(device)
        self.epoch, self.batches = None, []

    def of(self, epoch: int) -> list[list[int]]:
        if epoch != self.epoch:
            self.epoch = epoch
            self.batches = make_batches(self.lengths, self.cfg.batch_size, seed=self.cfg.seed * 100003 + epoch)
        return self.batches

    def batch_at(self, _step: int) -> MicroBatches:
        """The next batch (of the state's epoch and position): this rank's pairs, padded, cut
        into micro-batches weighted by their share of the whole batch's target tokens."""
        state = self.state
        idx = self.of(state["epoch"])[state["batch"]]
        n_batch = sum(len(self.examples[i][1]) - 1 for i in idx)  # target tokens of the whole batch
        parts = MicroBatches()
        for part in micro_batches(D.rank_part(idx, self.ctx), self.cfg.grad_accum):  # this rank's pairs, cut up
            src, tgt = collate(self.examples, part, self.pad, self.device)
            # this micro-batch's share of the batch's mean loss (DDP averages over ranks)
            parts.append(((src, tgt), int((tgt[:, 1:] != self.pad).sum()) * self.ctx.world_size / n_batch))
        return parts

    def advance(self, state: dict) -> None:
        """After a step (``state['batch']`` counted): at the end of an epoch, the next one."""
        if state["batch"] == len(self.of(state["epoch"])):
            state.update(epoch=state["epoch"] + 1, batch=0)


def evaluator(trainer, valid, schedule_end: int):
    """What ``fit`` runs at each evaluation: keep the weights for averaging (``average_last``),
    average them at the run's end (the schedule's end, or a stop for time or by ``on_step``;
    not an ``until_step`` interruption), then the validation loss (None without pairs)."""
    cfg, model, snapshots = trainer.cfg, trainer.model, []

    def evaluate() -> dict | None:
        state = trainer.state
        if cfg.average_last > 1:
            weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
            snapshots[:] = (snapshots + [(state["step"], weights)])[-cfg.average_last:]
        ending = state["step"] == schedule_end or state["stopped"] != "steps"
        if ending and len(snapshots) > 1:
            model.load_state_dict(average_weights([w for _, w in snapshots]))
            state["averaged_steps"] = [s for s, _ in snapshots]
            log(f"averaged the weights of steps {state['averaged_steps']}")
        if not valid:
            return None
        val = evaluate_loss(trainer.step_model, valid, cfg.batch_size, trainer.precision)
        log(f"step {state['step']}: validation loss {val:.4f}")
        return {"val": round(val, 6), "lr": trainer.optimizer.param_groups[0]["lr"]}

    return evaluate


def evaluate_translations(model, tokenizer, pairs, beam_size: int = 1, alpha: float = 0.6) -> dict:
    """Translate the sources of ``pairs``; corpus BLEU (sacrebleu) and exact-match rate.
    The references are the tokenizer's round trip of the targets: the raw text itself for
    the byte-level BPE (lossless), spaced-out words for the word tokenizer."""
    import sacrebleu

    from course_lib.decoding import translate

    hyps = translate(model, tokenizer, [s for s, _ in pairs], beam_size=beam_size, alpha=alpha, warn=lambda m: None)
    refs = [tokenizer.decode(tokenizer.encode(t)) for _, t in pairs]  # the reference as the tokenizer writes it
    exact = sum(h == r for h, r in zip(hyps, refs))
    bleu = sacrebleu.corpus_bleu(hyps, [refs]).score if pairs else float("nan")
    return {"bleu": bleu, "exact": exact, "n": len(pairs), "hypotheses": hyps, "references": refs}


# ---- command line --------------------------------------------------------------------------

COMMAND_DEFAULTS = {"out": "runs/translate"}  # the command writes a run folder; the library only if asked


def build_parser() -> Parser:
    p = Parser(prog="python -m course_lib train translate",
               description="Train the encoder-decoder Transformer for translation (notebook 07).")
    p.add_argument("--preset", default=None, choices=sorted(PRESETS),
                   help="model size: small (CPU, the grammar), multi30k-cpu (CPU, real sentences) or base (the paper's)")
    p.add_argument("--config", help="JSON file of settings (our names or the original course's: "
                   "train_data, model_dim, ...)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run saved in --out, with its own settings (flags given now override them)")
    p.add_argument("--until-step", type=int, default=None, help="stop (and save) at this step, as if interrupted")
    add_config_arguments(p, TranslationTrainConfig, title="training", defaults=COMMAND_DEFAULTS)
    add_config_arguments(p, TransformerConfig, prefix="model_", title="model (overrides the preset)",
                         skip=("model_type", "src_vocab_size", "tgt_vocab_size", "pad_id"))
    return p


def command(argv=None) -> int:
    """``python -m course_lib train translate``: pairs -> tokenizer -> Transformer -> run folder."""
    from course_lib.data import load_pairs
    from course_lib.env import seed_everything
    from course_lib.tokenizer import load_tokenizer
    from course_lib.training.plan import plan_run
    from course_lib.transformer import Transformer

    args = build_parser().parse_args(argv)
    train_file, model_file = load_config(args.config) if args.config else ({}, {})
    preset = args.preset or (read_json(args.config, "config").get("preset") if args.config else None) or "small"
    if preset not in PRESETS:
        raise ValueError(f"{args.config}: preset {preset!r} is not one of {sorted(PRESETS)}.")
    out = given(args, TranslationTrainConfig).get("out") or train_file.get("out") or COMMAND_DEFAULTS["out"]
    saved_train, saved_model = saved_settings(out) if args.resume else ({}, {})  # the run's own settings
    cfg = TranslationTrainConfig.from_dict({**COMMAND_DEFAULTS, **saved_train, **train_file,
                                            **given(args, TranslationTrainConfig)})
    run = RunFolder(cfg.out)  # checked before any work: a file, or not writable, is an error now
    if args.resume:
        run.require_checkpoint()
    if args.until_step is not None and args.until_step < 1:
        raise ValueError(f"--until-step {args.until_step} must be >= 1.")
    get_device(cfg.device, source="--device")  # a device that is not here is an error now
    D.setup(cfg.device)  # joins torchrun's process group, if any; only rank 0 prints
    asked = {**model_file, **given(args, TransformerConfig, "model_")}
    check_preset_on_resume(args.preset, {**PRESETS[preset], **asked}, saved_model)
    model_values = {**PRESETS[preset], **saved_model, **asked}
    TransformerConfig.from_dict({**model_values, "src_vocab_size": 8, "tgt_vocab_size": 8, "pad_id": 0})  # now
    seed_everything(cfg.seed)
    train_pairs = load_pairs(cfg.data, "train", cfg.n_train, cfg.seed)
    valid_pairs = load_pairs(cfg.valid_data or cfg.data, "val", cfg.n_valid, cfg.seed, n_train=cfg.n_train)
    log(f"data: {len(train_pairs)} training pairs from {cfg.data}, {len(valid_pairs)} validation pairs")
    if args.resume and run.tokenizer.exists():
        tokenizer = load_tokenizer(run.tokenizer)  # the vocabulary the checkpoint was trained with
    else:
        tokenizer = build_tokenizer(train_pairs, cfg.tokenizer, cfg.bpe_vocab_size)
    model_cfg = TransformerConfig.from_dict({
        **model_values, "src_vocab_size": tokenizer.vocab_size, "tgt_vocab_size": tokenizer.vocab_size,
        "pad_id": tokenizer.special_tokens["<pad>"]})
    model = Transformer(model_cfg)
    log(f"model: {model.num_parameters():,} parameters; vocabulary {tokenizer.vocab_size}")
    cfg, plan = plan_run(cfg, model_cfg, model_cfg.max_len, src_len=model_cfg.max_len,
                         accum_given="grad_accum" in {**train_file, **given(args, TranslationTrainConfig)})
    log(plan.line())  # precision, micro-batch x accumulation, memory and time on this device
    state = train(model, tokenizer, train_pairs, valid_pairs, cfg, resume=args.resume, until_step=args.until_step)
    model = D.full_model_on_main(model, lambda: Transformer(model_cfg).to(get_device(cfg.device)))
    if model is None:  # ranks other than 0 are done
        return 0
    save_loss_plot(state, "translation Transformer", run.path / "loss")
    result = evaluate_translations(model, tokenizer, valid_pairs[:200], cfg.eval_beam, cfg.eval_alpha)
    how = "greedy" if cfg.eval_beam == 1 else f"beam {cfg.eval_beam} (length penalty {cfg.eval_alpha})"
    log(f"{how} on {result['n']} validation pairs: BLEU {result['bleu']:.2f}, "
        f"exact match {result['exact']}/{result['n']}")
    for (src, _), hyp in list(zip(valid_pairs, result["hypotheses"]))[:3]:
        log(f"  {src}  ->  {hyp}")
    log(f"run folder {run.path} (translate: python -m course_lib translate {run.path} \"a sentence .\")")
    return 0
