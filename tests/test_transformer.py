"""The encoder-decoder against torch.nn.Transformer, beam search against brute force,
and a model that learns a handful of pairs exactly."""

import itertools
import json
import warnings

import pytest
import torch
from torch import nn

from course_lib.attention import record_attention
from course_lib.decoding import beam_search, greedy_decode, length_penalty, sequence_log_prob
from course_lib.transformer import Transformer, TransformerConfig

D, H, FF = 16, 4, 24


pytestmark = pytest.mark.usefixtures("one_thread")


def _copy_mha(ours, theirs: nn.MultiheadAttention):
    with torch.no_grad():
        theirs.in_proj_weight.copy_(torch.cat([ours.w_q.weight, ours.w_k.weight, ours.w_v.weight]))
        theirs.in_proj_bias.copy_(torch.cat([ours.w_q.bias, ours.w_k.bias, ours.w_v.bias]))
        theirs.out_proj.weight.copy_(ours.w_o.weight)
        theirs.out_proj.bias.copy_(ours.w_o.bias)


def _copy_common(ours, theirs):
    """Feed-forward and LayerNorms: our names -> PyTorch's."""
    norms = (("self_attn_norm", "norm1"), ("cross_attn_norm", "norm2"), ("ff_norm", "norm3")) \
        if hasattr(ours, "cross_attn") else (("self_attn_norm", "norm1"), ("ff_norm", "norm2"))
    with torch.no_grad():
        theirs.linear1.load_state_dict(ours.ff.w_1.state_dict())
        theirs.linear2.load_state_dict(ours.ff.w_2.state_dict())
        for mine, torchs in norms:
            getattr(theirs, torchs).load_state_dict(getattr(ours, mine).state_dict())


def reference_from(model: Transformer) -> nn.Transformer:
    """torch.nn.Transformer holding our model's weights."""
    cfg = model.config
    with warnings.catch_warnings():  # torch's note that pre-norm layers skip its nested-tensor fast path
        warnings.filterwarnings("ignore", message="enable_nested_tensor is True")
        ref = nn.Transformer(cfg.d_model, cfg.n_heads, cfg.n_layers, cfg.decoder_layers, cfg.d_ff, dropout=0.0,
                             activation=cfg.activation, batch_first=True, norm_first=cfg.norm_first)
    ref.to(next(model.parameters()).dtype)  # before copying, so no rounding to float32
    for ours, theirs in zip(model.encoder_layers, ref.encoder.layers, strict=True):
        _copy_mha(ours.self_attn, theirs.self_attn)
        _copy_common(ours, theirs)
    for ours, theirs in zip(model.decoder_layers, ref.decoder.layers, strict=True):
        _copy_mha(ours.self_attn, theirs.self_attn)
        _copy_mha(ours.cross_attn, theirs.multihead_attn)
        _copy_common(ours, theirs)
    if cfg.norm_first:
        ref.encoder.norm.load_state_dict(model.encoder_norm.state_dict())
        ref.decoder.norm.load_state_dict(model.decoder_norm.state_dict())
    else:  # the paper's post-norm has no extra LayerNorm after the stacks; nn.Transformer adds one
        ref.encoder.norm, ref.decoder.norm = None, None
    return ref


@pytest.mark.parametrize("norm_first,activation", [(False, "relu"), (True, "gelu")])
def test_matches_torch_transformer_with_masks(norm_first, activation):
    torch.manual_seed(0)
    cfg = TransformerConfig(src_vocab_size=13, tgt_vocab_size=11, d_model=D, n_heads=H, n_layers=2,
                            n_decoder_layers=3, d_ff=FF, dropout=0.0, activation=activation,
                            norm_first=norm_first, max_len=32, tie_embeddings=False)
    model = Transformer(cfg).double()
    for p in model.parameters():  # non-trivial LayerNorm and bias values
        with torch.no_grad():
            p.add_(0.1 * torch.randn_like(p))
    ref = reference_from(model)
    src = torch.randint(1, 13, (3, 7))
    src[0, 5:] = 0  # padding
    src[2, 3:] = 0
    tgt = torch.randint(1, 11, (3, 6))
    ref.train()  # no fast path (it returns nested tensors with zeros at padding); dropout is 0
    model.train()
    ours = model(src, tgt)
    x = model.pos(model.src_embed(src))
    y = model.pos(model.tgt_embed(tgt))
    pad = src == 0  # torch: True = ignore
    causal = nn.Transformer.generate_square_subsequent_mask(6, dtype=torch.float64)
    h = ref(x, y, tgt_mask=causal, src_key_padding_mask=pad, memory_key_padding_mask=pad)
    theirs = model.out_proj(h)
    torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-9)
    # The encoder alone, at the non-padding positions.
    mem = model.encode(src)
    ref_mem = ref.encoder(x, src_key_padding_mask=pad)
    torch.testing.assert_close(mem[~pad], ref_mem[~pad], rtol=1e-9, atol=1e-9)


def test_cached_decoding_equals_full_decoding():
    torch.manual_seed(1)
    cfg = TransformerConfig(src_vocab_size=9, tgt_vocab_size=9, d_model=D, n_heads=H, n_layers=2, d_ff=FF,
                            dropout=0.0, max_len=16)
    model = Transformer(cfg).eval()
    src = torch.tensor([[3, 4, 5, 2, 0], [6, 7, 2, 0, 0]])
    a = greedy_decode(model, src, 1, 2, max_new_tokens=8, use_cache=True)
    b = greedy_decode(model, src, 1, 2, max_new_tokens=8, use_cache=False)
    assert a == b and len(a[0]) > 0
    # Batched greedy equals greedy one sentence at a time (padding does not leak).
    assert [greedy_decode(model, src[i : i + 1, : 4 - i], 1, 2, 8)[0] for i in range(2)] == a


def _brute_force(model, src, bos, eos, vocab, max_new, alpha):
    """Every hypothesis: tokens from ``vocab`` ending in <eos>, or max_new tokens long."""
    words = [t for t in vocab if t != eos]
    hyps = []
    for n in range(0, max_new):
        hyps += [list(c) + [eos] for c in itertools.product(words, repeat=n)]
    hyps += [list(c) for c in itertools.product(vocab, repeat=max_new) if eos not in c[:-1]]
    scored = [(sequence_log_prob(model, src, h, bos) / length_penalty(len(h), alpha), h) for h in hyps]
    return max(scored, key=lambda s: s[0])


@pytest.mark.parametrize("alpha,seed", [(0.0, 0), (0.6, 1), (1.0, 2), (0.6, 3)])
def test_beam_search_equals_exhaustive_search(alpha, seed):
    torch.manual_seed(seed)
    # pad 0, bos 1, eos 2, words 3, 4; an untrained model with sharp logits
    cfg = TransformerConfig(src_vocab_size=5, tgt_vocab_size=5, d_model=8, n_heads=2, n_layers=1, d_ff=8,
                            dropout=0.0, max_len=8, tie_embeddings=False)
    model = Transformer(cfg).double().eval()
    with torch.no_grad():
        model.out_proj.weight.mul_(3.0)
    src = torch.tensor([[3, 4, 3, 2]])
    max_new = 4
    best_score, best = _brute_force(model, src, 1, 2, [2, 3, 4], max_new, alpha)
    got = beam_search(model, src, 1, 2, beam_size=3**max_new, max_new_tokens=max_new, alpha=alpha)
    assert got == best, (got, best, best_score)
    # beam size 1 is greedy search
    assert beam_search(model, src, 1, 2, beam_size=1, max_new_tokens=max_new, alpha=alpha) == \
        greedy_decode(model, src, 1, 2, max_new)[0]


def test_beam_search_with_and_without_cache_agree():
    torch.manual_seed(4)
    cfg = TransformerConfig(src_vocab_size=12, tgt_vocab_size=12, d_model=16, n_heads=2, n_layers=2, d_ff=16,
                            dropout=0.0, max_len=16)
    model = Transformer(cfg).eval()
    src = torch.tensor([[5, 6, 7, 8, 2]])
    assert beam_search(model, src, 1, 2, 4, 10, use_cache=True) == beam_search(model, src, 1, 2, 4, 10, use_cache=False)


def test_overfits_a_handful_of_pairs():
    torch.manual_seed(0)
    pairs = [([5, 6, 7, 2], [1, 8, 9, 10, 2]), ([7, 5, 2], [1, 10, 8, 2]), ([6, 6, 5, 7, 2], [1, 9, 9, 8, 10, 2]),
             ([5, 7, 6, 2], [1, 10, 9, 8, 2])]
    cfg = TransformerConfig(src_vocab_size=11, tgt_vocab_size=11, d_model=32, n_heads=4, n_layers=2, d_ff=64,
                            dropout=0.0, max_len=12)
    model = Transformer(cfg)
    src = nn.utils.rnn.pad_sequence([torch.tensor(s) for s, _ in pairs], batch_first=True)
    tgt = nn.utils.rnn.pad_sequence([torch.tensor(t) for _, t in pairs], batch_first=True)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(150):
        logits = model(src, tgt[:, :-1])
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), tgt[:, 1:].flatten(), ignore_index=0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    out = greedy_decode(model, src, 1, 2, max_new_tokens=8)
    assert out == [t[1:] for _, t in pairs]


def test_cross_attention_map_is_the_cross_attention_weights():
    """The exported cross-attention map is (target length, source length) and is the
    weights of the decoder's cross-attention module (not its self-attention)."""
    from course_lib.solutions.nb07 import cross_attention_maps
    from course_lib.transformer import attention_maps

    torch.manual_seed(5)
    cfg = TransformerConfig(src_vocab_size=12, tgt_vocab_size=12, d_model=16, n_heads=2, n_layers=2, d_ff=16,
                            dropout=0.0, max_len=16)
    model = Transformer(cfg).eval()
    src = torch.tensor([[5, 6, 7, 8, 9, 2]])
    tgt = torch.tensor([[1, 10, 11, 4]])
    maps = attention_maps(model, src, tgt)["cross"]  # (layers, heads, L_tgt, L_src): what the notebook exports
    assert maps.shape == (2, 2, 4, 6)
    torch.testing.assert_close(cross_attention_maps(model, src, tgt), maps)  # the exercise's solution
    # Independent reference: call the last decoder layer's cross-attention module directly.
    with torch.no_grad():
        memory = model.encode(src)
        y = model.pos(model.tgt_embed(tgt))
        layer0 = model.decoder_layers[0]
        h = layer0.self_attn_norm(y + layer0.self_attn(y, is_causal=True)[0])
        _, w = layer0.cross_attn(h, memory, need_weights=True)
    torch.testing.assert_close(maps[0], w[0])
    assert not torch.allclose(maps[0, :, :, :4], torch.tril(maps[0, :, :, :4]))  # not a causal (self) map
    with record_attention(model) as rec:
        model(src, tgt)
    torch.testing.assert_close(maps[1], rec()["decoder_layers.1.cross_attn"][0])


def test_config_errors_and_course_names(tmp_path):
    with pytest.raises(ValueError, match="not divisible by n_heads"):
        TransformerConfig(d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="d_ff=0"):
        TransformerConfig.from_dict({"hidden_dims": 0})
    with pytest.raises(ValueError, match=r"dropout=1.0 must be in \[0, 1\)"):
        TransformerConfig(dropout=1.0)
    with pytest.raises(ValueError, match="unknown Transformer config key"):
        TransformerConfig.from_dict({"model_dimension": 64})
    path = tmp_path / "course.json"
    path.write_text(json.dumps({"train_data": "x", "valid_data": "y", "epochs": 1, "batch_size": 8,
                                "learning_rate": 1e-3, "model_dim": 32, "hidden_dims": 64, "num_heads": 4,
                                "num_layers": 2, "dropout": 0.2, "max_seq_length": 50}))
    cfg = TransformerConfig.from_json(path, src_vocab_size=20, tgt_vocab_size=20)
    assert (cfg.d_model, cfg.d_ff, cfg.n_heads, cfg.n_layers, cfg.dropout, cfg.max_len) == (32, 64, 4, 2, 0.2, 50)
    model = Transformer.from_config(cfg.to_dict())
    assert len(model.encoder_layers) == len(model.decoder_layers) == 2


def test_too_long_source_is_an_error_naming_the_lengths():
    cfg = TransformerConfig(src_vocab_size=9, tgt_vocab_size=9, d_model=8, n_heads=2, n_layers=1, d_ff=8, max_len=5)
    model = Transformer(cfg)
    with pytest.raises(ValueError, match="source has 7 tokens, more than max_len=5"):
        model(torch.ones(1, 7, dtype=torch.long), torch.ones(1, 3, dtype=torch.long))
