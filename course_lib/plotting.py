"""Plot helpers. Each returns its matplotlib figure; ``save_figure`` writes it as PNG,
SVG and/or PDF, byte-identical from one run to the next (no dates, fixed SVG ids)."""

from __future__ import annotations

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


def save_figure(fig, path: str | Path, formats: Sequence[str] = FORMATS, dpi: int = 120) -> list[Path]:
    """Save ``fig`` to ``path`` with each suffix in ``formats``; returns the paths written.

    Output is deterministic: the same figure gives the same bytes in every run.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in formats:
        if fmt not in FORMATS:
            raise ValueError(f"unknown figure format {fmt!r}; use some of {FORMATS}.")
        target = path.with_suffix(f".{fmt}")
        with matplotlib.rc_context({"svg.hashsalt": "course_lib", "pdf.compression": 6}):
            fig.savefig(target, format=fmt, dpi=dpi, metadata=_METADATA[fmt], bbox_inches="tight")
        written.append(target)
    return written


def _to_numpy(x) -> np.ndarray:
    if torch.is_tensor(x):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x)


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


def attention_grid(
    weights,
    x_labels: Sequence[str] | None = None,
    y_labels: Sequence[str] | None = None,
    title: str = "",
    row_names: Sequence[str] | None = None,
    cell_size: float = 2.2,
):
    """Grid of attention maps: ``weights`` is ``(layers, heads, L_q, L_k)`` (or a list of
    ``(heads, L_q, L_k)``); one row per layer, one column per head. Returns the figure."""
    if isinstance(weights, (list, tuple)):
        weights = torch.stack([torch.as_tensor(w) for w in weights])
    w = _to_numpy(weights)
    if w.ndim == 3:
        w = w[None]
    if w.ndim != 4:
        raise ValueError(f"attention_grid needs (layers, heads, L_q, L_k), got shape {w.shape}.")
    n_layers, n_heads = w.shape[:2]
    fig, axes = plt.subplots(n_layers, n_heads, figsize=(cell_size * n_heads, cell_size * n_layers),
                             squeeze=False)
    for i in range(n_layers):
        for j in range(n_heads):
            ax = axes[i, j]
            ax.imshow(w[i, j], cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == n_layers - 1 and x_labels is not None and len(x_labels) <= 24:
                ax.set_xticks(range(len(x_labels)), labels=list(x_labels), rotation=90, fontsize=6)
            if j == 0 and y_labels is not None and len(y_labels) <= 24:
                ax.set_yticks(range(len(y_labels)), labels=list(y_labels), fontsize=6)
            if i == 0:
                ax.set_title(f"head {j}", fontsize=8)
            if j == 0:
                ax.set_ylabel(row_names[i] if row_names else f"layer {i}", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


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
