"""Bad input on the surfaces of notebooks 10-12: generated arguments (Hypothesis) thrown at each
public function. Each call either returns a valid result or raises a ``ValueError`` (``TypeError``
for a non-tensor where a tensor is needed) whose message names the argument; never an internal
error (``ZeroDivisionError``, ``KeyError``, ``IndexError``, a ``RuntimeError`` from torch) and
never a meaningless result."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from course_lib import checks
from course_lib.bert import mask_tokens
from course_lib.classify import predict
from course_lib.data import dialogues, tasks
from course_lib.lora import LoRALinear, add_lora
from course_lib.quantize import QuantizedLinear, absmax_quantize, quantize_model
from course_lib.summarize import rouge, tldr_prompt
from course_lib.transformer import Transformer, TransformerConfig

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# anything a user might pass by mistake where a number, a name or a list belongs
edges = st.sampled_from([0, -1, 1, 2, 4, 8, 0.0, 0.5, 1.5, -0.1, float("nan"), float("inf"), True, False,
                         None, "1", "false", "", [], ()])
anything = st.one_of(
    edges, edges, st.none(), st.booleans(), st.integers(-5, 70), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6), st.lists(st.text(max_size=4), max_size=3), st.tuples(st.integers(), st.integers()),
)


def clear_error(exc: BaseException, *names: str) -> bool:
    """A course error: ValueError (or TypeError) whose message names one of ``names``."""
    return isinstance(exc, (ValueError, TypeError)) and any(n in str(exc) for n in names)


def call(fn, *names):
    """Run ``fn()``; a raised error must be clear. Returns the result, or None if it raised."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - the point is to judge every exception
        assert clear_error(exc, *names), f"unclear {type(exc).__name__}: {exc}"
        return None


@SETTINGS
@given(group_size=anything, bits=anything)
def test_absmax_quantize_any_group_size_and_bits(group_size, bits):
    w = torch.randn(4, 8)
    got = call(lambda: absmax_quantize(w, bits, group_size), "group_size", "bits")
    if got is not None:  # a valid result: integers within range, the error at most half a scale
        q, scale = got
        assert isinstance(bits, int) and 2 <= bits <= 8
        assert int(q.abs().max()) <= 2 ** (bits - 1) - 1 and bool((scale > 0).all())


@SETTINGS
@given(group_size=anything, bits=anything, in_features=anything)
def test_quantized_linear_any_settings(group_size, bits, in_features):
    call(lambda: QuantizedLinear(in_features, 4, bits, group_size), "group_size", "bits", "in_features")


@SETTINGS
@given(r=anything, alpha=anything, dropout=anything)
def test_lora_any_rank_alpha_dropout(r, alpha, dropout):
    layer = call(lambda: LoRALinear(nn.Linear(8, 6), r, alpha, dropout), "r=", "alpha", "dropout")
    if layer is not None:  # an adapter that can change the output: positive scale, dropout < 1
        assert layer.scaling > 0 and 0 <= dropout < 1 and math.isfinite(layer.scaling)


@SETTINGS
@given(targets=anything)
def test_add_lora_any_targets(targets):
    model = nn.Sequential()
    model.add_module("w_q", nn.Linear(4, 4))
    got = call(lambda: add_lora(model, targets), "targets", "nn.Linear named")
    if got is not None:
        assert isinstance(got.w_q, LoRALinear)


@SETTINGS
@given(predictions=anything, references=anything)
def test_rouge_any_inputs(predictions, references):
    got = call(lambda: rouge(predictions, references), "predictions", "references")
    if got is not None:
        assert isinstance(predictions, (list, tuple)) and not isinstance(predictions, str)
        assert all(0.0 <= v <= 1.0 for v in got.values())


@SETTINGS
@given(text=anything, shots=anything)
def test_tldr_prompt_any_inputs(text, shots):
    got = call(lambda: tldr_prompt(text, shots), "text", "shots")
    if got is not None:
        assert got.endswith(f"{text}\nTL;DR:")


@SETTINGS
@given(n_train=anything, n_test=anything, max_words=anything)
def test_translation_check_any_sizes(n_train, n_test, max_words):
    if isinstance(n_train, int) and isinstance(n_test, int) and (n_train > 40 or n_test > 40):
        return  # sizes are cheap to check, costly to fill
    got = call(lambda: tasks.translation_check(n_train, n_test, seed=1, max_words=max_words),
               "n_train", "n_test", "max_words")
    if got is not None:
        assert (len(got[0]), len(got[1])) == (n_train, n_test)


@SETTINGS
@given(p_correct=anything)
def test_make_examples_any_probability(p_correct):
    got = call(lambda: tasks.make_examples([("a cat .", "eine Katze .")] * 4, p_correct=p_correct), "p_correct")
    if got is not None:
        assert 0 <= p_correct <= 1 and len(got) == 4


@SETTINGS
@given(n_train=anything, n_test=anything)
def test_dialogue_split_any_sizes(n_train, n_test):
    if isinstance(n_train, int) and isinstance(n_test, int) and (n_train > 40 or n_test > 40):
        return
    got = call(lambda: dialogues.train_test_split(n_train, n_test, seed=0), "n_train", "n_test", "n=")
    if got is not None:
        assert (len(got[0]), len(got[1])) == (n_train, n_test)


@SETTINGS
@given(prob=anything, vocab_size=anything)
def test_mask_tokens_any_probability_and_vocabulary(prob, vocab_size):
    ids = torch.randint(5, 20, (2, 6))
    got = call(lambda: mask_tokens(ids, 4, vocab_size, special_ids=(0,), prob=prob), "prob", "vocab_size",
               "special ids")
    if got is not None:
        assert got[0].shape == ids.shape and 0 < prob < 1


@SETTINGS
@given(field=st.sampled_from(["norm_first", "tie_embeddings", "share_embeddings", "dropout", "pad_id",
                               "layer_norm_eps"]), value=anything)
def test_transformer_config_fields_any_value(field, value):
    base = dict(src_vocab_size=16, tgt_vocab_size=16, d_model=8, n_heads=2, n_layers=1, d_ff=8, max_len=8)
    cfg = call(lambda: TransformerConfig(**base, **{field: value}), field)
    if cfg is not None and field in ("norm_first", "tie_embeddings"):
        assert isinstance(getattr(cfg, field), bool)


def test_the_examples_of_the_issue():
    with pytest.raises(ValueError, match="group_size=0"):
        absmax_quantize(torch.randn(2, 4), 8, 0)
    with pytest.raises(ValueError, match="alpha=0"):
        LoRALinear(nn.Linear(4, 4), r=2, alpha=0)
    with pytest.raises(ValueError, match="norm_first='false' must be true or false"):
        TransformerConfig(src_vocab_size=8, tgt_vocab_size=8, d_model=8, n_heads=2, norm_first="false")
    with pytest.raises(ValueError, match="predictions must be a list of strings"):
        rouge("a summary", "a summary")
    with pytest.raises(ValueError, match="n_test=-1"):
        tasks.translation_check(10, -1)
    with pytest.raises(ValueError, match="p_correct=1.5"):
        tasks.make_examples([("a .", "b .")], p_correct=1.5)
    with pytest.raises(ValueError, match="n=0"):
        predict(lambda idx: idx, 0)
    with pytest.raises(ValueError, match="skip="):
        quantize_model(nn.Sequential(nn.Linear(2, 2)), skip="0")


def test_checks_name_the_argument_and_accept_valid_values():
    checks.count("n", 0, minimum=0)
    checks.probability("p", 1)
    assert checks.texts("xs", ("a", "b")) == ["a", "b"]
    for bad, fn in [(True, lambda v: checks.count("n", v)), (float("nan"), lambda v: checks.probability("p", v)),
                    ("false", lambda v: checks.flag("f", v)), ("abc", lambda v: checks.texts("xs", v))]:
        with pytest.raises(ValueError, match=r"^(n|p|f|xs)"):
            fn(bad)


@SETTINGS
@given(field=st.sampled_from(["block_size", "batch_size", "lr", "warmup_fraction", "head_dim", "eval_batches",
                               "seed"]), value=anything)
def test_isoflop_spec_fields_any_value(field, value):
    from course_lib.scaling import IsoFLOPSpec

    spec = call(lambda: IsoFLOPSpec(**{field: value}), field)
    if spec is not None:
        assert spec.tokens_per_step >= 1 and spec.lr > 0 and 0 <= spec.warmup_fraction <= 0.5


@SETTINGS
@given(n_params=anything, n_tokens=anything)
def test_training_flops_any_sizes(n_params, n_tokens):
    from course_lib.scaling import training_flops

    got = call(lambda: training_flops(n_params, n_tokens), "n_params", "n_tokens")
    if got is not None:
        assert got >= 0 and math.isfinite(got)


@SETTINGS
@given(rows=st.one_of(anything, st.lists(st.dictionaries(st.sampled_from(["budget", "params", "val_loss"]),
                                                         st.floats(0.5, 4)), max_size=4)))
def test_isoflop_analysis_any_rows(rows):
    from course_lib.scaling import isoflop_analysis

    got = call(lambda: isoflop_analysis(rows), "rows")
    if got is not None:
        assert set(got) >= {"minima", "skipped", "a", "b"}


@SETTINGS
@given(n=anything, batch_size=anything)
def test_classify_batches_and_predictions_any_sizes(n, batch_size):
    from course_lib.classify import batch_indices, predict

    got = call(lambda: batch_indices(n, batch_size, seed=0), "n=", "batch_size")
    if got is not None:
        assert len(got(0)) == batch_size <= n
    preds = call(lambda: predict(lambda idx: torch.zeros(len(idx), 2), n, batch_size), "n=", "batch_size")
    if preds is not None:
        assert preds.shape == (n,)


@SETTINGS
@given(n_classes=anything)
def test_classifier_heads_any_number_of_classes(n_classes):
    from course_lib.classify import FirstTokenClassifier

    bert = type("Bert", (nn.Module,), {})()
    bert.config = type("C", (), {"d_model": 8})()
    head = call(lambda: FirstTokenClassifier(bert, n_classes), "n_classes")
    if head is not None:
        assert head.head[-1].out_features == n_classes >= 2


def test_settings_files_name_the_file_and_the_field(tmp_path):
    from course_lib.training.translation import load_config

    for field, value, words in (("norm_first", "false", "norm_first='false' must be true or false"),
                                ("batch_size", "64", "batch_size='64' must be an integer"),
                                ("label_smoothing", 1.5, "label_smoothing=1.5"), ("average_last", -1, "average_last=-1")):
        path = tmp_path / f"{field}.json"
        path.write_text(json.dumps({"preset": "tiny", field: value}))
        with pytest.raises(ValueError, match=f"config file {re.escape(str(path))}: .*{re.escape(words)}"):
            load_config(path)


def test_checkpoint_averaging_and_the_plan_refuse_what_they_cannot_use():
    from course_lib.training.plan import GPUS, memory_breakdown, plan_training
    from course_lib.training.translation import average_weights

    with pytest.raises(ValueError, match="non-empty list"):
        average_weights([])
    with pytest.raises(ValueError, match="snapshot 0 has other parameters"):
        average_weights([{"w": torch.zeros(2)}, {"w": torch.zeros(3)}])
    with pytest.raises(ValueError, match=r"unknown GPU name\(s\) \['V100'\]"):
        memory_breakdown(gpus=("V100",))
    with pytest.raises(ValueError, match="device must be a DeviceInfo"):
        plan_training(TransformerConfig(src_vocab_size=8, tgt_vocab_size=8, d_model=8, n_heads=2), "V100", 8, 8)
    with pytest.raises(ValueError, match="global_batch=0"):
        plan_training(TransformerConfig(src_vocab_size=8, tgt_vocab_size=8, d_model=8, n_heads=2), GPUS["T4"], 0, 8)


def test_a_preset_that_contradicts_the_resumed_run_is_an_error(tmp_path, capsys, one_thread):
    from course_lib.cli import main

    out = str(tmp_path / "run")
    tiny = ["--data", "stdlib", "--max-chars", "5000", "--steps", "2", "--batch-size", "2", "--eval-every", "2",
            "--eval-batches", "1", "--block-size", "8", "--device", "cpu", "--precision", "fp32", "--no-compile",
            "--no-progress", "--out", out]
    assert main(["train", "gpt", "--preset", "tiny", *tiny]) == 0
    capsys.readouterr()
    assert main(["train", "gpt", "--preset", "small-cpu", "--resume", *tiny[:-2], "--steps", "4", "--out", out]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --preset small-cpu contradicts the run being resumed")
    assert main(["train", "gpt", "--resume", *tiny[:-2], "--steps", "4", "--out", out]) == 0  # without it: continues


def test_a_full_disk_while_a_checkpoint_is_written_is_one_clear_error(tmp_path, monkeypatch, capsys, one_thread):
    import safetensors

    from course_lib import checkpoint
    from course_lib.cli import main

    out = tmp_path / "run"
    tiny = ["--data", "stdlib", "--max-chars", "5000", "--batch-size", "2", "--eval-every", "2", "--eval-batches", "1",
            "--block-size", "8", "--device", "cpu", "--precision", "fp32", "--no-compile", "--no-progress",
            "--out", str(out)]
    assert main(["train", "gpt", "--steps", "2", *tiny]) == 0
    before = (out / "checkpoint.safetensors").read_bytes()

    def full_disk(*args, **kwargs):
        raise safetensors.SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(checkpoint, "save_file", full_disk)
    capsys.readouterr()
    assert main(["train", "gpt", "--steps", "4", "--resume", *tiny]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: cannot write") and "previous one is kept" in err[0], err
    assert (out / "checkpoint.safetensors").read_bytes() == before
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


@SETTINGS
@given(batch_size=anything, seq_len=anything, precision=st.one_of(anything, st.sampled_from(["bf16", "fp16", "fp32"])),
       optimizer=st.one_of(anything, st.sampled_from(["adamw", "adam", "sgd"])))
def test_memory_estimate_any_settings(batch_size, seq_len, precision, optimizer):
    from course_lib.gpt import GPTConfig
    from course_lib.training.memory import estimate_memory

    cfg = GPTConfig(vocab_size=32, block_size=16, n_layers=1, n_heads=2, d_model=16)
    got = call(lambda: estimate_memory(cfg, batch_size, seq_len, precision, optimizer),
               "batch_size", "seq_len", "precision", "optimizer")
    if got is not None:
        assert got.total > 0 and isinstance(batch_size, int) and batch_size >= 1


@SETTINGS
@given(beam_size=anything, batch_size=anything, max_new_tokens=anything, alpha=anything,
       sentences=st.one_of(anything, st.lists(st.sampled_from(["a b .", "b a ."]), max_size=3)))
def test_batch_translation_any_settings(beam_size, batch_size, max_new_tokens, alpha, sentences):
    from course_lib.decoding import translate
    from course_lib.tokenizer import SPECIALS, WordTokenizer

    tok = WordTokenizer.from_texts(["a b .", "b a ."], special_tokens=SPECIALS)
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(
        src_vocab_size=tok.vocab_size, tgt_vocab_size=tok.vocab_size, d_model=8, n_heads=2, n_layers=1, d_ff=8,
        max_len=12)).eval()
    got = call(lambda: translate(model, tok, sentences, beam_size=beam_size, max_new_tokens=max_new_tokens,
                                 alpha=alpha, batch_size=batch_size),
               "sentences", "beam_size", "batch_size", "max_new_tokens", "alpha")
    if got is not None:
        assert isinstance(got, str) if isinstance(sentences, str) else len(got) == len(sentences)


@SETTINGS
@given(temperature=anything, alpha=anything)
def test_distillation_loss_any_temperature_and_alpha(temperature, alpha):
    from course_lib.distill import distillation_loss

    student, teacher = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    targets = torch.randint(0, 5, (2, 3))
    loss = call(lambda: distillation_loss(student, teacher, targets, temperature, alpha), "temperature", "alpha")
    if loss is not None:  # a finite scalar, from a positive finite T and 0 <= alpha <= 1
        assert loss.dim() == 0 and math.isfinite(float(loss))
        assert 0 < float(temperature) < math.inf and 0 <= float(alpha) <= 1
