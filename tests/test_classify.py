"""course_lib.classify: inputs of each kind, classifier heads, batches and the short loop,
checked against loops, the models' own forward passes and padding invariance."""

import pytest
import torch
import torch.nn.functional as F

from course_lib.bert import BertConfig, BertMLM
from course_lib.classify import (
    DecoderTagger,
    EncoderTagger,
    FirstTokenClassifier,
    LastTokenClassifier,
    batch_indices,
    build_tokenizer,
    decoder_input,
    encoder_input,
    fit,
    gpt_hidden_states,
    last_token_index,
    linear_schedule,
    pad,
    predict,
    take,
)
from course_lib.gpt import GPT, GPTConfig

PAD = 0


def _gpt(seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=30, block_size=16, n_layers=2, n_heads=2, d_model=16)).eval()


def _bert(seed=0):
    torch.manual_seed(seed)
    return BertMLM(BertConfig(vocab_size=30, d_model=16, n_heads=2, n_layers=2, d_ff=32, max_len=16, dropout=0.0))


def test_inputs_of_each_kind():
    tok = build_tokenizer(["the dog sleeps .", "der hund schläft ."])
    s = tok.special_tokens
    ids, seg = encoder_input(tok, "the dog sleeps .", "der hund schläft .")
    words = [tok.id_to_token(i) for i in ids]
    assert words == ["<cls>", "the", "dog", "sleeps", ".", "<sep>", "der", "hund", "schläft", ".", "<sep>"]
    assert seg == [0] * 6 + [1] * 5
    dec = decoder_input(tok, "the dog sleeps .", "der hund schläft .")
    assert dec[4] == s["<sep>"] and dec[-1] == s["<eos>"] and len(dec) == 10
    assert s["<pad>"] == PAD


def test_pad_take_and_last_token_index_match_loops():
    seqs = [[5, 6, 7], [8], [9, 10, 11, 12, 13]]
    t = pad(seqs, PAD)
    assert t.tolist() == [s + [PAD] * (5 - len(s)) for s in seqs]
    assert last_token_index(t, PAD).tolist() == [len(s) - 1 for s in seqs]
    assert take(t, torch.tensor([0, 1]), PAD).tolist() == [[5, 6, 7], [8, 0, 0]]
    with pytest.raises(ValueError, match="only padding"):
        last_token_index(torch.zeros(1, 3, dtype=torch.long), PAD)
    with pytest.raises(ValueError, match="at least one"):
        pad([], PAD)


def test_gpt_hidden_states_are_what_the_output_projection_reads():
    gpt = _gpt()
    ids = torch.randint(1, 30, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(gpt.out_proj(gpt_hidden_states(gpt, ids)), gpt(ids)[0])


def test_last_token_classifier_ignores_right_padding():
    """Causal attention + the last real token: padding on the right changes nothing. Reading
    the last column instead (a classic bug) would read a padding position."""
    clf = LastTokenClassifier(_gpt(), pad_id=PAD).eval()
    short = torch.tensor([[3, 4, 5, 6]])
    padded = torch.tensor([[3, 4, 5, 6, PAD, PAD, PAD]])
    with torch.no_grad():
        torch.testing.assert_close(clf(padded), clf(short))
        wrong = clf.head(gpt_hidden_states(clf.gpt, padded)[:, -1])
        assert not torch.allclose(wrong, clf(short))


def test_first_token_classifier_ignores_padding_and_sees_the_whole_input():
    clf = FirstTokenClassifier(_bert()).eval()
    ids, seg = torch.tensor([[1, 4, 5, 2, 6, 7, 2]]), torch.tensor([[0, 0, 0, 0, 1, 1, 1]])
    padded, seg_padded = F.pad(ids, (0, 3), value=PAD), F.pad(seg, (0, 3))
    with torch.no_grad():
        torch.testing.assert_close(clf(padded, seg_padded), clf(ids, seg), rtol=1e-5, atol=1e-5)
        later = ids.clone()
        later[0, 5] = 9  # a word at the end changes what [CLS] (position 0) reads
        assert not torch.allclose(clf(later, seg), clf(ids, seg))


def test_decoder_tagger_reads_only_the_past_and_the_encoder_tagger_both_sides():
    """Brute force over positions: the decoder's tag at i is the same with everything after i
    cut off or changed; the encoder's changes when a later word does (a bidirectional model
    passed off as a decoder, or a causal one as an encoder, fails)."""
    dec, enc = DecoderTagger(_gpt(), n_tags=4).eval(), EncoderTagger(_bert(), n_tags=4).eval()
    ids = torch.tensor([[1, 4, 5, 6, 7, 8, 9, 10]])
    with torch.no_grad():
        full_dec, full_enc = dec(ids), enc(ids)
        assert full_dec.shape == full_enc.shape == (1, 8, 4)
        torch.testing.assert_close(full_dec, dec.head(gpt_hidden_states(dec.gpt, ids)))
        torch.testing.assert_close(full_enc, enc.head(enc.bert.encode(ids)))
        for i in range(1, 8):
            later = ids.clone()
            later[0, i:] = 3  # change every word from i on
            torch.testing.assert_close(dec(ids[:, :i]), full_dec[:, :i])
            torch.testing.assert_close(dec(later)[:, :i], full_dec[:, :i])
            assert not torch.allclose(enc(later)[:, : i], full_enc[:, : i])
        torch.testing.assert_close(enc(F.pad(ids, (0, 3), value=PAD))[:, :8], full_enc, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="n_tags"):
        EncoderTagger(_bert(), n_tags=1)


def test_batch_indices_cover_each_epoch_once_and_are_pure():
    indices = batch_indices(10, 3, seed=4)
    epoch0 = torch.cat([indices(s) for s in range(3)])
    assert len(set(epoch0.tolist())) == 9  # 3 batches of 3 distinct examples
    assert torch.equal(indices(1), batch_indices(10, 3, seed=4)(1))
    assert not torch.equal(torch.cat([indices(s) for s in range(3, 6)]), epoch0)  # a new permutation
    with pytest.raises(ValueError, match="batch_size"):
        batch_indices(2, 3, 0)


def test_linear_schedule():
    assert [linear_schedule(s, 1.0, 4, 8) for s in range(9)] == [0.25, 0.5, 0.75, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0]


def test_fit_learns_a_separable_task_and_predict_reads_it(one_thread):
    torch.manual_seed(0)
    x = torch.randn(64, 4)
    y = (x[:, 0] > 0).long()
    model = torch.nn.Linear(4, 2)
    result = fit(model, lambda step: F.cross_entropy(model(x), y), steps=200, lr=0.1, warmup=10)
    assert result["losses"][-1] < 0.3 * result["losses"][0]
    accuracy = (predict(lambda idx: model(x[idx]), 64, batch_size=10) == y).float().mean()
    assert accuracy > 0.95
    with pytest.raises(ValueError, match="steps"):
        fit(model, lambda step: model(x).sum(), steps=0)
    with pytest.raises(FloatingPointError, match="learning rate"):
        fit(model, lambda step: model(x).sum() * float("inf"), steps=1)
