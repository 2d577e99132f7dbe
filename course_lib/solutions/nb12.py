"""Reference solutions for notebook 12 (making a model smaller). Try the exercises first!"""

from __future__ import annotations

import torch


def absmax_rows(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric absmax quantization with one scale per row."""
    qmax = 2 ** (bits - 1) - 1
    scale = w.abs().amax(dim=1) / qmax
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(w / scale[:, None]).clamp(-qmax, qmax).to(torch.int8)
    return q, scale


def lora_param_count(shapes, r: int) -> int:
    """A (r x d_in) and B (d_out x r) for every layer."""
    return sum(r * (d_in + d_out) for d_out, d_in in shapes)


def adamw_training_bytes(n_params: int, weight_bytes: int) -> int:
    """Weights and gradients in ``weight_bytes``, a float32 master copy when the weights are
    narrower, and AdamW's two float32 moments."""
    master = 4 if weight_bytes < 4 else 0
    return n_params * (2 * weight_bytes + master + 8)


_g = torch.Generator().manual_seed(12)
CASES = {
    "absmax_rows": [(torch.randn(4, 16, generator=_g), 8), (torch.randn(3, 8, generator=_g), 4),
                    (torch.tensor([[0.0, 0.0], [1.0, -0.5]]), 8)],
    "lora_param_count": [([(768, 768), (768, 768)], 8), ([(3072, 768), (768, 3072)], 4), ([(10, 20)], 1)],
    "adamw_training_bytes": [(124_439_808, 4), (124_439_808, 2), (1000, 1)],
}
