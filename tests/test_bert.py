"""course_lib.bert against Hugging Face's BertForMaskedLM (copied weights), and the 80/10/10
masking rule against its stated statistics on many draws."""

import math

import pytest
import torch

from course_lib.bert import (
    IGNORE_INDEX,
    BertConfig,
    BertMLM,
    hf_to_course_state_dict,
    mask_tokens,
    mlm_loss,
)


def _hf_model(seed=0, **kw):
    transformers = pytest.importorskip("transformers")  # here, not at import: collecting stays fast
    cfg = transformers.BertConfig(vocab_size=61, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=48, max_position_embeddings=24, type_vocab_size=2,
                                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pad_token_id=0, **kw)
    torch.manual_seed(seed)
    hf = transformers.BertForMaskedLM(cfg).eval()
    with torch.no_grad():  # random everything (LayerNorm gains, biases): a swapped name must show
        for p in hf.parameters():
            p.normal_(0.0, 0.3)
    return hf


def _inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 61, (3, 20), generator=g)
    ids[1, 13:] = 0  # padding
    ids[2, 6:] = 0
    segments = torch.zeros_like(ids)
    segments[:, 9:] = 1
    return ids, segments


def test_logits_equal_hugging_face(one_thread):
    hf = _hf_model()
    ours = BertMLM.from_hf(hf.config.to_dict(), hf.state_dict()).eval()
    ids, segments = _inputs()
    with torch.no_grad():
        want = hf(input_ids=ids, token_type_ids=segments, attention_mask=(ids != 0).long()).logits
        got = ours(ids, segments)
    keep = ids != 0  # HF computes padding positions too; compare them all the same
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert keep.sum() < keep.numel()
    assert ours.out_proj.weight is ours.tok_embed.weight  # tied, with its own bias
    assert ours.num_parameters() == sum(p.numel() for p in hf.parameters())


@pytest.mark.parametrize("a,b", [("layers.1.self_attn.w_q.weight", "layers.1.self_attn.w_k.weight"),
                                 ("layers.0.self_attn_norm.weight", "layers.0.ff_norm.weight")])
def test_a_wrong_key_map_gives_other_logits(one_thread, a, b):
    """The comparison can fail: swapping two parameters in the key map changes the logits
    by far more than its tolerance."""
    hf = _hf_model(seed=3)
    sd = hf_to_course_state_dict(hf.state_dict(), 2)
    sd[a], sd[b] = sd[b], sd[a]
    ours = BertMLM.from_hf(hf.config.to_dict(), hf.state_dict()).eval()
    ours.load_state_dict(sd)
    ids, segments = _inputs()
    with torch.no_grad():
        want = hf(input_ids=ids, token_type_ids=segments, attention_mask=(ids != 0).long()).logits
        assert (ours(ids, segments) - want).abs().max() > 1e-4


def test_segments_and_positions_matter(one_thread):
    hf = _hf_model(seed=4)
    ours = BertMLM.from_hf(hf.config.to_dict(), hf.state_dict()).eval()
    ids, segments = _inputs()
    with torch.no_grad():
        assert not torch.allclose(ours(ids, segments), ours(ids))
        # bidirectional: changing the last real token changes the first position's output
        changed = ids.clone()
        changed[0, 19] = (changed[0, 19] % 60) + 1
        assert not torch.allclose(ours(changed, segments)[0, 0], ours(ids, segments)[0, 0])


def test_rejects_other_activations():
    hf = _hf_model(hidden_act="gelu_new")
    with pytest.raises(ValueError, match="erf"):
        BertMLM.from_hf(hf.config.to_dict(), hf.state_dict())


@pytest.mark.parametrize("kw,message", [
    (dict(d_model=30, n_heads=4), "not divisible"),
    (dict(dropout=1.5), "dropout"),
    (dict(vocab_size=0), "vocab_size"),
    (dict(pad_id=99, vocab_size=50), "pad_id"),
    (dict(model_type="gpt"), "model_type"),
    (dict(layer_norm_eps=0), "layer_norm_eps"),
])
def test_config_errors_name_the_problem(kw, message):
    with pytest.raises(ValueError, match=message):
        BertConfig(**kw)


def test_config_round_trip_and_unknown_keys():
    cfg = BertConfig(vocab_size=50, d_model=16, n_heads=2, n_layers=1, d_ff=32, max_len=8)
    assert BertConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown BERT config"):
        BertConfig.from_dict({**cfg.to_dict(), "hidden_size": 16})


def test_input_errors():
    model = BertMLM(BertConfig(vocab_size=20, d_model=16, n_heads=2, n_layers=1, d_ff=32, max_len=6))
    with pytest.raises(ValueError, match="max_len"):
        model(torch.ones(1, 7, dtype=torch.long))
    with pytest.raises(ValueError, match="segment ids"):
        model(torch.ones(1, 4, dtype=torch.long), torch.full((1, 4), 2))
    with pytest.raises(ValueError, match="shape"):
        model(torch.ones(1, 4, dtype=torch.long), torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(IndexError, match="vocabulary"):
        model(torch.full((1, 4), 20))


# ---- the 80/10/10 rule ---------------------------------------------------------------------

V, MASK, SPECIAL = 50, 3, (0, 1, 2)  # 0 pad, 1 [CLS], 2 [SEP], 3 [MASK]


def _draw(rule, n_rows=400, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, V, (n_rows, 30), generator=g)
    ids[:, 0], ids[:, 15] = 1, 2
    ids[::3, 25:] = 0  # padding
    inputs, labels = rule(ids, MASK, V, SPECIAL, generator=torch.Generator().manual_seed(seed + 1))
    return ids, inputs, labels


def _within(count, n, p, sigmas=5.0):
    """``count`` successes of ``n`` agree with Binomial(n, p) within ``sigmas`` std devs."""
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


def _follows_bert_rule(ids, inputs, labels) -> bool:
    special = torch.isin(ids, torch.tensor(SPECIAL))
    selected = labels != IGNORE_INDEX
    if (selected & special).any() or not torch.equal(inputs[special], ids[special]):
        return False  # special tokens are never selected or changed
    if not torch.equal(labels[selected], ids[selected]) or not torch.equal(inputs[~selected], ids[~selected]):
        return False  # labels hold the originals; unselected positions are untouched
    n, s = int((~special).sum()), int(selected.sum())
    masked = int((inputs[selected] == MASK).sum())
    replaced = inputs[selected & (inputs != MASK) & (inputs != ids)]
    if torch.isin(replaced, torch.tensor(SPECIAL + (MASK,))).any():
        return False  # the random token is an ordinary one
    k = V - len(SPECIAL) - 1  # ordinary ids a random draw picks from (it may pick the original)
    same = int((inputs[selected] == ids[selected]).sum())
    return (_within(s, n, 0.15) and _within(masked, s, 0.8) and _within(len(replaced), s, 0.1 * (1 - 1 / k))
            and _within(same, s, 0.1 + 0.1 / k))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mask_tokens_follows_the_80_10_10_rule(seed):
    ids, inputs, labels = _draw(mask_tokens, seed=seed)
    assert _follows_bert_rule(ids, inputs, labels)


def _rule_90_5_5(ids, mask_id, vocab_size, special_ids, generator):
    inputs, labels = mask_tokens(ids, mask_id, vocab_size, special_ids, generator=generator)
    u = torch.rand(ids.shape, generator=generator)
    inputs = torch.where((labels != IGNORE_INDEX) & (inputs != mask_id) & (u < 0.5), mask_id, inputs)
    return inputs, labels


def _rule_selects_padding(ids, mask_id, vocab_size, special_ids, generator):
    return mask_tokens(ids, mask_id, vocab_size, (1, 2), generator=generator)


def _rule_20_percent(ids, mask_id, vocab_size, special_ids, generator):
    return mask_tokens(ids, mask_id, vocab_size, special_ids, prob=0.2, generator=generator)


@pytest.mark.parametrize("broken", [_rule_90_5_5, _rule_selects_padding, _rule_20_percent])
def test_the_statistical_check_rejects_broken_rules(broken):
    assert not _follows_bert_rule(*_draw(broken))


def test_mask_tokens_is_reproducible_and_checks_its_input():
    ids = torch.randint(4, V, (4, 10))
    a = mask_tokens(ids, MASK, V, SPECIAL, generator=torch.Generator().manual_seed(5))
    b = mask_tokens(ids, MASK, V, SPECIAL, generator=torch.Generator().manual_seed(5))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    with pytest.raises(TypeError, match="long"):
        mask_tokens(ids.int(), MASK, V, SPECIAL)
    with pytest.raises(ValueError, match="prob"):
        mask_tokens(ids, MASK, V, SPECIAL, prob=1.5)
    with pytest.raises(ValueError, match="vocabulary"):
        mask_tokens(ids, MASK, V, (0, 60))


def test_mlm_loss_counts_only_selected_positions():
    logits = torch.randn(2, 5, 7)
    labels = torch.full((2, 5), IGNORE_INDEX)
    labels[0, 1], labels[1, 3] = 4, 6
    want = -(logits[0, 1].log_softmax(-1)[4] + logits[1, 3].log_softmax(-1)[6]) / 2
    torch.testing.assert_close(mlm_loss(logits, labels), want)
