"""GPT: a decoder-only Transformer language model, as GPT-2 builds it.

    "We use a Transformer-based architecture [...] Layer normalization was moved to the
    input of each sub-block [...] and an additional layer normalization was added after
    the final self-attention block. A modified initialization which accounts for the
    accumulation on the residual path with model depth is used. We scale the weights of
    residual layers at initialization by a factor of 1/sqrt(N) where N is the number of
    residual layers."  (Radford et al., 2019, section 2.3)

The model: token embedding + learned position embedding, ``n_layers`` pre-norm blocks
(causal multi-head self-attention, then a GELU MLP, each inside a residual connection),
a final LayerNorm, and an output head that shares its weights with the token embedding.
``GPT.from_pretrained("gpt2")`` loads OpenAI's GPT-2 weights (Hugging Face format).
"""

from __future__ import annotations

import json
import math
import socket
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.attention import KVCache, MultiHeadAttention
from course_lib.embeddings import LearnedPositionalEmbedding, TokenEmbedding

PRESETS: dict[str, dict] = {
    # GPT-2 small: 124,439,808 parameters (the output head is tied to the embedding).
    "gpt2-124m": dict(vocab_size=50257, block_size=1024, n_layers=12, n_heads=12, d_model=768),
    "gpt2-medium": dict(vocab_size=50257, block_size=1024, n_layers=24, n_heads=16, d_model=1024),
    # CPU presets (characters): vocab_size comes from the tokenizer.
    "tiny": dict(block_size=64, n_layers=3, n_heads=4, d_model=96),
    "small-cpu": dict(block_size=64, n_layers=4, n_heads=4, d_model=128),  # nanoGPT's CPU model
}


@dataclass
class GPTConfig:
    vocab_size: int = 50257
    block_size: int = 1024  # context length: the most positions the model sees at once
    n_layers: int = 12
    n_heads: int = 12
    d_model: int = 768
    dropout: float = 0.0
    bias: bool = True
    layer_norm_eps: float = 1e-5
    model_type: str = "gpt"

    @classmethod
    def from_dict(cls, d: dict) -> GPTConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown GPT config field(s) {unknown}; known fields: {sorted(known)}.")
        if d.get("model_type", "gpt") != "gpt":
            raise ValueError(f"config has model_type={d['model_type']!r}, not 'gpt'; use that model's class.")
        return cls(**d)

    @classmethod
    def preset(cls, name: str, **overrides) -> GPTConfig:
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}.")
        return cls(**{**PRESETS[name], **overrides})

    def to_dict(self) -> dict:
        return asdict(self)


class MLP(nn.Module):
    """Position-wise feed-forward network: Linear(d, 4d) -> GELU (tanh) -> Linear(4d, d)."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.d_model, 4 * cfg.d_model, bias=cfg.bias)
        self.c_proj = nn.Linear(4 * cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class Block(nn.Module):
    """Pre-norm block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, dropout=cfg.dropout, bias=cfg.bias)
        self.resid_dropout = nn.Dropout(cfg.dropout)
        self.ln_2 = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        a, _ = self.attn(self.ln_1(x), is_causal=True, cache=cache)
        x = x + self.resid_dropout(a)
        return x + self.mlp(self.ln_2(x))


def _is_compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and hasattr(compiler, "is_compiling") and compiler.is_compiling())


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.config = cfg
        self.tok_emb = TokenEmbedding(cfg.vocab_size, cfg.d_model, scale=False)
        self.pos_emb = LearnedPositionalEmbedding(cfg.block_size, cfg.d_model, dropout=cfg.dropout)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layers)])
        self.ln_f = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.tok_emb.weight  # weight tying (the embedding matrix, transposed)
        self.apply(self._init_weights)
        # "scale the weights of residual layers at initialization by 1/sqrt(N)", N = 2 per block
        for block in self.blocks:
            for w in (block.attn.w_o.weight, block.mlp.c_proj.weight):
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

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameters counted once (the tied head is the embedding); ``non_embedding``
        leaves out the position table, as nanoGPT's FLOPs estimate does."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.pos_emb.weight.numel() if non_embedding else n

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs per token (forward + backward): 6 N + 12 L H Q T (PaLM, appendix B)."""
        c = self.config
        T = seq_len or c.block_size
        return 6 * self.num_params(non_embedding=True) + 12 * c.n_layers * c.n_heads * (c.d_model // c.n_heads) * T

    def new_caches(self) -> list[KVCache]:
        return [KVCache() for _ in self.blocks]

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        caches: list[KVCache] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``idx (B, T)`` token ids -> ``(logits (B, T, vocab), loss or None)``.

        ``caches`` (one ``KVCache`` per block, from ``new_caches()``): keys and values
        of earlier positions; ``idx`` then holds only the new tokens.
        """
        if idx.dim() != 2:
            raise ValueError(f"expected token ids of shape (B, T), got {tuple(idx.shape)}.")
        start = len(caches[0]) if caches else 0
        if start + idx.shape[1] > self.config.block_size:
            raise ValueError(
                f"{start + idx.shape[1]} positions exceed the context of {self.config.block_size}; "
                "crop the input to the last block_size tokens (generate() does this)."
            )
        # The embedding's id check reads the ids on the host: skip it inside torch.compile.
        x = F.embedding(idx, self.tok_emb.weight) if _is_compiling() else self.tok_emb(idx)
        x = self.pos_emb(x, start=start)
        for i, block in enumerate(self.blocks):
            x = block(x, cache=caches[i] if caches else None)
        logits = self.lm_head(self.ln_f(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    # ---- GPT-2 weights in Hugging Face's layout ------------------------------------------

    @classmethod
    def from_hf(cls, hf_config: dict, state_dict: dict[str, torch.Tensor]) -> GPT:
        """Build from a Hugging Face ``GPT2LMHeadModel`` config dict and state dict.

        HF's GPT-2 uses ``Conv1D`` (``y = x W + b``, W of shape (in, out)), so every
        weight matrix is transposed; ``c_attn`` holds q, k and v side by side.
        """
        act = hf_config.get("activation_function", "gelu_new")
        if act not in ("gelu_new", "gelu_pytorch_tanh"):
            raise ValueError(f"this GPT uses the tanh GELU; the checkpoint uses {act!r}.")
        cfg = GPTConfig(
            vocab_size=hf_config["vocab_size"], block_size=hf_config["n_positions"],
            n_layers=hf_config["n_layer"], n_heads=hf_config["n_head"], d_model=hf_config["n_embd"],
            layer_norm_eps=hf_config.get("layer_norm_epsilon", 1e-5),
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
    sd = {k.removeprefix("transformer."): v for k, v in sd.items()}
    out = {
        "tok_emb.weight": sd["wte.weight"], "pos_emb.weight": sd["wpe.weight"],
        "ln_f.weight": sd["ln_f.weight"], "ln_f.bias": sd["ln_f.bias"],
    }
    out["lm_head.weight"] = out["tok_emb.weight"]
    for i in range(n_layers):
        h, b = f"h.{i}.", f"blocks.{i}."
        for ln in ("ln_1", "ln_2"):
            out[b + ln + ".weight"], out[b + ln + ".bias"] = sd[h + ln + ".weight"], sd[h + ln + ".bias"]
        qw, kw, vw = sd[h + "attn.c_attn.weight"].t().chunk(3, dim=0)
        qb, kb, vb = sd[h + "attn.c_attn.bias"].chunk(3)
        for name, w, bias in (("w_q", qw, qb), ("w_k", kw, kb), ("w_v", vw, vb)):
            out[b + f"attn.{name}.weight"], out[b + f"attn.{name}.bias"] = w, bias
        out[b + "attn.w_o.weight"] = sd[h + "attn.c_proj.weight"].t()
        out[b + "attn.w_o.bias"] = sd[h + "attn.c_proj.bias"]
        for name in ("c_fc", "c_proj"):
            out[b + f"mlp.{name}.weight"] = sd[h + f"mlp.{name}.weight"].t()
            out[b + f"mlp.{name}.bias"] = sd[h + f"mlp.{name}.bias"]
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


def _hub_reachable(host: str = "huggingface.co", timeout: float = 5.0) -> bool:
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _hub_download(repo_id: str) -> tuple[dict, dict[str, torch.Tensor]]:
    import os

    from huggingface_hub import hf_hub_download

    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"} or not _hub_reachable()
    try:
        files = {f: hf_hub_download(repo_id, f, local_files_only=offline) for f in ("config.json", "model.safetensors")}
    except Exception as exc:
        raise RuntimeError(
            f"cannot load pretrained weights {repo_id!r}: the Hugging Face hub is not reachable "
            f"({'offline' if offline else type(exc).__name__}) and they are not in the local cache; "
            "connect to the internet once, or pass a local folder written by save_pretrained."
        ) from None
    return _read_hf_folder(Path(files["config.json"]).parent)
