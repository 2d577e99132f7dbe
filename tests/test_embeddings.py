"""course_lib.embeddings against nn.Embedding, one-hot products and the paper's formula
computed independently in float64 with math.sin / math.cos."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from course_lib.embeddings import (
    LearnedPositionalEmbedding,
    SinusoidalPositionalEncoding,
    TokenEmbedding,
    sinusoidal_encoding,
)


def formula(max_len, d_model, base=10000.0):
    """PE(pos, 2i) = sin(pos / base^(2i/d)), PE(pos, 2i+1) = cos(pos / base^(2i/d)), as floats."""
    table = []
    for pos in range(max_len):
        row = []
        for col in range(d_model):
            i2 = col - col % 2
            angle = pos / base ** (i2 / d_model)
            row.append(math.sin(angle) if col % 2 == 0 else math.cos(angle))
        table.append(row)
    return torch.tensor(table, dtype=torch.float64)


# ------------------------------------------------------------------ token embedding


def test_token_embedding_is_a_scaled_lookup_table():
    torch.manual_seed(0)
    emb = TokenEmbedding(11, 16)
    ref = nn.Embedding(11, 16)
    with torch.no_grad():
        ref.weight.copy_(emb.weight)
    ids = torch.randint(0, 11, (3, 5))
    torch.testing.assert_close(emb(ids), ref(ids) * 4.0)  # sqrt(16)
    # a lookup is a one-hot row vector times the table
    one_hot = F.one_hot(ids, 11).float()
    torch.testing.assert_close(emb(ids), one_hot @ emb.weight * 4.0)
    unscaled = TokenEmbedding(11, 16, scale=False)
    with torch.no_grad():
        unscaled.weight.copy_(emb.weight)
    torch.testing.assert_close(unscaled(ids), ref(ids))


def test_token_embedding_scaled_output_has_unit_scale_at_init():
    torch.manual_seed(0)
    emb = TokenEmbedding(2000, 256)
    std = emb(torch.arange(2000)).std().item()
    assert 0.95 < std < 1.05


def test_padding_idx_row_is_zero_and_gets_no_gradient_like_nn_embedding():
    torch.manual_seed(0)
    emb = TokenEmbedding(7, 4, padding_idx=0)
    ref = nn.Embedding(7, 4, padding_idx=0)
    with torch.no_grad():
        ref.weight.copy_(emb.weight)
    assert (emb.weight[0] == 0).all()
    ids = torch.tensor([[0, 1, 2, 0, 3]])
    (emb(ids) * torch.arange(20.0).view(1, 5, 4)).sum().backward()
    (ref(ids) * 2.0 * torch.arange(20.0).view(1, 5, 4)).sum().backward()  # 2 = sqrt(4)
    torch.testing.assert_close(emb.weight.grad, ref.weight.grad)
    assert (emb.weight.grad[0] == 0).all()


def test_token_ids_out_of_vocabulary_or_not_integers_are_named():
    emb = TokenEmbedding(10, 4)
    with pytest.raises(IndexError, match="token id 10 is outside the vocabulary"):
        emb(torch.tensor([[1, 10]]))
    with pytest.raises(IndexError, match="token id -1"):
        emb(torch.tensor([[-1, 3]]))
    with pytest.raises(TypeError, match="integer"):
        emb(torch.tensor([[1.0, 2.0]]))


def test_token_embedding_compiles_to_one_graph_off_the_cpu():
    """Off the CPU the id check reads the ids on the host; inside torch.compile that split the
    graph at every embedding (seen on an H200: the compiled Transformer broke its graph there).
    Meta tensors stand in for a GPU: not the CPU, and no GPU needed."""
    emb = TokenEmbedding(10, 4).to("meta")
    ids = torch.zeros(2, 3, dtype=torch.long, device="meta")
    out = torch.compile(emb, backend="eager", fullgraph=True)(ids)
    assert out.shape == (2, 3, 4) and out.device.type == "meta"


# ------------------------------------------------------------ sinusoidal encoding


@pytest.mark.parametrize("max_len,d_model", [(50, 64), (7, 2), (128, 10)])
def test_sinusoidal_table_matches_the_formula(max_len, d_model):
    want = formula(max_len, d_model)
    torch.testing.assert_close(sinusoidal_encoding(max_len, d_model, dtype=torch.float64), want,
                               rtol=0, atol=1e-12)
    torch.testing.assert_close(sinusoidal_encoding(max_len, d_model), want.float())


def test_sinusoidal_module_adds_the_table_with_an_offset():
    pe = SinusoidalPositionalEncoding(8, max_len=20)
    x = torch.randn(2, 5, 8)
    want = formula(20, 8).float()
    torch.testing.assert_close(pe(x), x + want[:5])
    torch.testing.assert_close(pe(x, start=3), x + want[3:8])
    assert list(dict(pe.named_buffers())) == ["pe"] and not pe.state_dict()  # not saved


def rotation(k, d_model, base=10000.0):
    """Block-diagonal matrix M_k with PE(pos + k) = M_k PE(pos): one 2x2 rotation per
    (sin, cos) pair, by angle k * w_i (sin(a+b) = sin a cos b + cos a sin b, ...)."""
    m = torch.zeros(d_model, d_model, dtype=torch.float64)
    for i2 in range(0, d_model, 2):
        b = k / base ** (i2 / d_model)
        m[i2, i2], m[i2, i2 + 1] = math.cos(b), math.sin(b)
        m[i2 + 1, i2], m[i2 + 1, i2 + 1] = -math.sin(b), math.cos(b)
    return m


def test_shift_by_k_is_a_fixed_block_diagonal_rotation():
    d_model, k = 8, 5
    pe = sinusoidal_encoding(400, d_model, base=100.0, dtype=torch.float64)  # short wavelengths
    # fit the linear map from positions 0..199 alone (least squares) ...
    fit = torch.linalg.lstsq(pe[:200], pe[k : 200 + k]).solution.T
    # ... it is block diagonal, each block a rotation, and equals the closed form
    blocks = torch.block_diag(*[torch.ones(2, 2)] * (d_model // 2)).bool()
    assert fit[~blocks].abs().max() < 1e-8
    for i in range(0, d_model, 2):
        blk = fit[i : i + 2, i : i + 2]
        torch.testing.assert_close(blk @ blk.T, torch.eye(2, dtype=torch.float64))
        assert abs(torch.linalg.det(blk).item() - 1) < 1e-8
    torch.testing.assert_close(fit, rotation(k, d_model, base=100.0))
    # ... and it depends only on k: the same map works for positions 200..394
    torch.testing.assert_close(pe[200 : 400 - k] @ fit.T, pe[200 + k :])


@pytest.mark.parametrize("k", [1, 3, 17, 100])
def test_rotation_property_on_the_library_table(k):
    d_model = 64
    pe = sinusoidal_encoding(512, d_model).double()  # float32 table
    torch.testing.assert_close(pe[:-k] @ rotation(k, d_model).T, pe[k:], rtol=0, atol=2e-5)


def test_sinusoidal_rejects_odd_d_model():
    with pytest.raises(ValueError, match="even d_model"):
        sinusoidal_encoding(10, 7)


# ------------------------------------------------------------- learned positions


def test_learned_positions_add_rows_of_a_trained_table():
    torch.manual_seed(0)
    lpe = LearnedPositionalEmbedding(12, 6)
    ref = nn.Embedding(12, 6)
    with torch.no_grad():
        ref.weight.copy_(lpe.weight)
    x = torch.randn(2, 4, 6)
    torch.testing.assert_close(lpe(x), x + ref(torch.arange(4)))
    torch.testing.assert_close(lpe(x, start=8), x + ref(torch.arange(8, 12)))
    lpe(x).sum().backward()
    assert (lpe.weight.grad[:4] == 2).all() and (lpe.weight.grad[4:] == 0).all()


@pytest.mark.parametrize("make", [lambda: SinusoidalPositionalEncoding(8, max_len=10),
                                  lambda: LearnedPositionalEmbedding(10, 8)])
def test_positions_reject_too_long_or_misshaped_input(make):
    module = make()
    with pytest.raises(ValueError, match="longer than"):
        module(torch.randn(1, 11, 8))
    with pytest.raises(ValueError, match="longer than"):
        module(torch.randn(1, 4, 8), start=7)
    with pytest.raises(ValueError, match="d_model=8"):
        module(torch.randn(1, 4, 6))
    with pytest.raises(ValueError, match="not to the token ids"):
        module(torch.tensor([[1, 2, 3]]))
    assert module(torch.randn(1, 10, 8)).shape == (1, 10, 8)
