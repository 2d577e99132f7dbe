"""course_lib.attention against PyTorch's own attention (F.scaled_dot_product_attention,
nn.MultiheadAttention), brute-force masks and a brute-force loop; every route of
MultiHeadAttention at 1 and at 2 threads."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from course_lib import attention
from course_lib.attention import (
    CPU_SHORT_ATTENTION,
    ROUTES,
    KVCache,
    MultiHeadAttention,
    attention_route,
    causal_mask,
    combine_masks,
    fused_attention,
    padding_mask,
    record_attention,
    scaled_dot_product_attention,
    short_attention,
    use_route,
)
from course_lib.gpt import GPT, GPTConfig

SHAPES = [  # (batch dims, L_q, L_k, d_k, d_v)
    ((2, 3), 5, 5, 8, 8),
    ((1, 4), 1, 7, 16, 4),
    ((3,), 6, 2, 4, 12),
    ((2, 2), 9, 11, 32, 32),
]


def brute_causal(L_q, L_k):
    """Query i (the (L_k - L_q + i)-th position) sees keys 0..L_k - L_q + i."""
    m = torch.zeros(L_q, L_k, dtype=torch.bool)
    for i in range(L_q):
        for j in range(L_k):
            m[i, j] = j <= L_k - L_q + i
    return m


def random_mask(g, shape):
    """A random bool mask with at least one allowed key in every row."""
    m = torch.rand(shape, generator=g) < 0.6
    m[..., 0] |= ~m.any(-1)
    return m


@pytest.fixture(params=[1, 2], ids=["1-thread", "2-threads"])
def threads(request):
    """The test runs at 1 and at 2 torch threads (the routes differ); restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


def qkv(g, batch, L_q, L_k, d_k, d_v, dtype=torch.float32):
    return (
        torch.randn(*batch, L_q, d_k, generator=g, dtype=dtype),
        torch.randn(*batch, L_k, d_k, generator=g, dtype=dtype),
        torch.randn(*batch, L_k, d_v, generator=g, dtype=dtype),
    )


# ----------------------------------------------------------------------------- masks


def test_causal_mask_matches_brute_force():
    for L_q, L_k in [(1, 1), (4, 4), (1, 6), (3, 7), (5, 5)]:
        assert torch.equal(causal_mask(L_q, L_k), brute_causal(L_q, L_k))
    assert torch.equal(causal_mask(4), brute_causal(4, 4))


def test_padding_and_combined_masks_match_brute_force():
    tokens = torch.tensor([[5, 6, 7, 0, 0], [1, 0, 2, 3, 4]])
    m = padding_mask(tokens, pad_id=0)
    assert m.shape == (2, 1, 1, 5)
    for b in range(2):
        for j in range(5):
            assert bool(m[b, 0, 0, j]) == (int(tokens[b, j]) != 0)
    both = combine_masks(m, None, causal_mask(5))
    assert both.shape == (2, 1, 5, 5)
    for b in range(2):
        for i in range(5):
            for j in range(5):
                assert bool(both[b, 0, i, j]) == (j <= i and int(tokens[b, j]) != 0)
    assert combine_masks(None, None) is None


# --------------------------------------------------------- attention vs F.sdpa


@pytest.mark.parametrize("batch,L_q,L_k,d_k,d_v", SHAPES)
def test_attention_matches_torch_sdpa(batch, L_q, L_k, d_k, d_v):
    g = torch.Generator().manual_seed(L_q * 100 + L_k)
    q, k, v = qkv(g, batch, L_q, L_k, d_k, d_v)
    masks = [
        None,
        random_mask(g, (*batch, L_q, L_k)),  # full-shape mask
        random_mask(g, (L_q, L_k)),  # broadcast over the batch
        brute_causal(L_q, L_k),
    ]
    for mask in masks:
        want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out, w = scaled_dot_product_attention(q, k, v, mask, return_weights=True)
        torch.testing.assert_close(out, want)
        torch.testing.assert_close(fused_attention(q, k, v, mask), want)
        # the weights are a softmax over the allowed keys: zero where masked, rows sum to 1
        # (to 0 for a query with no allowed key: causal with L_q > L_k has such rows)
        if mask is None:
            torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[:-1]))
        else:
            assert (w[~mask.expand_as(w)] == 0).all()
            torch.testing.assert_close(w.sum(-1), mask.any(-1).float().expand(w.shape[:-1]))
        out2, none = scaled_dot_product_attention(q, k, v, mask)
        assert none is None and torch.equal(out2, out)


def test_weights_match_brute_force_softmax():
    g = torch.Generator().manual_seed(0)
    q, k, v = qkv(g, (2,), 3, 4, 5, 6, dtype=torch.float64)
    _, w = scaled_dot_product_attention(q, k, v, return_weights=True)
    for b in range(2):
        for i in range(3):
            s = [sum(q[b, i, t].item() * k[b, j, t].item() for t in range(5)) / math.sqrt(5) for j in range(4)]
            e = [math.exp(x - max(s)) for x in s]
            for j in range(4):
                assert abs(w[b, i, j].item() - e[j] / sum(e)) < 1e-12


def test_causal_flag_of_fused_path_is_bottom_right_aligned():
    g = torch.Generator().manual_seed(1)
    for L_q, L_k in [(4, 4), (2, 6), (1, 5)]:
        q, k, v = qkv(g, (2, 3), L_q, L_k, 8, 8)
        want = F.scaled_dot_product_attention(q, k, v, attn_mask=brute_causal(L_q, L_k))
        torch.testing.assert_close(fused_attention(q, k, v, is_causal=True), want)
        pad = random_mask(g, (2, 1, 1, L_k)) | brute_causal(L_q, L_k)[0]  # keep a key per row
        want = F.scaled_dot_product_attention(q, k, v, attn_mask=pad & brute_causal(L_q, L_k))
        torch.testing.assert_close(fused_attention(q, k, v, pad, is_causal=True), want)


@pytest.mark.parametrize("batch,L_q,L_k,d_k,d_v", SHAPES[:3])
def test_gradients_match_torch_sdpa(batch, L_q, L_k, d_k, d_v):
    g = torch.Generator().manual_seed(7)
    mask = random_mask(g, (L_q, L_k))
    base = qkv(g, batch, L_q, L_k, d_k, d_v, dtype=torch.float64)
    upstream = torch.randn(*batch, L_q, d_v, generator=g, dtype=torch.float64)

    def grads(fn):
        t = [x.clone().requires_grad_() for x in base]
        (fn(*t) * upstream).sum().backward()
        return [x.grad for x in t]

    want = grads(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    got_explicit = grads(lambda q, k, v: scaled_dot_product_attention(q, k, v, mask)[0])
    got_fused = grads(lambda q, k, v: fused_attention(q, k, v, mask))
    for a, b, c in zip(got_explicit, got_fused, want, strict=True):
        torch.testing.assert_close(a, c)
        torch.testing.assert_close(b, c)


def heads_of(x, n_heads):
    """q, k, v split into heads as MultiHeadAttention makes them: strided views."""
    B, L, three_d = x.shape
    return [t.view(B, L, n_heads, -1).transpose(1, 2) for t in x.chunk(3, dim=-1)]


@pytest.mark.parametrize("is_causal", [True, False])
@pytest.mark.parametrize("L", [1, 5, 16])
def test_short_attention_matches_torch_sdpa_with_gradients(is_causal, L):
    """The written-out path MultiHeadAttention takes on the CPU for short sequences:
    the same output and gradients as PyTorch's fused kernel with a brute-force mask."""
    g = torch.Generator().manual_seed(L)
    base = torch.randn(2, L, 3 * 12, generator=g, dtype=torch.float64)
    upstream = torch.randn(2, 3, L, 4, generator=g, dtype=torch.float64)
    mask = brute_causal(L, L) if is_causal else None

    def run(fn):
        x = base.clone().requires_grad_()
        out = fn(*heads_of(x, 3))
        (out * upstream).sum().backward()
        return out, x.grad

    want, want_grad = run(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    got, got_grad = run(lambda q, k, v: short_attention(q, k, v, is_causal=is_causal))
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got_grad, want_grad)


def test_causal_bias_is_the_causal_mask_as_zero_or_minus_infinity():
    for L_q, L_k in [(4, 4), (2, 6), (1, 5)]:
        want = torch.zeros(L_q, L_k).masked_fill(~brute_causal(L_q, L_k), float("-inf"))
        assert torch.equal(attention.causal_bias(L_q, L_k), want)


def test_short_attention_check_catches_a_mask_one_position_off(monkeypatch):
    """The check above can fail: a causal bias that also hides the diagonal (each query
    blind to its own position) gives different numbers."""
    g = torch.Generator().manual_seed(0)
    q, k, v = heads_of(torch.randn(2, 6, 24, generator=g), 2)
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=brute_causal(6, 6))
    torch.testing.assert_close(short_attention(q, k, v, is_causal=True), want)
    one_off = torch.zeros(6, 6).masked_fill(~brute_causal(6, 6).tril(-1), float("-inf"))
    monkeypatch.setattr(attention, "causal_bias", lambda *a, **k: one_off)
    got = short_attention(q, k, v, is_causal=True)
    assert not torch.allclose(got[..., 1:, :], want[..., 1:, :], atol=1e-3)


# ------------------------------------------------------------------ routes


def test_route_depends_on_threads_length_mask_and_weights(threads, monkeypatch):
    """By default (CPU_SHORT_ATTENTION 0) attention goes fused at any thread count. With the
    threshold raised, unmasked self-attention up to that many positions goes the short route
    on a CPU with more than one thread; masks, longer sequences, a cached step (L_q != L_k),
    one thread and other devices go fused; wanted weights go explicit. use_route forces a route where
    it applies, and ends with its block."""
    assert CPU_SHORT_ATTENTION == 0 and attention_route(*[torch.randn(2, 4, 8, 4)] * 2) == "fused"
    monkeypatch.setattr(attention, "CPU_SHORT_ATTENTION", 128)
    q, long = torch.randn(2, 4, 8, 4), torch.randn(1, 4, 129, 4)
    mask = causal_mask(8)
    fast = "short" if threads > 1 else "fused"
    assert attention_route(q, q) == fast
    assert attention_route(q[..., :1, :], q) == attention_route(long, long) == "fused"
    assert attention_route(q, q, mask) == "fused"
    assert attention_route(q.to("meta"), q.to("meta")) == "fused"  # not a CPU (as a GPU)
    assert attention_route(q, q, need_weights=True) == "explicit"
    for route in ROUTES:
        with use_route(route):
            assert attention_route(q, q) == attention_route(long, long) == route
            assert attention_route(q, q, mask) == ("fused" if route == "short" else route)
            assert attention_route(q, q, need_weights=True) == "explicit"
    assert attention_route(q, q) == fast
    with pytest.raises(ValueError, match="'flash' is not an attention route"):
        with use_route("flash"):
            pass


def spy_routes(monkeypatch):
    """Record the route of every MultiHeadAttention call by the function it runs."""
    calls = []
    for route, name in [("explicit", "scaled_dot_product_attention"), ("fused", "fused_attention"),
                        ("short", "short_attention")]:
        real = getattr(attention, name)
        monkeypatch.setattr(attention, name, lambda *a, _r=real, _route=route, **k: calls.append(_route) or _r(*a, **k))
    return calls


def test_mha_runs_the_route_attention_route_names(monkeypatch, threads):
    """The route chosen is the computation run: with CPU_SHORT_ATTENTION raised, short ones
    only on 2 threads, never with a mask, a longer sequence, a cached step or wanted weights."""
    calls = spy_routes(monkeypatch)
    monkeypatch.setattr(attention, "CPU_SHORT_ATTENTION", 128)
    mha = MultiHeadAttention(16, 4).eval()
    short, long = torch.randn(2, 8, 16), torch.randn(1, 129, 16)
    fast = "short" if threads > 1 else "fused"
    mha(short, is_causal=True)
    mha(short)
    mha(long, is_causal=True)
    mha(short, mask=padding_mask(torch.ones(2, 8, dtype=torch.long), 0))
    mha(short, is_causal=True, need_weights=True)
    mha(short[:, :1], memory=short)  # cross-attention: L_q != L_k
    cache = KVCache()
    mha(short[:, :5], is_causal=True, cache=cache)  # the prompt
    mha(short[:, 5:6], is_causal=True, cache=cache)  # one new token against 6 keys
    assert calls == [fast, fast, "fused", "fused", "explicit", "fused", fast, "fused"]


def brute_force_mha(mha, x, causal):
    """Multi-head attention as loops over batch rows, heads and queries, in Python floats."""
    w = {n: getattr(mha, n).weight.detach().double() for n in ("w_q", "w_k", "w_v", "w_o")}
    b = {n: getattr(mha, n).bias.detach().double() for n in ("w_q", "w_k", "w_v", "w_o")}
    x = x.double()
    q, k, v = (x @ w[n].T + b[n] for n in ("w_q", "w_k", "w_v"))
    B, L, d = x.shape
    heads = torch.zeros(B, L, d, dtype=torch.float64)
    for n in range(B):
        for h in range(mha.n_heads):
            cols = slice(h * mha.d_k, (h + 1) * mha.d_k)
            for i in range(L):
                keys = range(i + 1) if causal else range(L)
                s = [float(q[n, i, cols] @ k[n, j, cols]) / math.sqrt(mha.d_k) for j in keys]
                e = [math.exp(t - max(s)) for t in s]
                heads[n, i, cols] = sum(e_j / sum(e) * v[n, j, cols] for e_j, j in zip(e, keys, strict=True))
    return heads @ w["w_o"].T + b["w_o"]


@pytest.mark.parametrize("route", ROUTES)
def test_every_route_matches_a_brute_force_loop(route, threads, monkeypatch):
    torch.manual_seed(4)
    mha = MultiHeadAttention(8, 2).eval()
    x = torch.randn(2, 5, 8)
    calls = spy_routes(monkeypatch)
    for causal in (True, False):
        with use_route(route):
            out = mha(x, is_causal=causal)[0]
        torch.testing.assert_close(out.double(), brute_force_mha(mha, x, causal), rtol=1e-5, atol=1e-5)
    assert calls == [route, route]


@pytest.mark.parametrize("route", ROUTES)
def test_every_route_matches_torch_multihead_attention_with_gradients(route, threads, monkeypatch):
    """Output and gradients (input, projections) of each route against nn.MultiheadAttention:
    causal and plain self-attention, a padding mask, cross-attention."""
    torch.manual_seed(5)
    mha = MultiHeadAttention(16, 4)
    ref = torch_copy(mha, True)
    x, mem = torch.randn(3, 7, 16, requires_grad=True), torch.randn(3, 5, 16)
    tgt = torch.tensor([[3] * 7, [3] * 4 + [0] * 3, [3] * 2 + [0] * 5])
    upper = torch.triu(torch.ones(7, 7, dtype=torch.bool), diagonal=1)
    cases = [  # (ours: args, kwargs, the route taken) vs (reference: key, key_padding_mask, attn_mask)
        ((x,), {"is_causal": True}, route, (x, None, upper)),
        ((x,), {}, route, (x, None, None)),
        ((x,), {"mask": padding_mask(tgt, 0), "is_causal": True}, "fused" if route == "short" else route,
         (x, tgt == 0, upper)),
        ((x, mem), {}, "fused" if route == "short" else route, (mem, None, None)),
    ]
    calls = spy_routes(monkeypatch)
    ours_w = [mha.w_o.weight, mha.w_q.weight, mha.w_k.weight, mha.w_v.weight]
    for args, kwargs, taken, (key, kpm, am) in cases:
        with use_route(route):
            out = mha(*args, **kwargs)[0]
        want = ref(x, key, key, key_padding_mask=kpm, attn_mask=am, need_weights=False)[0]
        torch.testing.assert_close(out, want)
        upstream = torch.randn_like(out)
        dx, do, dq, dk, dv = torch.autograd.grad((out * upstream).sum(), [x, *ours_w])
        want_dx, want_do, want_in = torch.autograd.grad((want * upstream).sum(),
                                                        [x, ref.out_proj.weight, ref.in_proj_weight])
        torch.testing.assert_close(dx, want_dx)
        torch.testing.assert_close(do, want_do)
        torch.testing.assert_close(torch.cat([dq, dk, dv]), want_in)
        assert calls.pop() == taken


def test_gpt_loss_and_gradients_agree_by_every_route_and_thread_count():
    """One GPT training step's loss and gradients by each route, at 1 and 2 threads: the
    same to float rounding, so no trained result depends on the machine's thread count."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=32, block_size=16, n_layers=2, n_heads=2, d_model=16))
    idx = torch.randint(0, 32, (4, 16))
    before, results = torch.get_num_threads(), {}
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            for route in ROUTES:
                model.zero_grad()
                with use_route(route):
                    loss = model(idx, idx)[1]
                loss.backward()
                results[n, route] = loss.detach(), [p.grad.clone() for p in model.parameters()]
    finally:
        torch.set_num_threads(before)
    loss, grads = results[1, "explicit"]
    for other_loss, other_grads in results.values():
        torch.testing.assert_close(other_loss, loss, rtol=1e-6, atol=1e-6)
        for a, b in zip(other_grads, grads, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("path", ["explicit", "fused"])
def test_fully_masked_rows_give_zero_output_and_finite_gradients(path):
    g = torch.Generator().manual_seed(3)
    L_q, L_k = 5, 6
    base = qkv(g, (2, 2), L_q, L_k, 8, 8, dtype=torch.float64)
    mask = random_mask(g, (L_q, L_k))
    dead = torch.tensor([False, True, False, False, True])  # queries 1 and 4 see no key
    mask[dead] = False
    upstream = torch.randn(2, 2, L_q, 8, generator=g, dtype=torch.float64)
    t = [x.clone().requires_grad_() for x in base]
    if path == "explicit":
        out, w = scaled_dot_product_attention(*t, mask, return_weights=True)
        assert (w[..., dead, :] == 0).all()
    else:
        out = fused_attention(*t, mask)
    assert torch.isfinite(out).all()
    assert (out[..., dead, :] == 0).all()
    (out * upstream).sum().backward()
    assert all(torch.isfinite(x.grad).all() for x in t)
    assert (t[0].grad[..., dead, :] == 0).all()
    # reference: drop the dead queries altogether; the live ones must not notice
    r = [x.clone().requires_grad_() for x in base]
    live = ~dead
    ref = F.scaled_dot_product_attention(r[0][..., live, :], r[1], r[2], attn_mask=mask[live])
    torch.testing.assert_close(out[..., live, :], ref)
    (ref * upstream[..., live, :]).sum().backward()
    torch.testing.assert_close(t[0].grad[..., live, :], r[0].grad[..., live, :])
    torch.testing.assert_close(t[1].grad, r[1].grad)
    torch.testing.assert_close(t[2].grad, r[2].grad)


# ------------------------------------------------ multi-head vs nn.MultiheadAttention


def torch_copy(mha: MultiHeadAttention, bias: bool) -> nn.MultiheadAttention:
    ref = nn.MultiheadAttention(mha.d_model, mha.n_heads, bias=bias, batch_first=True)
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([mha.w_q.weight, mha.w_k.weight, mha.w_v.weight]))
        ref.out_proj.weight.copy_(mha.w_o.weight)
        if bias:
            ref.in_proj_bias.copy_(torch.cat([mha.w_q.bias, mha.w_k.bias, mha.w_v.bias]))
            ref.out_proj.bias.copy_(mha.w_o.bias)
    return ref.eval()


def both_paths(mha, *args, **kwargs):
    """(output, weights) of the explicit path, checking the fused path gives the same output."""
    out, w = mha(*args, need_weights=True, **kwargs)
    fast, none = mha(*args, **kwargs)
    assert none is None
    torch.testing.assert_close(fast, out)
    return out, w


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("d_model,n_heads", [(16, 4), (24, 3), (8, 1)])
def test_mha_matches_torch_multihead_attention(d_model, n_heads, bias):
    torch.manual_seed(d_model + n_heads)
    mha = MultiHeadAttention(d_model, n_heads, bias=bias).eval()
    ref = torch_copy(mha, bias)
    B, L, L_mem = 3, 7, 5
    x, mem = torch.randn(B, L, d_model), torch.randn(B, L_mem, d_model)
    src = torch.tensor([[4, 5, 6, 7, 8], [4, 5, 6, 0, 0], [4, 0, 0, 0, 0]])  # 0 = pad
    tgt = torch.tensor([[3, 3, 3, 3, 3, 3, 3], [3, 3, 3, 3, 0, 0, 0], [3, 3, 0, 0, 0, 0, 0]])
    upper = torch.triu(torch.ones(L, L, dtype=torch.bool), diagonal=1)  # True = may NOT attend
    cases = [
        # (ours: args, kwargs) vs (reference: query, key, key_padding_mask, attn_mask)
        (((x,), {}), (x, x, None, None)),
        (((x, mem), {}), (x, mem, None, None)),
        (((x, mem), {"mask": padding_mask(src, 0)}), (x, mem, src == 0, None)),
        (((x,), {"is_causal": True}), (x, x, None, upper)),
        (((x,), {"mask": causal_mask(L)}), (x, x, None, upper)),
        (((x,), {"mask": padding_mask(tgt, 0), "is_causal": True}), (x, x, tgt == 0, upper)),
    ]
    for (args, kwargs), (qry, key, kpm, am) in cases:
        out, w = both_paths(mha, *args, **kwargs)
        with torch.no_grad():
            want, want_w = ref(qry, key, key, key_padding_mask=kpm, attn_mask=am,
                               need_weights=True, average_attn_weights=False)
        torch.testing.assert_close(out, want)
        torch.testing.assert_close(w, want_w)
        assert w.shape == (B, n_heads, qry.shape[1], key.shape[1])


def test_mha_fully_masked_query_gives_output_bias():
    torch.manual_seed(0)
    mha = MultiHeadAttention(8, 2).eval()
    x = torch.randn(2, 4, 8)
    mask = torch.ones(2, 1, 4, 4, dtype=torch.bool)
    mask[1, 0, 2] = False  # query 2 of batch row 1 sees nothing
    out, w = both_paths(mha, x, mask=mask)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[1, 2], mha.w_o.bias)
    assert (w[1, :, 2] == 0).all()


@pytest.mark.parametrize("need_weights", [False, True])
def test_kv_cache_matches_full_causal_pass(need_weights):
    torch.manual_seed(1)
    mha = MultiHeadAttention(16, 4).eval()
    x = torch.randn(2, 9, 16)
    full, full_w = mha(x, is_causal=True, need_weights=True)
    cache, outs = KVCache(), []
    for a, b in [(0, 3), (3, 4), (4, 5), (5, 8), (8, 9)]:  # a prompt, then tokens and chunks
        out, w = mha(x[:, a:b], is_causal=True, cache=cache, need_weights=need_weights)
        outs.append(out)
        assert len(cache) == b
        if need_weights:
            torch.testing.assert_close(w, full_w[:, :, a:b, :b])
    torch.testing.assert_close(torch.cat(outs, 1), full)


def test_kv_cache_in_cross_attention_reuses_memory():
    torch.manual_seed(2)
    mha = MultiHeadAttention(16, 2).eval()
    x, mem = torch.randn(2, 4, 16), torch.randn(2, 6, 16)
    full, _ = mha(x, mem)
    cache = KVCache()
    steps = [mha(x[:, i : i + 1], mem, cache=cache)[0] for i in range(4)]
    assert len(cache) == 6  # the memory's 6 positions, computed once
    torch.testing.assert_close(torch.cat(steps, 1), full)


def test_kv_cache_reorder_selects_batch_rows():
    k, v = torch.randn(3, 2, 4, 5), torch.randn(3, 2, 4, 5)
    cache = KVCache()
    cache.update(k, v)
    cache.reorder(torch.tensor([2, 2, 0]))
    assert torch.equal(cache.k, torch.stack([k[2], k[2], k[0]]))
    assert torch.equal(cache.v, torch.stack([v[2], v[2], v[0]]))


class TwoLayers(nn.Module):
    def __init__(self):
        super().__init__()
        self.self_attn = MultiHeadAttention(8, 2)
        self.cross_attn = MultiHeadAttention(8, 4)

    def forward(self, x, mem):
        h = x + self.self_attn(x, is_causal=True)[0]
        return h + self.cross_attn(h, mem)[0]


def test_record_attention_collects_every_layer_without_changing_output():
    torch.manual_seed(3)
    model = TwoLayers().eval()
    x, mem = torch.randn(1, 5, 8), torch.randn(1, 3, 8)
    plain = model(x, mem)
    with record_attention(model) as maps:
        recorded = model(x, mem)
    torch.testing.assert_close(recorded, plain)
    got = maps()
    assert list(got) == ["self_attn", "cross_attn"]
    assert got["self_attn"].shape == (1, 2, 5, 5) and got["cross_attn"].shape == (1, 4, 5, 3)
    _, w = model.self_attn(x, is_causal=True, need_weights=True)
    torch.testing.assert_close(got["self_attn"], w)
    assert not model.self_attn.record and not model.cross_attn.record


# ------------------------------------------------------------------ bad input


def test_bad_shapes_are_named():
    q, k, v = torch.randn(2, 3, 8), torch.randn(2, 4, 8), torch.randn(2, 4, 8)
    with pytest.raises(ValueError, match="last dimension d_k"):
        scaled_dot_product_attention(q, torch.randn(2, 4, 7), v)
    with pytest.raises(ValueError, match="same number of positions"):
        scaled_dot_product_attention(q, k, torch.randn(2, 5, 8))
    with pytest.raises(ValueError, match="number of dimensions"):
        fused_attention(q, k[0], v)
    with pytest.raises(ValueError, match="leading"):
        fused_attention(torch.randn(3, 3, 8), k, v)


def test_bad_masks_are_named():
    q, k, v = torch.randn(2, 3, 8), torch.randn(2, 4, 8), torch.randn(2, 4, 8)
    for fn in (lambda m: scaled_dot_product_attention(q, k, v, m), lambda m: fused_attention(q, k, v, m)):
        with pytest.raises(TypeError, match="bool"):
            fn(torch.ones(3, 4))
        with pytest.raises(ValueError, match="does not broadcast"):
            fn(torch.ones(3, 5, dtype=torch.bool))
        with pytest.raises(ValueError, match="does not broadcast"):
            fn(torch.ones(7, 2, 3, 4, dtype=torch.bool))  # would enlarge the output
    mha = MultiHeadAttention(8, 2)
    x = torch.randn(2, 3, 8)
    with pytest.raises(ValueError, match="ambiguous"):
        mha(x, mask=torch.ones(2, 3, 3, dtype=torch.bool))
    with pytest.raises(TypeError, match="bool"):
        mha(x, mask=torch.ones(3, 3, dtype=torch.float32))
    with pytest.raises(ValueError, match="does not broadcast"):
        mha(x, mask=torch.ones(2, 1, 1, 4, dtype=torch.bool), need_weights=True)
    with pytest.raises(TypeError, match="bool"):
        mha(x, mask=padding_mask(torch.ones(2, 3, dtype=torch.long), 0).float())


def test_mask_shape_check_agrees_with_torch_broadcasting():
    """The attention's own broadcast test against torch.broadcast_shapes, over every mask shape
    of up to 5 dimensions with sizes 0-3 against a few score shapes (a wrong rule, say one that
    lets a mask add dimensions or accepts any size where the scores have 1, fails here)."""
    import itertools

    def torch_says(shape, target):
        try:
            return torch.broadcast_shapes(shape, target) == target
        except RuntimeError:
            return False

    targets = [torch.Size(t) for t in ((2, 3, 4, 4), (1, 3, 2, 1), (2, 1, 0, 3), (3, 3))]
    for target in targets:
        for n in range(6):
            for shape in itertools.product(range(4), repeat=n):
                assert attention._broadcasts_to(torch.Size(shape), target) == torch_says(torch.Size(shape), target), (
                    shape, target)


def test_bad_mha_configuration_and_inputs_are_named():
    with pytest.raises(ValueError, match="not divisible by n_heads"):
        MultiHeadAttention(10, 4)
    mha = MultiHeadAttention(8, 2)
    with pytest.raises(ValueError, match="d_model=8"):
        mha(torch.randn(2, 3, 6))
    with pytest.raises(ValueError, match="memory must have shape"):
        mha(torch.randn(2, 3, 8), torch.randn(3, 4, 8))
    with pytest.raises(ValueError, match="token ids of shape"):
        padding_mask(torch.ones(5, dtype=torch.long), 0)
