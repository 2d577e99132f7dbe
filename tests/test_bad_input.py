"""Bad input, at every boundary: each case asserts the exception type and the words that
name the problem (and, for files, the file). Commands answer one ``error: ...`` line
and exit status 2, never a traceback.

The course's errors: a missing file is a ``FileNotFoundError``; everything else a user
can get wrong is a ``ValueError`` (or a subclass: ``CheckpointError``,
``CheckpointConfigError``, ``TokenizerFileError``, ``DeviceError``, ``UsageError``),
except a token id outside the vocabulary (``IndexError``) and a non-str text given to a
tokenizer (``TypeError``).
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from course_lib import env
from course_lib.checkpoint import (
    CheckpointConfigError,
    CheckpointError,
    check_config,
    load_checkpoint,
    read_metadata,
    save_checkpoint,
)
from course_lib.cli import main
from course_lib.data import load_pairs, load_parallel, load_text
from course_lib.data.sources import read_parallel_files
from course_lib.decoding import beam_search, translate
from course_lib.generate import generate
from course_lib.gpt import GPT, GPTConfig
from course_lib.models import load_trained
from course_lib.tokenizer import (
    SPECIALS,
    BPETokenizer,
    CharTokenizer,
    TokenizerFileError,
    WordTokenizer,
    load_tokenizer,
)
from course_lib.training.core import RunFolder, TrainConfig, micro_batches, read_json
from course_lib.training.gpt import GPTTrainConfig, get_batch
from course_lib.training.translation import TranslationTrainConfig, load_config
from course_lib.transformer import Transformer, TransformerConfig

ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------ shared files
@pytest.fixture(scope="module")
def w(tmp_path_factory):
    """Run folders and broken files, built once (no training: weights as initialised)."""
    d = tmp_path_factory.mktemp("bad")
    torch.manual_seed(0)
    tok = CharTokenizer.from_text("abcdefgh \n")
    gcfg = GPTConfig(vocab_size=tok.vocab_size, block_size=8, n_layers=1, n_heads=2, d_model=8)
    gpt = GPT(gcfg).eval()
    save_checkpoint(d / "gpt" / "checkpoint.safetensors", gpt, gcfg.to_dict())
    tok.save(d / "gpt" / "tokenizer.json")

    wtok = WordTokenizer.from_texts(["the man sees a dog .", "der Mann sieht einen Hund ."], special_tokens=SPECIALS)
    tcfg = TransformerConfig(src_vocab_size=wtok.vocab_size, tgt_vocab_size=wtok.vocab_size, d_model=8,
                             n_heads=2, n_layers=1, d_ff=16, dropout=0.0, max_len=16, pad_id=0)
    tr = Transformer(tcfg).eval()
    save_checkpoint(d / "tr" / "checkpoint.safetensors", tr, tcfg.to_dict())
    wtok.save(d / "tr" / "tokenizer.json")

    (d / "notok").mkdir()
    save_checkpoint(d / "notok" / "checkpoint.safetensors", gpt, gcfg.to_dict())
    (d / "empty_run").mkdir()
    (d / "empty_run" / "checkpoint.safetensors").write_bytes(b"")
    good = (d / "gpt" / "checkpoint.safetensors").read_bytes()
    (d / "truncated.safetensors").write_bytes(good[: len(good) // 2])
    (d / "random.safetensors").write_bytes(os.urandom(300))
    save_file({"w": torch.zeros(2)}, str(d / "foreign.safetensors"))
    save_file({"model.w": torch.zeros(2)}, str(d / "badmeta.safetensors"), metadata={"config": "{not json"})
    save_file({"weird.w": torch.zeros(2)}, str(d / "prefix.safetensors"), metadata={"config": "{}"})
    save_checkpoint(d / "alien" / "checkpoint.safetensors", gpt, {**gcfg.to_dict(), "model_type": "evil:Code"})
    save_checkpoint(d / "badcfg" / "checkpoint.safetensors", gpt, {**gcfg.to_dict(), "n_layers": 0})
    save_checkpoint(d / "misfit" / "checkpoint.safetensors", gpt, {**gcfg.to_dict(), "d_model": 16})
    (d / "cfg.json").write_text("{broken")
    (d / "list.json").write_text("[1, 2]")
    (d / "afile").write_text("x")
    (d / "empty.en").write_text("")
    (d / "empty.de").write_text("")
    (d / "three.en").write_text("a\nb\nc\n")
    (d / "two.de").write_text("a\nb\n")
    (d / "empty.txt").write_text("  \n")
    (d / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (d / "notgzip.txt.gz").write_bytes(b"plain text, not gzip")
    (d / "half.txt.gz").write_bytes(gzip.compress(b"some text " * 100)[:30])
    return SimpleNamespace(d=d, tok=tok, gpt=gpt, wtok=wtok, tr=tr)


def tokfile(w, name: str, content) -> Path:
    path = w.d / f"tok_{name}.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


# ------------------------------------------------------------------ library cases
# (id, call(w), exception type, regex of the words that must be in the message)
CASES = [
    # --- GPTConfig
    ("gptcfg-layers0", lambda w: GPTConfig(n_layers=0), ValueError, r"n_layers=0 must be an integer >= 1"),
    ("gptcfg-heads-neg", lambda w: GPTConfig(n_heads=-2), ValueError, r"n_heads=-2 must be an integer >= 1"),
    ("gptcfg-vocab0", lambda w: GPTConfig(vocab_size=0), ValueError, r"vocab_size=0 must be an integer >= 1"),
    ("gptcfg-dropout", lambda w: GPTConfig(dropout=1.5), ValueError, r"dropout=1.5 must be in \[0, 1\)"),
    ("gptcfg-divisible", lambda w: GPTConfig(d_model=10, n_heads=3), ValueError,
     r"d_model=10 is not divisible by n_heads=3"),
    ("gptcfg-block0", lambda w: GPTConfig(block_size=0), ValueError, r"block_size=0 must be an integer >= 1"),
    ("gptcfg-eps", lambda w: GPTConfig(layer_norm_eps=0), ValueError, r"layer_norm_eps=0 must be > 0"),
    ("gptcfg-str", lambda w: GPTConfig(n_layers="3"), ValueError, r"n_layers='3' must be an integer"),
    ("gptcfg-bias", lambda w: GPTConfig(bias="yes"), ValueError, r"bias='yes' must be true or false"),
    ("gptcfg-type", lambda w: GPTConfig(model_type="transformer"), ValueError, r"expected 'gpt'"),
    ("gptcfg-unknown", lambda w: GPTConfig.from_dict({"n_layer": 2}), ValueError,
     r"unknown GPT config field\(s\) \['n_layer'\]"),
    ("gptcfg-preset", lambda w: GPTConfig.preset("huge"), ValueError, r"unknown preset 'huge'"),
    # --- TransformerConfig
    ("trcfg-dmodel0", lambda w: TransformerConfig(d_model=0), ValueError, r"d_model=0 must be an integer >= 1"),
    ("trcfg-divisible", lambda w: TransformerConfig(d_model=64, n_heads=3), ValueError, r"not divisible by n_heads=3"),
    ("trcfg-dropout", lambda w: TransformerConfig(dropout=-0.1), ValueError, r"dropout=-0.1 must be in \[0, 1\)"),
    ("trcfg-activation", lambda w: TransformerConfig(activation="tanh"), ValueError, r"activation='tanh'"),
    ("trcfg-pad", lambda w: TransformerConfig(src_vocab_size=8, tgt_vocab_size=8, pad_id=9), ValueError,
     r"pad_id=9 is outside the vocabulary"),
    ("trcfg-unknown", lambda w: TransformerConfig.from_dict({"model_dims": 8}), ValueError,
     r"unknown Transformer config key\(s\) \['model_dims'\]"),
    # --- training configs
    ("train-batch0", lambda w: TrainConfig(batch_size=0), ValueError, r"batch_size=0 must be an integer >= 1"),
    ("train-steps-neg", lambda w: TrainConfig(steps=-3), ValueError, r"steps=-3 must be an integer >= 1"),
    ("train-eval0", lambda w: TrainConfig(eval_every=0), ValueError, r"eval_every=0 must be an integer >= 1"),
    ("train-accum0", lambda w: TrainConfig(grad_accum=0), ValueError, r"grad_accum=0 must be an integer >= 1"),
    ("train-accum-split", lambda w: TrainConfig(batch_size=10, grad_accum=3), ValueError,
     r"batch_size=10 is not divisible by grad_accum=3"),
    ("train-lr0", lambda w: TrainConfig(lr=0), ValueError, r"lr=0 must be > 0"),
    ("train-clip", lambda w: TrainConfig(grad_clip=-1), ValueError, r"grad_clip=-1 must be >= 0"),
    ("train-precision", lambda w: TrainConfig(precision="fp8"), ValueError, r"precision='fp8' must be one of"),
    ("train-warmup", lambda w: TrainConfig(warmup=-1), ValueError, r"warmup=-1 must be an integer >= 0"),
    ("train-unknown", lambda w: GPTTrainConfig.from_dict({"batchsize": 4}), ValueError,
     r"unknown training setting\(s\) \['batchsize'\]"),
    ("gpttrain-evalb", lambda w: GPTTrainConfig(eval_batches=0), ValueError, r"eval_batches=0 must be an integer"),
    ("gpttrain-maxchars", lambda w: GPTTrainConfig(max_chars=0), ValueError, r"max_chars=0 must be an integer"),
    ("gpttrain-beta", lambda w: GPTTrainConfig(beta1=1.0), ValueError, r"beta1=1.0 must be in \[0, 1\)"),
    ("gpttrain-wd", lambda w: GPTTrainConfig(weight_decay=-1), ValueError, r"weight_decay=-1 must be >= 0"),
    ("trtrain-smoothing", lambda w: TranslationTrainConfig(label_smoothing=1.0), ValueError,
     r"label_smoothing=1.0 must be in \[0, 1\)"),
    ("trtrain-epochs", lambda w: TranslationTrainConfig(epochs=0), ValueError, r"epochs=0 must be an integer >= 1"),
    ("trtrain-ntrain", lambda w: TranslationTrainConfig(n_train=0), ValueError, r"n_train=0 must be an integer"),
    ("trtrain-config-dims", lambda w: load_config({"model_dim": 10, "num_heads": 3}), ValueError,
     r"d_model=10 \(model_dim\) is not divisible by n_heads=3 \(num_heads\)"),
    ("trtrain-config-unknown", lambda w: load_config({"learning_rat": 1}), ValueError,
     r"unknown config key\(s\) \['learning_rat'\]"),
    ("trtrain-config-twice", lambda w: load_config({"model_dim": 8, "d_model": 16}), ValueError,
     r"gives d_model twice"),
    # --- forward passes
    ("gpt-empty-batch", lambda w: w.gpt(torch.zeros(0, 4, dtype=torch.long)), ValueError, r"empty input"),
    ("gpt-empty-seq", lambda w: w.gpt(torch.zeros(2, 0, dtype=torch.long)), ValueError, r"empty input"),
    ("gpt-1d", lambda w: w.gpt(torch.zeros(4, dtype=torch.long)), ValueError, r"shape \(B, T\)"),
    ("gpt-too-long", lambda w: w.gpt(torch.zeros(1, 9, dtype=torch.long)), ValueError,
     r"9 positions exceed the context of 8"),
    ("gpt-id", lambda w: w.gpt(torch.full((1, 3), 99)), IndexError, r"token id 99 is outside the vocabulary"),
    ("gpt-float-ids", lambda w: w.gpt(torch.zeros(1, 3)), TypeError, r"must be an integer tensor"),
    ("gpt-targets", lambda w: w.gpt(torch.zeros(1, 3, dtype=torch.long), torch.zeros(1, 2, dtype=torch.long)),
     ValueError, r"targets of shape \(1, 2\) do not match"),
    ("tr-empty", lambda w: w.tr(torch.zeros(0, 3, dtype=torch.long), torch.ones(0, 2, dtype=torch.long)),
     ValueError, r"source is empty"),
    ("tr-too-long", lambda w: w.tr(torch.ones(1, 17, dtype=torch.long), torch.ones(1, 2, dtype=torch.long)),
     ValueError, r"source has 17 tokens, more than max_len=16"),
    # --- generation and decoding
    ("gen-negative", lambda w: generate(w.gpt, torch.zeros(1, 2, dtype=torch.long), -1), ValueError,
     r"max_new_tokens=-1 must be an integer >= 0"),
    ("gen-float-n", lambda w: generate(w.gpt, torch.zeros(1, 2, dtype=torch.long), 1.5), ValueError,
     r"max_new_tokens=1.5 must be an integer"),
    ("gen-empty", lambda w: generate(w.gpt, torch.zeros(1, 0, dtype=torch.long), 3), ValueError,
     r"the prompt is empty"),
    ("gen-float-prompt", lambda w: generate(w.gpt, torch.zeros(1, 2), 3), ValueError,
     r"the prompt must be token ids"),
    ("gen-temperature", lambda w: generate(w.gpt, torch.zeros(1, 2, dtype=torch.long), 3, temperature=-1),
     ValueError, r"temperature must be a finite number >= 0"),
    ("gen-temperature-nan", lambda w: generate(w.gpt, torch.zeros(1, 2, dtype=torch.long), 3,
                                               temperature=float("nan")), ValueError, r"temperature must be"),
    ("gen-topk", lambda w: generate(w.gpt, torch.zeros(1, 2, dtype=torch.long), 3, top_k=0), ValueError,
     r"top_k must be a positive number"),
    ("gen-topp", lambda w: generate(w.gpt, torch.zeros(1, 2, dtype=torch.long), 3, top_p=1.5), ValueError,
     r"top_p must be in \(0, 1\]"),
    ("gen-id", lambda w: generate(w.gpt, torch.tensor([[50]]), 3), IndexError,
     r"prompt token id 50 is outside the model's vocabulary"),
    ("beam-size0", lambda w: beam_search(w.tr, torch.tensor([5, 2]), 1, 2, beam_size=0), ValueError,
     r"beam_size must be >= 1"),
    ("beam-batch", lambda w: beam_search(w.tr, torch.ones(2, 3, dtype=torch.long), 1, 2), ValueError,
     r"translates one sentence, got a batch of 2"),
    ("translate-no-specials", lambda w: translate(w.tr, w.tok, "abc"), ValueError,
     r"lacks the special tokens \['<pad>', '<bos>', '<eos>'\]"),
    # --- tokenizers
    ("char-empty", lambda w: CharTokenizer.from_text(""), ValueError, r"empty text"),
    ("word-empty", lambda w: WordTokenizer.from_texts([]), ValueError, r"no words to build a vocabulary"),
    ("bpe-small", lambda w: BPETokenizer.train("hello", 100), ValueError, r"vocab_size=100 is too small"),
    ("bpe-merges", lambda w: BPETokenizer([(300, 1)]), ValueError, r"merge 0 \(300, 1\) uses a token"),
    ("encode-bytes", lambda w: w.tok.encode(b"abc"), TypeError, r"encode\(\) takes a str, got bytes"),
    ("decode-id", lambda w: w.tok.decode([999]), ValueError, r"token id 999 is outside the vocabulary"),
    ("char-unknown", lambda w: w.tok.encode("xyz"), ValueError, r"character 'x' is not in the vocabulary"),
    ("allowed-special", lambda w: w.wtok.encode("a", allowed_special={"<sep>"}), ValueError,
     r"unknown special token\(s\) \['<sep>'\]"),
    ("token-to-id", lambda w: w.wtok.token_to_id("zebra"), ValueError, r"'zebra' is not a token"),
    # --- tokenizer files
    ("tokfile-missing", lambda w: load_tokenizer(w.d / "nope.json"), FileNotFoundError, r"no tokenizer file at"),
    ("tokfile-json", lambda w: load_tokenizer(tokfile(w, "json", '{"type": "char", ')), TokenizerFileError,
     r"tok_json.json is not a tokenizer file of this course \(not valid JSON"),
    ("tokfile-list", lambda w: load_tokenizer(tokfile(w, "list", [1])), TokenizerFileError,
     r"tok_list.json .*a JSON list, not an object"),
    ("tokfile-type", lambda w: load_tokenizer(tokfile(w, "type", {"type": "sentencepiece"})), TokenizerFileError,
     r"unknown tokenizer type 'sentencepiece'"),
    ("tokfile-missing-field", lambda w: load_tokenizer(tokfile(w, "nofield", {"type": "char", "vocab": ["a"]})),
     TokenizerFileError, r"a char tokenizer without the field\(s\) \['special_tokens'\]"),
    ("tokfile-vocab-type", lambda w: load_tokenizer(tokfile(w, "vt", {"type": "word", "vocab": [1, 2],
                                                                        "special_tokens": []})),
     TokenizerFileError, r"vocab must be a list of str"),
    ("tokfile-merges", lambda w: load_tokenizer(tokfile(w, "m", {"type": "bpe", "merges": [[1, 2, 3]],
                                                                 "special_tokens": {}, "pattern": "gpt2"})),
     TokenizerFileError, r"each merge must be a pair of token ids"),
    ("tokfile-specials", lambda w: load_tokenizer(tokfile(w, "s", {"type": "bpe", "merges": [],
                                                                   "special_tokens": {"<s>": 3}, "pattern": "gpt2"})),
     TokenizerFileError, r"special token ids must follow the merges \(ids 256"),
    ("tokfile-duplicates", lambda w: load_tokenizer(tokfile(w, "dup", {"type": "char", "vocab": ["a", "a"],
                                                                       "special_tokens": []})),
     TokenizerFileError, r"duplicate tokens"),
    ("tokfile-lower", lambda w: load_tokenizer(tokfile(w, "low", {"type": "word", "vocab": ["a"],
                                                                  "special_tokens": [], "lower": "yes"})),
     TokenizerFileError, r"lower must be true or false"),
    ("tokfile-empty-vocab", lambda w: load_tokenizer(tokfile(w, "ev", {"type": "char", "vocab": [],
                                                                       "special_tokens": []})),
     TokenizerFileError, r"the vocabulary is empty"),
    ("tokfile-bytes", lambda w: load_tokenizer(w.d / "latin1.txt"), TokenizerFileError, r"not valid JSON"),
    # --- data
    ("text-empty", lambda w: load_text(str(w.d / "empty.txt")), ValueError, r"empty.txt is empty"),
    ("text-encoding", lambda w: load_text(str(w.d / "latin1.txt")), ValueError, r"latin1.txt is not UTF-8 text"),
    ("text-gzip", lambda w: load_text(str(w.d / "notgzip.txt.gz")), ValueError,
     r"notgzip.txt.gz is not a complete gzip file"),
    ("text-gzip-cut", lambda w: load_text(str(w.d / "half.txt.gz")), ValueError,
     r"half.txt.gz is not a complete gzip file"),
    ("text-unknown", lambda w: load_text(str(w.d / "missing.txt")), ValueError, r"unknown text source"),
    ("text-maxchars", lambda w: load_text("generated", max_chars=-5), ValueError,
     r"max_chars=-5 must be an integer >= 1"),
    ("parallel-empty", lambda w: read_parallel_files(w.d / "empty.en", w.d / "empty.de"), ValueError,
     r"empty.en and .*empty.de are empty"),
    ("parallel-prefix-empty", lambda w: load_parallel(str(w.d / "empty")), ValueError, r"are empty"),
    ("parallel-lengths", lambda w: read_parallel_files(w.d / "three.en", w.d / "two.de"), ValueError,
     r"three.en has 3 lines but .*two.de has 2"),
    ("parallel-missing", lambda w: load_parallel(str(w.d / "nothing")), FileNotFoundError,
     r"no file .*nothing.en or .*nothing.en.gz"),
    ("parallel-split", lambda w: load_parallel("generated", split="dev"), ValueError, r"split must be one of"),
    ("parallel-unknown", lambda w: load_parallel(str(w.d / "no" / "such" / "prefix")), ValueError,
     r"unknown parallel source"),
    ("pairs-split", lambda w: load_pairs("generated", split="test"), ValueError, r"split must be 'train' or 'val'"),
    ("batch-short", lambda w: get_batch(torch.arange(5), 2, 8, 0, 0), ValueError,
     r"only 5 tokens, fewer than one window of 9"),
    ("micro-batches", lambda w: micro_batches([1, 2], 3), ValueError, r"2 example\(s\) cannot fill 3 micro-batches"),
    # --- checkpoints
    ("ckpt-missing", lambda w: read_metadata(w.d / "none.safetensors"), FileNotFoundError, r"no checkpoint at"),
    ("ckpt-empty-folder", lambda w: read_metadata(w.d / "cfg_dir_empty"), FileNotFoundError,
     r"no checkpoint in the folder .*cfg_dir_empty \(looked for checkpoint.safetensors"),
    ("ckpt-folder-nockpt", lambda w: load_checkpoint(w.d / "trust_empty_dir"), FileNotFoundError,
     r"no checkpoint in the folder .*trust_empty_dir"),
    ("ckpt-empty-file", lambda w: load_checkpoint(w.d / "empty_run"), CheckpointError,
     r"empty_run/checkpoint.safetensors is not a checkpoint of this course \(the file is empty"),
    ("ckpt-truncated", lambda w: load_checkpoint(w.d / "truncated.safetensors"), CheckpointError,
     r"truncated.safetensors is not a checkpoint of this course"),
    ("ckpt-random", lambda w: read_metadata(w.d / "random.safetensors"), CheckpointError,
     r"random.safetensors is not a checkpoint of this course \(not a readable safetensors file"),
    ("ckpt-foreign", lambda w: load_checkpoint(w.d / "foreign.safetensors"), CheckpointError,
     r"foreign.safetensors is not a checkpoint .*without the course's model config"),
    ("ckpt-meta-json", lambda w: read_metadata(w.d / "badmeta.safetensors"), CheckpointError,
     r"its metadata entry 'config' is not JSON"),
    ("ckpt-prefix", lambda w: load_checkpoint(w.d / "prefix.safetensors"), CheckpointError,
     r"unexpected tensor 'weird.w'"),
    ("ckpt-other-config", lambda w: check_config({"d_model": 8}, {"d_model": 16}, "run/x"), CheckpointConfigError,
     r"run/x was written for another model configuration \(d_model: checkpoint has 16, model has 8\)"),
    ("trained-kind", lambda w: load_trained(w.d / "tr", kind="gpt", command="generate"), ValueError,
     r"holds a 'transformer' model .*not a 'gpt' model for `generate`; use `python -m course_lib translate"),
    ("trained-alien", lambda w: load_trained(w.d / "alien"), CheckpointError,
     r"holds a model of type 'evil:Code', which is not one of the course's kinds"),
    ("trained-badcfg", lambda w: load_trained(w.d / "badcfg"), CheckpointError,
     r"badcfg/checkpoint.safetensors: its model config is not valid .*n_layers=0"),
    ("trained-misfit", lambda w: load_trained(w.d / "misfit"), CheckpointError,
     r"misfit/checkpoint.safetensors: the weights do not fit its own config"),
    # --- run folders and settings files
    ("runfolder-file", lambda w: RunFolder(w.d / "afile"), ValueError, r"afile is a file; give --out a folder"),
    ("resume-nothing", lambda w: RunFolder(w.d / "fresh").require_checkpoint(), FileNotFoundError,
     r"--resume: there is no checkpoint in"),
    ("json-missing", lambda w: read_json(w.d / "nope.json", "settings"), FileNotFoundError,
     r"no settings file at"),
    ("json-broken", lambda w: read_json(w.d / "cfg.json", "settings"), ValueError,
     r"cfg.json is not a valid JSON settings file"),
    ("json-list", lambda w: read_json(w.d / "list.json", "settings"), ValueError,
     r"list.json holds a JSON list, not an object"),
    ("json-course-config", lambda w: load_config(w.d / "cfg.json"), ValueError, r"not a valid JSON config file"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_library_refuses_bad_input(w, case):
    _, call, exc_type, words = case
    (w.d / "cfg_dir_empty").mkdir(exist_ok=True)
    (w.d / "trust_empty_dir").mkdir(exist_ok=True)
    with pytest.raises(exc_type, match=words) as info:
        call(w)
    assert "\n" not in str(info.value).strip()  # one line


# ------------------------------------------------------------------ environment variables
def test_the_shared_config_checks_by_brute_force():
    """integer_problems / number_problems (every config's field checks) against the rule
    written out, over values at and around each boundary, booleans and None included."""
    from course_lib.checkpoint import integer_problems, number_problems

    values = [None, True, False, -1, 0, 0.5, 1, 2, 0.0, 1.0, 1e-9, "1", float("nan")]
    for v in values:
        c = SimpleNamespace(x=v)
        is_int = isinstance(v, int) and not isinstance(v, bool)
        is_num = isinstance(v, (int, float)) and not isinstance(v, bool)
        for minimum in (0, 1):
            for optional in (False, True):
                ok = (optional and v is None) or (is_int and v >= minimum)
                assert (integer_problems(c, ["x"], minimum, optional) == []) == ok, (v, minimum, optional)
        for low, high, above, ok in ((0, 1, False, is_num and 0 <= v < 1), (0, None, True, is_num and v > 0),
                                     (0, None, False, is_num and v >= 0)):
            got = number_problems(c, ["x"], low, high, above)
            assert (got == []) == ok, (v, low, high, above, got)
    assert number_problems(SimpleNamespace(x=None), ["x"], optional=True) == []
    assert integer_problems(SimpleNamespace(n=0), ["n"]) == ["n=0 must be an integer >= 1"]


def test_course_device_without_gpu_names_the_variable(monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    monkeypatch.setenv("COURSE_DEVICE", "cuda")
    with pytest.raises(env.DeviceError, match=r"COURSE_DEVICE='cuda' asks for CUDA, .*unset COURSE_DEVICE"):
        env.get_device()


def test_course_device_typo(monkeypatch):
    monkeypatch.setenv("COURSE_DEVICE", "gpu")
    with pytest.raises(ValueError, match=r"COURSE_DEVICE='gpu' is not a device name; use cpu, cuda"):
        env.get_device()


def test_device_argument_does_not_blame_the_variable(monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    monkeypatch.delenv("COURSE_DEVICE", raising=False)
    with pytest.raises(ValueError, match=r"^device='cuda' asks for CUDA") as info:
        env.get_device("cuda")
    assert "COURSE_DEVICE" not in str(info.value)


def test_course_scale_typo(monkeypatch):
    monkeypatch.setenv("COURSE_SCALE", "huge")
    with pytest.raises(ValueError, match=r"COURSE_SCALE='huge' is not one of \('small', 'full'\)"):
        env.get_scale()


# ------------------------------------------------------------------ commands
def run_cli(argv, capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    err = capsys.readouterr().err
    return code, err


TINY_GPT = ["--data", "generated", "--max-chars", "2000", "--steps", "1", "--no-progress", "--eval-batches", "1",
            "--n-layers", "1", "--d-model", "8", "--n-heads", "2", "--block-size", "8", "--batch-size", "2"]

COMMANDS = [
    ("gpt-batch0", lambda w: ["train", "gpt", "--batch-size", "0"], r"batch_size=0 must be an integer >= 1"),
    ("gpt-steps", lambda w: ["train", "gpt", "--steps", "-3"], r"steps=-3 must be an integer >= 1"),
    ("gpt-eval0", lambda w: ["train", "gpt", "--eval-every", "0"], r"eval_every=0 must be an integer >= 1"),
    ("gpt-out-file", lambda w: ["train", "gpt", "--out", str(w.d / "afile")], r"afile is a file"),
    ("gpt-resume", lambda w: ["train", "gpt", "--resume", "--out", str(w.d / "fresh_gpt")],
     r"--resume: there is no checkpoint in"),
    ("gpt-until", lambda w: ["train", "gpt", "--until-step", "0", "--out", str(w.d / "u")],
     r"--until-step 0 must be >= 1"),
    ("gpt-preset", lambda w: ["train", "gpt", "--preset", "huge"], r"argument --preset: invalid choice: 'huge'"),
    ("gpt-int", lambda w: ["train", "gpt", "--steps", "ten"], r"argument --steps: invalid int value: 'ten'"),
    ("gpt-config-missing", lambda w: ["train", "gpt", "--config", str(w.d / "none.json")], r"no settings file at"),
    ("gpt-config-broken", lambda w: ["train", "gpt", "--config", str(w.d / "cfg.json")],
     r"cfg.json is not a valid JSON settings file"),
    ("gpt-model-layers", lambda w: ["train", "gpt", *TINY_GPT, "--n-layers", "0", "--out", str(w.d / "g0")],
     r"invalid GPT config: n_layers=0 must be an integer >= 1"),
    ("gpt-data-missing", lambda w: ["train", "gpt", "--data", str(w.d / "missing.txt"), "--out", str(w.d / "g1")],
     r"unknown text source"),
    ("gpt-data-empty", lambda w: ["train", "gpt", "--data", str(w.d / "empty.txt"), "--out", str(w.d / "g2")],
     r"empty.txt is empty"),
    ("gpt-device", lambda w: ["train", "gpt", "--device", "tpu", "--out", str(w.d / "g3")],
     r"--device tpu is not a device name"),
    ("tr-batch0", lambda w: ["train", "translate", "--batch-size", "0"], r"batch_size=0 must be an integer"),
    ("tr-config", lambda w: ["train", "translate", "--config", str(w.d / "list.json")],
     r"list.json holds a JSON list"),
    ("tr-smoothing", lambda w: ["train", "translate", "--label-smoothing", "1.5"], r"label_smoothing=1.5"),
    ("tr-empty-data", lambda w: ["train", "translate", "--data", str(w.d / "empty"), "--out", str(w.d / "t1")],
     r"are empty"),
    ("train-nothing", lambda w: ["train"], r"name what to train first"),
    ("unknown-command", lambda w: ["fly"], r"unknown command 'fly'"),
    ("gen-samples0", lambda w: ["generate", str(w.d / "gpt"), "--num-samples", "0"], r"--num-samples 0 must be >= 1"),
    ("gen-tokens", lambda w: ["generate", str(w.d / "gpt"), "--max-new-tokens", "-1"],
     r"--max-new-tokens -1 must be >= 0"),
    ("gen-temperature", lambda w: ["generate", str(w.d / "gpt"), "--temperature", "-1"],
     r"temperature must be a finite number >= 0"),
    ("gen-topp", lambda w: ["generate", str(w.d / "gpt"), "--top-p", "2"], r"top_p must be in \(0, 1\]"),
    ("gen-missing", lambda w: ["generate", str(w.d / "no_run")], r"no checkpoint at"),
    ("gen-translator", lambda w: ["generate", str(w.d / "tr")], r"holds a 'transformer' model"),
    ("gen-empty-ckpt", lambda w: ["generate", str(w.d / "empty_run")], r"the file is empty"),
    ("gen-no-tokenizer", lambda w: ["generate", str(w.d / "notok")], r"no tokenizer.json beside"),
    ("gen-unknown-char", lambda w: ["generate", str(w.d / "gpt"), "xyz"], r"character 'x' is not in the vocabulary"),
    ("gen-device", lambda w: ["generate", str(w.d / "gpt"), "--device", "cuda:7"], r"--device cuda:7"),
    ("tr-beam0", lambda w: ["translate", str(w.d / "tr"), "a", "--beam", "0"], r"--beam 0 must be >= 1"),
    ("tr-gpt-run", lambda w: ["translate", str(w.d / "gpt"), "a"],
     r"holds a 'gpt' model .*use `python -m course_lib generate"),
    ("tr-empty-folder", lambda w: ["translate", str(w.d / "cfg_dir_empty"), "a"], r"no checkpoint in the folder"),
    ("export-random", lambda w: ["export-attention", str(w.d / "random.safetensors"), "abc"],
     r"random.safetensors is not a checkpoint of this course"),
    ("export-alien", lambda w: ["export-attention", str(w.d / "alien"), "abc"], r"'evil:Code'"),
]


@pytest.mark.parametrize("case", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_commands_answer_one_error_line(w, case, capsys, monkeypatch, tmp_path):
    _, argv, words = case
    monkeypatch.chdir(tmp_path)  # a default --out lands here, not in the repository
    (w.d / "cfg_dir_empty").mkdir(exist_ok=True)
    code, err = run_cli(argv(w), capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    assert __import__("re").search(words, lines[0]), lines[0]


def _subprocess(args, **extra_env):
    env_ = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", **extra_env}
    return subprocess.run([sys.executable, "-m", "course_lib", *args], env=env_, capture_output=True, text=True,
                          timeout=120)


def test_gpt2_tokenizer_offline_is_one_line(tmp_path):
    """No tiktoken cache and no network (a proxy that refuses): one line, not a requests traceback."""
    done = _subprocess(["train", "gpt", "--tokenizer", "gpt2", "--data", "generated", "--max-chars", "2000",
                        "--out", str(tmp_path / "run")],
                       TIKTOKEN_CACHE_DIR=str(tmp_path / "cache"), HTTPS_PROXY="http://127.0.0.1:9",
                       HTTP_PROXY="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9")
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert len(lines) == 1 and lines[0].startswith("error: --tokenizer gpt2 needs tiktoken's GPT-2 vocabulary")
    assert "--tokenizer char" in lines[0]


def test_device_flag_in_a_real_process_names_the_flag(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    done = _subprocess(["train", "translate", "--device", "cuda", "--out", str(tmp_path / "run")],
                       COURSE_DEVICE="")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip() == ("error: --device cuda asks for CUDA, but torch sees no CUDA GPU; "
                                   "use --device cpu, or leave --device out to use the best device found.")
