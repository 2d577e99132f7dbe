"""Batched beam search (sentences and beams in one batch) against the one-sentence beam
search it replaces, on random models: beams 1-4, batches of mixed lengths with padding,
sentences that finish early and sentences that run to their limit."""

import pytest
import torch

from course_lib.decoding import batched_beam_search, beam_search, translate
from course_lib.tokenizer import SPECIALS, WordTokenizer
from course_lib.transformer import Transformer, TransformerConfig

pytestmark = pytest.mark.usefixtures("one_thread")
PAD, BOS, EOS, V = 0, 1, 2, 19


def random_model(seed: int, eos_boost: float, vocab: int = V) -> Transformer:
    """An untrained model whose <eos> is likely enough that hypotheses end at mixed lengths."""
    torch.manual_seed(seed)
    model = Transformer(TransformerConfig(src_vocab_size=vocab, tgt_vocab_size=vocab, d_model=16, n_heads=2, n_layers=2,
                                          d_ff=32, dropout=0.0, max_len=40, tie_embeddings=False))
    with torch.no_grad():
        model.out_proj.weight.mul_(3.0)  # peakier distributions than at initialisation
        model.out_proj.weight[EOS] *= eos_boost
    return model.eval()


def sources(seed: int, lengths: list[int]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    alone = [torch.cat([torch.randint(3, V, (n - 1,), generator=g), torch.tensor([EOS])]) for n in lengths]
    batch = torch.full((len(lengths), max(lengths)), PAD)
    for r, s in enumerate(alone):
        batch[r, : len(s)] = s
    return batch, alone


@pytest.mark.parametrize("beam", [1, 2, 3, 4])
@pytest.mark.parametrize("lengths,seed", [([5], 0), ([7, 3, 9], 1), ([4, 4, 11, 2, 6, 8, 3], 2)])
@pytest.mark.parametrize("alpha", [0.0, 0.6])
def test_batched_equals_one_sentence_at_a_time(beam, lengths, seed, alpha):
    model = random_model(seed, eos_boost=2.5)
    batch, alone = sources(seed + 10, lengths)
    limits = [3 + (i * 5) % 9 for i in range(len(lengths))]  # per sentence, as translate gives them
    want = [beam_search(model, s[None], BOS, EOS, beam, n, alpha) for s, n in zip(alone, limits, strict=True)]
    assert batched_beam_search(model, batch, BOS, EOS, beam, limits, alpha) == want
    # one limit for all, and without the cache
    want = [beam_search(model, s[None], BOS, EOS, beam, 12, alpha) for s in alone]
    assert batched_beam_search(model, batch, BOS, EOS, beam, 12, alpha) == want
    assert batched_beam_search(model, batch, BOS, EOS, beam, 12, alpha, use_cache=False) == want


def test_the_cases_are_covered_early_finish_and_limit_in_one_batch():
    """The equality above is tested where it matters: in one batch, some sentences end in
    <eos> early (and leave the batch) while others run to their limit."""
    model = random_model(2, eos_boost=2.5)
    batch, alone = sources(12, [4, 4, 11, 2, 6, 8, 3])
    out = batched_beam_search(model, batch, BOS, EOS, 4, 12, 0.6)
    ended = [o for o in out if o and o[-1] == EOS]
    assert ended and min(map(len, ended)) < 12
    assert any(len(o) == 12 and o[-1] != EOS for o in out)
    assert len({tuple(o) for o in out}) > 3


def test_a_deliberately_broken_batch_is_caught():
    """Duplicating the <bos> hypothesis over all beams at the start (instead of -inf for
    the empty rows) changes the search; the equality test sees it."""
    import course_lib.decoding as dec

    model = random_model(1, eos_boost=2.5)
    batch, alone = sources(11, [7, 3, 9])
    want = [beam_search(model, s[None], BOS, EOS, 3, 12, 0.6) for s in alone]
    real_full = torch.full

    def broken_full(size, value, *args, **kw):  # scores start at 0 in every row
        return real_full(size, 0.0 if value == float("-inf") else value, *args, **kw)

    dec.torch.full = broken_full
    try:
        got = batched_beam_search(model, batch, BOS, EOS, 3, 12, 0.6)
    finally:
        dec.torch.full = real_full
    assert got != want


def test_translate_with_beams_equals_the_sentence_loop():
    words = "the a man dog sees runs big small house . ,".split()
    tok = WordTokenizer(list(SPECIALS) + words, SPECIALS)
    model = random_model(1, eos_boost=2.5, vocab=tok.vocab_size)
    sentences = ["the man sees the dog .", "a dog", "the big small house runs , the man sees a big dog .",
                 "dog", "a man runs ."] * 3
    got = translate(model, tok, sentences, beam_size=3, batch_size=4, max_new_tokens=None)
    want = []
    for s in sentences:
        src = torch.tensor([tok.encode(s) + [EOS]])
        ids = beam_search(model, src, BOS, EOS, 3, min(model.config.max_len - 1, src.shape[1] + 50), 0.6)
        want.append(tok.decode([t for t in ids if t != EOS]))
    assert got == want
    assert len(set(map(len, got))) >= 3  # outputs of several lengths


def test_bad_arguments():
    model = random_model(0, 1.0)
    batch, _ = sources(0, [3, 4])
    with pytest.raises(ValueError, match="one per sentence"):
        batched_beam_search(model, batch, BOS, EOS, 2, [5])
    with pytest.raises(ValueError, match="beam_size"):
        batched_beam_search(model, batch, BOS, EOS, 0, 5)
