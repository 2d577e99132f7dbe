"""Scaling laws measured on your own GPTs: an IsoFLOP grid of model sizes x compute budgets,
and the three fits that turn its validation losses into laws (notebook 11).

    "For compute-optimal training, the model size and the number of training tokens should
    be scaled equally: for every doubling of model size the number of training tokens
    should also be doubled."  (Hoffmann et al., 2022, *Training Compute-Optimal Large
    Language Models*, abstract)

- Compute is counted as ``C = 6 N D`` FLOPs: N parameters, D training tokens, 2 FLOPs
  per parameter per token forward and 4 backward (Kaplan et al., 2020, 2.1). N counts the
  parameters that multiply activations: everything but the position table (the output
  head, tied to the token embedding, is a matrix product and stays in).
- ``attention_flops``: what 6ND leaves out, attention's own products (QK^T and the weighted
  sum of V), ``12 n_layers T d_model`` per token over a context of T.
- ``fit_power_law``: ``y = A x^-alpha`` by least squares on the logarithms;
  ``fit_power_law_offset``: ``y = E + A x^-alpha`` (an irreducible loss E).
- Approach 1, ``envelope_analysis``: at each compute, the size whose loss is lowest.
- Approach 2, ``isoflop_analysis``: a parabola in log N through each budget's losses, its vertex.
- Approach 3, ``fit_loss_surface``: ``L(N, D) = E + A / N^alpha + B / D^beta`` and the
  compute-optimal split it implies; ``bootstrap_loss_surface`` for how well runs pin it.
- ``IsoFLOPSpec``, ``plan_point``, ``train_point``: one run of the grid (a size at a budget,
  its own cosine schedule), as ``benchmarks/scaling_grid.py`` trains them all.

The nonlinear fits need no optimiser library: for fixed exponents the laws are linear in
(E, A, B), so the exponents are found on a grid (refined twice) and the coefficients by
linear least squares on relative errors, which is exact for noiseless data and robust.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from course_lib import checks

# Published fits, for comparison (exponents of N_opt and D_opt as powers of C).
CHINCHILLA = {"approach 2": {"a": 0.49, "b": 0.51}, "approach 3": {"a": 0.46, "b": 0.54},
              "surface": {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28},
              "tokens_per_parameter": 20.0}
KAPLAN = {"a": 0.73, "b": 0.27}  # Kaplan et al. 2020: N_opt ~ C^0.73 (their table 6)


def training_flops(n_params: float, n_tokens: float) -> float:
    """Training compute ``6 N D`` (forward 2 N D, backward 4 N D)."""
    checks.number("n_params", n_params, 0.0, above=True)
    checks.number("n_tokens", n_tokens, 0.0)
    flops = 6.0 * n_params * n_tokens
    if not math.isfinite(flops):
        raise ValueError(f"6 x n_params x n_tokens overflows a float (n_params={n_params:g}, n_tokens={n_tokens:g}).")
    return flops


def attention_flops(n_layers: int, d_model: int, context: int, n_tokens: float) -> float:
    """Training FLOPs of attention's own products, which 6ND leaves out: QK^T and the
    weighted sum of V take ``2 T d_model`` FLOPs each per token and layer forward, three
    times that with the backward pass: ``12 n_layers T d_model`` per token (Chowdhery et al.,
    2022, PaLM, appendix B). The full T x T square, as attention written out computes it."""
    return 12.0 * n_layers * context * d_model * n_tokens


def scaling_params(model) -> int:
    """The N of ``C = 6 N D`` for a course GPT: its parameters less the position table."""
    return model.num_parameters(non_embedding=True)


# ---- fits ----------------------------------------------------------------------------------

def _as_arrays(*xs) -> list[np.ndarray]:
    out = [np.asarray(x, dtype=np.float64).ravel() for x in xs]
    if len({len(x) for x in out}) != 1:
        raise ValueError(f"the arrays have different lengths {[len(x) for x in out]}; pass one value per run.")
    for x in out:
        if not np.all(np.isfinite(x)) or np.any(x <= 0):
            raise ValueError("every value must be finite and > 0 (sizes, token counts and losses are positive).")
    return out


def fit_power_law(x, y) -> tuple[float, float]:
    """``y = A * x^-alpha``: a straight line through (log x, log y). Returns ``(A, alpha)``."""
    x, y = _as_arrays(x, y)
    if len(x) < 2:
        raise ValueError("a power law needs at least 2 points.")
    slope, intercept = np.polyfit(np.log(x), np.log(y), 1)
    return float(np.exp(intercept)), float(-slope)


def _linear_fits(columns: np.ndarray, y: np.ndarray, offset: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """For each stack ``columns[k]`` (n x p): the coefficients c >= 0 minimising the relative
    error of ``offset + columns[k] @ c`` to y, and that error (sum of squares); inf where the
    best unconstrained solution has a negative coefficient. All k at once (normal equations
    on columns scaled to unit norm)."""
    target = 1.0 - offset / y
    w = columns / y[None, :, None]
    scale = np.linalg.norm(w, axis=1, keepdims=True)
    scale[scale == 0] = 1.0
    w = w / scale
    gram = np.einsum("kni,knj->kij", w, w)
    rhs = np.einsum("kni,n->ki", w, target)
    with np.errstate(all="ignore"):
        c = np.linalg.solve(gram + 1e-14 * np.eye(w.shape[2]), rhs[..., None])[..., 0]
        error = np.sum((np.einsum("kni,ki->kn", w, c) - target) ** 2, axis=1)
    c = c / scale[:, 0, :]
    error[~np.all(c >= 0, axis=1) | ~np.isfinite(error)] = math.inf
    return c, error


def _grid_search(errors, ranges: list[tuple[float, float]], points: int = 61, rounds: int = 3):
    """Minimise ``errors(exponents)`` (a function of a (k, dims) array, one row per candidate)
    over a box: a grid, then two finer grids around the best."""
    lo = np.array([r[0] for r in ranges], dtype=np.float64)
    hi = np.array([r[1] for r in ranges], dtype=np.float64)
    best, best_error = None, math.inf
    for _ in range(rounds):
        axes = [np.linspace(a, b, points) for a, b in zip(lo, hi)]
        candidates = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, len(ranges))
        values = errors(candidates)
        i = int(np.argmin(values))
        if values[i] < best_error:
            best, best_error = candidates[i], float(values[i])
        if best is None:
            break
        step = (hi - lo) / (points - 1)
        lo, hi = np.maximum(best - 2 * step, lo), np.minimum(best + 2 * step, hi)
    if best is None:
        raise ValueError("no exponents give nonnegative coefficients: the data do not decrease like a power law.")
    return best, best_error


def fit_power_law_offset(x, y, alpha_range: tuple[float, float] = (0.01, 2.0)) -> tuple[float, float, float]:
    """``y = E + A * x^-alpha`` with E, A >= 0. Returns ``(E, A, alpha)``."""
    x, y = _as_arrays(x, y)
    if len(x) < 3:
        raise ValueError("a power law with an offset needs at least 3 points.")
    lx = np.log(x)

    def cols(alphas):  # (k, n, 2)
        return np.stack([np.ones((len(alphas), len(x))), np.exp(-alphas[:, :1] * lx)], -1)

    (alpha,), _ = _grid_search(lambda p: _linear_fits(cols(p), y)[1], [alpha_range], points=201)
    e, a = _linear_fits(cols(np.array([[alpha]])), y)[0][0]
    return float(e), float(a), float(alpha)


@dataclass
class LossSurface:
    """``L(N, D) = E + A / N^alpha + B / D^beta`` (Hoffmann et al. 2022, eq. 2)."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float

    def loss(self, n_params, n_tokens):
        return self.E + self.A / np.asarray(n_params, dtype=np.float64) ** self.alpha + \
            self.B / np.asarray(n_tokens, dtype=np.float64) ** self.beta

    @property
    def a(self) -> float:
        """N_opt grows like C^a, a = beta / (alpha + beta)."""
        return self.beta / (self.alpha + self.beta)

    def optimal(self, flops):
        """The N and D of least loss at compute C = 6 N D (eq. 4):
        N_opt = G (C/6)^a, D_opt = G^-1 (C/6)^b, G = (alpha A / (beta B))^(1 / (alpha + beta))."""
        g = (self.alpha * self.A / (self.beta * self.B)) ** (1.0 / (self.alpha + self.beta))
        c6 = np.asarray(flops, dtype=np.float64) / 6.0
        return g * c6 ** self.a, c6 ** (1.0 - self.a) / g


def fit_loss_surface(n_params, n_tokens, loss, alpha_range=(0.05, 1.5), beta_range=(0.05, 1.5),
                     E: float | None = None) -> LossSurface:
    """Fit ``E + A / N^alpha + B / D^beta`` to measured runs (E, A, B >= 0): the exponents on
    a grid (refined twice), E, A and B by least squares on relative errors for each. With
    ``E`` given, only A, B and the exponents are fitted (a profile over E)."""
    n, d, y = _as_arrays(n_params, n_tokens, loss)
    if len(y) < 5:
        raise ValueError("the loss surface has 5 parameters; it needs at least 5 runs.")
    if E is not None:
        checks.number("E", E, 0.0, float(np.min(y)), fix="E must lie between 0 and the lowest loss measured")
    ln, ld = np.log(n), np.log(d)

    def cols(p):  # (k, runs, 3), or 2 columns with E fixed
        parts = [np.ones((len(p), len(y)))] * (E is None) + [np.exp(-p[:, :1] * ln), np.exp(-p[:, 1:] * ld)]
        return np.stack(parts, -1)

    offset = 0.0 if E is None else float(E)
    (alpha, beta), _ = _grid_search(lambda p: _linear_fits(cols(p), y, offset)[1], [alpha_range, beta_range],
                                    points=41)
    coeffs = _linear_fits(cols(np.array([[alpha, beta]])), y, offset)[0][0]
    e, a, b = coeffs if E is None else (offset, *coeffs)
    return LossSurface(float(e), float(a), float(b), float(alpha), float(beta))


def bootstrap_loss_surface(n_params, n_tokens, loss, samples: int = 200, seed: int = 0, **ranges) -> list[LossSurface]:
    """``fit_loss_surface`` on ``samples`` resamplings of the runs (with replacement): the
    spread of the fitted E, alpha, beta and a is how well the runs pin them."""
    n, d, y = _as_arrays(n_params, n_tokens, loss)
    checks.count("samples", samples)
    rng = np.random.default_rng(seed)
    fits = []
    for _ in range(samples):
        i = rng.integers(0, len(y), len(y))
        if len(set(zip(n[i], d[i]))) < 5:  # too few distinct runs to fit 5 parameters
            continue
        try:
            fits.append(fit_loss_surface(n[i], d[i], y[i], **ranges))
        except ValueError:
            continue
    return fits


def isoflop_minimum(n_params, loss) -> tuple[float, float, np.ndarray]:
    """One compute budget's runs: fit ``L = c2 (log N)^2 + c1 log N + c0`` and return the
    vertex ``(N_opt, L_min, (c2, c1, c0))``. The parabola must open upwards."""
    n, y = _as_arrays(n_params, loss)
    if len(n) < 3:
        raise ValueError("a parabola needs at least 3 model sizes per budget.")
    coeffs = np.polyfit(np.log(n), y, 2)
    if coeffs[0] <= 0:
        raise ValueError("the losses of this budget do not curve upwards (no minimum): "
                         "add larger and smaller models around the best one.")
    log_n = -coeffs[1] / (2 * coeffs[0])
    return float(np.exp(log_n)), float(np.polyval(coeffs, log_n)), coeffs


def _check_rows(rows, needed: tuple[str, ...]) -> None:
    if not isinstance(rows, (list, tuple)) or not rows:
        raise ValueError(f"rows must be a non-empty list of dicts with {list(needed)}, got {type(rows).__name__}.")
    for i, row in enumerate(rows):
        missing = [k for k in needed if not isinstance(row, dict) or k not in row]
        if missing:
            raise ValueError(f"rows[{i}] lacks {missing}; each row needs {list(needed)}.")


def isoflop_analysis(rows: list[dict]) -> dict:
    """Approach 2 on IsoFLOP rows (``budget``, ``params``, ``val_loss``): the vertex of every
    budget's parabola (``inside``: whether it lies within the sizes measured; budgets whose
    losses do not curve upwards are listed in ``skipped``), then N_opt ~ C^a and D_opt ~ C^b
    by power-law fits through the vertices (NaN with fewer than 2)."""
    _check_rows(rows, ("budget", "params", "val_loss"))
    minima, skipped = [], []
    for c in sorted({r["budget"] for r in rows}):
        runs = [r for r in rows if r["budget"] == c]
        sizes = [r["params"] for r in runs]
        try:
            n_opt, l_min, coeffs = isoflop_minimum(sizes, [r["val_loss"] for r in runs])
        except ValueError:
            skipped.append(c)
            continue
        minima.append({"budget": c, "n_opt": n_opt, "d_opt": c / (6 * n_opt), "loss": l_min,
                       "inside": min(sizes) <= n_opt <= max(sizes), "coeffs": coeffs.tolist()})
    out = {"minima": minima, "skipped": skipped, "a": math.nan, "b": math.nan}
    if len(minima) >= 2:
        out.update(_optimal_exponents([m["budget"] for m in minima], minima))
    return out


def _optimal_exponents(flops: list[float], optima: list[dict]) -> dict:
    """N_opt = k_n C^a and D_opt = k_d C^b, fitted to the optima (``n_opt``, ``d_opt``) at ``flops``."""
    k_n, minus_a = fit_power_law(flops, [o["n_opt"] for o in optima])
    k_d, minus_b = fit_power_law(flops, [o["d_opt"] for o in optima])
    return {"k_n": k_n, "k_d": k_d, "a": -minus_a, "b": -minus_b}


def envelope_analysis(rows: list[dict], points: int = 25) -> dict:
    """Approach 1 on runs (``params``, ``flops``, ``val_loss``): each model size's final losses
    at its budgets form a curve L_N(C) (linear in log C between them); at each of ``points``
    compute values C, the size whose curve is lowest is N_opt(C) (the envelope of the curves).
    Then N_opt ~ C^a and D_opt = C / 6 N_opt ~ C^b by power-law fits. Only compute values that
    at least two sizes reach, and whose best size is not the smallest or largest measured
    there, are used (``envelope`` lists them all, with ``inside``)."""
    _check_rows(rows, ("params", "flops", "val_loss"))
    checks.count("points", points, minimum=2)
    curves = {}
    for r in rows:
        curves.setdefault(r["params"], []).append((math.log(r["flops"]), r["val_loss"]))
    curves = {n: sorted(c) for n, c in curves.items()}
    flops = [r["flops"] for r in rows]
    envelope = []
    for log_c in np.linspace(math.log(min(flops)), math.log(max(flops)), points):
        reach = {n: float(np.interp(log_c, *zip(*c))) for n, c in curves.items() if c[0][0] <= log_c <= c[-1][0]}
        if len(reach) < 2:
            continue
        n_opt = min(reach, key=reach.get)
        c = math.exp(log_c)
        envelope.append({"flops": c, "n_opt": n_opt, "d_opt": c / (6 * n_opt), "loss": reach[n_opt],
                         "inside": min(reach) < n_opt < max(reach)})
    used = [e for e in envelope if e["inside"]]
    out = {"envelope": envelope, "a": math.nan, "b": math.nan}
    if len({e["n_opt"] for e in used}) >= 2:
        out.update(_optimal_exponents([e["flops"] for e in used], used))
    return out


# ---- the IsoFLOP grid: one run per model size and compute budget ----------------------------

@dataclass
class IsoFLOPSpec:
    """How every run of an IsoFLOP grid is trained (character level): a model of shape
    (n_layers, d_model) gets ``C / 6N`` tokens for a budget C, in batches of ``batch_size``
    windows of ``block_size``, AdamW at peak ``lr`` with a warmup over ``warmup_fraction`` of
    its steps and a cosine down to ``lr / 10`` at its own last step (Chinchilla: each D its own
    schedule), then its validation loss over ``eval_batches`` fixed batches."""

    block_size: int = 64
    batch_size: int = 32
    lr: float = 3e-3
    warmup_fraction: float = 0.05
    head_dim: int = 16
    eval_batches: int = 50
    seed: int = 1337

    def __post_init__(self):
        for name in ("block_size", "batch_size", "head_dim", "eval_batches"):
            checks.count(name, getattr(self, name))
        checks.count("seed", self.seed, minimum=0)
        checks.number("lr", self.lr, 0.0, above=True)
        checks.number("warmup_fraction", self.warmup_fraction, 0.0, 0.5)

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.block_size


def shape_config(shape: tuple[int, int], vocab_size: int, block_size: int, head_dim: int):
    """A course GPT of ``shape = (n_layers, d_model)``, heads of about ``head_dim``."""
    from course_lib.gpt import GPTConfig

    n_layers, d_model = shape
    n_heads = max(1, d_model // head_dim)
    while d_model % n_heads:
        n_heads -= 1
    return GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layers=n_layers,
                     n_heads=n_heads, d_model=d_model)


def shape_params(shape: tuple[int, int], vocab_size: int, spec: IsoFLOPSpec) -> int:
    """The N of a shape (no weights are allocated)."""
    from course_lib.gpt import GPT

    with torch.device("meta"):
        return scaling_params(GPT(shape_config(shape, vocab_size, spec.block_size, spec.head_dim)))


def grid_text(max_chars: int | None = None) -> tuple[str, str]:
    """The grid's text and its name (no machine path): tiny Shakespeare from
    ``$COURSE_DATA_DIR/tinyshakespeare/input.txt`` or ``../shared/data`` beside the checkout,
    else the course's generated corpus (offline, always there)."""
    from course_lib.data import load_text, read_text_file
    from course_lib.results import ROOT

    for folder in (os.environ.get("COURSE_DATA_DIR"), ROOT.parent / "shared" / "data"):
        path = Path(folder or "") / "tinyshakespeare" / "input.txt"
        if folder and path.is_file():
            text = read_text_file(path)[:max_chars]
            return text, f"tinyshakespeare ({len(text):,} characters)"
    generated = load_text("generated", max_chars or None)
    return generated.text, generated.source


def results_url(repo_url: str, name: str) -> str:
    """Where the repository at ``repo_url`` (on GitHub) serves ``resources/results/<name>.json``."""
    if not isinstance(repo_url, str) or not repo_url.startswith("https://github.com/"):
        raise ValueError(f"repo_url={repo_url!r} must be a GitHub address, https://github.com/OWNER/NAME.")
    raw = repo_url.rstrip("/").removesuffix(".git").replace("https://github.com/", "https://raw.githubusercontent.com/")
    return f"{raw}/main/resources/results/{name}.json"


def load_grid(name: str = "scaling_grid", repo_url: str | None = None) -> dict:
    """The grid's results file (JSON): ``resources/results/<name>.json`` in a checkout of the
    course; for an installed course_lib without it (Colab), downloaded from ``repo_url``."""
    from course_lib.results import RESULTS, load

    if (RESULTS / f"{name}.json").is_file() or repo_url is None:
        return load(name)
    import urllib.error
    import urllib.request

    url = results_url(repo_url, name)
    try:
        with urllib.request.urlopen(url, timeout=20) as response:
            body = json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise RuntimeError(f"the grid's results are not in this install, and {url} could not be read "
                           f"({getattr(exc, 'reason', exc)}): connect to the internet, or run the notebook "
                           "from a clone of the course, which holds them.") from None
    if not isinstance(body, dict) or not isinstance(body.get("figures", {}).get("points"), list):
        raise ValueError(f"{url} is not a results file of benchmarks/scaling_grid.py.")
    return body


def plan_point(budget: float, shape: tuple[int, int], vocab_size: int, spec: IsoFLOPSpec) -> dict:
    """One run of the grid: the shape's N, and the steps that spend ``budget`` FLOPs
    (rounded to whole steps; ``flops`` is what the run really spends)."""
    checks.number("budget", budget, 0.0, above=True)
    n = shape_params(shape, vocab_size, spec)
    steps = max(1, round(budget / (6 * n) / spec.tokens_per_step))
    tokens = steps * spec.tokens_per_step
    return {"budget": float(budget), "n_layers": int(shape[0]), "d_model": int(shape[1]), "params": n,
            "steps": steps, "tokens": tokens, "flops": training_flops(n, tokens)}


def train_point(point: dict, data, spec: IsoFLOPSpec, device: str = "cpu") -> dict:
    """Train the run ``point`` (from ``plan_point``) on ``data`` (``prepare_data``'s train and
    validation tokens) with the one training loop, and return the point with its final
    ``val_loss`` and ``train_loss`` (mean over the same fixed batches) and ``seconds``."""
    from course_lib.gpt import GPT
    from course_lib.training.gpt import GPTTrainConfig, train

    vocab_size = int(max(data.train.max(), data.val.max())) + 1
    cfg = shape_config((point["n_layers"], point["d_model"]), vocab_size, spec.block_size, spec.head_dim)
    torch.manual_seed(spec.seed)
    model = GPT(cfg)
    steps = int(point["steps"])
    train_cfg = GPTTrainConfig(steps=steps, batch_size=spec.batch_size, lr=spec.lr, min_lr=spec.lr / 10,
                               warmup=max(1, round(spec.warmup_fraction * steps)), eval_every=steps,
                               eval_batches=spec.eval_batches, seed=spec.seed, device=device,
                               progress=False, precision="fp32", compile=False)
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        state = train(model, data, train_cfg)
    final = state["evals"][-1]
    return {**point, "val_loss": final["val"], "train_loss": final["train"],
            "seconds": round(time.perf_counter() - start, 2)}
