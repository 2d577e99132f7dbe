"""course_lib.plotting: every helper returns a figure; saved files are byte-identical
from one run to the next (also in a fresh interpreter)."""

import hashlib
import os
import subprocess
import sys

import matplotlib
import matplotlib.pyplot as plt
import pytest
import torch

from course_lib.attention import causal_mask
from course_lib.plotting import (
    FORMATS,
    attention_grid,
    heatmap,
    lines,
    save_figure,
    scatter_2d,
    stacked_bars,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKENS = ["the", "cat", "sat", "on", "the", "mat"]


def figures():
    g = torch.Generator().manual_seed(0)
    w = torch.rand(2, 3, 6, 6, generator=g).softmax(-1)
    scores = torch.randn(6, 6, generator=g)
    return {
        "heatmap": heatmap(w[0, 0], TOKENS, TOKENS, title="one head", annotate=True),
        "masked": heatmap(scores, TOKENS, TOKENS, mask=causal_mask(6), annotate=True, cmap="coolwarm"),
        "grid": attention_grid(w, TOKENS, TOKENS, title="layers x heads", row_names=["enc 0", "enc 1"]),
        "grid3d": attention_grid(w[0]),
        "scatter": scatter_2d(torch.randn(6, 2, generator=g), TOKENS, ["a", "b", "a", "b", "c", "c"], title="2-D"),
        "lines": lines({"sin": torch.arange(10.0).sin(), "cos": (torch.arange(5.0), torch.arange(5.0).cos())},
                       xlabel="position", logy=False),
        "stacked": stacked_bars({"weights": [1.0, 2.0], "activations": [3.0, 0.5]}, ["a", "b"],
                                limits=[5.0, None], ylabel="GiB"),
    }


def test_every_helper_returns_a_figure():
    figs = figures()
    for fig in figs.values():
        assert isinstance(fig, matplotlib.figure.Figure)
    assert len(figs["grid"].axes) == 6
    ax = figs["heatmap"].axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == TOKENS
    assert [t.get_text() for t in ax.get_yticklabels()] == TOKENS
    # the masked heatmap hatches exactly the 15 cells above the diagonal
    assert len(figs["masked"].axes[0].patches) == 15
    assert len(figs["scatter"].axes[0].texts) == 6 and len(figs["scatter"].axes[0].collections) == 3
    assert [len(line.get_xdata()) for line in figs["lines"].axes[0].lines] == [10, 5]
    bars = figs["stacked"].axes[0].patches
    assert [(b.get_y(), b.get_height()) for b in bars] == [(0, 1), (0, 2), (1, 3), (2, 0.5)]
    fig, ax = plt.subplots()
    assert heatmap(torch.eye(3), ax=ax, colorbar=False) is fig
    plt.close("all")


def test_helpers_reject_wrong_shapes_and_formats(tmp_path):
    with pytest.raises(ValueError, match="2-D"):
        heatmap(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="layers, heads"):
        attention_grid(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="project to 2-D"):
        scatter_2d(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="one value per bar"):
        stacked_bars({"a": [1.0, 2.0, 3.0]}, ["x", "y"])
    fig = heatmap(torch.eye(2))
    with pytest.raises(ValueError, match="unknown figure format"):
        save_figure(fig, tmp_path / "x", formats=("jpg",))
    plt.close("all")


def digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


SCRIPT = """
import sys
sys.path.insert(0, {root!r})
sys.path.insert(0, {tests!r})
import matplotlib
matplotlib.use("Agg")
from pathlib import Path
from course_lib.plotting import save_figure
from test_plotting import figures
for name, fig in figures().items():
    save_figure(fig, Path({out!r}) / name)
"""


def test_save_figure_is_byte_identical_across_runs(tmp_path):
    runs = []
    for run in ("a", "b"):
        for name, fig in figures().items():
            written = save_figure(fig, tmp_path / run / name)
            assert [p.suffix for p in written] == [f".{f}" for f in FORMATS]
        plt.close("all")
        runs.append(digests(tmp_path / run))
    assert len(runs[0]) == len(figures()) * len(FORMATS)
    assert runs[0] == runs[1]
    # a fresh interpreter (new ids, new font cache state) writes the same bytes
    code = SCRIPT.format(root=ROOT, tests=os.path.join(ROOT, "tests"), out=str(tmp_path / "c"))
    env = {**os.environ, "MPLBACKEND": "Agg"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)
    assert digests(tmp_path / "c") == runs[0]
    head = (tmp_path / "a" / "grid.pdf").read_bytes()
    assert b"CreationDate" not in head


def test_annotations_contrast_ignores_masked_minus_inf():
    # the label colour threshold is the mean of the finite cells: 1.0 here, not -inf
    m = torch.tensor([[1.0, float("-inf")], [0.0, 2.0]])
    fig = heatmap(m, annotate=True)
    assert [t.get_text() for t in fig.axes[0].texts] == ["1.00", "0.00", "2.00"]
    assert [t.get_color() for t in fig.axes[0].texts] == ["black", "white", "black"]
    plt.close(fig)
