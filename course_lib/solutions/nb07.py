"""Solutions to notebook 07's exercises (the encoder-decoder Transformer)."""

from __future__ import annotations

import torch

from course_lib.attention import record_attention


def noam_lr(step: int, d_model: int, warmup: int) -> float:
    """lrate = d_model^-0.5 * min(step^-0.5, step * warmup^-1.5)  (5.3)."""
    return d_model**-0.5 * min(step**-0.5, step * warmup**-1.5)


def label_smoothed_loss(logits: torch.Tensor, target: torch.Tensor, eps: float, pad_id: int) -> torch.Tensor:
    """Mean over non-padding positions of the cross-entropy against the smoothed target:
    ``1 - eps`` on the right token plus ``eps / V`` spread over the whole vocabulary."""
    logp = logits.log_softmax(-1)
    V = logits.shape[-1]
    nll = -logp.gather(-1, target[..., None]).squeeze(-1)
    uniform = -logp.mean(-1)
    loss = (1 - eps) * nll + eps * uniform
    keep = target != pad_id
    return loss[keep].sum() / keep.sum() if V else loss


@torch.no_grad()
def cross_attention_maps(model, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    """The decoder's cross-attention weights for the first sentence of the batch:
    ``(decoder layers, heads, target length, source length)``."""
    model.eval()
    with record_attention(model) as maps:
        model(src, tgt)
    weights = maps()
    return torch.stack([weights[f"decoder_layers.{i}.cross_attn"][0] for i in range(len(model.decoder_layers))])


def _tiny_model():
    from course_lib.transformer import Transformer, TransformerConfig

    with torch.random.fork_rng():
        torch.manual_seed(0)
        return Transformer(TransformerConfig(src_vocab_size=10, tgt_vocab_size=10, d_model=8, n_heads=2,
                                             n_layers=2, d_ff=16, dropout=0.0, max_len=16)).eval()


def _logits_cases():
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(2, 5, 9, generator=g)
    target = torch.tensor([[3, 4, 5, 0, 0], [8, 1, 2, 6, 0]])
    return [(logits, target, 0.1, 0), (logits, target, 0.0, 0), (logits[:1], target[:1], 0.3, 0)]


CASES = {
    "noam_lr": [(1, 512, 4000), (4000, 512, 4000), (100000, 512, 4000), (50, 64, 200)],
    "label_smoothed_loss": _logits_cases(),
    "cross_attention_maps": [(_tiny_model(), torch.tensor([[3, 4, 5, 6, 2]]), torch.tensor([[1, 7, 8]])),
                             (_tiny_model(), torch.tensor([[3, 4, 2, 0], [5, 6, 7, 2]]), torch.tensor([[1, 9], [1, 3]]))],
}
