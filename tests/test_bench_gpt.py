"""benchmarks/bench_gpt.py's ablation: the course's model with one stacked q/k/v matrix must be the
same function as the course's model, or its speed says nothing about the course's layout."""

import copy
import json
import sys
from pathlib import Path

import torch

from course_lib.gpt import GPT, GPTConfig

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import bench_gpt  # noqa: E402


def test_one_qkv_matrix_is_the_same_model():
    torch.manual_seed(0)
    course = GPT(GPTConfig.preset("tiny", vocab_size=30))
    stacked = bench_gpt.stack_qkv(copy.deepcopy(course))  # its own copy of W^Q, W^K, W^V is what is tested
    assert not any(".w_q." in n for n, _ in stacked.named_parameters())
    assert sum(p.numel() for p in stacked.parameters()) == sum(p.numel() for p in course.parameters())
    x = torch.randint(0, 30, (2, 16))
    (logits_a, loss_a), (logits_b, loss_b) = course(x, x), stacked(x, x)
    torch.testing.assert_close(logits_b, logits_a, atol=1e-5, rtol=1e-5)
    loss_a.backward()
    loss_b.backward()
    grad_q = course.layers[0].self_attn.w_q.weight.grad
    torch.testing.assert_close(stacked.layers[0].self_attn.w_qkv.weight.grad[: grad_q.shape[0]], grad_q,
                               atol=1e-5, rtol=1e-5)


def test_an_ablation_run_reports_its_ratios(tmp_path):
    out, threads = tmp_path / "ratios.json", torch.get_num_threads()
    try:
        assert bench_gpt.main(["--preset", "tiny", "--ablation", "--rounds", "1", "--steps", "1",
                               "--threads", str(threads), "--ratios-to", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)  # main sets the process's thread count
    ratios = json.loads(out.read_text())
    assert {"reference", "one_qkv", "one_qkv_paired", "reference_again", "reference_again_paired"} <= set(ratios)
    assert all(r > 0 for k, r in ratios.items() if k != "setup")
    assert "course with one q/k/v matrix" in bench_gpt.format_run(ratios)
