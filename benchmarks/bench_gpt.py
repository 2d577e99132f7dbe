"""GPT benchmarks: training tokens/s of the course model against a naive one, MFU, and
generation tokens/s with and without the KV cache. Prints a table.

    python benchmarks/bench_gpt.py                        # on whatever device is present
    python benchmarks/bench_gpt.py --preset gpt2-124m     # GPT-2 small (meant for a GPU)
    python benchmarks/bench_gpt.py --shakespeare-cpu      # small-cpu on tiny Shakespeare, 5 minutes

The naive model is the original courses' way: float32, attention written out (scores, a
causal mask, softmax), no fused kernels, no compile. The course model is ``course_lib.gpt``
trained as ``course_lib.gpt_train`` does: fused attention, and on CUDA bf16 autocast,
``torch.compile`` and fused AdamW. Both see the same batches.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from course_lib.gpt_train import PEAK_BF16_FLOPS, TrainConfig, configure_optimizer, get_batch  # noqa: E402

from course_lib.env import get_device  # noqa: E402
from course_lib.generate import generate  # noqa: E402
from course_lib.gpt import GPT, GPTConfig  # noqa: E402


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


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def train_speed(model, step_fn, cfg: TrainConfig, device, amp, tokens, block, steps, warmup, fused) -> float:
    opt = configure_optimizer(model, cfg, device if fused else torch.device("cpu"))  # fused only on CUDA
    for s in range(warmup + steps):
        if s == warmup:
            sync(device)
            start = time.perf_counter()
        x, y = get_batch(tokens, cfg.batch_size, block, 0, s, device=device)
        with amp:
            _, loss = step_fn(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync(device)
    return steps * cfg.batch_size * block / (time.perf_counter() - start)


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
    from course_lib.gpt_data import CharTokenizer, load_corpus
    from course_lib.gpt_train import prepare_data, train

    torch.set_num_threads(threads)
    path = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "tinyshakespeare"
    text, source = load_corpus(str(path) if path.exists() else "tinyshakespeare")
    tok = CharTokenizer.from_text(text)
    data = prepare_data(text, tok)
    torch.manual_seed(1337)
    model = GPT(GPTConfig.preset("small-cpu", vocab_size=tok.vocab_size))
    with tempfile.TemporaryDirectory() as out:
        cfg = TrainConfig(steps=3000, batch_size=16, lr=2e-3, warmup_steps=100, eval_every=100, eval_batches=20,
                          device="cpu", progress=False, out_dir=out, target_loss=1.9)
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default=None, help="default: gpt2-124m on CUDA, small-cpu elsewhere")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--shakespeare-cpu", action="store_true")
    p.add_argument("--minutes", type=float, default=5.0)
    args = p.parse_args(argv)
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
    c = GPTConfig.preset(preset) if preset.startswith("gpt2") else GPTConfig.preset(preset, vocab_size=96)
    block, steps = c.block_size, args.steps or (30 if cuda else 10)
    cfg = TrainConfig(batch_size=args.batch_size or 16, device=str(device))
    tokens = torch.randint(0, c.vocab_size, (200_000,))
    rows = []
    torch.manual_seed(0)
    naive = NaiveGPT(c).to(device)
    rows.append(("naive: fp32, hand-written attention, eager",
                 train_speed(naive, naive, cfg, device, nullcontext(), tokens, block, steps, 3, fused=False)))
    del naive
    model = GPT(c).to(device)
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if cuda else nullcontext()
    step_fn = torch.compile(model) if cuda else model
    label = "course: fused attention" + (", bf16, compile, fused AdamW" if cuda else ", fp32, eager")
    rows.append((label, train_speed(model, step_fn, cfg, device, amp, tokens, block, steps, 10 if cuda else 3, fused=cuda)))
    peak = next((v for k, v in PEAK_BF16_FLOPS.items() if cuda and k in torch.cuda.get_device_name(device)), None)
    fpt = model.flops_per_token()
    print(f"device: {torch.cuda.get_device_name(device) if cuda else f'cpu ({torch.get_num_threads()} threads)'}; "
          f"model {preset} ({model.num_parameters():,} params), batch {cfg.batch_size} x {block} tokens")
    print("| training | tokens/s | speed-up | MFU |")
    print("| --- | ---: | ---: | ---: |")
    for name, tps in rows:
        mfu = f"{100 * fpt * tps / peak:.1f}%" if peak else "n/a (CPU)" if not cuda else "n/a"
        print(f"| {name} | {tps:,.0f} | {tps / rows[0][1]:.1f}x | {mfu} |")
    model.eval()
    prompt_len, new = 16, min(256, block - 16)
    print(f"\n| generation ({prompt_len}-token prompt, {new} new tokens, batch 1) | tokens/s |")
    print("| --- | ---: |")
    for use_cache in (False, True):
        print(f"| {'with' if use_cache else 'without'} KV cache | {gen_speed(model, device, prompt_len, new, use_cache):,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
