"""Scaled dot-product attention, masks, and multi-head attention.

    "We call our particular attention 'Scaled Dot-Product Attention'. [...] We compute
    the dot products of the query with all keys, divide each by sqrt(d_k), and apply a
    softmax function to obtain the weights on the values."  (Vaswani et al., 2017, 3.2.1)

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k)) V

Mask convention (the same as ``torch.nn.functional.scaled_dot_product_attention``):
a **boolean** mask, ``True`` where a query *may* attend to a key, broadcastable to
``(..., L_q, L_k)``. Masked scores become ``-inf`` before the softmax, so they get
exactly zero weight.

Fully masked rows: a query row whose keys are *all* masked (a padding query under a
padding mask, say) would be softmax over ``-inf`` everywhere, i.e. NaN. Here such a row
gets all-zero weights, so its output is the zero vector and its gradients are zero,
not NaN. Both paths (the explicit one and the fused ``F.scaled_dot_product_attention``
one) do this, and agree. In ``MultiHeadAttention`` such a query's output is then
``W^O 0 + b^O``, i.e. the output projection's bias.

Routes: ``MultiHeadAttention`` computes the same attention by one of three routes, all equal
to float rounding: ``explicit`` (the formula step by step, the only one that returns the
weights), ``fused`` (PyTorch's fused kernel) and ``short`` (written out as two batched
products, for short sequences on a multi-threaded CPU where it measures faster: with torch
2.13, nowhere, see ``CPU_SHORT_ATTENTION``). ``attention_route`` picks one; ``use_route``
forces one, e.g. to count FLOPs the same way on every machine.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn


def _broadcasts_to(shape: tuple[int, ...], target: tuple[int, ...]) -> bool:
    """Whether a tensor of ``shape`` broadcasts to ``target``: each of its sizes, from the
    right, is 1 or the target's. Plain Python, as ``torch.broadcast_shapes`` costs about
    20-30 microseconds a call, which the attention of a token-by-token decoder pays per layer."""
    return len(shape) <= len(target) and all(s in (1, t) for s, t in zip(reversed(shape), reversed(target)))


def _check_mask(mask: torch.Tensor, scores_shape: torch.Size) -> None:
    if mask.dtype != torch.bool:
        raise TypeError(
            f"attention mask must be a bool tensor (True = may attend), got {mask.dtype}; "
            "convert with mask.bool() or build it with causal_mask()/padding_mask()."
        )
    if not _broadcasts_to(mask.shape, scores_shape):
        raise ValueError(
            f"attention mask of shape {tuple(mask.shape)} does not broadcast to the scores' "
            f"shape {tuple(scores_shape)} (..., L_q, L_k); use shape (L_q, L_k), "
            "(B, 1, L_q, L_k) or (B, 1, 1, L_k)."
        )


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if q.dim() < 2 or k.dim() != q.dim() or v.dim() != q.dim():
        raise ValueError(
            f"q, k, v must have the same number of dimensions (..., L, d); got "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}."
        )
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"q and k must have the same last dimension d_k to be multiplied: "
            f"q {tuple(q.shape)} vs k {tuple(k.shape)}."
        )
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(
            f"k and v must have the same number of positions (one value per key): "
            f"k {tuple(k.shape)} vs v {tuple(v.shape)}."
        )
    if q.shape[:-2] == k.shape[:-2] == v.shape[:-2]:
        return  # the usual case, without torch.broadcast_shapes (20-30 microseconds a call)
    try:
        torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    except RuntimeError:
        raise ValueError(
            f"q, k, v must have the same leading (batch, head) dimensions: "
            f"{tuple(q.shape[:-2])}, {tuple(k.shape[:-2])}, {tuple(v.shape[:-2])}."
        ) from None


def scaled_dot_product_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    return_weights: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """softmax(q k^T / sqrt(d_k)) v, computed step by step.

    Shapes: q ``(..., L_q, d_k)``, k ``(..., L_k, d_k)``, v ``(..., L_k, d_v)``; mask bool,
    broadcastable to ``(..., L_q, L_k)``. Returns ``(output, weights or None)``.
    """
    _check_qkv(q, k, v)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    fully_masked = None
    if mask is not None:
        _check_mask(mask, scores.shape)
        fully_masked = ~mask.any(dim=-1, keepdim=True)
        scores = scores.masked_fill(~(mask | fully_masked), float("-inf"))
    weights = scores.softmax(dim=-1)
    if fully_masked is not None:
        weights = weights.masked_fill(fully_masked, 0.0)
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p)
    return weights @ v, (weights if return_weights else None)


def fused_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
) -> torch.Tensor:
    """The same as ``scaled_dot_product_attention`` through PyTorch's fused kernel
    (FlashAttention / memory-efficient attention where available). No weights.

    ``is_causal`` uses the same bottom-right aligned causal mask as ``causal_mask``
    (PyTorch's own ``is_causal`` is top-left aligned when ``L_q != L_k``).
    """
    _check_qkv(q, k, v)
    L_q, L_k = q.shape[-2], k.shape[-2]
    is_causal = is_causal and L_q > 1  # one query (the last position) sees every key
    if mask is None and (not is_causal or L_q == L_k):
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=is_causal)
    if mask is not None:
        lead = q.shape[:-2] if q.shape[:-2] == k.shape[:-2] else torch.broadcast_shapes(q.shape[:-2], k.shape[:-2])
        scores_shape = (*lead, L_q, L_k)
        _check_mask(mask, torch.Size(scores_shape))
    if is_causal:
        mask = combine_masks(mask, causal_mask(L_q, L_k, device=q.device))
    fully_masked = ~mask.any(dim=-1, keepdim=True)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask | fully_masked, dropout_p=dropout_p)
    return out.masked_fill(fully_masked, 0.0)


# Up to this many keys, on a CPU running more than one thread, ``attention_route`` sends
# unmasked self-attention to ``short_attention`` (written out: one batched multiply that adds
# the causal mask as a bias, a softmax, one more multiply). With torch 2.13 PyTorch's fused
# kernel is the faster at every length, so none goes there: on the 2-core test machine the
# written-out forward + backward of causal self-attention takes 1.2-1.6x the fused kernel's
# time at 32-128 positions on 2 threads and 1.15-1.4x at 64 on 1 thread
# (benchmarks/bench_attention.py), and small-cpu's training step 5% longer (docs/results.md).
# Raise it where that table says the written-out route wins.
CPU_SHORT_ATTENTION = 0


def short_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, is_causal: bool = False,
                    dropout_p: float = 0.0) -> torch.Tensor:
    """softmax(q k^T / sqrt(d_k) + M) v, with the causal mask M as a bias (0 where a query may
    attend, -inf where not): three batched operations on ``(..., L, d)`` tensors of the
    same leading shape, no mask argument. The same numbers as ``fused_attention`` (to float
    rounding); taken for short sequences on a multi-threaded CPU up to ``CPU_SHORT_ATTENTION``
    positions (none by default)."""
    L_q, L_k, d = q.shape[-2], k.shape[-2], q.shape[-1]
    q3, k3, v3 = q.reshape(-1, L_q, d), k.reshape(-1, L_k, d), v.reshape(-1, L_k, v.shape[-1])
    if is_causal:
        bias = causal_bias(L_q, L_k, dtype=q.dtype, device=q.device)
        scores = torch.baddbmm(bias, q3, k3.transpose(1, 2), alpha=1 / math.sqrt(d))
    else:
        scores = torch.bmm(q3, k3.transpose(1, 2)) / math.sqrt(d)
    weights = F.dropout(scores.softmax(dim=-1), p=dropout_p) if dropout_p > 0.0 else scores.softmax(dim=-1)
    return (weights @ v3).view(*q.shape[:-1], v.shape[-1])


def causal_mask(L_q: int, L_k: int | None = None, device=None) -> torch.Tensor:
    """Bool ``(L_q, L_k)`` mask, True on and below the diagonal: position i sees 0..i.

    With ``L_k > L_q`` (queries are the last ``L_q`` of ``L_k`` positions, as when a
    KV cache holds the earlier keys) the diagonal is aligned bottom-right.
    """
    L_k = L_q if L_k is None else L_k
    return torch.ones(L_q, L_k, dtype=torch.bool, device=device).tril(diagonal=L_k - L_q)


def causal_bias(L_q: int, L_k: int | None = None, dtype=torch.float32, device=None) -> torch.Tensor:
    """``causal_mask`` as an additive bias ``(L_q, L_k)``: 0 where a query may attend, -inf
    where it may not (above the bottom-right aligned diagonal)."""
    L_k = L_q if L_k is None else L_k
    return torch.full((L_q, L_k), float("-inf"), dtype=dtype, device=device).triu_(L_k - L_q + 1)


def padding_mask(tokens: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Bool ``(B, 1, 1, L)`` key mask from token ids ``(B, L)``: False at padding."""
    if tokens.dim() != 2:
        raise ValueError(f"padding_mask expects token ids of shape (B, L), got {tuple(tokens.shape)}.")
    return (tokens != pad_id)[:, None, None, :]


def combine_masks(*masks: torch.Tensor | None) -> torch.Tensor | None:
    """Logical AND of the given masks (None entries are ignored): attend only where all allow."""
    out = None
    for m in masks:
        if m is None:
            continue
        out = m if out is None else (out & m)
    return out


ROUTES = ("explicit", "fused", "short")
_forced_route: str | None = None


def attention_route(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None = None,
                    need_weights: bool = False) -> str:
    """Which route ``MultiHeadAttention`` takes for queries ``q`` and keys ``k`` (both
    ``(B, n_heads, L, d_k)``). All three give the same numbers to float rounding:

    - ``"explicit"``: ``scaled_dot_product_attention``, the formula step by step, whenever
      the weights are wanted (``need_weights``, ``record_attention``);
    - ``"short"``: ``short_attention``, for unmasked self-attention (``L_q == L_k``) of at most
      ``CPU_SHORT_ATTENTION`` positions (none by default: the fused kernel is the faster) on
      a CPU running more than one thread;
    - ``"fused"``: ``fused_attention``, PyTorch's fused kernel, everywhere else.

    Inside ``use_route(route)`` that route is taken instead, except that the weights still
    need ``"explicit"`` and ``"short"`` applies only where it can (no mask, ``L_q == L_k``;
    elsewhere ``"fused"``). ``FlopCounterMode`` counts the products of ``"explicit"`` and
    ``"short"`` but not those of the CPU's fused kernel.
    """
    if need_weights:
        return "explicit"
    route = _forced_route
    if route is None:
        multi_threaded_cpu = q.device.type == "cpu" and torch.get_num_threads() > 1
        route = "short" if multi_threaded_cpu and k.shape[-2] <= CPU_SHORT_ATTENTION else "fused"
    if route == "short" and (mask is not None or q.shape[-2] != k.shape[-2]):
        return "fused"  # short_attention takes no mask, and queries and keys of one length
    return route


@contextlib.contextmanager
def use_route(route: str):
    """``with use_route("explicit"): ...``: every ``MultiHeadAttention`` takes ``route``
    (one of ``ROUTES``) where it applies, whatever the device and thread count."""
    global _forced_route
    if route not in ROUTES:
        raise ValueError(f"route={route!r} is not an attention route; use one of {ROUTES}.")
    previous, _forced_route = _forced_route, route
    try:
        yield
    finally:
        _forced_route = previous


class KVCache:
    """Keys and values of the positions seen so far, for one attention layer.

    During generation each new token's keys and values are appended, so the model
    never recomputes them for the prefix.
    """

    def __init__(self):
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def __len__(self) -> int:
        return 0 if self.k is None else self.k.shape[-2]

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.k is None:
            self.k, self.v = k, v
        else:
            self.k = torch.cat([self.k, k], dim=-2)
            self.v = torch.cat([self.v, v], dim=-2)
        return self.k, self.v

    def reorder(self, index: torch.Tensor) -> None:
        """Select batch rows (beam search keeps the caches of surviving beams)."""
        if self.k is not None:
            self.k, self.v = self.k.index_select(0, index), self.v.index_select(0, index)


class MultiHeadAttention(nn.Module):
    """Multi-head attention (section 3.2.2 of the paper).

        MultiHead(Q, K, V) = Concat(head_1, ..., head_h) W^O,
        head_i = Attention(Q W_i^Q, K W_i^K, V W_i^V)

    The h heads' projections are stored as one ``d_model x d_model`` matrix each
    (``w_q``, ``w_k``, ``w_v``), split into heads of ``d_k = d_model / n_heads``.
    Self-attention: ``mha(x)``; cross-attention: ``mha(x, memory)``.

    ``need_weights=True`` computes attention explicitly and returns the per-head
    weights ``(B, n_heads, L_q, L_k)``; otherwise ``attention_route`` picks the fastest
    route that gives the same output (to float rounding): PyTorch's fused kernel, or
    ``short_attention`` up to ``CPU_SHORT_ATTENTION`` unmasked positions on a multi-threaded CPU.
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0, bias: bool = True):
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(
                f"d_model={d_model} is not divisible by n_heads={n_heads}: each head gets "
                f"d_model / n_heads dimensions. Pick n_heads among the divisors of {d_model} "
                f"(e.g. {[h for h in range(1, min(d_model, 64) + 1) if d_model % h == 0][-4:]})."
            )
        self.d_model, self.n_heads, self.d_k = d_model, n_heads, d_model // n_heads
        self.dropout = dropout
        self.w_q = nn.Linear(d_model, d_model, bias=bias)
        self.w_k = nn.Linear(d_model, d_model, bias=bias)
        self.w_v = nn.Linear(d_model, d_model, bias=bias)
        self.w_o = nn.Linear(d_model, d_model, bias=bias)
        # record_attention(model) switches this on: weights are then computed explicitly
        # and kept in last_weights (B, n_heads, L_q, L_k) for plotting and export.
        self.record = False
        self.last_weights: torch.Tensor | None = None

    def project_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x W_Q, x W_K, x W_V`` (each ``(B, L, d_model)``) as one stacked product."""
        projections = (self.w_q, self.w_k, self.w_v)
        if any(type(m) is not nn.Linear for m in projections):  # wrapped (LoRA, quantized): call each
            return tuple(m(x) for m in projections)
        weight = torch.cat([self.w_q.weight, self.w_k.weight, self.w_v.weight])
        bias = None if self.w_q.bias is None else torch.cat([self.w_q.bias, self.w_k.bias, self.w_v.bias])
        return F.linear(x, weight, bias).chunk(3, dim=-1)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, L, d_model) -> (B, n_heads, L, d_k)``."""
        B, L, _ = x.shape
        return x.view(B, L, self.n_heads, self.d_k).transpose(1, 2)

    def merge_heads(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, n_heads, L, d_k) -> (B, L, d_model)``."""
        B, _, L, _ = x.shape
        return x.transpose(1, 2).contiguous().view(B, L, self.d_model)

    def forward(
        self,
        x: torch.Tensor,
        memory: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        is_causal: bool = False,
        need_weights: bool = False,
        cache: KVCache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attend from ``x`` (queries) to ``memory`` (keys/values; ``x`` itself if None).

        ``mask``: bool, broadcastable to ``(B, n_heads, L_q, L_k)``, True = may attend.
        ``is_causal``: add the causal mask (bottom-right aligned when ``cache`` holds
        earlier positions). ``cache``: a ``KVCache`` for generation. In self-attention
        (``memory`` None) each call appends the new positions' keys and values; in
        cross-attention the memory's keys and values are computed on the first call and
        reused afterwards. Returns ``(output (B, L_q, d_model), weights or None)``.
        """
        self._check_inputs(x, memory, mask)
        q, k, v = self.heads_qkv(x, memory, cache)
        dropout_p = self.dropout if self.training else 0.0
        route = attention_route(q, k, mask, need_weights or self.record)
        weights = None
        if route == "explicit":
            if is_causal:
                mask = combine_masks(mask, causal_mask(q.shape[-2], k.shape[-2], device=q.device))
            out, weights = scaled_dot_product_attention(q, k, v, mask, dropout_p, return_weights=True)
            if self.record:
                self.last_weights = weights.detach()
        elif route == "short":
            out = short_attention(q, k, v, is_causal, dropout_p)
        else:
            out = fused_attention(q, k, v, mask, dropout_p, is_causal)
        return self.w_o(self.merge_heads(out)), (weights if need_weights else None)

    def heads_qkv(self, x: torch.Tensor, memory: torch.Tensor | None = None,
                  cache: KVCache | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries from ``x``, keys and values from ``memory`` (``x`` if None), each split into
        heads ``(B, n_heads, L, d_k)``; with a ``cache``, keys and values of earlier calls too."""
        if memory is None:  # self-attention: Q, K and V all from x
            q, k, v = (self.split_heads(t) for t in self.project_qkv(x))
            return (q, *cache.update(k, v)) if cache is not None else (q, k, v)
        q = self.split_heads(self.w_q(x))
        if cache is not None and len(cache) > 0:
            return q, cache.k, cache.v  # cross-attention: the memory's, cached on the first call
        k, v = self.split_heads(self.w_k(memory)), self.split_heads(self.w_v(memory))
        return (q, *cache.update(k, v)) if cache is not None else (q, k, v)

    def _check_inputs(self, x: torch.Tensor, memory: torch.Tensor | None, mask: torch.Tensor | None) -> None:
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(
                f"expected input of shape (B, L, d_model={self.d_model}), got {tuple(x.shape)}."
            )
        kv = x if memory is None else memory
        if kv.dim() != 3 or kv.shape[0] != x.shape[0] or kv.shape[-1] != self.d_model:
            raise ValueError(
                f"memory must have shape (B={x.shape[0]}, L_k, d_model={self.d_model}), "
                f"got {tuple(kv.shape)}."
            )
        if mask is not None and mask.dim() == 3:
            raise ValueError(
                f"a 3-D attention mask {tuple(mask.shape)} is ambiguous here (batch or heads?); "
                "give it shape (B, 1, L_q, L_k) (mask[:, None]), (B, 1, 1, L_k) or (L_q, L_k)."
            )


class record_attention:
    """Context manager: every ``MultiHeadAttention`` in ``model`` keeps its weights.

        with record_attention(model) as maps:
            model(x)
        maps()  # {module name: (B, n_heads, L_q, L_k)}, in module order
    """

    def __init__(self, model: nn.Module):
        self.modules = [(n, m) for n, m in model.named_modules() if isinstance(m, MultiHeadAttention)]

    def __enter__(self):
        for _, m in self.modules:
            m.record, m.last_weights = True, None
        return self.weights

    def weights(self) -> dict[str, torch.Tensor]:
        return {n: m.last_weights for n, m in self.modules if m.last_weights is not None}

    def __exit__(self, *exc):
        for _, m in self.modules:
            m.record = False
        return False
