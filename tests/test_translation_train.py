"""The generated corpus, the training loop (schedule, resume), the command lines, bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from course_lib.checkpoint import CheckpointConfigError, read_metadata
from course_lib.data import grammar, load_pairs
from course_lib.decoding import translate
from course_lib.exercises import solution
from course_lib.training.core import noam_lr
from course_lib.training.translation import TranslationTrainConfig as TrainConfig
from course_lib.training.translation import build_tokenizer, load_config, make_batches, train
from course_lib.transformer import Transformer, TransformerConfig

ROOT = Path(__file__).resolve().parent.parent


pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------- the grammar
def test_generated_pairs_are_deterministic_and_held_out_is_new():
    assert grammar.generate_pairs(50, seed=3) == grammar.generate_pairs(50, seed=3)
    assert grammar.generate_pairs(50, seed=3) != grammar.generate_pairs(50, seed=4)
    train_pairs, test_pairs = grammar.train_test_split(2000, 200, seed=0)
    assert len(test_pairs) == 200
    assert not {e for e, _ in train_pairs} & {e for e, _ in test_pairs}


@pytest.mark.parametrize("det,adj,noun,case,want", [
    ("def", "alt", ("man", "mann", "m", True), "nom", "der alte mann"),
    ("def", "alt", ("man", "mann", "m", True), "acc", "den alten mann"),
    ("def", "alt", ("man", "mann", "m", True), "dat", "dem alten mann"),
    ("indef", "klein", ("dog", "hund", "m", True), "nom", "ein kleiner hund"),
    ("indef", "klein", ("dog", "hund", "m", True), "acc", "einen kleinen hund"),
    ("indef", "neu", ("book", "buch", "n", False), "acc", "ein neues buch"),
    ("poss", "müd", ("woman", "frau", "f", True), "dat", "meiner müden frau"),
    ("def", None, ("child", "kind", "n", True), "dat", "dem kind"),
])
def test_german_agreement(det, adj, noun, case, want):
    assert grammar.german_np(det, adj, noun, case) == want


def _clause(subj, verb, obj=None, modal=None, pp=None):
    nouns = {n[0]: n for n in grammar.NOUNS}
    verbs = {v[0]: v for v in grammar.VERBS}
    modals = {m[0]: m for m in grammar.MODALS}

    def np(det, noun, case):
        return {"en": grammar.english_np(det, None, nouns[noun]), "de": grammar.german_np(det, None, nouns[noun], case)}

    if subj in ("i", "you", "he", "we", "they"):
        person = {"i": "1sg", "you": "2sg", "he": "3sg", "we": "1pl", "they": "3pl"}[subj]
        s = {"en": subj, "de": dict(grammar.PRONOUNS[person])[subj], "person": person}
    else:
        s = {**np(*subj, "nom"), "person": "3sg"}
    return {"subj": s, "verb": verbs[verb], "obj": obj and np(*obj, "acc"), "pp": pp,
            "modal": modal and modals[modal]}


def test_word_order_rules():
    """Hand-written German for clauses of the grammar: verb-second after a fronted
    adverb, verb-final after weil/dass, separable verbs, modal verbs."""
    c = _clause(("def", "man"), "see", ("def", "dog"))
    assert grammar.english_clause(c) == "the man sees the dog"
    assert grammar.german_clause(c, "main") == "der mann sieht den hund"
    assert grammar.german_clause(c, "v2", "heute") == "heute sieht der mann den hund"
    assert grammar.german_clause(c, "sub") == "der mann den hund sieht"
    c = _clause(("def", "woman"), "call", ("def", "child"))
    assert grammar.english_clause(c) == "the woman calls the child"
    assert grammar.german_clause(c, "main") == "die frau ruft das kind an"
    assert grammar.german_clause(c, "v2", "morgen") == "morgen ruft die frau das kind an"
    assert grammar.german_clause(c, "sub") == "die frau das kind anruft"
    c = _clause("he", "invite", ("poss", "friend"), modal="want")
    assert grammar.english_clause(c) == "he wants to invite my friend"
    assert grammar.german_clause(c, "main") == "er will meinen freund einladen"
    assert grammar.german_clause(c, "sub") == "er meinen freund einladen will"
    c = _clause("you", "get up", modal="can")
    assert grammar.english_clause(c) == "you can get up"
    assert grammar.german_clause(c, "sub") == "du aufstehen kannst"
    c = _clause("you", "wait", pp={"en": "with the dog", "de": "mit dem hund"})
    assert grammar.german_clause(c, "main") == "du wartest mit dem hund"
    c = _clause(("indef", "apple"), "sleep")
    assert grammar.english_clause(c) == "an apple sleeps"
    # Whole sentences: commas and conjunctions as the generator writes them.
    pairs = grammar.generate_pairs(3000, seed=0)
    weil = [(e, d) for e, d in pairs if " because " in e]
    assert weil and all(" , weil " in d for _, d in weil)
    dass = [(e, d) for e, d in pairs if " that " in e]
    assert dass and all(" , dass " in d for _, d in dass)


# ---------------------------------------------------------------- schedule, batches, exercises
def test_noam_schedule_and_exercise_solutions():
    d, w = 512, 4000
    assert noam_lr(w, d, w) == pytest.approx(512**-0.5 * 4000**-0.5)
    assert noam_lr(w // 2, d, w) == pytest.approx(noam_lr(w, d, w) / 2)  # linear warmup
    assert noam_lr(4 * w, d, w) == pytest.approx(noam_lr(w, d, w) / 2)  # 1/sqrt decay
    ref = solution("nb07.noam_lr")
    for step in (1, 100, 4000, 10**5):
        assert ref(step, d, w) == pytest.approx(noam_lr(step, d, w))
    ls = solution("nb07.label_smoothed_loss")
    g = torch.Generator().manual_seed(0)
    logits, target = torch.randn(3, 4, 7, generator=g), torch.tensor([[1, 2, 0, 0], [3, 4, 5, 6], [6, 0, 0, 0]])
    for eps in (0.0, 0.1, 0.4):
        want = F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=0, label_smoothing=eps)
        torch.testing.assert_close(ls(logits, target, eps, 0), want)


def test_batches_group_lengths_and_cover_everything():
    lengths = [(n % 17 + 1, n % 13 + 1) for n in range(1000)]
    batches = make_batches(lengths, 32, seed=1)
    assert sorted(i for b in batches for i in b) == list(range(1000))
    spread = sum(max(lengths[i][0] for i in b) - min(lengths[i][0] for i in b) for b in batches) / len(batches)
    assert spread < 3  # random batches would span ~15
    assert make_batches(lengths, 32, seed=1) == batches


# ---------------------------------------------------------------- training and resume
def _tiny(tok):
    return Transformer(TransformerConfig(src_vocab_size=tok.vocab_size, tgt_vocab_size=tok.vocab_size, d_model=16,
                                         n_heads=2, n_layers=1, d_ff=32, dropout=0.1, max_len=40))


def test_resume_continues_exactly(tmp_path, capsys):
    pairs = grammar.generate_pairs(120, seed=0)
    tok = build_tokenizer(pairs)
    cfg = TrainConfig(steps=6, batch_size=16, warmup=4, eval_every=3, out=str(tmp_path / "a"), progress=False)
    torch.manual_seed(0)
    straight = _tiny(tok)
    h1 = train(straight, tok, pairs, pairs[:20], cfg)
    torch.manual_seed(0)
    first = _tiny(tok)
    cfg = TrainConfig(**{**cfg.__dict__, "out": str(tmp_path / "b")})
    train(first, tok, pairs, pairs[:20], cfg, until_step=3)
    torch.manual_seed(123)  # a fresh process: other weights, other RNG state
    resumed = _tiny(tok)
    capsys.readouterr()
    h2 = train(resumed, tok, pairs, pairs[:20], cfg, resume=True)
    assert "at step 3" in capsys.readouterr().out
    assert h2["step"] == 6 and [s for s, _ in h2["train_losses"]] == [1, 2, 3, 4, 5, 6]
    assert h1["train_losses"] == h2["train_losses"]
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert read_metadata(tmp_path / "b" / "checkpoint.safetensors")["train_state"]["step"] == 6
    assert (tmp_path / "b" / "tokenizer.json").exists()
    # A checkpoint of another configuration is refused, naming the field.
    other = Transformer(TransformerConfig(src_vocab_size=tok.vocab_size, tgt_vocab_size=tok.vocab_size, d_model=32,
                                          n_heads=2, n_layers=1, d_ff=32, max_len=40))
    with pytest.raises(CheckpointConfigError, match="d_model"):
        train(other, tok, pairs, [], cfg, resume=True)


# ---------------------------------------------------------------- bad input
def test_config_errors(tmp_path):
    with pytest.raises(ValueError, match="not divisible"):
        load_config({"model_dim": 30, "num_heads": 4})
    with pytest.raises(ValueError, match="d_ff=0"):
        load_config({"hidden_dims": 0})
    with pytest.raises(ValueError, match=r"dropout=-0.1 must be in \[0, 1\)"):
        load_config({"dropout": -0.1})
    with pytest.raises(ValueError, match="unknown config key"):
        load_config({"learningrate": 0.1})
    train_cfg, model = load_config({"train_data": "generated", "epochs": 2, "batch_size": 8, "learning_rate": 1e-3,
                                    "model_dim": 32, "num_heads": 4})
    assert model == {"d_model": 32, "n_heads": 4}
    assert train_cfg == {"data": "generated", "epochs": 2, "batch_size": 8, "lr": 1e-3}


def test_misaligned_parallel_files(tmp_path):
    (tmp_path / "x.en").write_text("a\nb\nc\n")
    (tmp_path / "x.de").write_text("a\nb\n")
    with pytest.raises(ValueError, match="differ in length.*3 lines.*2"):
        load_pairs(str(tmp_path / "x"))
    (tmp_path / "x.de").write_text("a\nb\nc\n")
    assert load_pairs(str(tmp_path / "x")) == [("a", "a"), ("b", "b"), ("c", "c")]


def test_translate_truncates_long_sources_with_a_warning():
    pairs = grammar.generate_pairs(50, seed=0)
    tok = build_tokenizer(pairs)
    model = Transformer(TransformerConfig(src_vocab_size=tok.vocab_size, tgt_vocab_size=tok.vocab_size, d_model=16,
                                          n_heads=2, n_layers=1, d_ff=16, max_len=8)).eval()
    warnings = []
    out = translate(model, tok, ["the man sees the dog with the old cat ."], warn=warnings.append)
    assert len(out) == 1 and len(warnings) == 1 and "11 tokens" in warnings[0] and "max_len=8" in warnings[0]
    with pytest.raises(ValueError, match="source has 11 tokens"):
        model(torch.ones(1, 11, dtype=torch.long), torch.ones(1, 2, dtype=torch.long))


def test_multi30k_local_files(shared_data):
    pairs = load_pairs(str(shared_data / "multi30k" / "train"), "train", n=5)
    val = load_pairs(str(shared_data / "multi30k" / "train"), "val", n=5)
    assert len(pairs) == 5 and len(val) == 5 and pairs != val
    assert all(isinstance(s, str) and s and t for s, t in pairs)


# ---------------------------------------------------------------- command lines
def _env():
    return {**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


TINY = ["--n-train", "300", "--n-valid", "10", "--batch-size", "8", "--d-model", "16", "--n-heads", "2",
        "--n-layers", "1", "--d-ff", "16", "--warmup", "10"]


def test_cli_trains_translates_and_refuses_another_model_on_resume(tmp_path, capsys):
    """The command end to end (a kill and a resume of it: test_kill_resume.py)."""
    from course_lib.cli import main

    out = tmp_path / "run"
    cmd = ["train", "translate", *TINY, "--out", str(out)]
    res = subprocess.run([sys.executable, "-m", "course_lib", *cmd, "--steps", "5", "--eval-every", "5"],
                         env=_env(), capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert read_metadata(out / "checkpoint.safetensors")["train_state"]["step"] == 5
    res = subprocess.run([sys.executable, "-m", "course_lib", "translate", str(out), "the man sees the dog .", "--beam", "2"],
                         env=_env(), capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("\n") == 1  # one line per sentence (an untrained model may say little)
    # Resuming with another model configuration is a clear error.
    assert main([*cmd[:-2], "--d-model", "32", "--out", str(out), "--steps", "1", "--resume"]) != 0
    assert "d_model" in capsys.readouterr().err


def test_cli_config_file_with_course_names(tmp_path, capsys):
    from course_lib.cli import main

    config = tmp_path / "config.json"
    config.write_text(json.dumps({"train_data": "generated", "epochs": 1, "batch_size": 100, "learning_rate": 1e-3,
                                  "model_dim": 16, "hidden_dims": 16, "num_heads": 2, "num_layers": 1,
                                  "dropout": 0.0, "max_seq_length": 40, "n_train": 200, "n_valid": 10}))
    assert main(["train", "translate", "--config", str(config), "--out", str(tmp_path / "run"), "--no-progress",
                 "--eval-beam", "1"]) == 0
    meta = read_metadata(tmp_path / "run" / "checkpoint.safetensors")
    assert meta["train_state"]["step"] == 2 and meta["config"]["d_model"] == 16  # 200 pairs / 100 = 2 steps
    config.write_text(json.dumps({"model_dim": 30, "num_heads": 4}))
    assert main(["train", "translate", "--config", str(config)]) != 0
    assert "not divisible" in capsys.readouterr().err


def test_real_data_with_bpe_and_a_nonzero_pad_id(shared_data):
    """The GPU-scale path on a CPU budget: Multi30k lines, a byte-level BPE whose special
    tokens (so <pad>) come after the merges, a few training steps, then translation."""
    pairs = load_pairs(str(shared_data / "multi30k" / "train"), "train", n=300)
    tok = build_tokenizer(pairs, "bpe", vocab_size=400)
    pad = tok.special_tokens["<pad>"]
    assert pad != 0
    model = Transformer(TransformerConfig(src_vocab_size=tok.vocab_size, tgt_vocab_size=tok.vocab_size, d_model=16,
                                          n_heads=2, n_layers=1, d_ff=16, max_len=128, pad_id=pad))
    hist = train(model, tok, pairs, pairs[:16], TrainConfig(steps=3, batch_size=16, warmup=2, progress=False))
    assert hist["step"] == 3 and hist["evals"]
    out = translate(model, tok, [pairs[0][0]], max_new_tokens=5)
    assert isinstance(out[0], str)
    with pytest.raises(ValueError, match="pad_id"):
        train(_tiny(tok), tok, pairs, [], TrainConfig(steps=1))


@pytest.mark.parametrize("name", ["nb07.noam_lr", "nb07.label_smoothed_loss", "nb07.cross_attention_maps"])
def test_exercise_checker_rejects_a_wrong_answer(name):
    from course_lib.exercises import check

    # (that the solution equals an independent reference: tests/test_solutions_independent.py)
    assert not check(lambda *args: 0.5, name, verbose=False)


def test_progress_bar_shows_the_loss_and_epoch(monkeypatch):
    """The bar of a training run shows the step's loss and the epoch (set without a refresh)."""
    import tqdm

    shown = []

    class Bar(tqdm.tqdm):
        def set_postfix(self, ordered_dict=None, refresh=True, **kwargs):
            shown.append(dict(ordered_dict or {}, **kwargs))
            super().set_postfix(ordered_dict, refresh, **kwargs)

    monkeypatch.setattr(tqdm, "tqdm", Bar)
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    pairs = grammar.generate_pairs(40, seed=0)
    tok = build_tokenizer(pairs)
    torch.manual_seed(0)
    hist = train(_tiny(tok), tok, pairs, pairs[:8], TrainConfig(steps=4, batch_size=16, warmup=2, eval_every=4))
    losses = [f"{loss:.3f}" for _, loss in hist["train_losses"]]
    assert [s["loss"] for s in shown][:4] == losses  # one per step (the last again at the evaluation)
    assert [s["epoch"] for s in shown][:4] == [0, 0, 0, 1]  # 40 pairs, 16 a batch: 3 steps an epoch
