"""Beam search (``course_lib.decoding.beam_search`` and ``translate``) against a plain,
obviously-correct beam search written here, on random models, with beams 2 to 4, where
the beam does prune (shown: a wider beam finds another answer in some of these cases);
and against exhaustive search where the beam covers every hypothesis.

The reference recomputes the decoder on the whole prefix of every hypothesis (no cache,
no batching, Python lists); at each step it ranks every extension of the live
hypotheses, finishes those of the ``beam`` best that end in <eos> (or reach the length
limit), and keeps the ``beam`` best that do not; it runs to the length limit (no early
stop) and returns the finished hypothesis of the best length-normalised score.
"""

import itertools

import pytest
import torch

from course_lib.decoding import beam_search, length_penalty, translate
from course_lib.tokenizer import SPECIALS, WordTokenizer
from course_lib.transformer import Transformer, TransformerConfig

PAD, BOS, EOS = 0, 1, 2


def reference_beam(model, src, beam, max_new, alpha, bos=BOS, eos=EOS, pad=PAD):
    live, finished = [([], 0.0)], []
    for t in range(max_new):
        candidates = []
        for ids, score in live:
            logits = model(src, torch.tensor([[bos] + ids]))[0, -1].double()
            logits[[pad, bos]] = float("-inf")
            logp = logits.log_softmax(-1).tolist()
            candidates += [(score + lp, ids + [tok]) for tok, lp in enumerate(logp) if lp != float("-inf")]
        candidates.sort(key=lambda c: c[0], reverse=True)
        live = []
        for rank, (score, ids) in enumerate(candidates):
            if ids[-1] == eos or t == max_new - 1:
                if rank < beam:
                    finished.append((score / length_penalty(len(ids), alpha), ids))
            elif len(live) < beam:
                live.append((ids, score))
        if not live:
            break
    return max(finished, key=lambda f: f[0])[1]


def exhaustive(model, src, vocab, max_new, alpha, bos=BOS, eos=EOS):
    words = [t for t in vocab if t != eos]
    hyps = [list(c) + [eos] for n in range(max_new) for c in itertools.product(words, repeat=n)]
    hyps += [list(c) for c in itertools.product(vocab, repeat=max_new) if eos not in c[:-1]]

    def score(h):
        logits = model(src, torch.tensor([[bos] + h[:-1]]))[0].double()
        logits[:, [PAD, bos]] = float("-inf")
        return float(logits.log_softmax(-1).gather(-1, torch.tensor(h)[:, None]).sum()) / length_penalty(len(h), alpha)

    return max(hyps, key=score)


def random_model(seed, vocab=12, sharp=2.0):
    torch.manual_seed(seed)
    cfg = TransformerConfig(src_vocab_size=vocab, tgt_vocab_size=vocab, d_model=16, n_heads=2, n_layers=1, d_ff=16,
                            dropout=0.0, max_len=12, tie_embeddings=False)
    model = Transformer(cfg).double().eval()
    with torch.no_grad():
        model.out_proj.weight.mul_(sharp)  # sharper, more varied distributions than at initialisation
    return model


CASES = [(seed, beam, alpha) for seed in range(3) for beam in (2, 3, 4) for alpha in (0.0, 0.6)]


@torch.no_grad()
def test_beam_search_equals_the_reference_and_prunes():
    pruned = 0
    for seed, beam, alpha in CASES:
        model = random_model(seed)
        src = torch.randint(3, 12, (1, 5), generator=torch.Generator().manual_seed(seed))
        want = reference_beam(model, src, beam, 6, alpha)
        assert beam_search(model, src, BOS, EOS, beam, 6, alpha) == want, (seed, beam, alpha)
        assert beam_search(model, src, BOS, EOS, beam, 6, alpha, use_cache=False) == want
        pruned += reference_beam(model, src, beam + 1, 6, alpha) != want
    assert pruned >= 3  # in these cases the beam width matters: a wrong pruning would show


@torch.no_grad()
@pytest.mark.parametrize("seed", range(3))
def test_beam_search_equals_exhaustive_search_where_it_covers_everything(seed):
    model = random_model(seed, vocab=5, sharp=3.0)  # pad, bos, eos, two words: 3 choices a step
    src = torch.tensor([[3, 4, 4, 2]])
    for alpha in (0.0, 1.0):
        best = exhaustive(model, src, [2, 3, 4], 3, alpha)
        assert reference_beam(model, src, 9, 3, alpha) == best
        assert beam_search(model, src, BOS, EOS, 9, 3, alpha) == best


@torch.no_grad()
def test_translate_with_beams_equals_the_reference():
    words = ["the", "man", "dog", "sees", "a", "woman", "der", "Mann", "Hund", "sieht", "eine", "Frau", "."]
    tok = WordTokenizer(list(SPECIALS) + words, SPECIALS)
    model = random_model(7, vocab=tok.vocab_size)
    sentences = ["the man sees a dog .", "a woman", "the dog sees the man ."]
    for beam in (2, 3, 4):
        got = translate(model, tok, sentences, beam_size=beam, max_new_tokens=6, alpha=0.6)
        for sentence, text in zip(sentences, got, strict=True):
            src = torch.tensor([tok.encode(sentence) + [EOS]])
            ids = reference_beam(model, src, beam, 6, 0.6)
            assert text == tok.decode([t for t in ids if t != EOS]), (beam, sentence)


def test_a_wrong_beam_search_fails_the_reference_comparison():
    """The comparison can fail: a beam search with an off-by-one beam width (one
    hypothesis too few) disagrees with the reference in some of the cases."""
    differ = 0
    with torch.no_grad():
        for seed, beam, alpha in CASES:
            model = random_model(seed)
            src = torch.randint(3, 12, (1, 5), generator=torch.Generator().manual_seed(seed))
            differ += beam_search(model, src, BOS, EOS, beam - 1, 6, alpha) != reference_beam(model, src, beam, 6, alpha)
            if differ:
                break
    assert differ >= 1
