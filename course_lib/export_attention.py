"""Export every attention map of a model, for one input, into a folder.

    "Not only do individual attention heads clearly learn to perform different tasks,
    many appear to exhibit behavior related to the syntactic and semantic structure of
    the sentences."  (Vaswani et al., 2017, 4)

Works for any model built from ``course_lib.attention.MultiHeadAttention`` modules: it
runs the model once under ``record_attention`` and writes, for every attention module
and head, a heatmap with the tokens on both axes (``<module>_head<h>.png``), one grid of
layers x heads per kind of attention (``grid_encoder_self.png``, ``grid_decoder_cross.png``,
...), the raw weights (``attention.safetensors``) and an index (``attention.json``).

The module names give the layer and the kind: the first number in the name is the layer
(``decoder_layers.2.cross_attn`` -> layer 2), "enc"/"dec" and "cross" in it give the kind
("decoder cross"); anything else is "self".

From the command line, with a run folder written by ``python -m course_lib train``:

    python -m course_lib export-attention runs/gpt "To be, or not to be" --out exports/attention_gpt
    python -m course_lib export-attention runs/translate "the man sees the dog ." \\
        --target "der Mann sieht den Hund ." --out exports/attention_mt
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from course_lib.attention import MultiHeadAttention, record_attention

MAX_LABELLED = 48  # longer sequences are drawn without tick labels


def describe(name: str) -> tuple[int, str, str]:
    """``(layer, kind label, group pattern)`` of an attention module's name."""
    parts = name.split(".")
    idx = next((i for i, p in enumerate(parts) if p.isdigit()), None)
    layer = int(parts[idx]) if idx is not None else 0
    pattern = ".".join("*" if i == idx else p for i, p in enumerate(parts))
    low = name.lower()
    side = "encoder" if "enc" in low else "decoder" if "dec" in low else ""
    kind = "cross" if "cross" in low else "self"
    return layer, f"{side} {kind}".strip(), pattern


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_") or "attention"


def _labels(length: int, *candidates: Sequence[str] | None) -> list[str]:
    for c in candidates:
        if c is not None and len(c) == length:
            return list(c)
    return [str(i) for i in range(length)]


def collect_attention(model: nn.Module, *inputs, **forward_kwargs) -> dict[str, torch.Tensor]:
    """Run ``model(*inputs)`` once in eval mode; ``{module name: (B, heads, L_q, L_k)}``."""
    if not any(isinstance(m, MultiHeadAttention) for m in model.modules()):
        raise ValueError(
            f"{type(model).__name__} has no course_lib MultiHeadAttention module; nothing to export."
        )
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), record_attention(model) as maps:
            model(*inputs, **forward_kwargs)
    finally:
        model.train(was_training)
    return {k: v.float().cpu() for k, v in maps().items()}


def export_attention_maps(
    model: nn.Module,
    *inputs,
    tokens: Sequence[str] | None = None,
    target_tokens: Sequence[str] | None = None,
    out_dir: str | Path,
    formats: Sequence[str] = ("png",),
    batch_index: int = 0,
    forward_kwargs: dict | None = None,
) -> dict:
    """Export every attention map of ``model`` for ``inputs`` into ``out_dir``.

    ``tokens``: labels of the (source) sequence; ``target_tokens``: of the decoder's
    input in an encoder-decoder. Queries of decoder modules are labelled with the
    target tokens, keys of cross-attention with the source tokens; where a label list
    does not fit an axis' length the positions are numbered. Returns the index that is
    also written to ``attention.json``.
    """
    import course_lib.plotting  # noqa: F401  (matplotlib loads before the model runs)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    maps = collect_attention(model, *inputs, **(forward_kwargs or {}))
    index: dict = {"modules": [], "grids": []}
    groups: dict[str, list] = {}
    for name, w in maps.items():
        if not 0 <= batch_index < w.shape[0]:
            raise ValueError(f"batch_index={batch_index} is outside the batch of {w.shape[0]}.")
        w = w[batch_index]  # (heads, L_q, L_k)
        layer, kind, pattern = describe(name)
        y, x = _axis_labels(kind, w.shape[1], w.shape[2], tokens, target_tokens)
        files = _save_head_maps(w, name, kind, layer, x, y, out, formats)
        index["modules"].append({"module": name, "kind": kind, "layer": layer, "heads": int(w.shape[0]),
                                 "query_tokens": y, "key_tokens": x, "files": files})
        groups.setdefault(pattern, []).append((layer, name, kind, w, x, y))
    tensors = _save_grids(groups, out, formats, index["grids"])
    _write_weights_and_index(out, tensors, index)
    return index


def _axis_labels(kind: str, n_q: int, n_k: int, tokens: Sequence[str] | None,
                 target_tokens: Sequence[str] | None) -> tuple[list[str], list[str]]:
    """``(query labels, key labels)`` of a module of ``kind``: decoder queries read the
    target, cross-attention keys the source; numbered positions where no list fits."""
    decoder_side = kind.startswith("decoder") or kind == "cross"
    y = _labels(n_q, *((target_tokens, tokens) if decoder_side else (tokens, target_tokens)))
    x = _labels(n_k, *((tokens, target_tokens) if kind.endswith("cross") or not decoder_side
                       else (target_tokens, tokens)))
    return y, x


def _save_head_maps(w: torch.Tensor, name: str, kind: str, layer: int, x: list[str], y: list[str],
                    out: Path, formats: Sequence[str]) -> list[str]:
    """One heatmap per head of ``w (heads, L_q, L_k)``; returns the names of the files written."""
    from course_lib.plotting import heatmap, plt, save_figure

    files = []
    for h in range(w.shape[0]):
        size = min(12.0, max(3.0, 0.35 * max(w.shape[1:]) + 1.5))
        fig, ax = plt.subplots(figsize=(size + 1.0, size))
        labelled = max(w.shape[1:]) <= MAX_LABELLED
        heatmap(w[h], x if labelled else None, y if labelled else None, ax=ax, vmin=0.0, vmax=1.0,
                title=f"{kind} attention, layer {layer}, head {h}")
        files += [p.name for p in save_figure(fig, out / f"{_slug(name)}_head{h}", formats, quiet=True)]
        plt.close(fig)
    return files


def _save_grids(groups: dict[str, list], out: Path, formats: Sequence[str],
                grids: list) -> dict[str, torch.Tensor]:
    """One layers x heads grid per group of modules (``(layer, name, kind, w, x, y)`` each);
    appends each grid's entry to ``grids`` and returns the stacked weights by file slug."""
    from course_lib.plotting import attention_grid, plt, save_figure

    kinds = [g[0][2] for g in groups.values()]
    tensors = {}
    for pattern, members in groups.items():
        members.sort(key=lambda m: m[0])
        kind = members[0][2]
        slug = _slug(kind if kinds.count(kind) == 1 else pattern)
        shapes = {tuple(m[3].shape) for m in members}
        if len(shapes) != 1:  # layers that differ in heads or lengths cannot share one grid
            continue
        stacked = torch.stack([m[3] for m in members])
        tensors[slug] = stacked.contiguous()
        _, _, _, _, x, y = members[0]
        fig = attention_grid(stacked, x, y,  # long sequences: attention_grid labels every k-th token
                             title=f"{kind} attention: layers x heads",
                             row_names=[f"layer {m[0]}" for m in members])
        files = [p.name for p in save_figure(fig, out / f"grid_{slug}", formats, quiet=True)]
        plt.close(fig)
        grids.append({"kind": kind, "modules": [m[1] for m in members], "files": files,
                      "shape": list(stacked.shape)})
    return tensors


def _write_weights_and_index(out: Path, tensors: dict[str, torch.Tensor], index: dict) -> None:
    """``attention.safetensors`` (the grids' weights) and ``attention.json`` (the index)."""
    from safetensors.torch import save_file

    save_file({k: v for k, v in tensors.items()}, str(out / "attention.safetensors"))
    (out / "attention.json").write_text(json.dumps(index, indent=1, ensure_ascii=False) + "\n",
                                        encoding="utf-8")


# ------------------------------------------------------------------ command line


def token_labels(tokenizer, ids: Sequence[int]) -> list[str]:
    """One readable label per token id (newlines and tabs made visible)."""
    return [tokenizer.decode([int(i)]).replace("\n", "\\n").replace("\t", "\\t") for i in ids]


def build_inputs(model: nn.Module, tokenizer, text: str, target: str | None = None,
                 target_tokenizer=None):
    """``(inputs, source labels, target labels)`` for one text.

    A model class may define ``attention_inputs(tokenizer, text, target)`` returning the
    same triple (to follow its own conventions). Otherwise: a model whose ``forward`` takes
    one input gets the text's ids ``(1, L)``; one that takes two (an encoder-decoder) gets
    the pair as the translator is trained on it (``training.translation.encode_pairs``): the
    source ids then ``<eos>``, and ``<bos>``, the target ids, ``<eos>`` (each special token
    where the tokenizer has it). The special tokens stay in the maps and in the labels: a
    translator attends to the source's ``<eos>`` a good deal, and the last row of a
    decoder map is the position that reads the target's ``<eos>``.
    """
    if hasattr(model, "attention_inputs"):
        return model.attention_inputs(tokenizer, text, target)
    target_tokenizer = target_tokenizer or tokenizer
    params = [p for p in inspect.signature(model.forward).parameters.values()
              if p.default is inspect.Parameter.empty
              and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    src = tokenizer.encode(text)
    if not src:
        raise ValueError("the text encodes to no tokens; give a non-empty --text.")
    if len(params) < 2:
        return (torch.tensor([src]),), token_labels(tokenizer, src), None
    if target is None:
        raise ValueError(
            f"{type(model).__name__} is an encoder-decoder: give --target, the decoder's input "
            "text (a reference translation, or the model's own output)."
        )
    src_specials = getattr(tokenizer, "special_tokens", {})
    tgt_specials = getattr(target_tokenizer, "special_tokens", {})
    src = src + _present(src_specials.get("<eos>"))
    tgt = (_present(tgt_specials.get("<bos>")) + target_tokenizer.encode(target)
           + _present(tgt_specials.get("<eos>")))
    return ((torch.tensor([src]), torch.tensor([tgt])), token_labels(tokenizer, src),
            token_labels(target_tokenizer, tgt))


def _present(token_id: int | None) -> list[int]:
    return [] if token_id is None else [token_id]
