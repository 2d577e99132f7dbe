"""BERT: an encoder-only Transformer trained as a masked language model.

    "BERT's model architecture is a multi-layer bidirectional Transformer encoder based on
    the original implementation described in Vaswani et al. (2017)"  (Devlin et al., 2019, 3)

    "For a given token, its input representation is constructed by summing the
    corresponding token, segment, and position embeddings."  (3, Figure 2)

    "we simply mask some percentage of the input tokens at random, and then predict those
    masked tokens. [...] The training data generator chooses 15% of the token positions at
    random for prediction. If the i-th token is chosen, we replace the i-th token with
    (1) the [MASK] token 80% of the time (2) a random token 10% of the time (3) the
    unchanged i-th token 10% of the time."  (3.1)

The model: token + learned position + segment embeddings, a LayerNorm, ``n_layers`` of the
course's own ``EncoderLayer`` (post-norm, as the paper's Transformer, with GELU), and the
masked-LM head: dense + GELU + LayerNorm, then a projection onto the vocabulary that shares
its matrix with the token embedding and has a bias of its own. ``BertMLM.from_hf`` copies
the weights of Hugging Face's ``BertForMaskedLM``; the tests check equal logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from course_lib import checks
from course_lib.attention import padding_mask
from course_lib.checkpoint import (
    ModelConfig,
    heads_problems,
    integer_problems,
    number_problems,
)
from course_lib.embeddings import LearnedPositionalEmbedding, TokenEmbedding
from course_lib.losses import IGNORE_INDEX
from course_lib.transformer import EncoderLayer


@dataclass
class BertConfig(ModelConfig):
    """Hyper-parameters; the defaults are BERT-base (110M parameters)."""
    name = "BERT"  # a class attribute, not a field

    model_type: str = "bert"
    vocab_size: int = 30522
    d_model: int = 768
    n_heads: int = 12
    n_layers: int = 12
    d_ff: int = 3072
    max_len: int = 512  # positions (BERT's max_position_embeddings)
    type_vocab_size: int = 2  # segments: sentence A and sentence B
    dropout: float = 0.1
    layer_norm_eps: float = 1e-12
    pad_id: int = 0

    def __post_init__(self):
        problems = [] if self.model_type == "bert" else [f"model_type is {self.model_type!r}, expected 'bert'"]
        problems += integer_problems(self, ("vocab_size", "d_model", "n_heads", "n_layers", "d_ff", "max_len",
                                            "type_vocab_size"))
        if not problems:
            problems += heads_problems(self.d_model, self.n_heads)
        problems += number_problems(self, ["dropout"], 0, 1) + number_problems(self, ["layer_norm_eps"], above=True)
        if not problems and not (isinstance(self.pad_id, int) and 0 <= self.pad_id < self.vocab_size):
            problems.append(f"pad_id={self.pad_id!r} is outside the vocabulary [0, {self.vocab_size})")
        if problems:
            raise ValueError("invalid BERT config: " + "; ".join(problems) + ".")


class BertMLM(nn.Module):
    """Embeddings -> ``n_layers`` post-norm encoder layers -> masked-LM head.

    ``encode(ids, segments)`` gives the hidden states ``(B, L, d_model)`` (what a
    classifier reads); ``forward`` adds the head and returns logits ``(B, L, vocab)``.
    Attention is bidirectional: every position sees every non-padding position.
    """

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.config = cfg
        d = cfg.d_model
        self.tok_embed = TokenEmbedding(cfg.vocab_size, d, scale=False, padding_idx=cfg.pad_id)
        self.pos_embed = LearnedPositionalEmbedding(cfg.max_len, d)
        self.seg_embed = nn.Embedding(cfg.type_vocab_size, d)
        self.embed_norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.embed_dropout = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(
            EncoderLayer(d, cfg.n_heads, cfg.d_ff, cfg.dropout, activation="gelu", norm_first=False,
                         eps=cfg.layer_norm_eps)
            for _ in range(cfg.n_layers)
        )
        # the masked-LM head ("transform" in the original code), then the tied projection
        self.mlm_dense = nn.Linear(d, d)
        self.mlm_norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.out_proj = nn.Linear(d, cfg.vocab_size, bias=True)
        self.apply(self._init_weights)
        self.out_proj.weight = self.tok_embed.weight  # weight tying; the bias stays its own
        with torch.no_grad():
            self.tok_embed.weight[cfg.pad_id].zero_()

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        """BERT's initialisation: N(0, 0.02) for every matrix, zero biases."""
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.Embedding, TokenEmbedding, LearnedPositionalEmbedding)):
            nn.init.normal_(m.weight, std=0.02)

    @classmethod
    def from_config(cls, config: dict | BertConfig) -> BertMLM:
        return cls(config if isinstance(config, BertConfig) else BertConfig.from_dict(dict(config)))

    def num_parameters(self) -> int:
        """Parameters counted once (the tied projection is the embedding)."""
        return sum(p.numel() for p in self.parameters())

    def _check(self, ids: torch.Tensor, segments: torch.Tensor | None) -> torch.Tensor:
        if ids.dim() != 2:
            raise ValueError(f"expected token ids of shape (B, L), got {tuple(ids.shape)}.")
        if ids.shape[1] > self.config.max_len:
            raise ValueError(f"{ids.shape[1]} tokens are more than max_len={self.config.max_len}; "
                             "truncate the input or build the model with a larger max_len.")
        if segments is None:
            return torch.zeros_like(ids)
        if segments.shape != ids.shape:
            raise ValueError(f"segments {tuple(segments.shape)} must have the shape of the ids {tuple(ids.shape)}.")
        if segments.numel() and (int(segments.min()) < 0 or int(segments.max()) >= self.config.type_vocab_size):
            raise ValueError(f"segment ids must be in [0, {self.config.type_vocab_size}) "
                             "(0 = first sentence, 1 = second).")
        return segments

    def embed(self, ids: torch.Tensor, segments: torch.Tensor | None = None) -> torch.Tensor:
        """Token + position + segment embeddings, LayerNorm, dropout: ``(B, L, d_model)``."""
        segments = self._check(ids, segments)
        x = self.pos_embed(self.tok_embed(ids)) + self.seg_embed(segments)
        return self.embed_dropout(self.embed_norm(x))

    def encode(self, ids: torch.Tensor, segments: torch.Tensor | None = None,
               mask: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states ``(B, L, d_model)``. ``mask``: bool, True = may be attended
        (default: every non-padding position, ``padding_mask(ids, pad_id)``)."""
        if mask is None:
            mask = padding_mask(ids, self.config.pad_id)
        x = self.embed(ids, segments)
        for layer in self.layers:
            x = layer(x, mask)
        return x

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """The masked-LM head: dense + GELU + LayerNorm, then the tied projection + bias."""
        return self.out_proj(self.mlm_norm(F.gelu(self.mlm_dense(hidden))))

    def forward(self, ids: torch.Tensor, segments: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """``ids (B, L)`` -> logits ``(B, L, vocab_size)`` for every position."""
        return self.head(self.encode(ids, segments, mask))

    # ---- Hugging Face's BertForMaskedLM ---------------------------------------------------

    @classmethod
    def from_hf(cls, hf_config: dict, state_dict: dict[str, torch.Tensor]) -> BertMLM:
        """Build from a Hugging Face ``BertForMaskedLM``'s config dict and state dict."""
        act = hf_config.get("hidden_act", "gelu")
        if act != "gelu":
            raise ValueError(f"this BERT uses the exact (erf) GELU; the checkpoint uses {act!r}.")
        if hf_config.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError("only absolute (learned) position embeddings are supported.")
        cfg = BertConfig(
            vocab_size=hf_config["vocab_size"], d_model=hf_config["hidden_size"],
            n_heads=hf_config["num_attention_heads"], n_layers=hf_config["num_hidden_layers"],
            d_ff=hf_config["intermediate_size"], max_len=hf_config["max_position_embeddings"],
            type_vocab_size=hf_config["type_vocab_size"], layer_norm_eps=hf_config["layer_norm_eps"],
            pad_id=hf_config.get("pad_token_id") or 0, dropout=0.0,
        )
        model = cls(cfg)
        model.load_state_dict(hf_to_course_state_dict(state_dict, cfg.n_layers))
        return model


# Hugging Face's BERT names -> ours. Every matrix keeps its (out, in) layout (nn.Linear).
HF_EMBEDDINGS = {
    "bert.embeddings.word_embeddings": "tok_embed",
    "bert.embeddings.position_embeddings": "pos_embed",
    "bert.embeddings.token_type_embeddings": "seg_embed",
    "bert.embeddings.LayerNorm": "embed_norm",
    "cls.predictions.transform.dense": "mlm_dense",
    "cls.predictions.transform.LayerNorm": "mlm_norm",
}
HF_LAYER = {  # inside bert.encoder.layer.{i} -> inside layers.{i}
    "attention.self.query": "self_attn.w_q",
    "attention.self.key": "self_attn.w_k",
    "attention.self.value": "self_attn.w_v",
    "attention.output.dense": "self_attn.w_o",
    "attention.output.LayerNorm": "self_attn_norm",
    "intermediate.dense": "ff.w_1",
    "output.dense": "ff.w_2",
    "output.LayerNorm": "ff_norm",
}


def hf_to_course_state_dict(sd: dict[str, torch.Tensor], n_layers: int) -> dict[str, torch.Tensor]:
    """A ``BertForMaskedLM`` state dict with our parameter names."""
    out = {}
    for hf, ours in HF_EMBEDDINGS.items():
        for kind in ("weight", "bias"):
            if f"{hf}.{kind}" in sd:
                out[f"{ours}.{kind}"] = sd[f"{hf}.{kind}"]
    for i in range(n_layers):
        for hf, ours in HF_LAYER.items():
            for kind in ("weight", "bias"):
                out[f"layers.{i}.{ours}.{kind}"] = sd[f"bert.encoder.layer.{i}.{hf}.{kind}"]
    out["out_proj.weight"] = out["tok_embed.weight"]  # tied (HF: cls.predictions.decoder.weight)
    out["out_proj.bias"] = sd["cls.predictions.bias"]
    return {k: v.contiguous() for k, v in out.items()}


# ---- the masking rule of BERT's pre-training ------------------------------------------------

def mask_tokens(ids: torch.Tensor, mask_id: int, vocab_size: int, special_ids=(), prob: float = 0.15,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's 80/10/10 rule. Each position that is not a special token (``special_ids``:
    padding, [CLS], [SEP], [MASK], ...) is selected with probability ``prob``; a selected
    position becomes ``[MASK]`` with probability 0.8, a random ordinary token with
    probability 0.1 (drawn uniformly from the ids that are not special), and stays as it
    is with probability 0.1.

    Returns ``(inputs, labels)``: the corrupted ids, and the original id at the selected
    positions (``IGNORE_INDEX`` elsewhere, which ``F.cross_entropy`` skips).
    """
    if not torch.is_tensor(ids) or ids.dtype != torch.long:
        raise TypeError(f"ids must be a long tensor of token ids, got {getattr(ids, 'dtype', type(ids).__name__)}.")
    checks.count("vocab_size", vocab_size, minimum=2)
    if not isinstance(prob, (int, float)) or isinstance(prob, bool) or not 0.0 < prob < 1.0:
        raise ValueError(f"prob={prob!r} must be in (0, 1); BERT selects 0.15 of the tokens.")
    special = torch.tensor(sorted({int(s) for s in special_ids} | {int(mask_id)}), dtype=torch.long)
    if special.numel() and (int(special.min()) < 0 or int(special.max()) >= vocab_size):
        raise ValueError(f"special ids {special.tolist()} must lie in the vocabulary [0, {vocab_size}).")
    ordinary = torch.ones(vocab_size, dtype=torch.bool)
    ordinary[special] = False
    candidates = ordinary.nonzero().squeeze(1)
    if candidates.numel() == 0:
        raise ValueError("every id of the vocabulary is special: there is no token to draw at random.")
    cpu = ids.cpu()
    eligible = ~torch.isin(cpu, special)
    selected = (torch.rand(cpu.shape, generator=generator) < prob) & eligible
    u = torch.rand(cpu.shape, generator=generator)
    random_ids = candidates[torch.randint(len(candidates), cpu.shape, generator=generator)]
    inputs = torch.where(selected & (u < 0.8), torch.full_like(cpu, mask_id), cpu)
    inputs = torch.where(selected & (u >= 0.8) & (u < 0.9), random_ids, inputs)
    labels = torch.where(selected, cpu, torch.full_like(cpu, IGNORE_INDEX))
    return inputs.to(ids.device), labels.to(ids.device)


def mlm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the selected positions (labels != IGNORE_INDEX)."""
    return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)
