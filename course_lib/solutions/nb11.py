"""Reference solutions for notebook 11 (scaling laws). Try the exercises first!"""

from __future__ import annotations

import math


def training_flops(n_params: float, n_tokens: float) -> float:
    """``6 N D``: 2 FLOPs per parameter and token forward, 4 backward."""
    return 6.0 * n_params * n_tokens


def chinchilla_split(flops: float, tokens_per_param: float) -> tuple[float, float]:
    """``C = 6 N D`` with ``D = k N`` gives ``N = sqrt(C / 6k)``, ``D = k N``."""
    n = math.sqrt(flops / (6.0 * tokens_per_param))
    return n, tokens_per_param * n


def power_law_exponent(x, y) -> float:
    """Least-squares slope of log y on log x, negated."""
    lx = [math.log(v) for v in x]
    ly = [math.log(v) for v in y]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    slope = sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)
    return -slope


CASES = {
    "training_flops": [(124e6, 2.5e9), (70e9, 1.4e12), (1400, 1e6)],
    "chinchilla_split": [(5.76e23, 20.0), (1e21, 20.0), (1e10, 100.0)],
    "power_law_exponent": [([1.0, 10.0, 100.0], [2.0, 1.0, 0.5]), ([1e3, 1e4, 1e5, 1e6], [3.1, 2.6, 2.2, 2.0])],
}
