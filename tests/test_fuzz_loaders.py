"""Fuzzing the loaders with real files written by the course: truncated, mutated and
random bytes. Whatever the bytes, only the course's own clear errors escape (a
``ValueError`` subclass of ours, naming the file), or the file loads. Nothing read from
disk runs code: the files are safetensors and JSON.

Each property runs a bounded number of examples (``derandomize``: the same examples on
every run, so CI is reproducible); a few seconds each.
"""

from __future__ import annotations

import json
import struct

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from course_lib.checkpoint import CheckpointError, save_checkpoint
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
from course_lib.training.translation import load_config

FUZZ = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz")
    torch.manual_seed(0)
    tok = CharTokenizer.from_text("abcdefgh \n")
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=8, n_layers=1, n_heads=2, d_model=8)
    model = GPT(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long))[1].backward()
    opt.step()
    ckpt = save_checkpoint(d / "run" / "checkpoint.safetensors", model, cfg.to_dict(), opt, {"step": 1})
    tokenizers = {
        "char": tok.save(d / "char.json"),
        "word": WordTokenizer.from_texts(["the man sees a dog ."], special_tokens=SPECIALS).save(d / "word.json"),
        "bpe": BPETokenizer.train("the man sees the dog. " * 20, 270, ("<|endoftext|>",)).save(d / "bpe.json"),
    }
    config = d / "config.json"  # the original seq2seq course's names
    config.write_text(json.dumps({"train_data": "generated", "epochs": 2, "batch_size": 16, "learning_rate": 1e-3,
                                  "model_dim": 32, "hidden_dims": 64, "num_heads": 2, "num_layers": 1,
                                  "dropout": 0.1, "max_seq_length": 32}))
    return {"ckpt": ckpt, "tokenizers": tokenizers, "config": config, "dir": d}


def header_length(data: bytes) -> int:
    return 8 + struct.unpack("<Q", data[:8])[0]


def mutate(data: bytes, edits: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for pos, value in edits:
        out[pos % len(out)] = value
    return bytes(out)


def edits_within(limit: int):
    return st.lists(st.tuples(st.integers(0, limit - 1), st.integers(0, 255)), min_size=1, max_size=4)


def load_checkpoint_bytes(files, data: bytes) -> None:
    path = files["dir"] / "fuzzed" / "checkpoint.safetensors"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(data)
    (path.parent / "tokenizer.json").write_bytes(files["tokenizers"]["char"].read_bytes())
    try:
        load_trained(path)
    except CheckpointError as exc:  # ours: names the file, says what is wrong and what to do
        assert str(path) in str(exc)
    except ValueError as exc:  # another kind of model than a GPT, from a mutated model_type
        assert type(exc) is ValueError and str(path) in str(exc) and "kinds" in str(exc)


@FUZZ
@given(data=st.data())
def test_truncated_checkpoint(files, data):
    good = files["ckpt"].read_bytes()
    cut = data.draw(st.integers(0, len(good) - 1))
    load_checkpoint_bytes(files, good[:cut])


@FUZZ
@given(data=st.data())
def test_mutated_checkpoint_header(files, data):
    """The header (JSON: tensor names, shapes, offsets, our config and state) is where a
    flipped byte matters; the tensor bytes after it are just numbers."""
    good = files["ckpt"].read_bytes()
    load_checkpoint_bytes(files, mutate(good, data.draw(edits_within(header_length(good)))))


@FUZZ
@given(blob=st.binary(max_size=2048))
def test_random_bytes_as_checkpoint(files, blob):
    load_checkpoint_bytes(files, blob)


@FUZZ
@given(data=st.data())
def test_mutated_or_truncated_tokenizer(files, data):
    kind = data.draw(st.sampled_from(sorted(files["tokenizers"])))
    good = files["tokenizers"][kind].read_bytes()
    if data.draw(st.booleans()):
        blob = good[: data.draw(st.integers(0, len(good) - 1))]
    else:
        blob = mutate(good, data.draw(edits_within(len(good))))
    path = files["dir"] / "fuzzed_tokenizer.json"
    path.write_bytes(blob)
    try:
        tok = load_tokenizer(path)
    except TokenizerFileError as exc:
        assert str(path) in str(exc)
        return
    tok.decode(tok.encode("the man"[:0]))  # a tokenizer that loads is usable


@FUZZ
@given(blob=st.binary(max_size=512))
def test_random_bytes_as_tokenizer(files, blob):
    path = files["dir"] / "random_tokenizer.json"
    path.write_bytes(blob)
    with pytest.raises(TokenizerFileError, match="is not a tokenizer file of this course"):
        load_tokenizer(path)


@FUZZ
@given(data=st.data())
def test_mutated_course_config(files, data):
    good = files["config"].read_bytes()
    if data.draw(st.booleans()):
        blob = good[: data.draw(st.integers(0, len(good) - 1))]
    else:
        blob = mutate(good, data.draw(edits_within(len(good))))
    path = files["dir"] / "fuzzed_config.json"
    path.write_bytes(blob)
    try:
        load_config(path)
    except ValueError as exc:  # broken JSON, an unknown key, a value out of range: one clear line
        assert "\n" not in str(exc)
        assert type(exc) is ValueError


def test_the_unmutated_files_load(files):
    """The fuzzing starts from files that load (else every example would be an error)."""
    assert load_trained(files["ckpt"]).kind == "gpt"
    for path in files["tokenizers"].values():
        load_tokenizer(path)
    train, model = load_config(files["config"])
    assert model["d_model"] == 32 and train["data"] == "generated"
