"""Scaling-law fits recover known laws from noisy data generated from them; a wrong fit
does not; 6 N D agrees with PyTorch's FLOP counter; a grid run is planned, trained and
repeatable, and benchmarks/scaling_grid.py resumes a grid."""

import json

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from course_lib.attention import ROUTES, use_route
from course_lib.gpt import GPT, GPTConfig
from course_lib.scaling import (
    CHINCHILLA,
    IsoFLOPSpec,
    LossSurface,
    _linear_fits,
    attention_flops,
    bootstrap_loss_surface,
    envelope_analysis,
    fit_loss_surface,
    fit_power_law,
    fit_power_law_offset,
    isoflop_analysis,
    isoflop_minimum,
    plan_point,
    scaling_params,
    train_point,
    training_flops,
)

RNG = np.random.default_rng(0)
TRUE = LossSurface(**CHINCHILLA["surface"])  # E 1.69, A 406.4, B 410.7, alpha 0.34, beta 0.28


def _noisy(y, rel=0.005):
    return np.asarray(y) * np.exp(RNG.normal(0, rel, np.shape(y)))


def test_power_law_recovers_its_exponent():
    x = np.logspace(3, 7, 12)
    a, alpha = fit_power_law(x, _noisy(5.0 * x**-0.3, 0.01))
    assert abs(alpha - 0.3) < 0.01 and abs(a / 5.0 - 1) < 0.1


def test_power_law_with_offset_recovers_e_a_alpha_and_a_pure_power_law_does_not():
    x = np.logspace(4, 8, 15)
    y = _noisy(1.7 + 400 * x**-0.34, 0.002)
    e, a, alpha = fit_power_law_offset(x, y)
    assert abs(alpha - 0.34) < 0.03 and abs(e - 1.7) < 0.05
    _, wrong = fit_power_law(x, y)  # ignoring the irreducible loss: the exponent is far off
    assert abs(wrong - 0.34) > 0.1


def test_loss_surface_recovers_chinchillas_exponents():
    n, d = np.meshgrid(np.logspace(7, 10, 7), np.logspace(9, 12, 7))
    fit = fit_loss_surface(n.ravel(), d.ravel(), _noisy(TRUE.loss(n, d).ravel(), 0.003))
    assert abs(fit.alpha - 0.34) < 0.04 and abs(fit.beta - 0.28) < 0.04
    assert abs(fit.E - 1.69) < 0.1
    assert abs(fit.a - TRUE.a) < 0.03  # N_opt ~ C^0.45
    # the compute-optimal split of the fit is close to the true one at 1e21 FLOPs
    n_true, _ = TRUE.optimal(1e21)
    n_fit, d_fit = fit.optimal(1e21)
    assert abs(np.log10(n_fit / n_true)) < 0.3
    assert training_flops(n_fit, d_fit) == pytest.approx(1e21)


def test_optimal_split_is_the_minimum_along_the_isoflop_curve():
    c = 1e20
    n = np.logspace(7, 12, 20001)
    brute = n[np.argmin(TRUE.loss(n, c / (6 * n)))]
    assert TRUE.optimal(c)[0] == pytest.approx(brute, rel=2e-3)


def test_isoflop_minimum_of_an_exact_parabola():
    n = np.logspace(5, 7, 9)
    loss = 2.0 + 0.1 * (np.log(n) - np.log(3e5)) ** 2
    n_opt, l_min, _ = isoflop_minimum(n, loss)
    assert n_opt == pytest.approx(3e5, rel=1e-6) and l_min == pytest.approx(2.0)
    with pytest.raises(ValueError, match="do not curve upwards"):
        isoflop_minimum(n, 3.0 - 0.1 * (np.log(n) - 12) ** 2)


def test_isoflop_analysis_recovers_the_compute_exponent():
    rows = []
    for c in (1e18, 1e19, 1e20, 1e21):
        n_star = TRUE.optimal(c)[0]
        for n in n_star * np.logspace(-0.6, 0.6, 7):
            rows.append({"budget": c, "params": n, "val_loss": float(_noisy(TRUE.loss(n, c / (6 * n)), 0.001))})
    out = isoflop_analysis(rows)
    assert abs(out["a"] - TRUE.a) < 0.04 and abs(out["a"] + out["b"] - 1) < 1e-9
    # a deliberately wrong analysis (a parabola in N instead of log N) misses the minima
    wrong = [np.polyfit([r["params"] for r in rows if r["budget"] == c],
                        [r["val_loss"] for r in rows if r["budget"] == c], 2) for c in (1e20,)]
    n_wrong = -wrong[0][1] / (2 * wrong[0][0])
    assert abs(np.log10(n_wrong / TRUE.optimal(1e20)[0])) > 0.1
    assert abs(np.log10(out["minima"][2]["n_opt"] / TRUE.optimal(1e20)[0])) < 0.05


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="different lengths"):
        fit_power_law([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="> 0"):
        fit_power_law([1, 2, 0], [1, 2, 3])


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("threads", [1, 2])
def test_six_nd_against_pytorchs_flop_counter(route, threads):
    """FlopCounterMode's count, split by kind of product, on every attention route at 1 and 2
    threads: the weights' products are exactly 6 x (their weights) x D; attention's products
    are exactly attention_flops when written out (explicit, short) and unseen in the CPU's
    fused kernel; 6ND adds exactly 6 x (biases and LayerNorm gains) x D."""
    torch.manual_seed(0)
    c = GPTConfig(vocab_size=64, block_size=32, n_layers=2, n_heads=4, d_model=64)
    model = GPT(c)
    x = torch.randint(0, 64, (4, 32))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with use_route(route), FlopCounterMode(display=False) as counter:
            model(x, x)[1].backward()
    finally:
        torch.set_num_threads(before)
    by_op = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    weights = by_op.pop("aten.mm") + by_op.pop("aten.addmm")
    attention = sum(by_op.values())
    assert set(by_op) <= {"aten.bmm", "aten.baddbmm"}
    tokens = x.numel()
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    matmul_params = sum(m.weight.numel() for m in linears)
    assert weights == 6 * matmul_params * tokens
    assert attention == (0 if route == "fused" else attention_flops(c.n_layers, c.d_model, 32, tokens))
    others = sum(p.numel() for n, p in model.named_parameters() if n.endswith("bias") or "norm" in n)
    assert scaling_params(model) == matmul_params + others
    assert training_flops(scaling_params(model), tokens) == 6 * (matmul_params + others) * tokens


def test_isoflop_analysis_skips_budgets_without_a_minimum():
    rows = [{"budget": 1.0, "params": n, "val_loss": 3.0 - 0.1 * (np.log(n) - 8) ** 2} for n in (1e3, 3e3, 1e4)]
    rows += [{"budget": 2.0, "params": n, "val_loss": 2.0 + 0.1 * (np.log(n) - 6.5) ** 2} for n in (1e3, 3e3, 1e4)]
    out = isoflop_analysis(rows)
    assert out["skipped"] == [1.0] and len(out["minima"]) == 1 and np.isnan(out["a"])
    assert out["minima"][0]["inside"] is False  # the vertex, e^6.5 ~ 665, is below the smallest size
    assert out["minima"][0]["n_opt"] == pytest.approx(np.exp(6.5))


# ---- the three approaches on a grid laid out like notebook 11's -------------------------------

CHAR = LossSurface(E=1.3, A=40.0, B=300.0, alpha=0.4, beta=0.35)  # a = 0.35 / 0.75 = 0.467


def _isoflop_grid(surface, noise=0.0, budgets=(1e11, 2e11, 4e11, 8e11, 1.6e12), spread=0.6, sizes=7):
    """Runs at every budget, ``sizes`` model sizes within a factor 10^spread of its optimum."""
    rows = []
    for c in budgets:
        for n in surface.optimal(c)[0] * np.logspace(-spread, spread, sizes):
            d = c / (6 * n)
            loss = float(surface.loss(n, d)) * (float(np.exp(RNG.normal(0, noise))) if noise else 1.0)
            rows.append({"budget": c, "flops": c, "params": n, "tokens": d, "val_loss": loss})
    return rows


def _surface_of(rows, **ranges):
    return fit_loss_surface([r["params"] for r in rows], [r["tokens"] for r in rows],
                            [r["val_loss"] for r in rows], **ranges)


def test_the_three_approaches_recover_the_exponent_of_a_known_surface():
    rows = _isoflop_grid(CHAR)
    fit = _surface_of(rows)
    for name in ("E", "A", "B", "alpha", "beta"):
        assert getattr(fit, name) == pytest.approx(getattr(CHAR, name), rel=0.02), name
    assert isoflop_analysis(rows)["a"] == pytest.approx(CHAR.a, abs=0.01)
    # approach 1 picks among the sizes measured (steps of 10^0.2 here): a coarser estimate
    envelope = envelope_analysis(rows, points=41)
    assert envelope["a"] == pytest.approx(CHAR.a, abs=0.08)
    assert all(e["inside"] for e in envelope["envelope"][1:-1])
    # broken: the envelope read against tokens instead of compute (the largest model always
    # wins: no exponent, NaN), and a surface whose exponents are searched in the wrong range
    wrong = envelope_analysis([{**r, "flops": r["tokens"]} for r in rows], points=41)
    assert not abs(wrong["a"] - CHAR.a) < 0.08
    assert abs(_surface_of(rows, alpha_range=(0.6, 1.5)).a - CHAR.a) > 0.05


def test_noisy_runs_still_give_agreeing_exponents():
    rows = _isoflop_grid(CHAR, noise=0.003)
    a2, a3 = isoflop_analysis(rows)["a"], _surface_of(rows).a
    assert abs(a2 - CHAR.a) < 0.05 and abs(a3 - CHAR.a) < 0.05


def test_the_surface_fit_is_the_least_squares_optimum_by_brute_force():
    """At the fitted exponents E, A, B are numpy's least-squares solution (relative errors),
    and no point of a brute-force grid around the five fitted values fits the runs better."""
    rows = _isoflop_grid(CHAR, noise=0.01)
    n, d, y = (np.array([r[k] for r in rows]) for k in ("params", "tokens", "val_loss"))
    fit = _surface_of(rows)
    cols = np.stack([np.ones_like(y), n**-fit.alpha, d**-fit.beta], 1) / y[:, None]
    lstsq = np.linalg.lstsq(cols, np.ones_like(y), rcond=None)[0]
    assert lstsq == pytest.approx([fit.E, fit.A, fit.B], rel=1e-6)

    def error(s):
        return float(np.sum((s.loss(n, d) / y - 1) ** 2))

    best = error(fit)
    steps = np.array([-0.02, 0.0, 0.02])
    for de, da, db, dal, dbe in np.stack(np.meshgrid(*[steps] * 5), -1).reshape(-1, 5):
        other = LossSurface(fit.E * (1 + de), fit.A * (1 + da), fit.B * (1 + db), fit.alpha + dal / 10,
                            fit.beta + dbe / 10)
        assert error(other) >= best * (1 - 1e-9)


def test_batched_linear_fits_equal_numpys_lstsq_and_refuse_negative_coefficients():
    x = np.linspace(1, 2, 9)
    y = 1.0 + 2.0 / x
    cols = np.stack([np.stack([np.ones_like(x), 1 / x], 1), np.stack([np.ones_like(x), x], 1)])
    c, error = _linear_fits(cols, y)
    assert c[0] == pytest.approx([1.0, 2.0]) and error[0] < 1e-20
    assert error[1] == np.inf  # y falls with x: only a negative coefficient of x would fit


def test_a_bootstrap_interval_covers_the_true_e_and_widens_when_runs_cannot_pin_it():
    rows = _isoflop_grid(CHAR, noise=0.003)
    n, d, y = ([r[k] for r in rows] for k in ("params", "tokens", "val_loss"))
    fits = bootstrap_loss_surface(n, d, y, samples=40)
    lo, hi = np.percentile([f.E for f in fits], [5, 95])
    assert len(fits) >= 35 and lo < CHAR.E < hi
    far = _isoflop_grid(CHAR, noise=0.003, budgets=(1e9, 2e9), sizes=4)  # far above E, two budgets
    n, d, y = ([r[k] for r in far] for k in ("params", "tokens", "val_loss"))
    wide = np.percentile([f.E for f in bootstrap_loss_surface(n, d, y, samples=40)], [5, 95])
    assert wide[1] - wide[0] > 3 * (hi - lo)


def test_a_grid_point_spends_its_budget_and_trains_repeatably(one_thread):
    from course_lib.tokenizer import CharTokenizer
    from course_lib.training.gpt import prepare_data

    spec = IsoFLOPSpec(block_size=16, batch_size=8, eval_batches=2, lr=1e-2)
    text = "the cat sat on the mat. the dog sat on the log. " * 80
    tokenizer = CharTokenizer.from_text(text)
    point = plan_point(2e7, (1, 8), tokenizer.vocab_size, spec)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=16, n_layers=1, n_heads=1, d_model=8))
    assert point["params"] == scaling_params(model)
    assert point["tokens"] == point["steps"] * 128 and abs(point["flops"] / 2e7 - 1) < 128 * 6 * point["params"] / 2e7
    data = prepare_data(text, tokenizer)
    first, second = train_point(point, data, spec), train_point(point, data, spec)
    assert first["val_loss"] == second["val_loss"] < np.log(tokenizer.vocab_size)


def test_the_grid_script_records_and_resumes(tmp_path, one_thread, capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "scaling_grid.py"
    module_spec = importlib.util.spec_from_file_location("scaling_grid", path)
    grid = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(grid)
    grid.QUICK_GRID = {3e7: [(1, 4), (1, 8)]}
    assert grid.main(["--quick", "--record", "--folder", str(tmp_path)]) == 0
    body = json.loads((tmp_path / "scaling_grid_quick.json").read_text())
    assert len(body["figures"]["points"]) == 2 and "2 runs to train" in capsys.readouterr().out
    grid.QUICK_GRID = {3e7: [(1, 4), (1, 8)], 6e7: [(1, 4)]}  # extended: only the new run trains
    assert grid.main(["--quick", "--record", "--folder", str(tmp_path)]) == 0
    assert "1 runs to train, 2 already recorded" in capsys.readouterr().out
    body["figures"]["spec"]["lr"] = 1.0  # a file from other settings is refused, not mixed in
    (tmp_path / "scaling_grid_quick.json").write_text(json.dumps(body))
    with pytest.raises(ValueError, match="move it away"):
        grid.main(["--quick", "--record", "--folder", str(tmp_path)])


def test_a_surface_with_e_held_fixed_profiles_e():
    """Held at the true E the fit recovers the rest; held at a wrong E it fits worse."""
    rows = _isoflop_grid(CHAR)
    n, d, y = (np.array([r[k] for r in rows]) for k in ("params", "tokens", "val_loss"))
    at_true = fit_loss_surface(n, d, y, E=CHAR.E)
    assert at_true.E == CHAR.E and at_true.alpha == pytest.approx(CHAR.alpha, rel=0.02)
    assert at_true.beta == pytest.approx(CHAR.beta, rel=0.02)
    wrong = fit_loss_surface(n, d, y, E=0.5)
    assert np.sum((wrong.loss(n, d) / y - 1) ** 2) > 100 * np.sum((at_true.loss(n, d) / y - 1) ** 2) + 1e-12
    with pytest.raises(ValueError, match="lowest loss"):
        fit_loss_surface(n, d, y, E=float(y.min()) + 0.1)


def test_the_grid_file_is_read_from_the_checkout_or_its_repository_address():
    from course_lib.scaling import load_grid, results_url

    assert load_grid()["figures"]["points"] == load_grid(repo_url="https://github.com/o/r")["figures"]["points"]
    assert results_url("https://github.com/o/r.git", "g") == \
        "https://raw.githubusercontent.com/o/r/main/resources/results/g.json"
    with pytest.raises(ValueError, match="GitHub address"):
        results_url("github.com/o/r", "g")
    with pytest.raises(FileNotFoundError):
        load_grid("no_such_grid")


def test_a_grid_that_cannot_be_downloaded_says_what_to_do(monkeypatch):
    import urllib.error
    import urllib.request

    from course_lib.scaling import load_grid

    def offline(url, timeout):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(RuntimeError, match=r"raw.githubusercontent.com/o/r/main/resources/results/no_such_grid.json "
                                           r"could not be read \(no route to host\): connect to the internet"):
        load_grid("no_such_grid", repo_url="https://github.com/o/r")
