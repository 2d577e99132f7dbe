"""GPT benchmarks: training tokens/s of the course model against a compact reference GPT
and a naive one, MFU, and generation tokens/s with and without the KV cache. Prints tables.

    python benchmarks/bench_gpt.py                        # on whatever device is present
    python benchmarks/bench_gpt.py --preset gpt2-124m     # GPT-2 small (meant for a GPU)
    python benchmarks/bench_gpt.py --shakespeare-cpu      # small-cpu on tiny Shakespeare, 5 minutes
    python benchmarks/bench_gpt.py --rounds 21 --repeat 10  # ten runs, each in a fresh process: the spread

Three models of the same configuration, on the same batches, in the same process, timed in
interleaved rounds (so a busy machine slows all three alike; the median round counts):

- naive: the original courses' way: attention written out (scores, a causal mask,
  softmax), GPT-2's tanh GELU written out, no fused kernels;
- reference: written the way the fastest small implementations are: one fused q/k/v
  projection, PyTorch's fused attention and GELU (the config's: exact for the small presets,
  as nanoGPT's, GPT-2's tanh for gpt2-*), no checks in the hot path;
- course: ``course_lib.gpt`` stepped by ``course_lib.training.loop.train_step``, as
  ``course_lib.training.gpt`` trains it; on the CPU also with
  GPT-2's tanh GELU (``activation="gelu_tanh"``), to show what the exact GELU buys there.

On CUDA all three get bf16 autocast, ``torch.compile`` and fused AdamW; on the CPU float32, eager.

``--ablation`` adds two more, to read the course's ratio to the reference: the course's model
with W^Q, W^K, W^V stored as one stacked matrix, as the reference stores them (what that layout
would buy), and a second copy of the reference (what two identical models score against each
other in this protocol: its noise).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from course_lib.attention import MultiHeadAttention  # noqa: E402
from course_lib.env import get_device  # noqa: E402
from course_lib.generate import generate  # noqa: E402
from course_lib.gpt import GPT, PRESETS, GPTConfig  # noqa: E402
from course_lib.training.gpt import GPTTrainConfig, configure_optimizer, get_batch  # noqa: E402
from course_lib.training.loop import train_step  # noqa: E402
from course_lib.training.plan import peak_flops  # noqa: E402
from course_lib.training.precision import Precision  # noqa: E402
from course_lib.transformer import ACTIVATIONS  # noqa: E402


class NaiveBlock(nn.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        self.n_heads = c.n_heads
        self.ln_1, self.ln_2 = nn.LayerNorm(c.d_model), nn.LayerNorm(c.d_model)
        self.c_attn = nn.Linear(c.d_model, 3 * c.d_model)
        self.c_proj = nn.Linear(c.d_model, c.d_model)
        self.fc, self.proj = nn.Linear(c.d_model, 4 * c.d_model), nn.Linear(4 * c.d_model, c.d_model)
        self.register_buffer("mask", torch.tril(torch.ones(c.block_size, c.block_size)).bool())

    def forward(self, x):
        B, T, D = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(D, dim=2)
        q, k, v = (t.view(B, T, self.n_heads, D // self.n_heads).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(k.shape[-1])
        att = att.masked_fill(~self.mask[:T, :T], float("-inf")).softmax(dim=-1)
        x = x + self.c_proj((att @ v).transpose(1, 2).reshape(B, T, D))
        h = self.fc(self.ln_2(x))
        return x + self.proj(0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h**3))))


class NaiveGPT(nn.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(c.vocab_size, c.d_model), nn.Embedding(c.block_size, c.d_model)
        self.blocks = nn.ModuleList(NaiveBlock(c) for _ in range(c.n_layers))
        self.ln_f = nn.LayerNorm(c.d_model)
        self.head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        self.head.weight = self.wte.weight

    def forward(self, idx, targets):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))
        for b in self.blocks:
            x = b(x)
        logits = self.head(self.ln_f(x))
        return logits, F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.reshape(-1))


class RefBlock(nn.Module):
    """Pre-norm block, compact: one q/k/v matrix, fused attention, nothing checked."""

    def __init__(self, c: GPTConfig):
        super().__init__()
        self.n_heads, self.activation = c.n_heads, ACTIVATIONS[c.activation]  # the config's, as the course's
        self.ln_1, self.ln_2 = nn.LayerNorm(c.d_model), nn.LayerNorm(c.d_model)
        self.c_attn, self.c_proj = nn.Linear(c.d_model, 3 * c.d_model), nn.Linear(c.d_model, c.d_model)
        self.fc, self.proj = nn.Linear(c.d_model, 4 * c.d_model), nn.Linear(4 * c.d_model, c.d_model)

    def forward(self, x):
        B, T, D = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(D, dim=2)
        q, k, v = (t.view(B, T, self.n_heads, D // self.n_heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.c_proj(y.transpose(1, 2).reshape(B, T, D))
        return x + self.proj(self.activation(self.fc(self.ln_2(x))))


class RefGPT(NaiveGPT):
    def __init__(self, c: GPTConfig):
        super().__init__(c)
        self.blocks = nn.ModuleList(RefBlock(c) for _ in range(c.n_layers))


def stack_qkv(model: GPT) -> GPT:
    """``model`` with each attention's W^Q, W^K, W^V stored as one ``(3 d_model, d_model)``
    matrix ``w_qkv`` (and one bias), as the reference stores them; the same function."""
    for m in model.modules():
        if isinstance(m, MultiHeadAttention):
            parts = (m.w_q, m.w_k, m.w_v)
            stacked = nn.Linear(m.d_model, 3 * m.d_model, bias=m.w_q.bias is not None)
            with torch.no_grad():
                stacked.weight.copy_(torch.cat([p.weight for p in parts]))
                if stacked.bias is not None:
                    stacked.bias.copy_(torch.cat([p.bias for p in parts]))
            del m.w_q, m.w_k, m.w_v
            m.w_qkv = stacked
            m.project_qkv = lambda x, w=stacked: w(x).chunk(3, dim=-1)
    return model


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


class Trainer:
    """One model's training steps (forward, backward, clip, AdamW), timed on request."""

    def __init__(self, model, cfg: GPTTrainConfig, device, compile_it: bool, shipped: bool = False):
        self.model, self.cfg, self.device, self.shipped = model, cfg, device, shipped
        self.step_fn = torch.compile(model) if compile_it else model
        self.opt = configure_optimizer(model, cfg, device)
        self.amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
        self.precision = Precision("bf16" if device.type == "cuda" else "fp32", device.type)

    def run(self, tokens, block, first_step, steps, clock=time.perf_counter) -> float:
        """Seconds for ``steps`` training steps (``shipped``: the library's ``train_step``)."""
        sync(self.device)
        start = clock()
        for s in range(first_step, first_step + steps):
            x, y = get_batch(tokens, self.cfg.batch_size, block, 0, s, device=self.device)
            if self.shipped:
                train_step(self.model, self.opt, (x, y), lambda m, b: m(*b)[1], precision=self.precision,
                           forward_model=self.step_fn)
                continue
            with self.amp:
                _, loss = self.step_fn(x, y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
        sync(self.device)
        return clock() - start


def interleaved_times(trainers: dict, tokens, block, steps, rounds, warmup,
                      clock=time.perf_counter) -> dict[str, list[float]]:
    """Seconds per round of each trainer: ``rounds`` rounds, each running every trainer for
    ``steps`` steps in turn (in a rotating order), after ``warmup`` steps each."""
    for t in trainers.values():
        t.run(tokens, block, 0, warmup)
    times = {name: [] for name in trainers}
    names = list(trainers)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:  # each goes first in turn
            times[name].append(trainers[name].run(tokens, block, warmup + r * steps, steps, clock))
    return times


def paired_ratios(times: dict[str, list[float]], name: str, other: str) -> tuple[float, float, float]:
    """``name``'s speed over ``other``'s within each round (same minute, same machine load):
    the first quartile, median and third quartile over the rounds."""
    ratios = [t_other / t for t, t_other in zip(times[name], times[other])]
    q1, median, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
    return q1, median, q3


def gen_speed(model, device, prompt_len, new, use_cache) -> float:
    idx = torch.randint(0, model.config.vocab_size, (1, prompt_len), device=device)
    generate(model, idx, 4, temperature=0.0, use_cache=use_cache)
    sync(device)
    start = time.perf_counter()
    generate(model, idx, new, temperature=0.0, use_cache=use_cache)
    sync(device)
    return new / (time.perf_counter() - start)


def shakespeare_cpu(minutes: float, threads: int) -> None:
    """small-cpu on tiny Shakespeare until 1.9 validation loss or ``minutes`` of wall clock."""
    from course_lib.data import load_text
    from course_lib.tokenizer import CharTokenizer
    from course_lib.training.gpt import prepare_data, train

    torch.set_num_threads(threads)
    path = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "tinyshakespeare"
    loaded = load_text(str(path) if path.exists() else "tinyshakespeare")
    text, source = loaded.text, loaded.source
    tok = CharTokenizer.from_text(text)
    data = prepare_data(text, tok)
    torch.manual_seed(1337)
    model = GPT(GPTConfig.preset("small-cpu", vocab_size=tok.vocab_size))
    with tempfile.TemporaryDirectory() as out:
        cfg = GPTTrainConfig(steps=3000, batch_size=16, lr=2e-3, warmup=100, eval_every=100, eval_batches=20,
                             device="cpu", progress=False, out=out, target_loss=1.9, precision="fp32")
        start, state, resume = time.perf_counter(), None, False
        while time.perf_counter() - start < 60 * minutes:
            state = train(model, data, cfg, tokenizer=tok, resume=resume, until_step=(state or {"step": 0})["step"] + 100)
            resume = True
            if state["step"] >= cfg.steps or "target" in state["stopped"]:
                break
        elapsed = time.perf_counter() - start
    best = min(e["val"] for e in state["evals"])
    print(f"| small-cpu ({model.num_parameters():,} params) on {source} | {threads} threads | {state['step']} steps "
          f"in {elapsed:.0f} s | best val loss {best:.3f} | 1.9 reached: {best <= 1.9} |")


# the ratios one run reports, for --repeat: key -> (model, the model it is divided by); each as
# the ratio of the median rounds and (key_paired) the median of the same-round ratios
RATIO_PAIRS = {"naive": ("course", "naive"), "reference": ("course", "reference"),
               "one_qkv": ("course_one_qkv", "reference"), "reference_again": ("reference_again", "reference")}
RATIO_LABELS = {"naive": "course / naive (ratio of medians)", "reference": "course / reference (ratio of medians)",
                "naive_paired": "course / naive (same-round median)",
                "reference_paired": "course / reference (same-round median)",
                # --ablation: the course with one stacked q/k/v matrix, and a second reference
                "one_qkv": "course with one q/k/v matrix / reference (ratio of medians)",
                "one_qkv_paired": "course with one q/k/v matrix / reference (same-round median)",
                "reference_again": "second reference / reference (ratio of medians)",
                "reference_again_paired": "second reference / reference (same-round median)"}


def format_run(run: dict) -> str:
    return ", ".join(f"{RATIO_LABELS[key]} {run[key]:.2f}x" for key in RATIO_LABELS if key in run)


def repeat_runs(argv: list[str], n: int, record_as: str | None = None) -> int:
    """The timing ``n`` times, each in a fresh process, and the spread of its ratios. A run's
    rounds share one process (its memory placement, the machine's state of the moment), so one
    run's figure can be a few percent off; the spread over fresh processes shows how far."""
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(n):
            out = Path(tmp) / f"run{i}.json"
            # the last --repeat wins: the child times once and writes its ratios to `out`
            child = subprocess.run([sys.executable, __file__, *argv, "--repeat", "1", "--ratios-to", str(out)],
                                   stdout=subprocess.DEVNULL)
            if child.returncode != 0:
                print(f"error: run {i + 1} of {n} failed (exit status {child.returncode}; its error is above)",
                      file=sys.stderr)
                return 2
            runs.append(json.loads(out.read_text()))
            print(f"run {i + 1} of {n}: {format_run(runs[-1])}", flush=True)
    keys = [key for key in RATIO_LABELS if key in runs[0]]
    print(f"\n{runs[0]['setup']}; {n} runs, each in a fresh process")
    print("| speed ratio | lowest | median | highest | each run |")
    print("| --- | ---: | ---: | ---: | --- |")
    for key in keys:
        values = [r[key] for r in runs]
        print(f"| {RATIO_LABELS[key]} | {min(values):.2f}x | {statistics.median(values):.2f}x | {max(values):.2f}x | "
              + ", ".join(f"{v:.2f}" for v in values) + " |")
    if record_as:
        from course_lib.results import RESULTS, record

        figures = {key: {"lowest": min(v), "median": statistics.median(v), "highest": max(v),
                         "at_least_1": sum(x >= 1.0 for x in v), "at_least_1_2": sum(x >= 1.2 for x in v), "runs": v}
                   for key in keys for v in [[round(r[key], 4) for r in runs]]}
        record(record_as, {"setup": runs[0]["setup"], "runs": n, **figures}, source="benchmarks/bench_gpt.py", folder=RESULTS)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default=None, choices=sorted(PRESETS),
                   help="default: gpt2-124m on CUDA, small-cpu elsewhere")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--steps", type=int, default=None, help="steps per round")
    p.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="cpu: time by the process's CPU time (for a busy machine; with --threads 1)")
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--shakespeare-cpu", action="store_true")
    p.add_argument("--minutes", type=float, default=5.0)
    p.add_argument("--repeat", type=int, default=1,
                   help="time it this many times, each in a fresh process, and print the spread of the ratios")
    p.add_argument("--record", action="store_true",
                   help="with --repeat: write the ratios to resources/results/bench_gpt_cpu.json (on a GPU: bench_gpt_cuda.json)")
    p.add_argument("--ablation", action="store_true",
                   help="also time the course with one stacked q/k/v matrix, and a second copy of the reference")
    p.add_argument("--ratios-to", help=argparse.SUPPRESS)  # where a --repeat run writes its ratios
    args = p.parse_args(argv)
    if args.repeat < 1 or (args.repeat > 1 and args.shakespeare_cpu):
        p.error(f"--repeat {args.repeat}: give at least 1" if args.repeat < 1 else
                "--repeat times the models against each other; --shakespeare-cpu runs once")
    if args.repeat > 1:
        argv = [a for a in (sys.argv[1:] if argv is None else list(argv)) if a != "--record"]
        device = get_device(args.device).type
        return repeat_runs(argv, args.repeat, f"bench_gpt_{device}" if args.record else None)
    if args.shakespeare_cpu:
        shakespeare_cpu(args.minutes, args.threads)
        return 0
    device = get_device(args.device)
    cuda = device.type == "cuda"
    if not cuda:
        torch.set_num_threads(args.threads)
    else:
        torch.set_float32_matmul_precision("high")
    preset = args.preset or ("gpt2-124m" if cuda else "small-cpu")
    # the CPU configuration: nanoGPT's small CPU model on tiny Shakespeare's 65 characters
    c = GPTConfig.preset(preset) if preset.startswith("gpt2") else GPTConfig.preset(preset, vocab_size=65)
    block = c.block_size
    batch = args.batch_size or (16 if cuda else 12)
    cfg = GPTTrainConfig(batch_size=batch, device=str(device))
    tokens = torch.randint(0, c.vocab_size, (200_000,))
    models = {"naive": NaiveGPT, "reference": RefGPT, "course": GPT}
    if not cuda and c.activation != "gelu_tanh":  # on a GPU both GELUs cost the same (compiled, fused)
        models["course_tanh"] = lambda cfg: GPT(replace(cfg, activation="gelu_tanh"))
    if args.ablation:
        models.update({"course_one_qkv": lambda cfg: stack_qkv(GPT(cfg)), "reference_again": RefGPT})
    trainers = {}
    for name, build in models.items():
        torch.manual_seed(0)
        trainers[name] = Trainer(build(c).to(device), cfg, device, compile_it=cuda, shipped=name.startswith("course"))
    steps, rounds = args.steps or (20 if cuda else 10), args.rounds
    # --clock cpu: the process's CPU time, which other programs on a shared machine barely change
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    times = interleaved_times(trainers, tokens, block, steps, rounds, warmup=10 if cuda else 3, clock=clock)
    speeds = {name: steps * batch * block / statistics.median(ts) for name, ts in times.items()}
    model = trainers["course"].model
    peak = peak_flops(torch.cuda.get_device_name(device)) if cuda else None
    fpt = model.flops_per_token()
    setup = (f"device: {torch.cuda.get_device_name(device) if cuda else f'cpu ({torch.get_num_threads()} threads)'}; "
             f"torch {torch.__version__}; model {preset} ({model.num_parameters():,} params, {c.n_layers} layers, "
             f"{c.n_heads} heads, d_model {c.d_model}, context {block}, vocabulary {c.vocab_size}), "
             f"batch {batch}; median of {rounds} interleaved rounds of {steps} steps, {args.clock} clock")
    print(setup)
    print("| training | tokens/s | vs naive | vs reference | MFU |")
    print("| --- | ---: | ---: | ---: | ---: |")
    labels = {"naive": "naive: hand-written attention and GELU", "reference": "reference: fused q/k/v, fused attention",
              "course": "course_lib.gpt", "course_tanh": "the same with GPT-2's tanh GELU",
              "course_one_qkv": "the same with one q/k/v matrix", "reference_again": "a second reference"}
    for name, tps in speeds.items():
        mfu = f"{100 * fpt * tps / peak:.1f}%" if peak else "n/a (CPU)" if not cuda else "n/a"
        print(f"| {labels[name]} | {tps:,.0f} | {tps / speeds['naive']:.2f}x | {tps / speeds['reference']:.2f}x | {mfu} |")
    # the ratios above divide medians; within one round the models share the machine's state,
    # so the spread of the per-round ratios shows how far a single figure can be trusted
    spread = {other: paired_ratios(times, "course", other) for other in ("naive", "reference")}
    print("course per round: " + "; ".join(
        f"vs {other} median {m:.2f}x, middle half {q1:.2f}-{q3:.2f}x" for other, (q1, m, q3) in spread.items()))
    if args.ratios_to:  # one run of --repeat: its ratios for the summary, no generation
        ratios = {}
        for key, (name, other) in RATIO_PAIRS.items():
            if name in speeds:
                ratios[key] = speeds[name] / speeds[other]
                ratios[f"{key}_paired"] = paired_ratios(times, name, other)[1]
        Path(args.ratios_to).write_text(json.dumps({**ratios, "setup": setup}))
        return 0
    model.eval()
    prompt_len, new = 16, min(256, block - 16)
    print(f"\n| generation ({prompt_len}-token prompt, {new} new tokens, batch 1) | tokens/s |")
    print("| --- | ---: |")
    for use_cache in (False, True):
        print(f"| {'with' if use_cache else 'without'} KV cache | {gen_speed(model, device, prompt_len, new, use_cache):,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
