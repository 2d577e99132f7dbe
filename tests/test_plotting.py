"""course_lib.plotting: every helper returns a figure; saved files are byte-identical
from one run to the next (also in a fresh interpreter)."""

import hashlib
import os
import re
import subprocess
import sys
import zipfile
from itertools import pairwise

import matplotlib
import matplotlib.pyplot as plt
import pandas as pd
import pytest
import torch

from course_lib.attention import causal_mask
from course_lib.plotting import (
    FORMATS,
    attention_grid,
    download_exports,
    heatmap,
    lines,
    save_figure,
    scatter_2d,
    stacked_bars,
    table,
    zip_folder,
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
    assert len(figs["grid"].axes) == 6 + 1  # 2 layers x 3 heads and the shared colour bar
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
            written = save_figure(fig, tmp_path / run / name, quiet=True)
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


# ---------------------------------------------------------------- saving tells where


def test_save_figure_prints_where_relative_to_the_notebook_once(tmp_path, capsys, monkeypatch):
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")
    fig = heatmap(torch.eye(2))
    written = save_figure(fig, tmp_path / "notebooks" / "exports" / "nb" / "eye")
    out = capsys.readouterr().out
    assert out == "saved exports/nb/eye.{png,svg,pdf}\n"  # no folder of this machine in the output
    assert all(p.exists() for p in written)
    save_figure(fig, "../exports/nb/one", formats=("png",))  # beside the notebooks folder
    assert capsys.readouterr().out == "saved ../exports/nb/one.png\n"
    save_figure(fig, "exports/nb/quiet", quiet=True)
    assert capsys.readouterr().out == ""
    plt.close(fig)


# ---------------------------------------------------------------- attention grids are legible


def _text_artists(fig):
    fig.canvas.draw()
    return [t for t in fig.findobj(matplotlib.text.Text) if t.get_visible() and t.get_text()]


def _overlaps(boxes):
    return [(a, b) for a, b in pairwise(boxes) if a.overlaps(b)]


@pytest.mark.parametrize("n_tokens", [6, 40, 150])
def test_attention_grid_colour_bar_and_readable_labels(n_tokens, tmp_path):
    g = torch.Generator().manual_seed(0)
    w = torch.rand(2, 4, n_tokens, n_tokens, generator=g).softmax(-1)
    words = [f"w{i}" for i in range(n_tokens)]
    fig = attention_grid(w, words, words, title="grid", row_names=["layer 0", "layer 1"])
    # one shared colour bar on the fixed 0-1 scale
    images = [ax.images[0] for ax in fig.axes if ax.images]
    assert len(images) == 8 and all(im.get_clim() == (0.0, 1.0) for im in images)
    bar = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(bar) == 1 and bar[0].get_ylim() == (0.0, 1.0)
    # every piece of text at least 8 pt; the saved PNG keeps the figure's size in inches,
    # so 8 pt stays 8 pt (at 120 dpi: >= 13 px high)
    texts = _text_artists(fig)
    assert min(t.get_fontsize() for t in texts) >= 8
    save_figure(fig, tmp_path / "grid", formats=("png",), quiet=True)
    from PIL import Image

    with Image.open(tmp_path / "grid.png") as im:
        width_in, height_in = im.size[0] / 120, im.size[1] / 120
    fw, fh = fig.get_size_inches()
    assert 0.8 * fw <= width_in <= 1.1 * fw and 0.8 * fh <= height_in <= 1.1 * fh
    assert width_in <= 30 and height_in <= 30  # grows with the tokens, within reason
    # tick labels of the bottom-left cell never overlap each other, however many tokens
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[4]  # layer 1, head 0: has both the x and the y labels
    for labels in (ax.get_xticklabels(), ax.get_yticklabels()):
        boxes = [t.get_window_extent(renderer) for t in labels if t.get_text()]
        assert len(boxes) >= min(n_tokens, 10)
        assert not _overlaps(sorted(boxes, key=lambda b: (b.x0, b.y0)))
    shown = [t.get_text() for t in ax.get_yticklabels()]
    if n_tokens <= 30:  # up to 30 tokens fit a 5-inch cell at 8 pt
        assert shown == words  # every token named
    else:
        assert shown[0] == "w0 [0]" and all(re.fullmatch(r"w(\d+) \[\1\]", s) for s in shown)
    plt.close(fig)


def test_old_grid_layout_would_fail_the_legibility_check():
    # the check above is not vacuous: 6-pt labels on fixed 2.2-inch cells overlap at 40 tokens
    fig, ax = plt.subplots(figsize=(2.2, 2.2))
    ax.imshow(torch.rand(40, 40).numpy())
    ax.set_yticks(range(40), labels=[f"w{i}" for i in range(40)], fontsize=6)
    fig.canvas.draw()
    boxes = sorted((t.get_window_extent() for t in ax.get_yticklabels()), key=lambda b: b.y0)
    assert _overlaps(boxes)
    plt.close(fig)


def test_attention_grid_rejects_labels_of_the_wrong_length():
    with pytest.raises(ValueError, match="one per token"):
        attention_grid(torch.rand(1, 1, 3, 3), ["a", "b"], ["a", "b", "c"])


# ---------------------------------------------------------------- taking the plots home


def _make_exports(root):
    (root / "nb" / "sub").mkdir(parents=True)
    (root / "nb" / "a.png").write_bytes(b"\x89PNG fake a")
    (root / "nb" / "sub" / "b.svg").write_text("<svg/>")
    (root / "other").mkdir()
    (root / "other" / "c.png").write_bytes(b"c")


def test_download_exports_zips_deterministically(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COURSE_EXPORT_DIR", str(tmp_path / "exports"))
    _make_exports(tmp_path / "exports")
    path = download_exports("nb")
    assert path == tmp_path / "exports" / "nb.zip"
    assert capsys.readouterr().out == "zipped 2 files -> exports/nb.zip\n"
    with zipfile.ZipFile(path) as zf:
        assert zf.namelist() == ["nb/a.png", "nb/sub/b.svg"]
        assert zf.read("nb/sub/b.svg") == b"<svg/>"
        assert {i.date_time for i in zf.infolist()} == {(1980, 1, 1, 0, 0, 0)}
    first = path.read_bytes()
    # new modification times, same files -> the same bytes
    os.utime(tmp_path / "exports" / "nb" / "a.png", (1_900_000_000, 1_900_000_000))
    assert download_exports("nb", quiet=True).read_bytes() == first
    # everything at once: the zip sits inside the exports folder and does not zip itself
    everything = download_exports("", quiet=True)
    with zipfile.ZipFile(everything) as zf:
        names = zf.namelist()
    assert "exports/other/c.png" in names and "exports/nb/a.png" in names
    assert not any(n.endswith("exports.zip") for n in names)


def test_download_exports_starts_the_colab_download(tmp_path, monkeypatch):
    import types

    monkeypatch.setenv("COURSE_EXPORT_DIR", str(tmp_path / "exports"))
    _make_exports(tmp_path / "exports")
    started = []
    files = types.SimpleNamespace(download=started.append)
    colab = types.ModuleType("google.colab")
    colab.files = files
    google = types.ModuleType("google")
    google.colab = colab
    monkeypatch.setitem(sys.modules, "google", google)
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    path = download_exports("nb", quiet=True)
    assert started == [str(path)]


def test_download_exports_says_when_nothing_was_exported(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_EXPORT_DIR", str(tmp_path / "exports"))
    with pytest.raises(FileNotFoundError, match="no exported files yet"):
        download_exports("empty")


def test_zip_folder_differs_when_a_file_differs(tmp_path):
    _make_exports(tmp_path / "e")
    a = zip_folder(tmp_path / "e" / "nb", tmp_path / "a.zip").read_bytes()
    (tmp_path / "e" / "nb" / "a.png").write_bytes(b"changed")
    assert zip_folder(tmp_path / "e" / "nb", tmp_path / "b.zip").read_bytes() != a


def test_commands_loss_plot_is_written_and_closed(tmp_path):
    """The training commands save the loss plot and keep no figure open (a process that
    trains many times, as the README test does, would otherwise pile figures up)."""
    from course_lib.training.core import save_loss_plot

    state = {"train_losses": [(1, 3.0), (2, 2.5)], "evals": [{"step": 2, "val": 2.7}]}
    before = set(plt.get_fignums())
    save_loss_plot(state, "a run", tmp_path / "loss")
    assert (tmp_path / "loss.png").stat().st_size > 0
    assert set(plt.get_fignums()) == before


# ---------------------------------------------------------------- small matrices as tables


def test_table_labels_and_rounds_like_pandas():
    t = torch.tensor([[0.123456, 1.0], [2.5, -0.005001]])
    df = table(t, ["a", "b"], ["x", "y"])
    by_hand = pd.DataFrame([[0.12, 1.0], [2.5, -0.01]], index=["a", "b"], columns=["x", "y"], dtype="float32")
    pd.testing.assert_frame_equal(df, by_hand)
    assert table(t, ["a", "b"], ["x", "y"], decimals=4).loc["a", "x"] == pytest.approx(0.1235, abs=1e-6)
    # integers and booleans (masks, token ids) are shown as they are
    mask = torch.tensor([[True, False], [True, True]])
    assert table(mask, ["a", "b"], ["x", "y"]).to_numpy().tolist() == [[True, False], [True, True]]
    assert table(torch.arange(4).view(2, 2), ["a", "b"], ["x", "y"]).loc["b", "y"] == 3
    with pytest.raises(ValueError, match="2 row and 3 column labels for a matrix of shape"):
        table(t, ["a", "b"], ["x", "y", "z"])
    with pytest.raises(ValueError, match="2-D"):
        table(torch.zeros(2, 2, 2), ["a", "b"], ["x", "y"])
