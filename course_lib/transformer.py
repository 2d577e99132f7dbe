"""The encoder-decoder Transformer of "Attention Is All You Need" (Vaswani et al., 2017).

    "The encoder is composed of a stack of N = 6 identical layers. Each layer has two
    sub-layers. The first is a multi-head self-attention mechanism, and the second is a
    simple, position-wise fully connected feed-forward network. We employ a residual
    connection around each of the two sub-layers, followed by layer normalization.
    That is, the output of each sub-layer is LayerNorm(x + Sublayer(x))."  (3.1)

    "In addition to the two sub-layers in each encoder layer, the decoder inserts a third
    sub-layer, which performs multi-head attention over the output of the encoder stack.
    [...] We also modify the self-attention sub-layer in the decoder stack to prevent
    positions from attending to subsequent positions."  (3.1)

``norm_first=False`` is the paper's post-norm, ``LayerNorm(x + Sublayer(x))``;
``norm_first=True`` is the pre-norm variant ``x + Sublayer(LayerNorm(x))`` (which then
needs a final LayerNorm after each stack). Masks are bool, True = may attend.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.attention import KVCache, MultiHeadAttention, padding_mask
from course_lib.checkpoint import heads_problems, integer_problems, number_problems
from course_lib.embeddings import SinusoidalPositionalEncoding, TokenEmbedding

# The names of the original seq2seq course's JSON config -> ours: its model keys, and its
# training keys (which a model config skips; the translation trainer reads them).
COURSE_MODEL_KEYS = {"model_dim": "d_model", "hidden_dims": "d_ff", "num_heads": "n_heads",
                     "num_layers": "n_layers", "dropout": "dropout", "max_seq_length": "max_len"}
COURSE_TRAIN_KEYS = {"train_data": "data", "valid_data": "valid_data", "epochs": "epochs",
                     "batch_size": "batch_size", "learning_rate": "lr"}


def our_name(key: str) -> str:
    """A config key in our names: the original course's (``model_dim``, ``learning_rate``, ...)
    translated, any other key as it is."""
    return COURSE_MODEL_KEYS.get(key) or COURSE_TRAIN_KEYS.get(key) or key
# Config keys added after checkpoints were first written, with the value that rebuilds those
# older checkpoints' models (a config without the key was trained without the feature).
CHECKPOINT_DEFAULTS = {"share_embeddings": False}


ACTIVATIONS = {
    "relu": F.relu,  # the paper's max(0, x)
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),  # GPT-2's approximation
}
ACTIVATION_SETTING = {"choices": sorted(ACTIVATIONS),  # a config's `activation` field, as a flag
                      "help": "the feed-forward's nonlinearity: relu, gelu (exact) or gelu_tanh (GPT-2's)"}


@dataclass
class TransformerConfig:
    """Hyper-parameters; the defaults are the paper's base model (Table 3)."""

    model_type: str = "transformer"
    src_vocab_size: int = 32000
    tgt_vocab_size: int = 32000
    d_model: int = 512
    n_heads: int = 8
    n_layers: int = 6  # encoder layers (N)
    n_decoder_layers: int | None = None  # None: the same as n_layers
    d_ff: int = 2048
    dropout: float = 0.1
    activation: str = field(default="relu", metadata=ACTIVATION_SETTING)
    norm_first: bool = False  # False: the paper's post-norm
    max_len: int = 256  # longest source or target sequence, in tokens
    tie_embeddings: bool = True  # output projection shares the target embedding's weights
    # source and target embeddings are one matrix; None: yes when the vocabularies are one
    # (src_vocab_size == tgt_vocab_size). With tie_embeddings, that is the paper's 3.4.
    share_embeddings: bool | None = None
    pad_id: int = 0
    layer_norm_eps: float = 1e-5

    def __post_init__(self):
        problems = [] if self.model_type == "transformer" else [
            f"model_type is {self.model_type!r}, expected 'transformer'"]
        problems += integer_problems(self, ("src_vocab_size", "tgt_vocab_size", "d_model", "n_heads", "n_layers",
                                            "d_ff", "max_len"))
        problems += integer_problems(self, ["n_decoder_layers"], optional=True)
        if not problems:  # the original course's names too, for its JSON configs
            problems += heads_problems(self.d_model, self.n_heads, (" (model_dim)", " (num_heads)"))
        if not problems and self.d_model % 2:
            problems.append(f"d_model={self.d_model} must be even for the sinusoidal positions")
        problems += number_problems(self, ["dropout"], 0, 1) + number_problems(self, ["layer_norm_eps"], above=True)
        problems += [f"{name}={getattr(self, name)!r} must be true or false (a boolean, not a string or number)"
                     for name in ("norm_first", "tie_embeddings") if not isinstance(getattr(self, name), bool)]
        if self.share_embeddings is not None and not isinstance(self.share_embeddings, bool):
            problems.append(f"share_embeddings={self.share_embeddings!r} must be true, false or null")
        if self.activation not in ACTIVATIONS:
            problems.append(f"activation={self.activation!r} must be one of {sorted(ACTIVATIONS)}")
        if self.share_embeddings is None and not problems:
            self.share_embeddings = self.src_vocab_size == self.tgt_vocab_size
        if self.share_embeddings and self.src_vocab_size != self.tgt_vocab_size:
            problems.append(f"share_embeddings=True needs one vocabulary for both languages, but src_vocab_size="
                            f"{self.src_vocab_size} and tgt_vocab_size={self.tgt_vocab_size}; use a joint "
                            "tokenizer or share_embeddings=False")
        if not problems and not (isinstance(self.pad_id, int) and 0 <= self.pad_id < self.src_vocab_size):
            problems.append(f"pad_id={self.pad_id!r} is outside the vocabulary [0, {self.src_vocab_size})")
        if problems:
            raise ValueError("invalid Transformer config: " + "; ".join(problems) + ".")

    @property
    def decoder_layers(self) -> int:
        return self.n_layers if self.n_decoder_layers is None else self.n_decoder_layers

    @classmethod
    def from_dict(cls, d: dict, ignore_train_keys: bool = True) -> TransformerConfig:
        """Build from our field names or the original course's (``model_dim``,
        ``hidden_dims``, ``num_heads``, ``num_layers``, ``dropout``, ``max_seq_length``).
        Training keys of the course's JSON (``train_data``, ...) are skipped; any other
        unknown key is an error."""
        ours = {f.name for f in fields(cls)}
        kwargs, unknown = {}, []
        for key, value in d.items():
            name = our_name(key)
            if name in ours:
                if name in kwargs and kwargs[name] != value:
                    raise ValueError(f"config gives {name} twice with different values ({kwargs[name]!r}, {value!r}).")
                kwargs[name] = value
            elif not (ignore_train_keys and key in COURSE_TRAIN_KEYS):
                unknown.append(key)
        if unknown:
            raise ValueError(
                f"unknown Transformer config key(s) {sorted(unknown)}; known: {sorted(ours)} "
                f"or the course's names {sorted(COURSE_MODEL_KEYS) + sorted(COURSE_TRAIN_KEYS)}."
            )
        return cls(**kwargs)

    @classmethod
    def from_json(cls, path: str | Path, **overrides) -> TransformerConfig:
        d = json.loads(Path(path).read_text(encoding="utf-8"))
        d.update(overrides)
        return cls.from_dict(d)

    def to_dict(self) -> dict:
        return asdict(self)


class FeedForward(nn.Module):
    """FFN(x) = max(0, x W1 + b1) W2 + b2  (3.3); GELU instead of the max for BERT and GPT."""

    def __init__(self, d_model: int, d_ff: int, activation: str = "relu", bias: bool = True):
        super().__init__()
        self.w_1 = nn.Linear(d_model, d_ff, bias=bias)
        self.w_2 = nn.Linear(d_ff, d_model, bias=bias)
        self.activation = ACTIVATIONS[activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(self.activation(self.w_1(x)))


def residual(x: torch.Tensor, sublayer, norm: nn.LayerNorm, dropout: nn.Dropout, norm_first: bool) -> torch.Tensor:
    """One sub-layer with its residual connection: the paper's post-norm
    ``LayerNorm(x + Dropout(Sublayer(x)))``, or pre-norm ``x + Dropout(Sublayer(LayerNorm(x)))``.

    "We apply dropout to the output of each sub-layer, before it is added to the
    sub-layer input and normalized."  (5.4)
    """
    if norm_first:
        return x + dropout(sublayer(norm(x)))
    return norm(x + dropout(sublayer(x)))


class EncoderLayer(nn.Module):
    """Self-attention, then feed-forward; each wrapped in ``residual``."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float = 0.0, activation: str = "relu",
                 norm_first: bool = False, eps: float = 1e-5, bias: bool = True):
        super().__init__()
        self.norm_first = norm_first
        self.self_attn = MultiHeadAttention(d_model, n_heads, dropout, bias=bias)
        self.self_attn_norm = nn.LayerNorm(d_model, eps=eps, bias=bias)
        self.ff = FeedForward(d_model, d_ff, activation, bias=bias)
        self.ff_norm = nn.LayerNorm(d_model, eps=eps, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = residual(x, lambda h: self.self_attn(h, mask=mask)[0], self.self_attn_norm, self.dropout, self.norm_first)
        return residual(x, self.ff, self.ff_norm, self.dropout, self.norm_first)


class DecoderLayer(nn.Module):
    """Masked self-attention, cross-attention to the encoder's output, feed-forward.

    ``cross_attention=False`` leaves out the middle sub-layer: that is the block of a
    decoder-only model (GPT), which has no encoder to attend to.
    """

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float = 0.0, activation: str = "relu",
                 norm_first: bool = False, eps: float = 1e-5, bias: bool = True, cross_attention: bool = True):
        super().__init__()
        self.norm_first = norm_first
        self.self_attn = MultiHeadAttention(d_model, n_heads, dropout, bias=bias)
        self.self_attn_norm = nn.LayerNorm(d_model, eps=eps, bias=bias)
        if cross_attention:
            self.cross_attn = MultiHeadAttention(d_model, n_heads, dropout, bias=bias)
            self.cross_attn_norm = nn.LayerNorm(d_model, eps=eps, bias=bias)
        self.ff = FeedForward(d_model, d_ff, activation, bias=bias)
        self.ff_norm = nn.LayerNorm(d_model, eps=eps, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, y, memory=None, tgt_mask=None, memory_mask=None, cache: KVCache | None = None):
        """``tgt_mask``: extra mask for the self-attention (the causal mask is always
        applied); ``memory``: the encoder's output (None in a decoder-only model);
        ``memory_mask``: which source positions may be attended (padding)."""
        def self_attn(h):
            return self.self_attn(h, mask=tgt_mask, is_causal=True, cache=cache)[0]

        y = residual(y, self_attn, self.self_attn_norm, self.dropout, self.norm_first)
        if memory is not None:
            def cross_attn(h):
                return self.cross_attn(h, memory, mask=memory_mask)[0]

            y = residual(y, cross_attn, self.cross_attn_norm, self.dropout, self.norm_first)
        return residual(y, self.ff, self.ff_norm, self.dropout, self.norm_first)


class Transformer(nn.Module):
    """Embeddings + positions -> N encoder layers; embeddings + positions -> N decoder
    layers (attending to the encoder's output) -> linear projection to the vocabulary."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.config = cfg
        d = cfg.d_model
        self.src_embed = TokenEmbedding(cfg.src_vocab_size, d, scale=True, padding_idx=cfg.pad_id)
        self.tgt_embed = TokenEmbedding(cfg.tgt_vocab_size, d, scale=True, padding_idx=cfg.pad_id)
        self.pos = SinusoidalPositionalEncoding(d, cfg.max_len, cfg.dropout)
        layer = dict(d_model=d, n_heads=cfg.n_heads, d_ff=cfg.d_ff, dropout=cfg.dropout, activation=cfg.activation,
                     norm_first=cfg.norm_first, eps=cfg.layer_norm_eps)
        self.encoder_layers = nn.ModuleList(EncoderLayer(**layer) for _ in range(cfg.n_layers))
        self.decoder_layers = nn.ModuleList(DecoderLayer(**layer) for _ in range(cfg.decoder_layers))
        # Pre-norm leaves the residual stream un-normalised, so each stack ends in a LayerNorm.
        self.encoder_norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps) if cfg.norm_first else nn.Identity()
        self.decoder_norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps) if cfg.norm_first else nn.Identity()
        self.out_proj = nn.Linear(d, cfg.tgt_vocab_size, bias=False)
        for name, p in self.named_parameters():
            if p.dim() > 1 and "embed" not in name:
                nn.init.xavier_uniform_(p)
        # "we share the same weight matrix between the two embedding layers and the
        # pre-softmax linear transformation" (3.4): one tensor, three uses, whose gradient
        # is the sum of the three uses' gradients.
        if cfg.share_embeddings:
            self.src_embed.weight = self.tgt_embed.weight
        if cfg.tie_embeddings:
            self.out_proj.weight = self.tgt_embed.weight

    @classmethod
    def from_config(cls, config: dict | TransformerConfig) -> Transformer:
        if isinstance(config, TransformerConfig):
            return cls(config)
        return cls(TransformerConfig.from_dict(config))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _check_length(self, ids: torch.Tensor, what: str, start: int = 0) -> None:
        if ids.dim() != 2:
            raise ValueError(f"{what} must be token ids of shape (B, L), got {tuple(ids.shape)}.")
        if ids.numel() == 0:
            raise ValueError(f"{what} is empty, of shape {tuple(ids.shape)}: give at least one sentence of "
                             "at least one token.")
        if start + ids.shape[1] > self.config.max_len:
            raise ValueError(
                f"{what} has {start + ids.shape[1]} tokens, more than max_len={self.config.max_len} "
                "(max_seq_length); truncate it (the translate tools do, with a warning) or build "
                "the model with a larger max_len."
            )

    def encode(self, src: torch.Tensor, src_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``src (B, L_src)`` -> memory ``(B, L_src, d_model)``. Padding is masked."""
        self._check_length(src, "source")
        if src_mask is None:
            src_mask = padding_mask(src, self.config.pad_id)
        x = self.pos(self.src_embed(src))
        for layer in self.encoder_layers:
            x = layer(x, src_mask)
        return self.encoder_norm(x)

    def decode(self, tgt, memory, memory_mask=None, tgt_mask=None, caches=None, start: int = 0):
        """``tgt (B, L_tgt)`` (shifted right, starting with <bos>) -> logits ``(B, L_tgt, V)``.
        With ``caches`` (one ``KVCache`` per decoder layer) ``tgt`` holds only the new
        tokens, at positions ``start, start+1, ...``."""
        self._check_length(tgt, "target", start)
        y = self.pos(self.tgt_embed(tgt), start=start)
        for i, layer in enumerate(self.decoder_layers):
            y = layer(y, memory, tgt_mask, memory_mask, None if caches is None else caches[i])
        return self.out_proj(self.decoder_norm(y))

    def forward(self, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: logits for every target position ``(B, L_tgt, tgt_vocab)``."""
        src_mask = padding_mask(src, self.config.pad_id)
        memory = self.encode(src, src_mask)
        return self.decode(tgt, memory, memory_mask=src_mask)

    def new_caches(self) -> list[KVCache]:
        return [KVCache() for _ in self.decoder_layers]


@torch.no_grad()
def attention_maps(model: Transformer, src: torch.Tensor, tgt: torch.Tensor, index: int = 0) -> dict[str, torch.Tensor]:
    """The three kinds of attention for sentence ``index`` of a teacher-forced batch, each
    ``(layers, heads, L_q, L_k)``: ``"encoder"`` self-attention ``(L_src, L_src)``,
    ``"decoder_self"`` masked self-attention ``(L_tgt, L_tgt)``, and ``"cross"``: the
    decoder's attention over the source ``(L_tgt, L_src)``, i.e. the alignment between
    the two sentences (read from the ``cross_attn`` modules, not the self-attention)."""
    from course_lib.attention import record_attention

    was_training = model.training
    model.eval()
    with record_attention(model) as maps:
        model(src, tgt)
    w = maps()
    model.train(was_training)

    def stack(stack_name, module, n):
        return torch.stack([w[f"{stack_name}.{i}.{module}"][index] for i in range(n)])

    n_enc, n_dec = len(model.encoder_layers), len(model.decoder_layers)
    return {"encoder": stack("encoder_layers", "self_attn", n_enc),
            "decoder_self": stack("decoder_layers", "self_attn", n_dec),
            "cross": stack("decoder_layers", "cross_attn", n_dec)}
