"""course_lib.export_attention on tiny models defined here: the files it writes, the
weights in them (checked against each module's own need_weights output, captured with
forward hooks), and the command line run for real in a subprocess."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from course_lib import export_attention as ea
from course_lib.attention import MultiHeadAttention, padding_mask
from course_lib.checkpoint import save_checkpoint

ROOT = Path(__file__).resolve().parent.parent


class Layer(nn.Module):
    def __init__(self, d, h, cross=False):
        super().__init__()
        self.self_attn = MultiHeadAttention(d, h)
        self.cross_attn = MultiHeadAttention(d, h) if cross else None

    def forward(self, x, memory=None, mask=None, memory_mask=None, causal=False):
        x = x + self.self_attn(x, mask=mask, is_causal=causal)[0]
        if self.cross_attn is not None:
            x = x + self.cross_attn(x, memory, mask=memory_mask)[0]
        return x


class TinyEncDec(nn.Module):
    """Two encoder layers (self), two decoder layers (causal self + cross), pad id 0."""

    def __init__(self, vocab=20, d_model=8, n_heads=2):
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.encoder_layers = nn.ModuleList(Layer(d_model, n_heads) for _ in range(2))
        self.decoder_layers = nn.ModuleList(Layer(d_model, n_heads, cross=True) for _ in range(2))
        self.out = nn.Linear(d_model, vocab)

    @classmethod
    def from_config(cls, config):
        return cls(config["vocab"], config["d_model"], config["n_heads"])

    def forward(self, src, tgt):
        src_mask = padding_mask(src, 0)
        x = self.embed(src)
        for layer in self.encoder_layers:
            x = layer(x, mask=src_mask)
        y = self.embed(tgt)
        for layer in self.decoder_layers:
            y = layer(y, x, memory_mask=src_mask, causal=True)
        return self.out(y)


class TinyGPT(nn.Module):
    def __init__(self, vocab=20, d_model=8, n_heads=4):
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.blocks = nn.ModuleList(Layer(d_model, n_heads) for _ in range(3))

    @classmethod
    def from_config(cls, config):
        return cls(config["vocab"], config["d_model"], config["n_heads"])

    def forward(self, ids):
        x = self.embed(ids)
        for block in self.blocks:
            x = block(x, causal=True)
        return x


def hooked_weights(model, *inputs):
    """Each MHA's weights from its own need_weights=True call on the inputs it really got."""
    got, handles = {}, []
    for name, m in model.named_modules():
        if isinstance(m, MultiHeadAttention):
            def hook(mod, args, kwargs, output, name=name):
                kw = {**kwargs, "need_weights": True}
                with torch.no_grad():
                    got[name] = type(mod).forward(mod, *args, **kw)[1]
            handles.append(m.register_forward_hook(hook, with_kwargs=True))
    with torch.no_grad():
        model(*inputs)
    for h in handles:
        h.remove()
    return got


def test_describe_names():
    assert ea.describe("encoder_layers.3.self_attn") == (3, "encoder self", "encoder_layers.*.self_attn")
    assert ea.describe("decoder.layers.1.cross_attn")[:2] == (1, "decoder cross")
    assert ea.describe("blocks.0.attn")[:2] == (0, "self")
    assert ea.describe("attn")[:2] == (0, "self")


def test_export_encoder_decoder(tmp_path):
    torch.manual_seed(0)
    model = TinyEncDec()
    src = torch.tensor([[5, 6, 7, 8, 0]])  # one padding position
    tgt = torch.tensor([[1, 9, 10]])
    src_tok, tgt_tok = ["a", "b", "c", ".", "<pad>"], ["<bos>", "x", "y"]
    index = ea.export_attention_maps(model, src, tgt, tokens=src_tok, target_tokens=tgt_tok,
                                     out_dir=tmp_path, formats=("png",))
    names = [m["module"] for m in index["modules"]]
    assert len(names) == 6
    for m in index["modules"]:
        for h in range(2):
            assert (tmp_path / f"{m['module'].replace('.', '_')}_head{h}.png").stat().st_size > 1000
    assert sorted(p.name for p in tmp_path.glob("grid_*.png")) == [
        "grid_decoder_cross.png", "grid_decoder_self.png", "grid_encoder_self.png"]
    assert (tmp_path / "grid_encoder_self.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # labels: the cross-attention maps target queries onto source keys
    cross = next(m for m in index["modules"] if m["module"] == "decoder_layers.1.cross_attn")
    assert cross["query_tokens"] == tgt_tok and cross["key_tokens"] == src_tok and cross["layer"] == 1
    dec_self = next(m for m in index["modules"] if m["module"] == "decoder_layers.0.self_attn")
    assert dec_self["query_tokens"] == dec_self["key_tokens"] == tgt_tok
    assert json.loads((tmp_path / "attention.json").read_text()) == index
    # the weights written are the ones each module computes
    want = hooked_weights(model, src, tgt)
    saved = load_file(str(tmp_path / "attention.safetensors"))
    for kind, prefix, attr in [("encoder_self", "encoder_layers", "self_attn"),
                               ("decoder_self", "decoder_layers", "self_attn"),
                               ("decoder_cross", "decoder_layers", "cross_attn")]:
        expected = torch.stack([want[f"{prefix}.{i}.{attr}"][0] for i in range(2)])
        torch.testing.assert_close(saved[kind], expected)
    assert (saved["encoder_self"][..., 4] == 0).all()  # the padding key gets no weight
    assert torch.triu(saved["decoder_self"][0, 0], 1).abs().max() == 0  # causal
    assert model.training  # mode restored


def test_export_decoder_only_and_bad_input(tmp_path):
    torch.manual_seed(1)
    model = TinyGPT().eval()
    ids = torch.tensor([[3, 4, 5, 6]])
    index = ea.export_attention_maps(model, ids, tokens=list("wxyz"), out_dir=tmp_path)
    assert [g["kind"] for g in index["grids"]] == ["self"] and index["grids"][0]["shape"] == [3, 4, 4, 4]
    assert len(list(tmp_path.glob("blocks_*_head*.png"))) == 12
    assert not model.training
    with pytest.raises(ValueError, match="no course_lib MultiHeadAttention"):
        ea.export_attention_maps(nn.Linear(2, 2), torch.zeros(1, 2), out_dir=tmp_path)
    with pytest.raises(ValueError, match="batch_index"):
        ea.export_attention_maps(model, ids, out_dir=tmp_path, batch_index=3)


def test_a_checkpoint_naming_code_is_refused_and_nothing_is_imported(tmp_path):
    """A checkpoint whose model_type names a module ("module:Class", as course_lib 0.1
    accepted) is data that points at code: the loader refuses it without importing it."""
    (tmp_path / "evil.py").write_text("import pathlib\npathlib.Path(__file__).with_name('RAN').write_text('x')\n")
    save_checkpoint(tmp_path / "run" / "checkpoint.safetensors", TinyGPT(), {"model_type": "evil:TinyGPT"})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)]), "MPLBACKEND": "Agg"}
    run = subprocess.run([sys.executable, "-m", "course_lib", "export-attention", str(tmp_path / "run"), "a b"],
                         env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 2 and "not one of the course's kinds" in run.stderr
    assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr
    assert not (tmp_path / "RAN").exists()


def test_cli_writes_maps_from_a_run_folder(tmp_path):
    from course_lib.tokenizer import SPECIALS, WordTokenizer
    from course_lib.training.translation import encode_pairs
    from course_lib.transformer import Transformer, TransformerConfig

    texts = ["a man rides a bike .", "ein mann fährt rad ."]
    tok = WordTokenizer.from_texts(texts, special_tokens=SPECIALS)
    torch.manual_seed(2)
    config = TransformerConfig(src_vocab_size=tok.vocab_size, tgt_vocab_size=tok.vocab_size, d_model=8,
                               n_heads=2, n_layers=2, n_decoder_layers=2, d_ff=16, max_len=16)
    model = Transformer(config).eval()
    save_checkpoint(tmp_path / "run" / "checkpoint.safetensors", model, config.to_dict())
    tok.save(tmp_path / "run" / "tokenizer.json")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    cmd = [sys.executable, "-m", "course_lib", "export-attention", str(tmp_path / "run"), texts[0],
           "--target", texts[1], "--out", str(tmp_path / "maps"), "--formats", "pdf"]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "transformer: 6 attention modules, 12 heads" in run.stdout
    out = tmp_path / "maps"
    assert len(list(out.glob("*_head*.pdf"))) == 12 and not list(out.glob("*.png"))
    assert len(list(out.glob("grid_*.pdf"))) == 3
    index = json.loads((out / "attention.json").read_text())
    (src, tgt), = encode_pairs(tok, [texts], max_len=16)[0]  # the pair as training builds it
    cross = next(m for m in index["modules"] if m["kind"] == "decoder cross")
    assert cross["key_tokens"] == [tok.decode([i]) for i in src]
    assert cross["query_tokens"] == [tok.decode([i]) for i in tgt]
    want = hooked_weights(model, torch.tensor([src]), torch.tensor([tgt]))
    saved = load_file(str(out / "attention.safetensors"))
    torch.testing.assert_close(saved["decoder_cross"][1], want["decoder_layers.1.cross_attn"][0])
    # an encoder-decoder without --target: a clear error, exit status 2
    bad = subprocess.run(cmd[:6] + ["--out", str(tmp_path / "x")], env=env, capture_output=True,
                         text=True, timeout=300)
    assert bad.returncode == 2 and "give --target" in bad.stderr


def test_build_inputs_keeps_the_special_tokens_a_translator_is_trained_with(tmp_path):
    """The source's <eos> (which a translator attends to) and the target's <bos> and <eos>
    are in the exported inputs, maps and labels, as in training's encode_pairs; a GPT's
    text gets no token it was not given."""
    from course_lib.tokenizer import SPECIALS, CharTokenizer, WordTokenizer
    from course_lib.training.translation import encode_pairs
    from course_lib.transformer import Transformer, TransformerConfig

    en, de = "a man rides a bike .", "ein mann fährt rad ."
    tok = WordTokenizer.from_texts([en, de], special_tokens=SPECIALS)
    torch.manual_seed(3)
    model = Transformer(TransformerConfig(src_vocab_size=tok.vocab_size, tgt_vocab_size=tok.vocab_size, d_model=8,
                                          n_heads=2, n_layers=1, n_decoder_layers=1, d_ff=16, max_len=16)).eval()
    (src, tgt), = encode_pairs(tok, [(en, de)], max_len=16)[0]
    inputs, src_labels, tgt_labels = ea.build_inputs(model, tok, en, de)
    assert [t.tolist() for t in inputs] == [[src], [tgt]]
    assert src_labels == en.split() + ["<eos>"] and tgt_labels == ["<bos>"] + de.split() + ["<eos>"]
    index = ea.export_attention_maps(model, *inputs, tokens=src_labels, target_tokens=tgt_labels, out_dir=tmp_path)
    cross = next(m for m in index["modules"] if m["kind"] == "decoder cross")
    assert cross["query_tokens"][-1] == "<eos>" and cross["key_tokens"][-1] == "<eos>"
    saved = load_file(str(tmp_path / "attention.safetensors"))["decoder_cross"]
    assert saved.shape[-2:] == (len(de.split()) + 2, len(en.split()) + 1)
    torch.testing.assert_close(saved[0], hooked_weights(model, *inputs)["decoder_layers.0.cross_attn"][0])

    chars = CharTokenizer.from_text("abc")
    (ids,), labels, _ = ea.build_inputs(TinyGPT(vocab=3), chars, "cab")
    assert ids.tolist() == [[2, 0, 1]] and labels == list("cab")
