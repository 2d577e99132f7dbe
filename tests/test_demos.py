"""course_lib.demos: the logic behind the notebook demos, checked against the library's own
decoding and sampling functions called directly, and by brute force on the distribution."""

import pytest
import torch

pytest.importorskip("ipywidgets")

from course_lib.decoding import translate  # noqa: E402
from course_lib.demos import (  # noqa: E402
    sampling_demo,
    sampling_view,
    translation_demo,
    translation_view,
    widgets_front_end,
)
from course_lib.export_attention import collect_attention  # noqa: E402
from course_lib.generate import generate, next_token_probs  # noqa: E402
from course_lib.gpt import GPT, GPTConfig  # noqa: E402
from course_lib.tokenizer import CharTokenizer, WordTokenizer  # noqa: E402
from course_lib.transformer import Transformer, TransformerConfig  # noqa: E402

TEXT = "the quick brown fox jumps over the lazy dog and the cat sleeps on the warm mat"


@pytest.fixture(scope="module")
def gpt(one_thread):
    tok = CharTokenizer.from_text(TEXT)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size + 3, block_size=16, n_layers=2, n_heads=2, d_model=32))
    with torch.no_grad():  # sharper than the tiny initialisation, so the filters have work to do
        model.out_proj.weight.mul_(4)
    return model.eval(), tok


@pytest.fixture(scope="module")
def translator(one_thread):
    tok = WordTokenizer.from_texts(["the man sees the dog .", "der mann sieht den hund ."])
    torch.manual_seed(0)
    cfg = TransformerConfig(src_vocab_size=tok.vocab_size, tgt_vocab_size=tok.vocab_size, d_model=16,
                            n_heads=2, n_layers=2, d_ff=32, dropout=0.0, max_len=16,
                            pad_id=tok.special_tokens["<pad>"])
    return Transformer(cfg).eval(), tok


@pytest.fixture(autouse=True)
def static(monkeypatch):
    monkeypatch.delenv("COURSE_DEMO", raising=False)


def direct_logits(model, tok, prompt):
    ids = torch.tensor([tok.encode(prompt)])
    with torch.no_grad():
        logits, _ = model(ids)
    return logits[0, -1, : tok.vocab_size]  # the ids past the tokenizer's vocabulary are padding


@pytest.mark.parametrize("settings", [(1.0, None, None), (0.7, 5, None), (1.3, None, 0.6),
                                      (0.5, 8, 0.9), (0.0, None, None)])
def test_reshaped_distribution_is_next_token_probs(gpt, settings):
    model, tok = gpt
    temperature, top_k, top_p = settings
    view = sampling_view(model, tok, "the cat ", temperature, top_k or 0, top_p or 1.0, new_tokens=0)
    logits = direct_logits(model, tok, "the cat ")
    torch.testing.assert_close(view.after, next_token_probs(logits, temperature, top_k, top_p))
    torch.testing.assert_close(view.before, logits.softmax(-1))
    assert len(view.after) == tok.vocab_size  # padding ids are never offered
    # brute force: what each filter keeps
    if temperature == 0:
        assert view.kept == 1 and int(view.after.argmax()) == int(logits.argmax())
    elif top_k and not top_p:
        assert view.kept == top_k
        assert set(view.after.nonzero().flatten().tolist()) == set(logits.topk(top_k).indices.tolist())
    elif top_p and not top_k:
        p = (logits / temperature).softmax(-1)
        ranked = p.sort(descending=True).values
        needed = int((ranked.cumsum(0) < top_p).sum()) + 1  # the fewest tokens reaching top_p
        assert view.kept == needed
    assert float(view.after.sum()) == pytest.approx(1.0, abs=1e-5)


def test_settings_change_the_distribution_and_the_sample_is_seeded(gpt):
    model, tok = gpt
    hot = sampling_view(model, tok, "the ", 1.5, 0, 1.0, new_tokens=12, seed=3)
    cold = sampling_view(model, tok, "the ", 0.3, 0, 1.0, new_tokens=12, seed=3)
    assert not torch.allclose(hot.after, cold.after)
    assert float(cold.after.max()) > float(hot.after.max())  # a lower temperature sharpens
    again = sampling_view(model, tok, "the ", 1.5, 0, 1.0, new_tokens=12, seed=3)
    assert hot.sample == again.sample and len(hot.sample) == 12
    # the sample is generate()'s, with the same settings and seed
    ids = torch.tensor([tok.encode("the ")])
    out = generate(model, ids, 12, 1.5, None, None, generator=torch.Generator().manual_seed(3),
                   vocab_size=tok.vocab_size)
    assert hot.sample == tok.decode(out[0, ids.shape[1]:].tolist())


def test_sampling_view_rejects_bad_input(gpt):
    model, tok = gpt
    with pytest.raises(ValueError, match="type a prompt"):
        sampling_view(model, tok, "")
    with pytest.raises(ValueError, match="temperature"):
        sampling_view(model, tok, "the", temperature=-1)


def test_translation_view_matches_the_decoders(translator):
    model, tok = translator
    for beam in (1, 3):
        view = translation_view(model, tok, "the man sees the dog .", beam_size=beam)
        assert view.translation == translate(model, tok, "the man sees the dog .", beam_size=beam)
        assert view.source_tokens == tok.tokens("the man sees the dog .") + ["<eos>"]
        assert view.target_tokens[-1] == "<eos>"
        assert view.cross.shape == (len(view.target_tokens), len(view.source_tokens))
        torch.testing.assert_close(view.cross.sum(-1), torch.ones(len(view.target_tokens)))
    # the map is the last decoder layer's cross-attention, averaged over heads, read here
    # another way: every attention module recorded by export_attention
    eos, bos = tok.special_tokens["<eos>"], tok.special_tokens["<bos>"]
    src = torch.tensor([tok.encode("the man sees the dog .") + [eos]])
    words = [tok.token_to_id(t) for t in view.target_tokens[:-1]]
    maps = collect_attention(model, src, torch.tensor([[bos] + words]))
    torch.testing.assert_close(view.cross, maps["decoder_layers.1.cross_attn"][0].mean(0))
    assert not torch.allclose(view.cross, maps["decoder_layers.0.cross_attn"][0].mean(0))
    assert [s for _, s in view.alignment()] == [view.source_tokens[j] for j in view.cross.argmax(-1)]


def test_translation_view_rejects_bad_input(translator):
    model, tok = translator
    with pytest.raises(ValueError, match="type a sentence"):
        translation_view(model, tok, "   ")
    with pytest.raises(ValueError, match="no <bos> token"):
        translation_view(model, CharTokenizer.from_text("abc"), "abc")


def test_static_demos_print_a_deterministic_result(gpt, translator, capsys, monkeypatch):
    import matplotlib.pyplot as plt

    plt.close("all")  # what other tests of this process left open is not the demos'
    assert not widgets_front_end()  # no kernel here: no front end
    model, tok = gpt
    first = sampling_demo(model, tok, "the ", temperature=0.8, top_k=10, new_tokens=8)
    assert first.ui is None
    first = first.view
    out1 = capsys.readouterr().out
    sampling_demo(model, tok, "the ", temperature=0.8, top_k=10, new_tokens=8)
    assert capsys.readouterr().out == out1
    assert out1.startswith("temperature 0.80, top-k 10, top-p off: 10 of")
    assert first.sample in out1
    mt, mt_tok = translator
    view = translation_demo(mt, mt_tok, "the dog sees the man .").view
    assert capsys.readouterr().out.startswith(f"the dog sees the man .\n-> {view.translation}   (greedy)")
    assert plt.get_fignums() == []  # shown once and closed, not left for the inline backend


def test_interactive_demo_redraws_when_a_slider_moves(gpt, capsys):
    import ipywidgets as w

    model, tok = gpt
    demo = sampling_demo(model, tok, "the ", temperature=1.0, new_tokens=4, interactive=True)
    ui = demo.ui
    assert isinstance(ui, w.VBox) and demo.view.temperature == 1.0
    sliders = [c for c in ui.children[1].children if isinstance(c, (w.FloatSlider, w.IntSlider))]
    assert [s.description for s in sliders] == ["temperature", "top-k (0: off)", "top-p (1: off)"]
    capsys.readouterr()
    sliders[0].value = 0.25  # outside a kernel the Output widget lets the text through
    assert "temperature 0.25, top-k off, top-p off:" in capsys.readouterr().out
    assert demo.view.temperature == 0.25  # the demo's view follows the screen
    sliders[1].value = 3
    assert "top-k 3" in capsys.readouterr().out and demo.view.kept == 3


def test_demo_mode_from_the_environment(monkeypatch):
    monkeypatch.setenv("COURSE_DEMO", "interactive")
    assert widgets_front_end()
    monkeypatch.setenv("COURSE_DEMO", "static")
    assert not widgets_front_end()
    monkeypatch.setenv("COURSE_DEMO", "sometimes")
    with pytest.raises(ValueError, match="COURSE_DEMO"):
        widgets_front_end()


def test_interactive_translation_demo_follows_the_text_box(translator, capsys):
    import ipywidgets as w

    model, tok = translator
    demo = translation_demo(model, tok, "the man sees the dog .", interactive=True)
    box, search = demo.ui.children[0].children
    assert isinstance(box, w.Text) and isinstance(search, w.Dropdown)
    box.value = "the dog sees the man ."
    assert demo.view.text == "the dog sees the man ." and "the dog sees the man ." in capsys.readouterr().out
    search.value = 4
    assert demo.view.beam_size == 4
    assert demo.view.translation == translate(model, tok, "the dog sees the man .", beam_size=4)
    box.value = "  "  # an empty box: a one-line error in the output, the last view stays
    assert "error: type a sentence" in capsys.readouterr().out and demo.view.beam_size == 4
