"""Every exercise's reference solution (course_lib/solutions/nbNN.py) against an
independent way of computing the same thing, on the exercise's own cases, through the
notebooks' ``check``: PyTorch's functions, tiktoken, the library's own modules (written
separately from the solutions), brute-force Python, FLOP counting, a linear solve.

A solution is never compared with itself here: ``check(INDEPENDENT[name], name)``
passes only if the solution and the independent function agree on every case. And a
deliberately wrong function (a stub, a result off by one unit) fails each exercise.
"""

import math

import pytest
import tiktoken
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from course_lib.exercises import cases, check, solution
from course_lib.generate import top_p_filter
from course_lib.gpt import GPT, GPTConfig
from course_lib.scaleout.distributed import rank_slice
from course_lib.tokenizer import BPETokenizer
from course_lib.training.core import noam_lr
from course_lib.transformer import attention_maps


# ---------------------------------------------------------------- nb01: BPE
def _tiktoken_one_chunk(text, merges):
    vocab = BPETokenizer(merges).vocab
    enc = tiktoken.Encoding("one-chunk", pat_str=r"(?s).+", mergeable_ranks={b: i for i, b in enumerate(vocab)},
                            special_tokens={})
    return enc.encode(text)


# ---------------------------------------------------------------- nb02, nb03: embeddings, positions
def _nearest(vectors, i, k):
    def cos(a, b):
        dot = sum(float(x) * float(y) for x, y in zip(a, b, strict=True))
        return dot / math.sqrt(sum(float(x) ** 2 for x in a) * sum(float(y) ** 2 for y in b))

    others = [j for j in range(len(vectors)) if j != i]
    return sorted(others, key=lambda j: -cos(vectors[i], vectors[j]))[:k]


def _pe_loops(max_len, d_model):
    return torch.tensor([[math.sin(p / 10000 ** (j / d_model)) if j % 2 == 0 else
                          math.cos(p / 10000 ** ((j - 1) / d_model)) for j in range(d_model)]
                         for p in range(max_len)])


def _shift_by_solving(k, d_model):
    """Each 2x2 block R solves R [sin x, cos x] = [sin(x + a), cos(x + a)] at two positions."""
    m = torch.zeros(d_model, d_model, dtype=torch.float64)
    for n in range(d_model // 2):
        w = 10000.0 ** (-2 * n / d_model)
        X = torch.tensor([[math.sin(w * x) for x in (0.3, 1.1)], [math.cos(w * x) for x in (0.3, 1.1)]],
                         dtype=torch.float64)
        Y = torch.tensor([[math.sin(w * (x + k)) for x in (0.3, 1.1)], [math.cos(w * (x + k)) for x in (0.3, 1.1)]],
                         dtype=torch.float64)
        m[2 * n: 2 * n + 2, 2 * n: 2 * n + 2] = torch.linalg.solve(X.T, Y.T).T
    return m


# ---------------------------------------------------------------- nb05, nb06: masks, heads
def _masked_softmax(scores, mask):
    mask = torch.broadcast_to(mask, scores.shape)
    e = torch.where(mask, (scores - scores.max(-1, keepdim=True).values).exp(), torch.zeros(()))
    total = e.sum(-1, keepdim=True)
    return torch.where(total > 0, e / total.clamp_min(1e-30), torch.zeros(()))


def _counted_flops(B, L, d_model, n_heads):
    """The FLOPs PyTorch's FlopCounterMode counts for the layer's matrix products (meta tensors)."""
    x = torch.empty(B, L, d_model, device="meta")
    w = torch.empty(d_model, d_model, device="meta")
    d_k = d_model // n_heads
    counts = {}
    with FlopCounterMode(display=False) as fc:
        q, k, v = x @ w, x @ w, x @ w
    counts["qkv"] = fc.get_total_flops()
    heads = [t.view(B, L, n_heads, d_k).transpose(1, 2) for t in (q, k, v)]
    with FlopCounterMode(display=False) as fc:
        a = heads[0] @ heads[1].transpose(-2, -1)
    counts["scores"] = fc.get_total_flops()
    with FlopCounterMode(display=False) as fc:
        o = a @ heads[2]
    counts["weighted_sum"] = fc.get_total_flops()
    with FlopCounterMode(display=False) as fc:
        o.transpose(1, 2).reshape(B, L, d_model) @ w
    counts["out"] = fc.get_total_flops()
    return counts


# ---------------------------------------------------------------- nb08, nb09
def _gpt_params(vocab_size, block_size, n_layers, d_model):
    with torch.device("meta"):
        model = GPT(GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layers=n_layers,
                              n_heads=1, d_model=d_model))
    return model.num_parameters()


def _next_token_loss_loops(logits, tokens):
    B, T, _ = logits.shape
    terms = [-logits[b, t].log_softmax(-1)[tokens[b, t + 1]] for b in range(B) for t in range(T - 1)]
    return torch.stack(terms).mean()


def _shards(rows, world_size):
    parts = [len(c) for c in torch.arange(rows).chunk(world_size)]
    return parts + [0] * (world_size - len(parts))


def _bytes(n_params, world_size, strategy, param_bytes=4, grad_bytes=4, optim_bytes=8):
    held = n_params if strategy == "ddp" else math.ceil(n_params / world_size)
    return {"parameters": held * param_bytes, "gradients": held * grad_bytes, "optimizer": held * optim_bytes}


INDEPENDENT = {
    "nb01.token_bytes": lambda merges: list(BPETokenizer(merges).vocab),
    "nb01.decode_ids": lambda ids, merges: BPETokenizer(merges).decode(ids),
    "nb01.encode_chunk": _tiktoken_one_chunk,
    "nb02.embed_one_hot": lambda ids, table: F.embedding(ids, table),
    "nb02.cosine_similarity_matrix": lambda v: F.cosine_similarity(v[:, None], v[None], dim=-1),
    "nb02.nearest_neighbours": _nearest,
    "nb03.positional_encoding": _pe_loops,
    "nb03.wavelengths": lambda d: torch.tensor([2 * math.pi * 10000 ** (2 * i / d) for i in range(d // 2)],
                                               dtype=torch.float64),
    "nb03.relative_shift_matrix": _shift_by_solving,
    "nb04.scaled_scores": lambda q, k: torch.einsum("...id,...jd->...ij", q, k) / math.sqrt(q.shape[-1]),
    "nb04.softmax_rows": lambda s: torch.softmax(s, dim=-1),
    "nb04.attention": lambda q, k, v: F.scaled_dot_product_attention(q, k, v),
    "nb05.causal_mask": lambda L: nn.Transformer.generate_square_subsequent_mask(L) == 0,
    "nb05.lengths_to_mask": lambda lengths, L: torch.tensor([[j < n for j in range(L)] for n in lengths]),
    "nb05.masked_softmax": _masked_softmax,
    "nb06.split_heads": lambda x, h: torch.stack(x.chunk(h, dim=-1), dim=1),
    "nb06.merge_heads": lambda x: torch.cat(x.unbind(1), dim=-1),
    "nb06.mha_flops": _counted_flops,
    "nb07.noam_lr": lambda step, d_model, warmup: noam_lr(step, d_model, warmup),
    "nb07.label_smoothed_loss": lambda logits, target, eps, pad: F.cross_entropy(
        logits.flatten(0, 1), target.flatten(), ignore_index=pad, label_smoothing=eps),
    "nb07.cross_attention_maps": lambda model, src, tgt: attention_maps(model, src, tgt)["cross"],
    "nb08.gpt2_param_count": _gpt_params,
    "nb08.top_p_mask": lambda probs, p: torch.isfinite(top_p_filter(probs.log(), p)),
    "nb08.next_token_loss": _next_token_loss_loops,
    "nb09.rank_rows": lambda g, r, w: (rank_slice(g, r, w).start, rank_slice(g, r, w).stop),
    "nb09.bytes_per_rank": _bytes,
    "nb09.shard_rows": _shards,
}


def all_exercises() -> list[str]:
    import importlib

    names = []
    for nb in range(1, 10):
        module = importlib.import_module(f"course_lib.solutions.nb{nb:02d}")
        names += [f"nb{nb:02d}.{f}" for f in module.CASES]
    return names


def test_every_exercise_has_an_independent_reference():
    assert sorted(INDEPENDENT) == sorted(all_exercises())


@pytest.mark.parametrize("name", sorted(INDEPENDENT))
def test_solution_equals_an_independent_reference(name, capsys):
    assert check(INDEPENDENT[name], name), capsys.readouterr().out


def _off(value):
    if torch.is_tensor(value):
        return value + 1 if value.dtype != torch.bool else ~value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, dict):
        return {k: _off(v) for k, v in value.items()}
    return list(value)[:-1] if len(value) else [0]


@pytest.mark.parametrize("name", sorted(INDEPENDENT))
def test_a_wrong_answer_fails(name):
    """The checker is not a rubber stamp: a stub and an answer off by one unit fail."""
    assert not check(lambda *args: None, name, verbose=False)
    reference = solution(name)
    assert not check(lambda *args: _off(reference(*args)), name, verbose=False)
    assert len(cases(name)) >= 2
