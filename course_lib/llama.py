"""The modern decoder (Llama, Qwen, Mistral): the course's GPT with five changes.

    "we leverage various improvements that were subsequently proposed [...] Pre-normalization
    [GPT3]. [...] we normalize the input of each transformer sub-layer [...] We use the RMSNorm
    normalizing function [...] SwiGLU activation function [PaLM]. [...] We use a dimension of
    2/3 4d instead of 4d as in PaLM. Rotary Embeddings [GPTNeo]. We remove the absolute
    positional embeddings, and instead, add rotary positional embeddings (RoPE)"
    (Touvron et al., 2023, LLaMA, section 2.2)

Against ``course_lib.gpt.GPT``:

- RMSNorm instead of LayerNorm (no mean subtracted, no bias);
- rotary position embeddings in every attention layer instead of a learned position table;
- a SwiGLU feed-forward of width ``d_ff`` (default about 8/3 d_model, which keeps the
  parameters of GPT's 4 d_model GELU feed-forward);
- grouped-query attention: ``n_kv_heads`` key/value heads, each shared by ``n_heads /
  n_kv_heads`` query heads (``n_kv_heads = 1``: multi-query attention);
- no biases anywhere; the output head tied to the embedding or not (``tie_embeddings``);
- ``qk_norm``: an RMSNorm on each query and key head before RoPE (Qwen3).

``Llama.from_pretrained`` loads Hugging Face ``LlamaForCausalLM`` and ``Qwen3ForCausalLM``
weights (e.g. SmolLM2-135M, Qwen3-0.6B).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.attention import KVCache
from course_lib.checkpoint import ModelConfig, integer_problems, number_problems
from course_lib.losses import IGNORE_INDEX
from course_lib.rope import RotaryEmbedding

PRESETS: dict[str, dict] = {
    # CPU presets (characters): vocab_size comes from the tokenizer; the sizes of GPT's.
    "tiny": dict(block_size=64, n_layers=3, n_heads=4, n_kv_heads=2, d_model=96),
    "small-cpu": dict(block_size=64, n_layers=4, n_heads=4, n_kv_heads=2, d_model=128),
    # Published configurations (config.json of each model on the Hugging Face hub).
    "smollm2-135m": dict(vocab_size=49152, block_size=8192, n_layers=30, n_heads=9, n_kv_heads=3,
                         d_model=576, d_ff=1536, rope_theta=100000.0, tie_embeddings=True),
    "qwen3-0.6b": dict(vocab_size=151936, block_size=40960, n_layers=28, n_heads=16, n_kv_heads=8,
                       d_model=1024, head_size=128, d_ff=3072, rope_theta=1000000.0, norm_eps=1e-6,
                       qk_norm=True, tie_embeddings=True),
}


def swiglu_hidden(d_model: int, multiple_of: int = 8) -> int:
    """The SwiGLU width that keeps a 4 d_model feed-forward's parameters: 3 d f = 8 d^2 gives
    f = 8 d / 3, rounded up to a multiple of ``multiple_of`` (Llama rounds to 256)."""
    return multiple_of * math.ceil(8 * d_model / 3 / multiple_of)


def _help(text: str) -> dict:
    return {"help": text}  # the --flag's help text in `train gpt --arch llama`


@dataclass
class LlamaConfig(ModelConfig):
    name, presets = "Llama", PRESETS  # class attributes, not fields

    vocab_size: int = 32000
    block_size: int = 1024  # context length: the most positions the model sees at once
    n_layers: int = 12
    n_heads: int = 12
    n_kv_heads: int = field(default=4, metadata=_help("key/value heads, a divisor of n_heads (n_heads: "
                                                      "multi-head, 1: multi-query attention)"))
    d_model: int = 768
    head_size: int | None = field(default=None, metadata=_help("size of each head (None: d_model / n_heads)"))
    d_ff: int | None = field(default=None, metadata=_help("SwiGLU's hidden width (None: about 8/3 d_model)"))
    rope_theta: float = field(default=10000.0, metadata=_help("RoPE's base: theta_i = base^(-2i/head_size)"))
    norm_eps: float = field(default=1e-5, metadata=_help("RMSNorm's epsilon"))
    qk_norm: bool = field(default=False, metadata=_help("RMSNorm on each query and key head (Qwen3)"))
    tie_embeddings: bool = field(default=False, metadata=_help("the output head shares the embedding matrix"))
    dropout: float = 0.0
    model_type: str = "llama"

    def __post_init__(self):
        problems = self._problems()
        if problems:
            raise ValueError("invalid Llama config: " + "; ".join(problems) + ".")

    def _problems(self) -> list[str]:
        problems = [] if self.model_type == "llama" else [f"model_type is {self.model_type!r}, expected 'llama'"]
        problems += integer_problems(self, ("vocab_size", "block_size", "n_layers", "n_heads", "n_kv_heads",
                                            "d_model"))
        problems += integer_problems(self, ("head_size", "d_ff"), optional=True)
        problems += number_problems(self, ["dropout"], 0, 1)
        problems += number_problems(self, ("rope_theta", "norm_eps"), above=True)
        problems += [f"{n}={getattr(self, n)!r} must be true or false" for n in ("qk_norm", "tie_embeddings")
                     if not isinstance(getattr(self, n), bool)]
        if problems:
            return problems
        if self.n_heads % self.n_kv_heads:
            problems.append(f"n_heads={self.n_heads} is not divisible by n_kv_heads={self.n_kv_heads}; each key/value "
                            "head serves a group of n_heads / n_kv_heads query heads: choose a divisor of n_heads")
        if self.head_size is None and self.d_model % self.n_heads:
            problems.append(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}; each head gets "
                            "d_model / n_heads dimensions (or set head_size)")
            return problems
        self.head_size = self.head_size or self.d_model // self.n_heads
        self.d_ff = self.d_ff or swiglu_hidden(self.d_model)
        if self.head_size % 2:
            problems.append(f"the head size {self.head_size} is odd; RoPE rotates pairs of dimensions, so it must "
                            "be even (change d_model or n_heads, or set an even head_size)")
        return problems


def kv_cache_bytes_per_token(cfg: LlamaConfig, bytes_per_value: int = 2) -> int:
    """Bytes the KV cache grows by per token: a key and a value of ``head_size`` for each of
    the ``n_kv_heads`` heads of each layer (2 bytes a value in bfloat16)."""
    return 2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_size * bytes_per_value


class RMSNorm(nn.Module):
    """``x / sqrt(mean(x^2) + eps) * g``: LayerNorm without the mean and the bias, computed
    in float32 (Zhang & Sennrich, 2019)."""

    def __init__(self, d: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * normed.to(x.dtype)


class SwiGLU(nn.Module):
    """``FFN_SwiGLU(x) = (Swish(x W) * x V) W_2`` (Shazeer, 2020, eq. 6), without biases."""

    def __init__(self, d_model: int, d_ff: int):
        super().__init__()
        self.w = nn.Linear(d_model, d_ff, bias=False)  # the gate, through Swish (SiLU)
        self.v = nn.Linear(d_model, d_ff, bias=False)
        self.w_2 = nn.Linear(d_ff, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(F.silu(self.w(x)) * self.v(x))


def causal_attention(q, k, v, start: int, dropout: float = 0.0) -> torch.Tensor:
    """Softmax attention of ``q (B, H, T, hs)`` over ``k, v (B, H_kv, start + T, hs)``; query
    ``t`` sees keys ``0 .. start + t``. Each key/value head serves ``H / H_kv`` query heads."""
    T, S = q.shape[-2], k.shape[-2]
    mask, causal = None, T > 1 and start == 0
    if T > 1 and start > 0:  # new tokens after cached ones: the diagonal starts at column start
        mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(diagonal=start)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, dropout_p=dropout,
                                          enable_gqa=k.shape[1] != q.shape[1])


class GroupedQueryAttention(nn.Module):
    """Causal self-attention with ``n_heads`` query heads and ``n_kv_heads`` key/value heads
    (Ainslie et al., 2023), RoPE on queries and keys, optional QK-norm; no biases."""

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        H, H_kv, hs, d = cfg.n_heads, cfg.n_kv_heads, cfg.head_size, cfg.d_model
        self.n_heads, self.n_kv_heads, self.head_size, self.dropout = H, H_kv, hs, cfg.dropout
        self.w_q = nn.Linear(d, H * hs, bias=False)
        self.w_k = nn.Linear(d, H_kv * hs, bias=False)
        self.w_v = nn.Linear(d, H_kv * hs, bias=False)
        self.w_o = nn.Linear(H * hs, d, bias=False)
        self.q_norm = RMSNorm(hs, cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(hs, cfg.norm_eps) if cfg.qk_norm else None

    def forward(self, x: torch.Tensor, rope: RotaryEmbedding, cache: KVCache | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.w_q(x).view(B, T, self.n_heads, self.head_size)
        k = self.w_k(x).view(B, T, self.n_kv_heads, self.head_size)
        v = self.w_v(x).view(B, T, self.n_kv_heads, self.head_size)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, T, hs)
        start = len(cache) if cache is not None else 0
        q, k = rope(q, start), rope(k, start)
        if cache is not None:
            k, v = cache.update(k, v)  # only the n_kv_heads heads are kept
        y = causal_attention(q, k, v, start, self.dropout if self.training else 0.0)
        return self.w_o(y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_size))


class LlamaLayer(nn.Module):
    """Pre-norm decoder layer: ``x + attn(norm(x))``, then ``x + ffn(norm(x))``."""

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.self_attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.self_attn = GroupedQueryAttention(cfg)
        self.ff_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.ff = SwiGLU(cfg.d_model, cfg.d_ff)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, rope: RotaryEmbedding, cache: KVCache | None = None) -> torch.Tensor:
        x = x + self.drop(self.self_attn(self.self_attn_norm(x), rope, cache))
        return x + self.drop(self.ff(self.ff_norm(x)))


class Llama(nn.Module):
    """Token embedding -> ``n_layers`` ``LlamaLayer`` (RoPE inside attention) -> RMSNorm ->
    output projection. Same interface as ``course_lib.gpt.GPT``."""

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.config = cfg
        self.tok_embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.rope = RotaryEmbedding(cfg.head_size, cfg.block_size, cfg.rope_theta)
        self.layers = nn.ModuleList(LlamaLayer(cfg) for _ in range(cfg.n_layers))
        self.final_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.out_proj = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.out_proj.weight = self.tok_embed.weight
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, mean=0.0, std=0.02)
        for layer in self.layers:  # GPT-2's 1/sqrt(N) on the residual projections, N = 2 per layer
            for w in (layer.self_attn.w_o.weight, layer.ff.w_2.weight):
                nn.init.normal_(w, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layers))

    @classmethod
    def from_config(cls, config: dict | LlamaConfig) -> Llama:
        return cls(config if isinstance(config, LlamaConfig) else LlamaConfig.from_dict(dict(config)))

    def num_parameters(self, non_embedding: bool = False) -> int:
        """Parameters counted once; ``non_embedding`` leaves out the input embedding when it
        is a lookup only (untied), as GPT leaves out its position table."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.tok_embed.weight.numel() if non_embedding and not self.config.tie_embeddings else n

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs per token (forward + backward): 6 N + 12 L H Q T (PaLM, appendix B)."""
        c = self.config
        T = seq_len or c.block_size
        return 6 * self.num_parameters(non_embedding=True) + 12 * c.n_layers * c.n_heads * c.head_size * T

    def new_caches(self) -> list[KVCache]:
        return [KVCache() for _ in self.layers]

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                caches: list[KVCache] | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``idx (B, T)`` token ids -> ``(logits (B, T, vocab), loss or None)``; ``caches`` as
        in ``GPT.forward`` (``idx`` then holds only the new tokens)."""
        if idx.dim() != 2 or idx.numel() == 0:
            raise ValueError(f"expected token ids of shape (B, T) with T >= 1, got {tuple(idx.shape)}.")
        if targets is not None and targets.shape != idx.shape:
            raise ValueError(f"targets of shape {tuple(targets.shape)} do not match the input's "
                             f"{tuple(idx.shape)}; give one target id per input position.")
        start = len(caches[0]) if caches else 0
        if start + idx.shape[1] > self.config.block_size:
            raise ValueError(f"{start + idx.shape[1]} positions exceed the context of {self.config.block_size}; "
                             "crop the input to the last block_size tokens (generate() does this).")
        x = self.tok_embed(idx)
        for i, layer in enumerate(self.layers):
            x = layer(x, self.rope, caches[i] if caches else None)
        logits = self.out_proj(self.final_norm(x))
        loss = None
        if targets is not None:
            wide = logits if logits.dtype == torch.float64 else logits.float()
            loss = F.cross_entropy(wide.view(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX)
        return logits, loss

    # ---- Hugging Face weights (LlamaForCausalLM, Qwen3ForCausalLM) ---------------------------

    @classmethod
    def from_hf(cls, hf_config: dict, state_dict: dict[str, torch.Tensor], block_size: int | None = None) -> Llama:
        """Build from a Hugging Face config dict and state dict; ``block_size`` caps the
        context (the RoPE tables grow with it)."""
        cfg = config_from_hf(hf_config, block_size)
        model = cls(cfg)
        model.load_state_dict(hf_to_course_state_dict(state_dict, cfg))
        return model

    @classmethod
    def from_pretrained(cls, name_or_path: str, block_size: int | None = None) -> Llama:
        """Weights from a local Hugging Face folder (``save_pretrained``) or the hub."""
        from course_lib.gpt import _hub_download, _read_hf_folder

        path = Path(name_or_path)
        found = _read_hf_folder(path) if path.is_dir() else _hub_download(name_or_path)
        return cls.from_hf(*found, block_size=block_size)


HF_MODEL_TYPES = ("llama", "qwen3")


def config_from_hf(hf: dict, block_size: int | None = None) -> LlamaConfig:
    """A Hugging Face ``config.json`` (Llama or Qwen3) as a ``LlamaConfig``; what the course's
    model does not have (biases, RoPE scaling, another activation) is an error."""
    kind = hf.get("model_type")
    if kind not in HF_MODEL_TYPES:
        raise ValueError(f"model_type={kind!r}: Llama.from_hf loads {HF_MODEL_TYPES} checkpoints.")
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    problems = [f"{k}=true" for k in ("attention_bias", "mlp_bias") if hf.get(k)]
    problems += [f"rope type {rope['rope_type']!r}"] if rope.get("rope_type", "default") != "default" else []
    problems += [f"hidden_act={hf['hidden_act']!r}"] if hf.get("hidden_act", "silu") != "silu" else []
    if problems:
        raise ValueError(f"this checkpoint has {', '.join(problems)}, which the course's Llama does not "
                         "implement (no biases, plain RoPE, SwiGLU with SiLU).")
    return LlamaConfig(
        vocab_size=hf["vocab_size"], block_size=block_size or hf["max_position_embeddings"],
        n_layers=hf["num_hidden_layers"], n_heads=hf["num_attention_heads"],
        n_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"], d_model=hf["hidden_size"],
        head_size=hf.get("head_dim"), d_ff=hf["intermediate_size"],
        rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))), norm_eps=hf["rms_norm_eps"],
        qk_norm=kind == "qwen3", tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
    )


HF_NAMES = {  # Hugging Face's name in layer i -> ours
    "input_layernorm": "self_attn_norm", "post_attention_layernorm": "ff_norm",
    "self_attn.q_proj": "self_attn.w_q", "self_attn.k_proj": "self_attn.w_k", "self_attn.v_proj": "self_attn.w_v",
    "self_attn.o_proj": "self_attn.w_o", "self_attn.q_norm": "self_attn.q_norm",
    "self_attn.k_norm": "self_attn.k_norm", "mlp.gate_proj": "ff.w", "mlp.up_proj": "ff.v",
    "mlp.down_proj": "ff.w_2",
}


def hf_to_course_state_dict(sd: dict[str, torch.Tensor], cfg: LlamaConfig) -> dict[str, torch.Tensor]:
    """Hugging Face Llama/Qwen3 names -> ours. Same matrices, same layout (``nn.Linear``,
    RoPE in halves): only the names change. A tied head is the embedding."""
    out = {"tok_embed.weight": sd["model.embed_tokens.weight"], "final_norm.weight": sd["model.norm.weight"]}
    if cfg.tie_embeddings:
        out["out_proj.weight"] = out["tok_embed.weight"]
    elif "lm_head.weight" in sd:
        out["out_proj.weight"] = sd["lm_head.weight"]
    else:
        raise ValueError("the checkpoint has no lm_head.weight but its config unties the embeddings "
                         "(tie_word_embeddings=false); the file is incomplete.")
    for key, value in sd.items():
        parts = key.split(".")
        if key.startswith("model.layers.") and key.endswith(".weight"):
            name = ".".join(parts[3:-1])
            if name not in HF_NAMES:
                raise ValueError(f"unexpected weight {key!r}; the course's Llama has no such part.")
            out[f"layers.{parts[2]}.{HF_NAMES[name]}.weight"] = value
    return out
