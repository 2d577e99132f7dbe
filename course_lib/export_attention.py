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

From the command line, with a checkpoint written by ``course_lib.checkpoint.save_checkpoint``
(its config has ``model_type``; ``tokenizer.json`` lies beside it):

    python -m course_lib.export_attention --checkpoint runs/gpt/ckpt.safetensors \\
        --text "To be, or not to be" --out exports/attention_gpt
    python -m course_lib.export_attention --checkpoint runs/translate/ckpt.safetensors \\
        --text "A man is riding a bike." --target "Ein Mann fährt Fahrrad." --out exports/attention_mt
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from course_lib.attention import MultiHeadAttention, record_attention
from course_lib.checkpoint import resolve_checkpoint

# model_type (the checkpoint config's "model_type") -> "module:Class"; imported only when
# used. A model_type that is not a key here may name its class itself: "package.module:Class".
MODEL_TYPES = {
    "transformer": "course_lib.transformer:Transformer",
    "gpt": "course_lib.gpt:GPT",
}
MAX_LABELLED = 48  # longer sequences are drawn without tick labels


def model_class(model_type: str) -> type:
    """The model class for ``model_type``: a key of ``MODEL_TYPES`` or "module:Class"."""
    spec = MODEL_TYPES.get(model_type, model_type)
    if ":" not in spec:
        raise ValueError(
            f"unknown model_type {model_type!r}; known: {sorted(MODEL_TYPES)} (or give "
            "'package.module:Class', or add an entry to course_lib.export_attention.MODEL_TYPES)."
        )
    module, name = spec.split(":", 1)
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"model_type {model_type!r} points to {spec}, which cannot be imported: {exc}") from exc
    if not hasattr(cls, "from_config"):
        raise ValueError(f"{spec} has no from_config(dict); it cannot be rebuilt from a checkpoint.")
    return cls


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
    from course_lib.plotting import attention_grid, heatmap, plt, save_figure

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
        decoder_side = kind.startswith("decoder") or kind == "cross"
        y = _labels(w.shape[1], *((target_tokens, tokens) if decoder_side else (tokens, target_tokens)))
        x = _labels(w.shape[2], *((tokens, target_tokens) if kind.endswith("cross") or not decoder_side
                                   else (target_tokens, tokens)))
        files = []
        for h in range(w.shape[0]):
            size = min(12.0, max(3.0, 0.35 * max(w.shape[1:]) + 1.5))
            fig, ax = plt.subplots(figsize=(size + 1.0, size))
            labelled = max(w.shape[1:]) <= MAX_LABELLED
            heatmap(w[h], x if labelled else None, y if labelled else None, ax=ax, vmin=0.0, vmax=1.0,
                    title=f"{kind} attention, layer {layer}, head {h}")
            files += [p.name for p in save_figure(fig, out / f"{_slug(name)}_head{h}", formats, quiet=True)]
            plt.close(fig)
        index["modules"].append({"module": name, "kind": kind, "layer": layer, "heads": int(w.shape[0]),
                                 "query_tokens": y, "key_tokens": x, "files": files})
        groups.setdefault(pattern, []).append((layer, name, kind, w, x, y))
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
        index["grids"].append({"kind": kind, "modules": [m[1] for m in members], "files": files,
                               "shape": list(stacked.shape)})
    from safetensors.torch import save_file

    save_file({k: v for k, v in tensors.items()}, str(out / "attention.safetensors"))
    (out / "attention.json").write_text(json.dumps(index, indent=1, ensure_ascii=False) + "\n",
                                        encoding="utf-8")
    return index


# ------------------------------------------------------------------ command line


def token_labels(tokenizer, ids: Sequence[int]) -> list[str]:
    """One readable label per token id (newlines and tabs made visible)."""
    return [tokenizer.decode([int(i)]).replace("\n", "\\n").replace("\t", "\\t") for i in ids]


def build_inputs(model: nn.Module, tokenizer, text: str, target: str | None = None,
                 target_tokenizer=None):
    """``(inputs, source labels, target labels)`` for one text.

    A model class may define ``attention_inputs(tokenizer, text, target)`` returning the
    same triple (to follow its own conventions, e.g. special tokens). Otherwise: a model
    whose ``forward`` takes one input gets the text's ids ``(1, L)``; one that takes two
    (an encoder-decoder) gets the source ids and the target ids, after ``<bos>`` when the
    tokenizer has one (the decoder's input is shifted right).
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
    bos = getattr(target_tokenizer, "special_tokens", {}).get("<bos>")
    tgt = ([bos] if bos is not None else []) + target_tokenizer.encode(target)
    return ((torch.tensor([src]), torch.tensor([tgt])), token_labels(tokenizer, src),
            token_labels(target_tokenizer, tgt))


def load_model(checkpoint: str | Path, device: str = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the model of a checkpoint from its config's ``model_type``; eval mode."""
    from course_lib.checkpoint import load_checkpoint

    ckpt = load_checkpoint(checkpoint, device=device)
    config = ckpt["config"]
    if "model_type" not in config:
        raise ValueError(
            f"{checkpoint}'s config has no 'model_type'; save checkpoints with "
            f"config['model_type'] set to one of {sorted(MODEL_TYPES)}."
        )
    model = model_class(config["model_type"]).from_config(config)
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), config


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m course_lib.export_attention",
                                description="Export every attention map of a trained model for one input.")
    p.add_argument("--checkpoint", required=True, help="a .safetensors checkpoint (config has model_type)")
    p.add_argument("--text", required=True, help="the input text (the source, for a translator)")
    p.add_argument("--target", default=None, help="decoder input text for an encoder-decoder")
    p.add_argument("--out", required=True, help="folder to write the maps into")
    p.add_argument("--formats", nargs="+", default=["png"], choices=["png", "svg", "pdf"])
    p.add_argument("--tokenizer", default=None, help="tokenizer JSON (default: tokenizer.json beside the checkpoint)")
    p.add_argument("--target-tokenizer", default=None, help="target-side tokenizer JSON, if different")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    from course_lib.tokenizer import load_tokenizer

    checkpoint = resolve_checkpoint(args.checkpoint)
    tok_path = Path(args.tokenizer) if args.tokenizer else checkpoint.parent / "tokenizer.json"
    if not tok_path.exists():
        p.error(f"no tokenizer at {tok_path}; save it beside the checkpoint or pass --tokenizer.")
    try:
        model, config = load_model(checkpoint, args.device)
        tokenizer = load_tokenizer(tok_path)
        tgt_tok = load_tokenizer(args.target_tokenizer) if args.target_tokenizer else None
        inputs, src_labels, tgt_labels = build_inputs(model, tokenizer, args.text, args.target, tgt_tok)
        inputs = tuple(t.to(args.device) for t in inputs)
        index = export_attention_maps(model, *inputs, tokens=src_labels, target_tokens=tgt_labels,
                                      out_dir=args.out, formats=args.formats)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    n = sum(len(m["files"]) for m in index["modules"]) + sum(len(g["files"]) for g in index["grids"])
    print(f"{config['model_type']}: {len(index['modules'])} attention modules, "
          f"{sum(m['heads'] for m in index['modules'])} heads -> {n} figures in {Path(args.out).resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
