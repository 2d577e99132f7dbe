"""The library's shape: every module imports on its own (no import cycles), and the two
training commands speak one vocabulary (the same flag for the same setting)."""

import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

import course_lib
from course_lib.training import gpt, translation
from course_lib.training.core import TrainConfig

ROOT = Path(__file__).resolve().parent.parent

# Each module is imported first, on its own, with every course_lib module forgotten before:
# a cycle (a imports b, which imports a) fails exactly as in a fresh interpreter.
_IMPORT_EACH = """
import importlib, sys
import torch  # loaded once: the point is course_lib's own modules
failed = []
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m == "course_lib" or m.startswith("course_lib.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception as exc:
        failed.append(f"{name}: {type(exc).__name__}: {exc}")
print("\\n".join(failed) or "all imported")
"""


def all_modules() -> list[str]:
    names = [m.name for m in pkgutil.walk_packages(course_lib.__path__, "course_lib.")]
    return ["course_lib"] + [n for n in names if not n.endswith("__main__")]


def test_every_module_imports_first_in_a_fresh_interpreter():
    modules = all_modules()
    assert {"course_lib.scaleout.checkpoint", "course_lib.scaleout.distributed", "course_lib.models",
            "course_lib.training.core", "course_lib.data.sources"} <= set(modules)
    done = subprocess.run([sys.executable, "-c", _IMPORT_EACH, *modules], capture_output=True, text=True,
                          cwd=ROOT, timeout=300, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "all imported", done.stdout


def test_commands_and_training_start_without_torchs_fsdp_imports():
    """FSDP, DTensor and torch.distributed.checkpoint (0.7 s of imports) load only when a run
    uses them: the commands, both trainers and the scale-out modules leave them out."""
    code = ("import sys, course_lib.cli, course_lib.training.gpt, course_lib.training.translation, "
            "course_lib.scaleout.checkpoint, course_lib.scaleout.rank_memory\n"
            "heavy = ('torch.distributed.fsdp', 'torch.distributed.tensor', 'torch.distributed.checkpoint')\n"
            "print(sorted(m for m in sys.modules if m.startswith(heavy)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]", done.stdout
    from course_lib.scaleout import distributed as D  # and on first use they are there
    assert D.fully_shard.__name__ == "fully_shard" and D.fsdp_isinstance(D.DTensor.from_local, "DTensor") is False


def test_a_cycle_would_be_caught(tmp_path):
    """The check above can fail: two modules that import each other are reported."""
    pkg = tmp_path / "cyc"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from cyc.b import B\nA = 1\n")
    (pkg / "b.py").write_text("from cyc.a import A\nB = 2\n")
    done = subprocess.run([sys.executable, "-c", _IMPORT_EACH.replace("course_lib", "cyc"), "cyc.a"],
                          capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert "cyc.a: ImportError" in done.stdout


def _flags(parser) -> dict[str, str]:
    """flag -> the setting (dest) it fills."""
    return {opt: action.dest for action in parser._actions for opt in action.option_strings}


SHARED_MODEL = ("d_model", "n_heads", "n_layers", "dropout", "layer_norm_eps")


def test_both_training_commands_accept_the_same_flags_for_the_same_settings():
    flags = {"gpt": _flags(gpt.build_parser()), "translate": _flags(translation.build_parser())}
    shared = ["--preset", "--config", "--resume", "--until-step"]
    shared += ["--" + name.replace("_", "-") for name in TrainConfig.__dataclass_fields__]
    shared += ["--no-compile", "--no-progress", "--no-fsdp"]
    shared += ["--" + name.replace("_", "-") for name in SHARED_MODEL]
    for flag in shared:
        assert flag in flags["gpt"] and flag in flags["translate"], flag
        assert flags["gpt"][flag] == flags["translate"][flag], flag  # the same setting
    # The same words give the same settings in both.
    argv = ["--steps", "7", "--batch-size", "8", "--grad-accum", "2", "--lr", "0.01", "--warmup", "3",
            "--eval-every", "5", "--seed", "4", "--precision", "fp32", "--no-compile", "--out", "r",
            "--device", "cpu", "--grad-clip", "0.5", "--no-progress"]
    g = gpt.GPTTrainConfig.from_dict(
        {"out": None, **{k: v for k, v in vars(gpt.build_parser().parse_args(argv)).items()
                         if k in TrainConfig.__dataclass_fields__ and v is not None}})
    t = translation.TranslationTrainConfig.from_dict(
        {**{k: v for k, v in vars(translation.build_parser().parse_args(argv)).items()
            if k in TrainConfig.__dataclass_fields__ and v is not None}})
    for name in TrainConfig.__dataclass_fields__:
        if name != "data":
            assert getattr(g, name) == getattr(t, name), name


@pytest.mark.parametrize("command", [["train", "gpt"], ["train", "translate"], ["generate"], ["translate"],
                                     ["export-attention"], ["train", "chat"], ["chat"]])
def test_help_lists_every_flag_with_its_default(command, capsys):
    from course_lib.cli import main

    with pytest.raises(SystemExit) as done:
        main([*command, "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    options = [line.split()[0] for line in text.splitlines() if line.strip().startswith("--")]
    assert options
    blocks = text.split("\n  -")
    for block in blocks[1:]:
        if block.startswith("h, --help"):
            continue
        assert "(default:" in " ".join(block.split()), block  # every flag says its default


def test_old_run_folders_still_load(tmp_path):
    """A course_lib 0.1 run (``ckpt.safetensors``, GPT-2-style parameter names) loads."""
    import torch

    from course_lib.checkpoint import save_checkpoint
    from course_lib.gpt import GPT, GPTConfig
    from course_lib.models import load_trained

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=10, block_size=8, n_layers=2, n_heads=2, d_model=8))
    old_names = {"tok_embed": "tok_emb", "pos_embed": "pos_emb", "layers": "blocks", "final_norm": "ln_f",
                 "out_proj": "lm_head", "self_attn_norm": "ln_1", "ff_norm": "ln_2", "self_attn": "attn",
                 "ff.w_1": "mlp.c_fc", "ff.w_2": "mlp.c_proj"}
    state = {}
    for key, value in model.state_dict().items():
        for new, old in old_names.items():
            key = key.replace(new, old)
        state[key] = value
    assert "blocks.0.mlp.c_fc.weight" in state and "layers.0.ff.w_1.weight" not in state
    save_checkpoint(tmp_path / "ckpt.safetensors", state, model.config.to_dict())
    loaded = load_trained(tmp_path)
    x = torch.randint(0, 10, (1, 8))
    torch.testing.assert_close(loaded.model(x)[0], model.eval()(x)[0])


def test_one_ignore_index_for_every_loss():
    """GPT, translation and BERT losses skip the positions labelled ``IGNORE_INDEX`` (and
    only those); no loss in the library names another ignore index."""
    import re

    import torch

    from course_lib.bert import mask_tokens, mlm_loss
    from course_lib.gpt import GPT, GPTConfig
    from course_lib.losses import IGNORE_INDEX
    from course_lib.training.translation import batch_loss
    from course_lib.transformer import Transformer, TransformerConfig

    def kept_mean(logits, target):  # the mean of -log p over the labelled positions, by hand
        logp = logits.float().log_softmax(-1).flatten(0, 1)
        keep = target.flatten() != IGNORE_INDEX
        return -logp[keep].gather(1, target.flatten()[keep][:, None]).mean()

    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=11, block_size=8, n_layers=1, n_heads=2, d_model=8)).eval()
    x, y = torch.randint(0, 11, (2, 8)), torch.randint(0, 11, (2, 8))
    y[0, :5] = IGNORE_INDEX
    logits, loss = gpt(x, y)
    torch.testing.assert_close(loss, kept_mean(logits, y))
    mt = Transformer(TransformerConfig(src_vocab_size=11, tgt_vocab_size=11, d_model=8, n_heads=2, n_layers=1,
                                       d_ff=8, dropout=0.0)).eval()
    src, tgt = torch.randint(1, 11, (2, 5)), torch.randint(1, 11, (2, 7))
    tgt[1, 4:] = mt.config.pad_id  # padding: not predicted
    target = tgt[:, 1:].masked_fill(tgt[:, 1:] == mt.config.pad_id, IGNORE_INDEX)
    torch.testing.assert_close(batch_loss(mt, src, tgt), kept_mean(mt(src, tgt[:, :-1]), target))
    ids = torch.randint(4, 11, (2, 9))
    _, labels = mask_tokens(ids, 3, 11, (0, 1, 2, 3), generator=torch.Generator().manual_seed(0))
    assert (labels == IGNORE_INDEX).any() and (labels != IGNORE_INDEX).any()
    scores = torch.randn(2, 9, 11)
    torch.testing.assert_close(mlm_loss(scores, labels), kept_mean(scores, labels))
    named = {str(p.relative_to(ROOT)): m for p in (ROOT / "course_lib").rglob("*.py")
             for m in re.findall(r"ignore_index=([^,)\s]+)", p.read_text(encoding="utf-8"))}
    assert named and set(named.values()) == {"IGNORE_INDEX"}, named
    assert IGNORE_INDEX == -100  # F.cross_entropy's default: a loss without ignore_index skips them too


@pytest.mark.parametrize("argv,match", [
    (["translate", "--tokenizer", "sentencepiece"], "--tokenizer: invalid choice"),
    (["translate", "--config", "{config}"], r"tokenizer='sentencepiece' must be 'word' or 'bpe'"),
    (["translate", "--n-heads", "3"], "not divisible by n_heads=3"),
    (["gpt", "--n-heads", "5"], "not divisible by n_heads=5"),
    (["gpt", "--config", "{config}"], r"tokenizer='sentencepiece' must be 'char' or 'gpt2'"),
])
def test_settings_are_checked_before_any_data_loads(argv, match, tmp_path, monkeypatch, capsys):
    """A mistake in a training or model setting, from a flag or a --config file, is one error
    before the data is read (the loaders here fail if they are reached)."""
    import json

    import course_lib.data

    def no_data(*args, **kwargs):
        raise AssertionError("the data was loaded before the settings were checked")

    monkeypatch.setattr(course_lib.data, "load_text", no_data)
    monkeypatch.setattr(course_lib.data, "load_pairs", no_data)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"tokenizer": "sentencepiece"}))
    from course_lib.cli import main

    argv = [a.format(config=config) for a in argv]
    try:
        code = main(["train", *argv, "--out", str(tmp_path / "run"), "--device", "cpu", "--steps", "2"])
    except SystemExit as exc:  # argparse's own refusal
        code = exc.code
    assert code == 2
    assert re.search(match, capsys.readouterr().err)


# Paths the text names that are written by a command, not shipped; and file-name templates.
WRITTEN_BY_COMMANDS: set[str] = set()
FILE_REFERENCE = re.compile(r"(?<![\w./-])((?:resources|benchmarks|scripts|tests|notebooks|course_lib|\.ci)/"
                            r"[\w./-]*[\w-]|[\w-]+\.md)\b")


def file_references(text: str) -> set[str]:
    return {m.rstrip(".") for m in FILE_REFERENCE.findall(text)}


def test_every_file_the_docs_and_code_name_exists():
    """README, docstrings, comments, notebooks and scripts name only files that exist
    (relative to the repository, to the file that names them, or for a bare ``NAME.md`` in
    resources/). This file is not scanned: it names a missing file on purpose, below."""
    sources = [ROOT / "README.md", ROOT / ".ci" / "run", *ROOT.glob("course_lib/**/*.py"),
               *ROOT.glob("benchmarks/*.py"), *ROOT.glob("scripts/*"), *ROOT.glob("tests/*.py"),
               *ROOT.glob("notebooks/*.ipynb"), *ROOT.glob("resources/**/*.md"), *ROOT.glob("docs/*.md")]
    sources = [src for src in sources if src != Path(__file__).resolve()]
    missing = [f"{src.relative_to(ROOT)}: {ref}" for src in sources if src.is_file()
               for ref in sorted(file_references(src.read_text(encoding="utf-8", errors="replace")))
               if "NN" not in ref and ref not in WRITTEN_BY_COMMANDS
               and not any((base / ref).exists() for base in (ROOT, src.parent, ROOT / "resources"))]
    assert not missing, missing
    assert file_references("see NOTES-trust.md and resources/gpu_results.md.") == \
        {"NOTES-trust.md", "resources/gpu_results.md"}  # what the scan finds


TEST_ONLY = {"unittest", "pytest", "_pytest", "hypothesis"}


def test_the_library_imports_no_test_tools():
    """No course_lib module imports a testing package (unittest, pytest, hypothesis), at its top
    or inside a function."""
    import ast

    found = []
    for path in sorted((ROOT / "course_lib").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            found += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] in TEST_ONLY]
    assert not found, found
