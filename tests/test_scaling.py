"""Scaling-law fits recover known laws from noisy data generated from them; a wrong fit
does not; 6 N D agrees with PyTorch's FLOP counter; the grid runs and its results load."""

import json

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from course_lib.attention import ROUTES, use_route
from course_lib.gpt import GPT, GPTConfig
from course_lib.scaling import (
    CHINCHILLA,
    GridSpec,
    LossSurface,
    attention_flops,
    fit_loss_surface,
    fit_power_law,
    fit_power_law_offset,
    isoflop_analysis,
    isoflop_minimum,
    isoflop_slices,
    load_results,
    loss_at_tokens,
    main,
    run_grid,
    save_results,
    scaling_params,
    training_flops,
)
from course_lib.training.core import run_command

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


def test_curves_interpolate_and_slice_into_isoflop_points():
    rows = [{"params": 100, "tokens": t, "val_loss": 3.0 - 0.1 * np.log(t)} for t in (1e3, 1e4, 1e5)]
    assert loss_at_tokens(rows, 100, 10**4.5) == pytest.approx(3.0 - 0.1 * np.log(10**4.5))
    assert loss_at_tokens(rows, 100, 1e6) is None
    points = isoflop_slices(rows, [6 * 100 * 2e4, 6 * 100 * 1e7])
    assert len(points) == 1 and points[0]["tokens"] == pytest.approx(2e4)


def test_a_tiny_grid_trains_saves_and_loads(tmp_path, one_thread):
    text = "the cat sat on the mat. the dog sat on the log. " * 60
    spec = GridSpec(shapes=[(1, 8), (1, 16)], max_flops=2e7, block_size=16, batch_size=8, min_steps=6,
                    evals=3, eval_batches=2)
    rows = run_grid(spec, text, device="cpu")
    assert {r["params"] for r in rows} == {scaling_params(GPT(GPTConfig(vocab_size=len(set(text)), block_size=16,
                                                                        n_layers=1, n_heads=h, d_model=d)))
                                          for h, d in ((1, 8), (2, 16))}
    assert all(r["flops"] == training_flops(r["params"], r["tokens"]) for r in rows)
    save_results(tmp_path / "r.json", spec, rows, "test")
    assert load_results(tmp_path / "r.json")["runs"] == json.loads(json.dumps(rows))
    (tmp_path / "bad.json").write_text(json.dumps({"format": "course_lib.scaling/1", "runs": [{"params": 1}]}))
    with pytest.raises(ValueError, match="lacks"):
        load_results(tmp_path / "bad.json")


def test_command_reports_a_folder_as_out(tmp_path, capsys):
    assert run_command(main, ["--grid", "cpu", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("error: --out")


def test_isoflop_analysis_skips_budgets_without_a_minimum():
    rows = [{"budget": 1.0, "params": n, "val_loss": 3.0 - 0.1 * (np.log(n) - 8) ** 2} for n in (1e3, 3e3, 1e4)]
    rows += [{"budget": 2.0, "params": n, "val_loss": 2.0 + 0.1 * (np.log(n) - 6.5) ** 2} for n in (1e3, 3e3, 1e4)]
    out = isoflop_analysis(rows)
    assert out["skipped"] == [1.0] and len(out["minima"]) == 1 and np.isnan(out["a"])
    assert out["minima"][0]["inside"] is False  # the vertex, e^6.5 ~ 665, is below the smallest size
    assert out["minima"][0]["n_opt"] == pytest.approx(np.exp(6.5))


def test_command_writes_a_results_file_the_notebook_loads(tmp_path, capsys, one_thread):
    out = tmp_path / "results.json"
    assert run_command(main, ["--grid", "cpu", "--shapes", "1", "--max-flops", "1e8", "--device", "cpu",
                              "--out", str(out)]) == 0
    runs = load_results(out)["runs"]
    assert len(runs) >= 2 and {r["params"] for r in runs} == {508}
    assert "wrote" in capsys.readouterr().out
