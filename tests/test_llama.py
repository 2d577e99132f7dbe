"""course_lib.llama and course_lib.rope against independent references: Hugging Face's
LlamaForCausalLM and Qwen3ForCausalLM (random tiny configs, weights copied across),
torch.nn.RMSNorm, RoPE as explicit 2 x 2 rotation matrices, the KV cache against the
full forward pass, the memory estimate against the fake-tensor measurement, and the
command line (train gpt --arch llama, generate)."""

import math

import pytest
import torch
import transformers as tf

from course_lib.generate import generate
from course_lib.llama import (
    Llama,
    LlamaConfig,
    RMSNorm,
    SwiGLU,
    config_from_hf,
    kv_cache_bytes_per_token,
    swiglu_hidden,
)
from course_lib.rope import RotaryEmbedding, apply_rope, interleaved_to_halves, rope_angles

TOL = 1e-4  # float32 logits of magnitude up to ~10: only rounding differs (seen: ~1e-5)


def hf_model(family: str, tie: bool, n_kv_heads: int, seed: int = 0):
    """A random tiny Hugging Face model (built offline), every weight drawn at a scale where
    a wrong sign, order or norm shows in the logits."""
    common = dict(vocab_size=61, hidden_size=48, intermediate_size=72, num_hidden_layers=2,
                  num_attention_heads=6, num_key_value_heads=n_kv_heads, max_position_embeddings=40,
                  rms_norm_eps=1e-6, tie_word_embeddings=tie, rope_theta=500.0)
    if family == "llama":
        model = tf.LlamaForCausalLM(tf.LlamaConfig(**common))
    else:  # Qwen3: its own head_dim (not hidden_size / heads) and QK-norm
        model = tf.Qwen3ForCausalLM(tf.Qwen3Config(**common, head_dim=12))
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.25).add_(1.0 if p.dim() == 1 else 0.0)  # norm gains around 1
    return model.eval()


def course_copy(hf) -> Llama:
    return Llama.from_hf(hf.config.to_dict(), hf.state_dict()).eval()


CASES = [("llama", False, 2), ("llama", True, 2), ("llama", False, 1), ("llama", True, 6),
         ("qwen3", False, 2), ("qwen3", True, 2), ("qwen3", True, 1)]


@pytest.mark.parametrize("family,tie,n_kv_heads", CASES)
def test_logits_equal_hugging_face(family, tie, n_kv_heads):
    hf = hf_model(family, tie, n_kv_heads)
    ours = course_copy(hf)
    assert ours.config.tie_embeddings == tie and ours.config.qk_norm == (family == "qwen3")
    assert ours.num_parameters() == sum(p.numel() for p in hf.parameters())
    idx = torch.randint(0, 61, (3, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = hf(idx).logits, ours(idx)[0]
    assert expected.abs().max() > 1.0  # logits large enough for an error to show
    assert (expected - got).abs().max().item() < TOL


@pytest.mark.parametrize("family,tie", [("llama", True), ("qwen3", False)])
def test_from_pretrained_reads_a_saved_hugging_face_folder(tmp_path, family, tie):
    """The path a hub checkpoint takes: config.json + model.safetensors (a tied head is not stored)."""
    hf = hf_model(family, tie, 2)
    hf.save_pretrained(tmp_path)
    ours = Llama.from_pretrained(str(tmp_path), block_size=24).eval()
    assert ours.config.block_size == 24
    idx = torch.randint(0, 61, (2, 24), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert (hf(idx).logits - ours(idx)[0]).abs().max().item() < TOL


def test_wrong_rope_layout_breaks_the_equality():
    """The deliberately broken variant: the right weights with RoPE's other layout."""
    hf = hf_model("llama", False, 2)
    ours = course_copy(hf)
    ours.rope.layout = "interleaved"
    idx = torch.randint(0, 61, (2, 30), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (hf(idx).logits - ours(idx)[0]).abs().max().item() > 100 * TOL


def test_wrong_grouping_of_query_heads_breaks_the_equality(monkeypatch):
    """Another broken variant: key/value head j serving query heads j, j + n_kv_heads, ...
    (``repeat``) instead of the consecutive group (``repeat_interleave``, as HF's repeat_kv)."""
    import course_lib.llama as L

    def strided(q, k, v, start, dropout=0.0):
        group = q.shape[1] // k.shape[1]
        return torch.nn.functional.scaled_dot_product_attention(
            q, k.repeat(1, group, 1, 1), v.repeat(1, group, 1, 1), is_causal=True)

    hf = hf_model("llama", False, 2)
    ours = course_copy(hf)
    idx = torch.randint(0, 61, (2, 30), generator=torch.Generator().manual_seed(5))
    monkeypatch.setattr(L, "causal_attention", strided)
    with torch.no_grad():
        assert (hf(idx).logits - ours(idx)[0]).abs().max().item() > 100 * TOL


def test_the_two_layouts_agree_once_the_weights_are_permuted():
    """An interleaved-layout model whose W_Q and W_K rows are in the interleaved order gives
    Hugging Face's (halves) logits: interleaved_to_halves is the permutation between them."""
    hf = hf_model("llama", False, 2)
    ours = course_copy(hf)
    ours.rope.layout = "interleaved"
    hs = ours.config.head_size
    inverse = torch.argsort(torch.cat([torch.arange(0, hs, 2), torch.arange(1, hs, 2)]))
    with torch.no_grad():
        for layer in ours.layers:
            for w, heads in ((layer.self_attn.w_q.weight, 6), (layer.self_attn.w_k.weight, 2)):
                halves = w.clone()
                w.copy_(halves.view(heads, hs, -1)[:, inverse].reshape(w.shape))  # to interleaved order
                assert torch.equal(interleaved_to_halves(w, heads), halves)
    idx = torch.randint(0, 61, (2, 30), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert (hf(idx).logits - ours(idx)[0]).abs().max().item() < TOL


def rotation_matrix(head_size: int, position: int, base: float) -> torch.Tensor:
    """Block-diagonal 2 x 2 rotations of pairs (0, 1), (2, 3), ...: the paper's R^d_{Theta, m}."""
    R = torch.zeros(head_size, head_size, dtype=torch.float64)
    for i in range(head_size // 2):
        angle = position * base ** (-2 * i / head_size)
        c, s = math.cos(angle), math.sin(angle)
        R[2 * i:2 * i + 2, 2 * i:2 * i + 2] = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
    return R


def test_rope_is_a_rotation_of_each_pair():
    hs, T, base = 8, 12, 100.0
    x = torch.randn(T, hs, dtype=torch.float64)
    angles = rope_angles(hs, T, base).double()
    interleaved = apply_rope(x, angles.cos(), angles.sin(), "interleaved")
    halves = apply_rope(x, angles.cos(), angles.sin(), "halves")
    order = torch.cat([torch.arange(0, hs, 2), torch.arange(1, hs, 2)])  # pair i = dims (i, i + hs/2)
    for m in range(T):
        R = rotation_matrix(hs, m, base)
        assert torch.allclose(interleaved[m], R @ x[m], atol=1e-6)
        x_pairs = torch.empty_like(x[m])
        x_pairs[order] = x[m]  # halves layout -> interleaved order
        assert torch.allclose(halves[m], (R @ x_pairs)[order], atol=1e-6)


def test_rope_scores_depend_only_on_the_offset():
    rope = RotaryEmbedding(16, 64)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)
    score = lambda m, n: (rope(q, m) * rope(k, n)).sum().item()  # noqa: E731
    for m, n in ((5, 2), (9, 9), (3, 7)):
        assert score(m, n) == pytest.approx(score(m + 40, n + 40), abs=1e-4)
    assert abs(score(5, 2) - score(6, 2)) > 1e-3  # and does depend on it


def test_rmsnorm_equals_torch():
    x = torch.randn(4, 7, 32) * 3 + 1
    ours, ref = RMSNorm(32, eps=1e-6), torch.nn.RMSNorm(32, eps=1e-6)
    with torch.no_grad():
        ours.weight.normal_()
        ref.weight.copy_(ours.weight)
    assert torch.allclose(ours(x), ref(x), atol=1e-6)


@pytest.mark.parametrize("d", [64, 96, 128, 4096])
def test_swiglu_hidden_keeps_the_parameters(d):
    f = swiglu_hidden(d)
    n = sum(p.numel() for p in SwiGLU(d, f).parameters()) if d < 1000 else 3 * d * f
    assert abs(n - 8 * d * d) <= 3 * d * 8  # within one rounding step of 8 d^2 (GELU's 2 x d x 4d)


def tiny(**kw) -> LlamaConfig:
    return LlamaConfig(**{**dict(vocab_size=50, block_size=32, n_layers=2, n_heads=4, n_kv_heads=2, d_model=32), **kw})


@pytest.mark.parametrize("kw", [{}, {"n_kv_heads": 1, "qk_norm": True}])
def test_cached_equals_uncached(kw):
    torch.manual_seed(0)
    model = Llama(tiny(**kw)).eval()
    idx = torch.randint(0, 50, (2, 20))
    with torch.no_grad():
        full = model(idx)[0]
        caches = model.new_caches()
        parts = [model(idx[:, :5], caches=caches)[0], model(idx[:, 5:8], caches=caches)[0]]  # a chunk after a prefix
        parts += [model(idx[:, t:t + 1], caches=caches)[0] for t in range(8, 20)]
    assert (torch.cat(parts, dim=1) - full).abs().max().item() < TOL
    assert caches[0].k.shape == (2, model.config.n_kv_heads, 20, 8)  # only the KV heads are cached
    kv_bytes = sum(c.k.numel() + c.v.numel() for c in caches) * 4 // (2 * 20)
    assert kv_bytes == kv_cache_bytes_per_token(model.config, bytes_per_value=4)
    a = generate(model, idx[:, :4], 12, temperature=0, use_cache=True)
    b = generate(model, idx[:, :4], 12, temperature=0, use_cache=False)
    assert torch.equal(a, b)


@pytest.mark.parametrize("kw,words", [
    (dict(n_heads=4, n_kv_heads=3), ["n_heads=4", "n_kv_heads=3", "divisible"]),
    (dict(d_model=36, n_heads=4), ["head size 9", "odd", "RoPE"]),
    (dict(d_model=30, n_heads=4), ["d_model=30", "n_heads=4"]),
    (dict(qk_norm="yes"), ["qk_norm='yes'"]),
])
def test_bad_config_is_a_clear_error(kw, words):
    with pytest.raises(ValueError) as err:
        tiny(**kw)
    assert all(w in str(err.value) for w in words), str(err.value)


def test_hf_config_the_model_lacks_is_an_error():
    base = hf_model("llama", False, 2).config.to_dict()
    for change, word in ((dict(attention_bias=True), "attention_bias"), (dict(hidden_act="gelu"), "hidden_act"),
                         (dict(rope_parameters={"rope_type": "llama3", "rope_theta": 1.0}), "llama3"),
                         (dict(model_type="gpt2"), "gpt2")):
        with pytest.raises(ValueError, match=word):
            config_from_hf({**base, **change})


def test_memory_estimate_and_plan_cover_the_model():
    from course_lib.training.memory import count_parameters, estimate_memory, measure_memory
    from course_lib.training.plan import training_flops

    for cfg in (tiny(), tiny(n_kv_heads=1, qk_norm=True, tie_embeddings=True), tiny(vocab_size=3000)):
        model = Llama(cfg)
        count = count_parameters(cfg)
        assert count.n_params == model.num_parameters()
        assert count.n_tensors == len(list(model.parameters()))
        assert training_flops(cfg, 3, 32) == 3 * 32 * model.flops_per_token(32)
        for precision in ("fp32", "bf16"):
            est, meas = estimate_memory(cfg, 4, 32, precision).total, measure_memory(cfg, 4, 32, precision)["total"]
            assert 0.97 < est / meas < 1.1, (cfg, precision, est, meas)


def test_command_line_train_resume_generate(tmp_path, capsys):
    from course_lib.cli import main
    from course_lib.models import load_trained

    text = tmp_path / "input.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 200)
    run = str(tmp_path / "run")
    args = ["train", "gpt", "--arch", "llama", "--data", str(text), "--batch-size", "4", "--steps", "6",
            "--eval-every", "3", "--eval-batches", "2", "--warmup", "2", "--block-size", "16", "--n-layers", "1",
            "--d-model", "32", "--n-heads", "4", "--n-kv-heads", "1", "--qk-norm", "--out", run]
    assert main(args) == 0
    trained = load_trained(run)
    assert trained.kind == "llama" and trained.model.config.n_kv_heads == 1 and trained.model.config.qk_norm
    assert main(["train", "gpt", "--out", run, "--resume", "--steps", "8"]) == 0  # the run's own --arch
    assert load_trained(run).train_state["step"] == 8
    capsys.readouterr()
    assert main(["generate", run, "the ", "--max-new-tokens", "10", "--seed", "1"]) == 0
    assert capsys.readouterr().out.startswith("the ")
    assert main(["train", "gpt", "--arch", "llama", "--n-kv-heads", "3", "--out", run]) == 2
    assert "n_kv_heads=3" in capsys.readouterr().err
    assert main(["train", "gpt", "--arch", "llama", "--preset", "gpt2-124m", "--out", run]) == 2
