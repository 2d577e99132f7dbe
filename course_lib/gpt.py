"""GPT: a decoder-only Transformer language model, as GPT-2 builds it.

    "We use a Transformer-based architecture [...] Layer normalization was moved to the
    input of each sub-block [...] and an additional layer normalization was added after
    the final self-attention block. A modified initialization which accounts for the
    accumulation on the residual path with model depth is used. We scale the weights of
    residual layers at initialization by a factor of 1/sqrt(N) where N is the number of
    residual layers."  (Radford et al., 2019, section 2.3)

The model: token embedding + learned position embedding, ``n_layers`` pre-norm decoder
layers without cross-attention (causal multi-head self-attention, then a GELU
feed-forward network, each inside a residual connection),
a final LayerNorm, and an output head that shares its weights with the token embedding.
``GPT.from_pretrained("gpt2")`` loads OpenAI's GPT-2 weights (Hugging Face format).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.attention import KVCache
from course_lib.checkpoint import (
    ModelConfig,
    heads_problems,
    integer_problems,
    number_problems,
)
from course_lib.embeddings import LearnedPositionalEmbedding, TokenEmbedding
from course_lib.losses import IGNORE_INDEX
from course_lib.transformer import ACTIVATION_SETTING, ACTIVATIONS, DecoderLayer

PRESETS: dict[str, dict] = {
    # GPT-2 small: 124,439,808 parameters (the output head is tied to the embedding).
    "gpt2-124m": dict(vocab_size=50257, block_size=1024, n_layers=12, n_heads=12, d_model=768,
                      activation="gelu_tanh"),
    "gpt2-medium": dict(vocab_size=50257, block_size=1024, n_layers=24, n_heads=16, d_model=1024,
                        activation="gelu_tanh"),
    # CPU presets (characters): vocab_size comes from the tokenizer.
    "tiny": dict(block_size=64, n_layers=3, n_heads=4, d_model=96),
    "small-cpu": dict(block_size=64, n_layers=4, n_heads=4, d_model=128),  # nanoGPT's CPU model
    "shakespeare-char": dict(block_size=256, n_layers=6, n_heads=6, d_model=384),  # nanoGPT's GPU model
}


@dataclass
class GPTConfig(ModelConfig):
    name, presets = "GPT", PRESETS  # class attributes, not fields

    vocab_size: int = 50257
    block_size: int = 1024  # context length: the most positions the model sees at once
    n_layers: int = 12
    n_heads: int = 12
    d_model: int = 768
    dropout: float = 0.0
    bias: bool = True
    layer_norm_eps: float = 1e-5
    # GELU(x) = x * Phi(x), computed exactly (with erf), as nanoGPT and BERT do. GPT-2 used a tanh
    # approximation ("gelu_tanh", which its weights need); in PyTorch on a CPU the exact one is
    # the faster to train: 3.7x in the forward and 2.7x in the backward of a (12, 64, 512)
    # tensor, 5-8% of a small-cpu training step (benchmarks/bench_gpt.py). On one token at a
    # time its fixed cost (oneDNN) makes batch-1 generation with the KV cache about 10% slower.
    activation: str = field(default="gelu", metadata=ACTIVATION_SETTING)
    model_type: str = "gpt"

    def __post_init__(self):
        problems = [] if self.model_type == "gpt" else [f"model_type is {self.model_type!r}, expected 'gpt'"]
        problems += integer_problems(self, ("vocab_size", "block_size", "n_layers", "n_heads", "d_model"))
        if not problems:
            problems += heads_problems(self.d_model, self.n_heads)
        problems += number_problems(self, ["dropout"], 0, 1) + number_problems(self, ["layer_norm_eps"], above=True)
        if not isinstance(self.bias, bool):
            problems.append(f"bias={self.bias!r} must be true or false")
        if self.activation not in ACTIVATIONS:
            problems.append(f"activation={self.activation!r} must be one of {sorted(ACTIVATIONS)}")
        if problems:
            raise ValueError("invalid GPT config: " + "; ".join(problems) + ".")


# Config keys added after GPT checkpoints were first written, with the value that rebuilds
# those older checkpoints' models: they were trained with GPT-2's tanh GELU.
CHECKPOINT_DEFAULTS = {"activation": "gelu_tanh"}
# Hugging Face's activation_function -> ours
HF_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu"}


class GPT(nn.Module):
    """Token + position embeddings -> ``n_layers`` pre-norm decoder layers without
    cross-attention (``course_lib.transformer.DecoderLayer``: causal self-attention, then
    a GELU feed-forward of width 4 d_model) -> final LayerNorm -> output projection."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.config = cfg
        self.tok_embed = TokenEmbedding(cfg.vocab_size, cfg.d_model, scale=False)
        self.pos_embed = LearnedPositionalEmbedding(cfg.block_size, cfg.d_model, dropout=cfg.dropout)
        self.layers = nn.ModuleList(
            DecoderLayer(cfg.d_model, cfg.n_heads, 4 * cfg.d_model, cfg.dropout, activation=cfg.activation,
                         norm_first=True, eps=cfg.layer_norm_eps, bias=cfg.bias, cross_attention=False)
            for _ in range(cfg.n_layers)
        )
        self.final_norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.out_proj = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.out_proj.weight = self.tok_embed.weight  # weight tying (the embedding matrix, transposed)
        self.apply(self._init_weights)
        # "scale the weights of residual layers at initialization by 1/sqrt(N)", N = 2 per layer
        for layer in self.layers:
            for w in (layer.self_attn.w_o.weight, layer.ff.w_2.weight):
                nn.init.normal_(w, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layers))

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (TokenEmbedding, LearnedPositionalEmbedding)):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)

    @classmethod
    def from_config(cls, config: dict | GPTConfig) -> GPT:
        return cls(config if isinstance(config, GPTConfig) else GPTConfig.from_dict(dict(config)))

    def num_parameters(self, non_embedding: bool = False) -> int:
        """Parameters counted once (the tied head is the embedding); ``non_embedding``
        leaves out the position table, as nanoGPT's FLOPs estimate does."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.pos_embed.weight.numel() if non_embedding else n

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs per token (forward + backward): 6 N + 12 L H Q T (PaLM, appendix B)."""
        c = self.config
        T = seq_len or c.block_size
        return 6 * self.num_parameters(non_embedding=True) + 12 * c.n_layers * c.n_heads * (c.d_model // c.n_heads) * T

    def new_caches(self) -> list[KVCache]:
        return [KVCache() for _ in self.layers]

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        caches: list[KVCache] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``idx (B, T)`` token ids -> ``(logits (B, T, vocab), loss or None)``.

        ``caches`` (one ``KVCache`` per layer, from ``new_caches()``): keys and values
        of earlier positions; ``idx`` then holds only the new tokens.
        """
        if idx.dim() != 2:
            raise ValueError(f"expected token ids of shape (B, T), got {tuple(idx.shape)}.")
        if idx.numel() == 0:
            raise ValueError(f"empty input of shape {tuple(idx.shape)}: give at least one sequence of "
                             "at least one token.")
        if targets is not None and targets.shape != idx.shape:
            raise ValueError(f"targets of shape {tuple(targets.shape)} do not match the input's "
                             f"{tuple(idx.shape)}; give one target id per input position.")
        start = len(caches[0]) if caches else 0
        if start + idx.shape[1] > self.config.block_size:
            raise ValueError(
                f"{start + idx.shape[1]} positions exceed the context of {self.config.block_size}; "
                "crop the input to the last block_size tokens (generate() does this)."
            )
        x = self.tok_embed(idx)
        x = self.pos_embed(x, start=start)
        for i, layer in enumerate(self.layers):
            x = layer(x, cache=caches[i] if caches else None)
        logits = self.out_proj(self.final_norm(x))
        loss = None
        if targets is not None:
            wide = logits if logits.dtype == torch.float64 else logits.float()  # float32 at least
            loss = F.cross_entropy(wide.view(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX)
        return logits, loss

    # ---- GPT-2 weights in Hugging Face's layout ------------------------------------------

    @classmethod
    def from_hf(cls, hf_config: dict, state_dict: dict[str, torch.Tensor]) -> GPT:
        """Build from a Hugging Face ``GPT2LMHeadModel`` config dict and state dict.

        HF's GPT-2 uses ``Conv1D`` (``y = x W + b``, W of shape (in, out)), so every
        weight matrix is transposed; ``c_attn`` holds q, k and v side by side.
        """
        act = hf_config.get("activation_function", "gelu_new")
        activation = HF_ACTIVATIONS.get(act)
        if activation is None:
            raise ValueError(f"the checkpoint's activation_function is {act!r}; GPT.from_hf loads "
                             f"{sorted(HF_ACTIVATIONS)}.")
        cfg = GPTConfig(
            vocab_size=hf_config["vocab_size"], block_size=hf_config["n_positions"],
            n_layers=hf_config["n_layer"], n_heads=hf_config["n_head"], d_model=hf_config["n_embd"],
            layer_norm_eps=hf_config.get("layer_norm_epsilon", 1e-5), activation=activation,
        )
        model = cls(cfg)
        model.load_state_dict(hf_to_course_state_dict(state_dict, cfg.n_layers))
        return model

    @classmethod
    def from_pretrained(cls, name_or_path: str = "gpt2") -> GPT:
        """GPT-2 weights from a local Hugging Face folder (``save_pretrained``) or the hub."""
        path = Path(name_or_path)
        if path.is_dir():
            return cls.from_hf(*_read_hf_folder(path))
        return cls.from_hf(*_hub_download(name_or_path))


def hf_to_course_state_dict(sd: dict[str, torch.Tensor], n_layers: int) -> dict[str, torch.Tensor]:
    """Hugging Face GPT-2 names -> ours. HF's ``Conv1D`` stores ``(in, out)`` matrices, so
    each is transposed; ``c_attn`` holds W_Q, W_K and W_V side by side."""
    sd = {k.removeprefix("transformer."): v for k, v in sd.items()}
    out = {"tok_embed.weight": sd["wte.weight"], "pos_embed.weight": sd["wpe.weight"],
           "final_norm.weight": sd["ln_f.weight"], "final_norm.bias": sd["ln_f.bias"]}
    out["out_proj.weight"] = out["tok_embed.weight"]
    for i in range(n_layers):
        hf, ours = f"h.{i}.", f"layers.{i}."
        q, k, v = sd[hf + "attn.c_attn.weight"].t().chunk(3, dim=0)
        qb, kb, vb = sd[hf + "attn.c_attn.bias"].chunk(3)
        linear = {"self_attn.w_q": (q, qb), "self_attn.w_k": (k, kb), "self_attn.w_v": (v, vb),
                  "self_attn.w_o": (sd[hf + "attn.c_proj.weight"].t(), sd[hf + "attn.c_proj.bias"]),
                  "ff.w_1": (sd[hf + "mlp.c_fc.weight"].t(), sd[hf + "mlp.c_fc.bias"]),
                  "ff.w_2": (sd[hf + "mlp.c_proj.weight"].t(), sd[hf + "mlp.c_proj.bias"]),
                  "self_attn_norm": (sd[hf + "ln_1.weight"], sd[hf + "ln_1.bias"]),
                  "ff_norm": (sd[hf + "ln_2.weight"], sd[hf + "ln_2.bias"])}
        for name, (weight, bias) in linear.items():
            out[ours + name + ".weight"], out[ours + name + ".bias"] = weight, bias
    return {k: v.contiguous() for k, v in out.items()}


def _read_hf_folder(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    config_file = path / "config.json"
    if not config_file.exists():
        raise FileNotFoundError(f"{path} has no config.json; it is not a Hugging Face model folder.")
    hf_config = json.loads(config_file.read_text())
    if (path / "model.safetensors").exists():
        from safetensors.torch import load_file

        return hf_config, load_file(str(path / "model.safetensors"))
    if (path / "pytorch_model.bin").exists():
        return hf_config, torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"{path} has neither model.safetensors nor pytorch_model.bin.")


def _hub_download(repo_id: str) -> tuple[dict, dict[str, torch.Tensor]]:
    from huggingface_hub import hf_hub_download

    from course_lib.data.sources import hub_unavailable

    why = hub_unavailable(repo_id, repo_type="model")
    try:
        files = {f: hf_hub_download(repo_id, f, local_files_only=why is not None)
                 for f in ("config.json", "model.safetensors")}
    except Exception as exc:
        raise RuntimeError(
            f"cannot load pretrained weights {repo_id!r}: the Hugging Face hub is not reachable "
            f"({why or type(exc).__name__}) and they are not in the local cache; "
            "connect to the internet once, or pass a local folder written by save_pretrained."
        ) from None
    return _read_hf_folder(Path(files["config.json"]).parent)
