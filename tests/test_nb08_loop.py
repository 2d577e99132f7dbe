"""Notebook 08's training loop, the one the learner writes, against the library's trainer.

The functions (``get_batch``, ``warmup_cosine``, ``make_optimizer``, ``evaluate``, ``train_by_hand``)
and the grown model (``SmallGPT``) are read from the notebook's own code cells, so a change
on either side (the notebook's loop, or ``course_lib.training.gpt.train``) fails here.
The references: ``train`` (same losses, bit for bit, and the same weights) and
``course_lib.gpt.GPT`` (same logits with the grown model's weights)."""

import ast
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from course_lib.gpt import GPT, GPTConfig
from course_lib.tokenizer import CharTokenizer
from course_lib.training.gpt import GPTTrainConfig, prepare_data, train

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "08_gpt_training.ipynb"
NAMES = ("get_batch", "warmup_cosine", "make_optimizer", "evaluate", "train_by_hand",
         "Attention", "FeedForward", "Block", "SmallGPT")
TEXT = "the quick brown fox jumps over the lazy dog; pack my box with five dozen liquor jugs. " * 30
SETTINGS = dict(steps=12, batch_size=4, block_size=16, lr=3e-3, warmup=3, eval_every=5, eval_batches=2)


def notebook_code(data, **overrides) -> dict:
    """The notebook's definitions of NAMES, run in a namespace with its globals."""
    found = {}
    for cell in json.loads(NOTEBOOK.read_text(encoding="utf-8"))["cells"]:
        if cell["cell_type"] != "code":
            continue
        try:
            tree = ast.parse("".join(cell["source"]))
        except SyntaxError:  # a cell with IPython magics defines nothing used here
            continue
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name in NAMES:
                found[node.name] = node
    assert sorted(found) == sorted(NAMES), f"the notebook no longer defines {set(NAMES) - set(found)}"
    namespace = {"torch": torch, "math": math, "nn": nn, "F": F, "device": torch.device("cpu"), "data": data}
    module = ast.Module(body=[found[n] for n in NAMES], type_ignores=[])
    exec(compile(module, str(NOTEBOOK), "exec"), namespace)
    namespace.update(overrides)
    return namespace


@pytest.fixture(scope="module")
def setup():
    tok = CharTokenizer.from_text(TEXT)
    data = prepare_data(TEXT, tok)
    config = GPTConfig(vocab_size=tok.vocab_size, block_size=SETTINGS["block_size"], n_layers=2, n_heads=2,
                       d_model=32, dropout=0.1)
    return data, config


def library_run(data, config):
    torch.manual_seed(0)
    model = GPT(config)
    cfg = GPTTrainConfig(steps=SETTINGS["steps"], batch_size=SETTINGS["batch_size"], lr=SETTINGS["lr"],
                         warmup=SETTINGS["warmup"], eval_every=SETTINGS["eval_every"],
                         eval_batches=SETTINGS["eval_batches"], precision="fp32", compile=False,
                         device="cpu", progress=False)
    return model, train(model, data, cfg)


def by_hand_run(nb, config, **changes):
    torch.manual_seed(0)
    model = GPT(config)
    return model, nb["train_by_hand"](model, **{**SETTINGS, **changes})


def test_the_notebooks_loop_gives_the_library_trainers_losses_and_weights(setup):
    data, config = setup  # with dropout: the random draws must match too
    nb = notebook_code(data)
    lib_model, lib = library_run(data, config)
    hand_model, hand = by_hand_run(nb, config)
    assert [round(v, 6) for v in hand["losses"]] == [v for _, v in lib["train_losses"]]
    assert [(e["step"], e["train"], e["val"]) for e in hand["evals"]] == \
        [(e["step"], e["train"], e["val"]) for e in lib["evals"]]
    for (name, a), b in zip(hand_model.state_dict().items(), lib_model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("broken", ["decay on every parameter", "no clipping", "no warmup"])
def test_a_loop_that_differs_in_one_detail_does_not_match(setup, broken):
    """The comparison above can fail: each of these one-line changes to the loop shows."""
    data, config = setup
    nb = notebook_code(data)
    if broken == "decay on every parameter":
        nb["make_optimizer"] = lambda model, lr: torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95),
                                                                   weight_decay=0.1)
    else:
        schedule = nb["warmup_cosine"]
        nb["warmup_cosine"] = lambda step, lr, steps, warmup, min_lr: schedule(step, lr, steps, 0, min_lr)
    _, lib = library_run(data, config)
    _, hand = by_hand_run(nb, config, **({"grad_clip": 1e9} if broken == "no clipping" else {}))
    assert [round(v, 6) for v in hand["losses"]] != [v for _, v in lib["train_losses"]]


def test_the_grown_model_is_course_libs_gpt_with_its_weights(setup):
    data, config = setup
    nb = notebook_code(data)
    torch.manual_seed(1)
    grown = nb["SmallGPT"](config.vocab_size, config.block_size, config.d_model, n_layers=config.n_layers,
                           n_heads=config.n_heads, ff=True, residual=True, norm=True, dropout=0.1).eval()
    gpt = GPT(config).eval()
    assert list(grown.state_dict()) == list(gpt.state_dict())
    gpt.load_state_dict(grown.state_dict())
    ids = torch.randint(0, config.vocab_size, (3, config.block_size))
    with torch.no_grad():
        torch.testing.assert_close(grown(ids)[0], gpt(ids)[0], rtol=0, atol=1e-5)
        a, b = grown(ids, ids)[1], gpt(ids, ids)[1]
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    # without the residual connections it is another model, and the comparison says so
    plain = nb["SmallGPT"](config.vocab_size, config.block_size, config.d_model, n_layers=config.n_layers,
                           n_heads=config.n_heads, ff=True, residual=False, norm=True, dropout=0.1).eval()
    plain.load_state_dict(grown.state_dict())
    with torch.no_grad():
        assert not torch.allclose(plain(ids)[0], gpt(ids)[0], atol=1e-3)
