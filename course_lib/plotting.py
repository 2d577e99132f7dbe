"""Plot helpers. Each returns its matplotlib figure; ``save_figure`` writes it as PNG,
SVG and/or PDF, byte-identical from one run to the next (no dates, fixed SVG ids)."""

from __future__ import annotations

import math
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch

FORMATS = ("png", "svg", "pdf")
_METADATA = {
    "png": {"Software": None},
    "svg": {"Date": None, "Creator": None},
    "pdf": {"CreationDate": None, "ModDate": None, "Creator": None, "Producer": None},
}


def save_figure(fig, path: str | Path, formats: Sequence[str] = FORMATS, dpi: int = 120,
                quiet: bool = False) -> list[Path]:
    """Save ``fig`` to ``path`` with each suffix in ``formats``; returns the paths written.

    Prints one line saying what it wrote (``saved exports/nb/name.{png,svg,pdf}``, relative to
    the working directory as ``env.shown_path`` shows it) unless ``quiet``. Output is deterministic: the same figure gives the same bytes in every run.
    """
    path = Path(path)
    for fmt in formats:
        if fmt not in FORMATS:
            raise ValueError(f"unknown figure format {fmt!r}; use some of {FORMATS}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in formats:
        target = path.with_suffix(f".{fmt}")
        with matplotlib.rc_context({"svg.hashsalt": "course_lib", "pdf.compression": 6}):
            fig.savefig(target, format=fmt, dpi=dpi, metadata=_METADATA[fmt], bbox_inches="tight")
        written.append(target)
    if not quiet and written:
        print("saved", describe_files(written))
    return written


def describe_files(paths: Sequence[str | Path]) -> str:
    """Paths that share a folder and a stem, written compactly: ``exports/nb/name.{png,svg}``
    (each path as ``env.shown_path`` shows it)."""
    from course_lib.env import shown_path

    paths = [Path(p).resolve() for p in paths]
    stems = {p.with_suffix("") for p in paths}
    if len(stems) == 1 and len(paths) > 1:
        return f"{shown_path(next(iter(stems)))}.{{{','.join(p.suffix[1:] for p in paths)}}}"
    return " ".join(shown_path(p) for p in paths)


def _to_numpy(x) -> np.ndarray:
    if torch.is_tensor(x):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x)


def table(matrix, rows: Sequence[str], cols: Sequence[str], decimals: int = 2):
    """A 2-D tensor (or array) as a pandas DataFrame labelled with ``rows`` and ``cols``
    (tokens, heads), its floats rounded to ``decimals`` places for reading; the notebooks
    show small matrices this way."""
    import pandas as pd

    m = matrix.detach().cpu().numpy() if torch.is_tensor(matrix) else np.asarray(matrix)  # dtype kept
    if m.ndim != 2:
        raise ValueError(f"table needs a 2-D matrix, got shape {m.shape}; select one head/row block.")
    if (len(rows), len(cols)) != m.shape:
        raise ValueError(f"table got {len(rows)} row and {len(cols)} column labels for a matrix of "
                         f"shape {m.shape}; pass one label per row and per column.")
    return pd.DataFrame(m.round(decimals) if m.dtype.kind == "f" else m, index=list(rows), columns=list(cols))


def heatmap(
    matrix,
    x_labels: Sequence[str] | None = None,
    y_labels: Sequence[str] | None = None,
    title: str = "",
    ax=None,
    cmap: str = "viridis",
    annotate: bool = False,
    mask=None,
    colorbar: bool = True,
    xlabel: str = "key",
    ylabel: str = "query",
    vmin: float | None = None,
    vmax: float | None = None,
):
    """A labelled heatmap of a 2-D matrix (attention weights: rows = queries, columns = keys).

    ``mask`` (bool, True = allowed) hatches the masked cells, to draw a mask over scores.
    Returns the figure.
    """
    m = _to_numpy(matrix)
    if m.ndim != 2:
        raise ValueError(f"heatmap needs a 2-D matrix, got shape {m.shape}; select one head/layer.")
    if ax is None:
        size = max(3.0, 0.45 * max(m.shape) + 1.5)
        fig, ax = plt.subplots(figsize=(size + (1.0 if colorbar else 0), size))
    else:
        fig = ax.figure
    shown = np.ma.masked_invalid(m)
    im = ax.imshow(shown, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    if mask is not None:
        allowed = _to_numpy(mask).astype(bool)
        allowed = np.broadcast_to(allowed, m.shape)
        for i, j in zip(*np.nonzero(~allowed)):
            ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=True, facecolor="lightgrey",
                                       hatch="//", edgecolor="grey", linewidth=0))
    if x_labels is not None:
        ax.set_xticks(range(len(x_labels)), labels=list(x_labels), rotation=90)
    if y_labels is not None:
        ax.set_yticks(range(len(y_labels)), labels=list(y_labels))
    if annotate:
        finite = m[np.isfinite(m)]  # -inf scores (masked) must not drag the threshold down
        middle = float(finite.mean()) if finite.size else 0.0
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                if np.isfinite(m[i, j]) and (mask is None or allowed[i, j]):
                    ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if m[i, j] < middle else "black")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if colorbar:
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return fig


LABEL_PT = 8.0  # tick labels of attention grids, in points at the saved size
_LINE_IN = LABEL_PT * 1.5 / 72  # room one label needs along an axis (inches)
MAX_CELL_IN = 5.0  # a grid cell never grows past this; beyond it, every k-th token is labelled


def _tick_step(n_tokens: int, cell_in: float) -> int:
    """Label every ``step``-th token so that labels of ``LABEL_PT`` never overlap."""
    return max(1, math.ceil(n_tokens * _LINE_IN / cell_in))


def attention_grid(
    weights,
    x_labels: Sequence[str] | None = None,
    y_labels: Sequence[str] | None = None,
    title: str = "",
    row_names: Sequence[str] | None = None,
    cell_size: float = 2.2,
):
    """Grid of attention maps: ``weights`` is ``(layers, heads, L_q, L_k)`` (or a list of
    ``(heads, L_q, L_k)``); one row per layer, one column per head, one colour bar for the
    shared 0-1 scale. Returns the figure.

    Labels are ``LABEL_PT`` (8) points at the saved size: a cell grows with the number of
    tokens (at least ``cell_size`` inches, at most ``MAX_CELL_IN``); past that, every k-th
    token is labelled (its position in brackets) so that no two labels overlap.
    """
    w = _grid_weights(weights)
    n_layers, n_heads, n_q, n_k = w.shape
    for name, labels, n in (("x_labels", x_labels, n_k), ("y_labels", y_labels, n_q)):
        if labels is not None and len(labels) != n:
            raise ValueError(f"{name} has {len(labels)} labels for {n} positions; give one per token.")
    cell_w = min(MAX_CELL_IN, max(cell_size, n_k * _LINE_IN))
    cell_h = min(MAX_CELL_IN, max(cell_size, n_q * _LINE_IN))
    fig, axes = _grid_axes(n_layers, n_heads, cell_w, cell_h, [*(x_labels or []), *(y_labels or [])], title)
    x_ticks = _grid_ticks(x_labels, _tick_step(n_k, cell_w)) if x_labels is not None else None
    y_ticks = _grid_ticks(y_labels, _tick_step(n_q, cell_h)) if y_labels is not None else None
    im = None
    for i in range(n_layers):
        for j in range(n_heads):
            ax = axes[i, j]
            im = ax.imshow(w[i, j], cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto",
                           interpolation="nearest")
            _label_grid_cell(ax, i, j, n_layers, x_ticks, y_ticks, row_names)
    bar = fig.colorbar(im, ax=axes.ravel().tolist(), shrink=min(1.0, 0.9 if n_layers > 1 else 1.0),
                       aspect=max(10, 20 * n_layers), pad=0.02)
    bar.set_label("attention weight", fontsize=9)
    bar.ax.tick_params(labelsize=LABEL_PT)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def _grid_weights(weights) -> np.ndarray:
    """``weights`` as a ``(layers, heads, L_q, L_k)`` array."""
    if isinstance(weights, (list, tuple)):
        weights = torch.stack([torch.as_tensor(w) for w in weights])
    w = _to_numpy(weights)
    if w.ndim == 3:
        w = w[None]
    if w.ndim != 4:
        raise ValueError(f"attention_grid needs (layers, heads, L_q, L_k), got shape {w.shape}.")
    return w


def _grid_axes(n_layers: int, n_heads: int, cell_w: float, cell_h: float, labels: Sequence, title: str):
    """``(fig, axes)`` of a layers x heads grid, with room for the longest of ``labels``,
    the titles and the colour bar around the cells."""
    longest = max((len(str(t)) for t in labels), default=2)
    margin = 0.6 + longest * LABEL_PT * 0.6 / 72
    return plt.subplots(
        n_layers, n_heads, squeeze=False, layout="constrained",
        figsize=(cell_w * n_heads + margin + 1.2, cell_h * n_layers + margin + (0.4 if title else 0)),
    )


def _grid_ticks(labels: Sequence, step: int) -> tuple[list[int], list[str]]:
    """Positions and texts of every ``step``-th label; past 1, each text gives its position."""
    idx = list(range(0, len(labels), step))
    text = [str(labels[i]) if step == 1 else f"{labels[i]} [{i}]" for i in idx]
    return idx, text


def _label_grid_cell(ax, i: int, j: int, n_layers: int, x_ticks, y_ticks, row_names) -> None:
    """Ticks and titles of the cell of layer ``i``, head ``j``: token labels on the bottom
    row and the first column only."""
    ax.set_xticks([])
    ax.set_yticks([])
    if i == n_layers - 1 and x_ticks is not None:
        ax.set_xticks(x_ticks[0], labels=x_ticks[1], rotation=90, fontsize=LABEL_PT)
    if j == 0 and y_ticks is not None:
        ax.set_yticks(y_ticks[0], labels=y_ticks[1], fontsize=LABEL_PT)
    if i == 0:
        ax.set_title(f"head {j}", fontsize=9)
    if j == 0:
        ax.set_ylabel(row_names[i] if row_names else f"layer {i}", fontsize=9)


def scatter_2d(
    points,
    labels: Sequence[str] | None = None,
    groups: Sequence[str] | None = None,
    title: str = "",
    ax=None,
    xlabel: str = "component 1",
    ylabel: str = "component 2",
):
    """Scatter of ``(N, 2)`` points (a 2-D projection of embeddings), each point labelled
    with ``labels[n]`` and coloured by ``groups[n]`` (one legend entry per group)."""
    p = _to_numpy(points)
    if p.ndim != 2 or p.shape[1] != 2:
        raise ValueError(f"scatter_2d needs (N, 2) points, got shape {p.shape}; project to 2-D first.")
    if ax is None:
        fig, ax = plt.subplots(figsize=(6.0, 5.0))
    else:
        fig = ax.figure
    names = list(dict.fromkeys(groups)) if groups is not None else [None]
    colours = plt.get_cmap("tab10")
    for c, name in enumerate(names):
        idx = [n for n in range(len(p)) if groups is None or groups[n] == name]
        ax.scatter(p[idx, 0], p[idx, 1], color=colours(c % 10), label=name, s=24)
    if labels is not None:
        for n, text in enumerate(labels):
            ax.annotate(str(text), (p[n, 0], p[n, 1]), textcoords="offset points", xytext=(4, 3), fontsize=8)
    if groups is not None:
        ax.legend(fontsize=8, loc="best")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    return fig


def lines(
    curves: dict,
    x=None,
    title: str = "",
    ax=None,
    xlabel: str = "",
    ylabel: str = "",
    logy: bool = False,
):
    """One line per entry of ``curves`` (name -> values, or name -> (x, values)). Returns the figure."""
    if ax is None:
        fig, ax = plt.subplots(figsize=(6.0, 3.5))
    else:
        fig = ax.figure
    for name, ys in curves.items():
        if isinstance(ys, tuple) and len(ys) == 2:
            xs, ys = _to_numpy(ys[0]), _to_numpy(ys[1])
        else:
            ys = _to_numpy(ys)
            xs = _to_numpy(x) if x is not None else np.arange(len(ys))
        ax.plot(xs, ys, label=str(name))
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if len(curves) > 1:
        ax.legend(fontsize=8)
    return fig


_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # the earliest date a zip can hold: no build time in the file


def zip_folder(folder: str | Path, target: str | Path) -> Path:
    """Zip every file under ``folder`` into ``target``, deterministically: sorted names,
    fixed dates and permissions, so the same files give the same bytes."""
    folder, target = Path(folder), Path(target)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.resolve() != target.resolve())
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    with zipfile.ZipFile(tmp, "w") as zf:
        for f in files:
            info = zipfile.ZipInfo(f"{folder.name}/{f.relative_to(folder).as_posix()}", _ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            info.create_system = 3  # unix, whatever the platform
            zf.writestr(info, f.read_bytes(), compresslevel=6)
    os.replace(tmp, target)
    return target


def download_exports(name: str = "", quiet: bool = False) -> Path:
    """Take a notebook's plots home: zip its exports folder (``export_dir(name)``) into
    ``<exports>/<name>.zip`` and, in Colab, start the browser's download of the zip;
    elsewhere print where it is (as ``env.shown_path`` shows it). Returns the zip's path.

    ``name`` is the notebook's folder (``"07_encoder_decoder"``); ``""`` zips every export.
    """
    from course_lib.env import export_dir, in_colab, shown_path

    folder = export_dir(name)
    zip_name = f"{name or folder.resolve().name}.zip"
    target = (folder.parent if name else folder) / zip_name
    n = sum(1 for p in folder.rglob("*") if p.is_file() and p.resolve() != target.resolve())
    if n == 0:
        raise FileNotFoundError(
            f"{shown_path(folder)} holds no exported files yet; run the notebook's plotting cells "
            "first (or check COURSE_EXPORT_DIR)."
        )
    zip_folder(folder, target)
    if not quiet:
        print(f"zipped {n} files -> {shown_path(target)}")
    if in_colab():
        from google.colab import files  # only importable in Colab

        files.download(str(target))
    return target


def stacked_bars(
    parts: dict,
    labels: Sequence[str],
    title: str = "",
    ax=None,
    ylabel: str = "",
    limits: Sequence[float | None] | None = None,
    limit_label: str = "limit",
):
    """Stacked bars: ``parts`` maps a part's name to one value per bar (stacked in order),
    ``labels`` names the bars; ``limits`` (one per bar, or None) draws a dashed line over
    each bar, e.g. a device's memory. Returns the figure."""
    names = list(parts)
    values = np.array([_to_numpy(parts[n]).astype(float) for n in names]) if names else np.zeros((0, len(labels)))
    if values.ndim != 2 or values.shape[1] != len(labels):
        raise ValueError(f"stacked_bars needs one value per bar for each part ({len(labels)} bars), "
                         f"got shape {values.shape}.")
    if ax is None:
        fig, ax = plt.subplots(figsize=(max(6.0, 0.95 * len(labels) + 2.0), 4.2))
    else:
        fig = ax.figure
    colours = plt.get_cmap("tab10")
    bottom = np.zeros(len(labels))
    for i, name in enumerate(names):
        ax.bar(range(len(labels)), values[i], bottom=bottom, color=colours(i % 10), label=str(name), width=0.65)
        bottom += values[i]
    if limits is not None:
        first = True
        for i, lim in enumerate(limits):
            if lim is not None and np.isfinite(lim):
                ax.hlines(lim, i - 0.42, i + 0.42, colors="black", linestyles="--", lw=1.2,
                          label=limit_label if first else None)
                first = False
    ax.set_xticks(range(len(labels)), labels=list(labels), fontsize=8)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8, ncol=2, loc="upper left")
    fig.tight_layout()
    return fig
