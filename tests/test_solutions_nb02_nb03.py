"""The exercise solutions of notebooks 02 and 03 against independent references
(nn.functional, brute-force Python loops, math.sin/cos), and check()'s messages."""

import math

import pytest
import torch
import torch.nn.functional as F

from course_lib.exercises import cases, check
from course_lib.solutions import nb02, nb03

# ------------------------------------------------------------------------- nb02


def test_embed_one_hot_is_the_lookup():
    for ids, table in cases("nb02.embed_one_hot"):
        torch.testing.assert_close(nb02.embed_one_hot(ids, table), F.embedding(ids, table))


def test_cosine_similarity_matrix_matches_torch():
    for (vectors,) in cases("nb02.cosine_similarity_matrix"):
        want = F.cosine_similarity(vectors[:, None, :], vectors[None, :, :], dim=-1)
        torch.testing.assert_close(nb02.cosine_similarity_matrix(vectors), want)


def test_nearest_neighbours_match_brute_force():
    for vectors, i, k in cases("nb02.nearest_neighbours"):
        rows = vectors.tolist()

        def cos(a, b):
            dot = sum(x * y for x, y in zip(a, b, strict=True))
            return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))

        ranked = sorted((j for j in range(len(rows)) if j != i), key=lambda j: -cos(rows[i], rows[j]))
        assert nb02.nearest_neighbours(vectors, i, k) == ranked[:k]


# ------------------------------------------------------------------------- nb03


def test_positional_encoding_matches_formula():
    for max_len, d_model in cases("nb03.positional_encoding"):
        got = nb03.positional_encoding(max_len, d_model)
        for pos in range(max_len):
            for col in range(d_model):
                angle = pos / 10000 ** ((col - col % 2) / d_model)
                want = math.sin(angle) if col % 2 == 0 else math.cos(angle)
                assert abs(got[pos, col].item() - want) < 1e-6


def test_wavelengths_are_the_periods_of_the_columns():
    for (d_model,) in cases("nb03.wavelengths"):
        lam = nb03.wavelengths(d_model)
        assert lam.shape == (d_model // 2,)
        assert abs(lam[0].item() - 2 * math.pi) < 1e-12
        # geometric progression from 2 pi towards 10000 * 2 pi
        ratios = lam[1:] / lam[:-1]
        torch.testing.assert_close(ratios, torch.full_like(ratios, 10000 ** (2 / d_model)))
        # column 2i is sin(2 pi pos / lambda_i): the wavelength is its period
        for i, wl in enumerate(lam.tolist()):
            for pos in (0.0, 1.0, 7.0, 33.0):
                col = math.sin(pos / 10000 ** (2 * i / d_model))
                assert abs(col - math.sin(2 * math.pi * (pos + wl) / wl)) < 1e-9


def test_relative_shift_matrix_moves_every_position_by_k():
    for k, d_model in cases("nb03.relative_shift_matrix"):
        m = nb03.relative_shift_matrix(k, d_model)
        pe = torch.tensor([[math.sin(p / 10000 ** ((c - c % 2) / d_model)) if c % 2 == 0
                            else math.cos(p / 10000 ** ((c - c % 2) / d_model))
                            for c in range(d_model)] for p in range(-10, 40)], dtype=torch.float64)
        a, b = (pe[:-k], pe[k:]) if k > 0 else (pe[-k:], pe[:k])
        torch.testing.assert_close(a @ m.T, b)
        torch.testing.assert_close(m @ m.T, torch.eye(d_model, dtype=torch.float64))  # a rotation


# ------------------------------------------------------------------- check()


@pytest.mark.parametrize("name", ["nb02.embed_one_hot", "nb02.cosine_similarity_matrix",
                                  "nb02.nearest_neighbours", "nb03.positional_encoding",
                                  "nb03.wavelengths", "nb03.relative_shift_matrix"])
def test_check_messages(name, capsys):
    from test_solutions_independent import INDEPENDENT

    assert check(INDEPENDENT[name], name)  # an independent implementation passes (not the solution itself)
    assert "passed all" in capsys.readouterr().out
    assert not check(lambda *args: None, name)
    assert "not attempted yet" in capsys.readouterr().out


def test_check_reports_a_wrong_answer(capsys):
    assert not check(lambda ids, table: table[ids] * 2, "nb02.embed_one_hot")
    assert "case 0 differs" in capsys.readouterr().out
    assert not check(lambda d: torch.ones(d // 2, dtype=torch.float64), "nb03.wavelengths")
