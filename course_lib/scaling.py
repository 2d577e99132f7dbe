"""Scaling laws measured on your own GPTs: a grid of model sizes x compute budgets, and the
fits that turn its validation losses into laws (notebook 11).

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
- ``fit_power_law``: ``y = A x^-alpha`` by least squares on the logarithms.
- ``fit_power_law_offset``: ``y = E + A x^-alpha`` (an irreducible loss E).
- ``isoflop_minimum``: a parabola in log N through one budget's losses, and its vertex:
  Chinchilla's approach 2.
- ``fit_loss_surface``: ``L(N, D) = E + A / N^alpha + B / D^beta`` (approach 3), and the
  compute-optimal split it implies.

The nonlinear fits need no optimiser library: for fixed exponents the laws are linear in
(E, A, B), so the exponents are found on a grid (refined twice) and the coefficients by
linear least squares on relative errors, which is exact for noiseless data and robust.

    python -m course_lib.scaling --grid gpu --out results.json    # the full grid, on a GPU
    python -m course_lib.scaling --grid cpu --out results.json    # the notebook's grid
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import time
from dataclasses import asdict, dataclass
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


def _linear_fit(columns: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """Nonnegative coefficients c minimising the relative error of ``columns @ c`` to y, and
    that error (sum of squares); inf when the best unconstrained solution has a negative c."""
    w = columns / y[:, None]
    c, *_ = np.linalg.lstsq(w, np.ones_like(y), rcond=None)
    if np.any(c < 0):
        return c, math.inf
    return c, float(np.sum((w @ c - 1.0) ** 2))


def _grid_search(loss, ranges: list[tuple[float, float]], points: int = 61, rounds: int = 3):
    """Minimise ``loss(exponents)`` over a box: a grid, then two finer grids around the best."""
    lo = np.array([r[0] for r in ranges], dtype=np.float64)
    hi = np.array([r[1] for r in ranges], dtype=np.float64)
    best, best_loss = None, math.inf
    for _ in range(rounds):
        axes = [np.linspace(a, b, points) for a, b in zip(lo, hi)]
        for point in np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, len(ranges)):
            value = loss(point)
            if value < best_loss:
                best, best_loss = point, value
        if best is None:
            break
        step = (hi - lo) / (points - 1)
        lo, hi = np.maximum(best - 2 * step, lo), np.minimum(best + 2 * step, hi)
    if best is None:
        raise ValueError("no exponents give nonnegative coefficients: the data do not decrease like a power law.")
    return best, best_loss


def fit_power_law_offset(x, y, alpha_range: tuple[float, float] = (0.01, 2.0)) -> tuple[float, float, float]:
    """``y = E + A * x^-alpha`` with E, A >= 0. Returns ``(E, A, alpha)``."""
    x, y = _as_arrays(x, y)
    if len(x) < 3:
        raise ValueError("a power law with an offset needs at least 3 points.")
    lx = np.log(x)

    def cols(alpha):
        return np.stack([np.ones_like(x), np.exp(-alpha * lx)], 1)

    (alpha,), _ = _grid_search(lambda p: _linear_fit(cols(p[0]), y)[1], [alpha_range], points=201)
    e, a = _linear_fit(cols(alpha), y)[0]
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


def fit_loss_surface(n_params, n_tokens, loss, alpha_range=(0.05, 1.5), beta_range=(0.05, 1.5)) -> LossSurface:
    """Fit ``E + A / N^alpha + B / D^beta`` to measured runs (E, A, B >= 0)."""
    n, d, y = _as_arrays(n_params, n_tokens, loss)
    if len(y) < 5:
        raise ValueError("the loss surface has 5 parameters; it needs at least 5 runs.")
    ln, ld = np.log(n), np.log(d)

    def cols(p):
        return np.stack([np.ones_like(y), np.exp(-p[0] * ln), np.exp(-p[1] * ld)], 1)

    (alpha, beta), _ = _grid_search(lambda p: _linear_fit(cols(p), y)[1], [alpha_range, beta_range], points=41)
    e, a, b = _linear_fit(cols((alpha, beta)), y)[0]
    return LossSurface(float(e), float(a), float(b), float(alpha), float(beta))


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
        flops = [m["budget"] for m in minima]
        out["k_n"], minus_a = fit_power_law(flops, [m["n_opt"] for m in minima])
        out["k_d"], minus_b = fit_power_law(flops, [m["d_opt"] for m in minima])
        out["a"], out["b"] = -minus_a, -minus_b
    return out


# ---- the grid ------------------------------------------------------------------------------

@dataclass
class GridSpec:
    """Model shapes (n_layers, d_model), each trained once for ``max_flops / (6 N)`` tokens
    (at most ``max_ratio`` tokens per parameter, at least ``min_steps`` steps) with a constant learning rate after warmup and evaluated
    ``evals`` times along the way: every evaluation is a point (N, D, loss), and a compute
    budget C is read off each model's curve at D = C / (6 N). One run per size instead of
    one per (size, budget); the price is that the learning rate is not annealed to the end
    of each budget, as Chinchilla's runs were (their losses would be a little lower)."""

    shapes: list[tuple[int, int]]
    max_flops: float
    block_size: int = 32
    batch_size: int = 64
    lr: float = 1e-2
    warmup: int = 20
    head_dim: int = 8
    min_steps: int = 40
    max_ratio: float = 2000.0
    evals: int = 10
    eval_batches: int = 4
    max_chars: int | None = 300_000
    data: str = "generated"
    seed: int = 1337

    def __post_init__(self):
        shapes = self.shapes
        if isinstance(shapes, (str, bytes)) or not isinstance(shapes, (list, tuple)) or not shapes or not all(
                isinstance(s, (list, tuple)) and len(s) == 2 and all(isinstance(v, int) and not isinstance(v, bool)
                                                                  and v >= 1 for v in s) for s in shapes):
            raise ValueError(f"shapes={shapes!r} must be a non-empty list of (n_layers, d_model) pairs of "
                             "integers >= 1, e.g. [(1, 8), (2, 16)].")
        self.shapes = [tuple(s) for s in shapes]
        for name in ("block_size", "batch_size", "head_dim", "min_steps", "evals", "eval_batches"):
            checks.count(name, getattr(self, name))
        checks.count("warmup", self.warmup, minimum=0)
        checks.count("max_chars", self.max_chars, optional=True)
        for name in ("max_flops", "lr", "max_ratio"):
            checks.number(name, getattr(self, name), 0.0, above=True)


GRIDS = {
    # CPU: about 20 s on one core (1,218 steps); 4 shapes spanning 32x in N.
    "cpu": GridSpec(shapes=[(1, 4), (1, 8), (1, 16), (2, 24)], max_flops=1.2e10, max_ratio=1000.0),
    # GPU: 8 shapes from 0.1M to 85M parameters, about 0.7 billion tokens in all, on 20M characters
    # of generated stories (offline; a run sees its text at most ~9 times). Not yet run on a GPU.
    "gpu": GridSpec(shapes=[(2, 64), (3, 96), (4, 128), (4, 192), (6, 256), (6, 384), (8, 512), (12, 768)],
                    max_flops=2e15, max_ratio=200.0, block_size=256, batch_size=64, lr=1e-3, warmup=200, head_dim=64,
                    min_steps=500, evals=20, eval_batches=40, max_chars=20_000_000, data="generated"),
}


def model_config(shape: tuple[int, int], vocab_size: int, spec: GridSpec):
    from course_lib.gpt import GPTConfig

    n_layers, d_model = shape
    n_heads = max(1, d_model // spec.head_dim)
    while d_model % n_heads:  # heads of about head_dim dimensions that divide d_model
        n_heads -= 1
    return GPTConfig(vocab_size=vocab_size, block_size=spec.block_size, n_layers=n_layers,
                     n_heads=n_heads, d_model=d_model)


def plan_grid(spec: GridSpec, vocab_size: int) -> list[dict]:
    """One run per shape: its N, optimizer steps and tokens."""
    from course_lib.gpt import GPT

    tokens_per_step = spec.batch_size * spec.block_size
    runs = []
    for shape in spec.shapes:
        with torch.device("meta"):
            n = scaling_params(GPT(model_config(shape, vocab_size, spec)))
        tokens = min(spec.max_flops / (6 * n), spec.max_ratio * n)
        steps = max(spec.min_steps, round(tokens / tokens_per_step))
        runs.append({"n_layers": shape[0], "d_model": shape[1], "params": n, "steps": steps,
                     "tokens": steps * tokens_per_step, "eval_every": max(1, steps // spec.evals)})
    return runs


def run_grid(spec: GridSpec, text: str, device: str | None = None, quiet: bool = True,
             on_run=None) -> list[dict]:
    """Train every run of ``plan_grid`` on ``text`` (character level; the same split and
    the same validation batches for all) and return one row per evaluation: ``params``,
    ``tokens``, ``flops``, ``val_loss`` (and the run's shape, ``seconds`` so far)."""
    from course_lib.gpt import GPT
    from course_lib.tokenizer import CharTokenizer
    from course_lib.training.gpt import GPTTrainConfig, prepare_data, train

    tokenizer = CharTokenizer.from_text(text)
    data = prepare_data(text, tokenizer)
    rows = []
    for run in plan_grid(spec, tokenizer.vocab_size):
        torch.manual_seed(spec.seed)
        model = GPT(model_config((run["n_layers"], run["d_model"]), tokenizer.vocab_size, spec))
        cfg = GPTTrainConfig(steps=run["steps"], batch_size=spec.batch_size, lr=spec.lr, min_lr=spec.lr,
                             warmup=min(spec.warmup, run["steps"] // 4), eval_every=run["eval_every"],
                             eval_batches=spec.eval_batches, seed=spec.seed, device=device,
                             progress=False, precision="auto")
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext():
            state = train(model, data, cfg)
        seconds = time.perf_counter() - t0
        tokens_per_step = spec.batch_size * spec.block_size
        new = [{"n_layers": run["n_layers"], "d_model": run["d_model"], "params": run["params"],
                "step": e["step"], "tokens": e["step"] * tokens_per_step,
                "flops": training_flops(run["params"], e["step"] * tokens_per_step),
                "val_loss": e["val"], "seconds": seconds} for e in state["evals"]]
        rows += new
        if on_run is not None:
            on_run(new)
    return rows


def loss_at_tokens(rows: list[dict], params: int, tokens: float, slack: float = 0.02) -> float | None:
    """One model's validation loss after ``tokens`` tokens, interpolated linearly in
    log D between its evaluations (None outside them, beyond a relative ``slack``)."""
    _check_rows(rows, ("params", "tokens", "val_loss"))
    checks.number("tokens", tokens, 0.0, above=True)
    curve = sorted((r["tokens"], r["val_loss"]) for r in rows if r["params"] == params)
    if not curve:
        return None
    d = np.log([c[0] for c in curve])
    x = math.log(tokens)
    if not d[0] - slack <= x <= d[-1] + slack:
        return None
    return float(np.interp(x, d, [c[1] for c in curve]))


def isoflop_slices(rows: list[dict], budgets) -> list[dict]:
    """For each budget C, every model that reached ``D = C / (6 N)`` tokens and its loss
    there: the points of one IsoFLOP curve (rows ``budget, params, tokens, val_loss``)."""
    budgets = list(budgets) if isinstance(budgets, (list, tuple, np.ndarray)) else [budgets]
    for c in budgets:
        checks.number("budget", float(c) if isinstance(c, (np.floating, np.integer)) else c, 0.0, above=True)
    out = []
    for c in budgets:
        for n in sorted({r["params"] for r in rows}):
            d = c / (6 * n)
            loss = loss_at_tokens(rows, n, d)
            if loss is not None:
                out.append({"budget": float(c), "params": n, "tokens": d, "val_loss": loss})
    return out


def save_results(path: str | Path, spec: GridSpec, rows: list[dict], source: str) -> None:
    payload = {"format": "course_lib.scaling/1", "grid": asdict(spec), "data_source": source, "runs": rows}
    Path(path).write_text(json.dumps(payload, indent=1))


def load_results(path: str | Path) -> dict:
    """A results file written by ``python -m course_lib.scaling`` (JSON, checked)."""
    from course_lib.training.core import read_json

    payload = read_json(path, "scaling results")
    if payload.get("format") != "course_lib.scaling/1" or not isinstance(payload.get("runs"), list):
        raise ValueError(f"{path} is not a results file of python -m course_lib.scaling; rerun that command.")
    needed = {"params", "tokens", "val_loss"}
    for i, row in enumerate(payload["runs"]):
        if not isinstance(row, dict) or not needed <= set(row):
            raise ValueError(f"{path}: row {i} lacks {sorted(needed - set(row or {}))}; the file is damaged.")
    return payload


# ---- command line --------------------------------------------------------------------------

def main(argv=None) -> int:
    """``python -m course_lib.scaling --grid gpu --out results.json``."""
    from course_lib.data import load_text
    from course_lib.training.core import Parser

    p = Parser(prog="python -m course_lib.scaling",
               description="Train the scaling-law grid of notebook 11 and write its results (JSON).")
    p.add_argument("--grid", default="gpu", choices=sorted(GRIDS), help="which grid of sizes and budgets")
    p.add_argument("--out", default="scaling_results.json", help="results file (JSON) that notebook 11 loads")
    p.add_argument("--data", default=None, help="text to train on (None: the grid's own)")
    p.add_argument("--device", default=None, help="cpu, cuda, mps (None: the best found)")
    p.add_argument("--max-flops", type=float, default=None, help="compute of each run (None: the grid's)")
    p.add_argument("--shapes", type=int, default=None, help="train only the first N shapes (a quick check; None: all)")
    args = p.parse_args(argv)
    spec = copy.deepcopy(GRIDS[args.grid])
    if args.data:
        spec.data = args.data
    if args.max_flops is not None:
        if not args.max_flops > 0:
            raise ValueError(f"--max-flops {args.max_flops} must be > 0.")
        spec.max_flops = args.max_flops
    if args.shapes is not None:
        if args.shapes < 1:
            raise ValueError(f"--shapes {args.shapes} must be >= 1.")
        spec.shapes = spec.shapes[: args.shapes]
    out = Path(args.out)
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder; give a file name such as results.json.")
    out.parent.mkdir(parents=True, exist_ok=True)
    text = load_text(spec.data, max_chars=spec.max_chars)
    print(f"data: {text.source}; {len(spec.shapes)} model sizes", flush=True)
    rows: list[dict] = []

    def report(new):
        rows.extend(new)
        last = new[-1]
        print(f"N={last['params']:>11,}  D={last['tokens']:>13,}  C={last['flops']:.2e}  "
              f"val {last['val_loss']:.4f}  ({last['seconds']:.0f} s)", flush=True)
        save_results(out, spec, rows, text.source)  # after every run: a killed grid keeps its runs

    run_grid(spec, text.text, device=args.device, on_run=report)
    print(f"wrote {out} ({len(rows)} evaluations)")
    return 0


if __name__ == "__main__":
    import sys

    from course_lib.training.core import run_command

    sys.exit(run_command(main))
