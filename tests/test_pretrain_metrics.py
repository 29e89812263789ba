"""MIG and SAP against synthetic codes whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from diswm.disentanglement import disentanglement_scores, entropy, mig, mutual_info, sap

N = 5000


@pytest.fixture(scope="module")
def factors():
    return np.random.default_rng(0).uniform(size=(N, 6))


def _rotate_pairs(v: np.ndarray, degrees: float) -> np.ndarray:
    a = np.deg2rad(degrees)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return np.concatenate([(v[:, i:i + 2] - 0.5) @ rot.T for i in range(0, v.shape[1], 2)], 1)


def test_mutual_information_reference_values():
    x = np.repeat(np.arange(4), 250)
    assert entropy(x) == pytest.approx(np.log(4))
    assert mutual_info(x, x) == pytest.approx(np.log(4))
    assert mutual_info(x, x % 2) == pytest.approx(np.log(2))  # knows one bit of x


def test_perfectly_disentangled_code_scores_one(factors):
    # One code dim per factor, permuted, rescaled and shifted, plus two dead dims.
    codes = np.c_[factors[:, ::-1] * -3.0 + 1.0, np.zeros((N, 2))]
    assert mig(codes, factors) > 0.95
    assert sap(codes, factors) > 0.99


def test_random_code_scores_zero(factors):
    codes = np.random.default_rng(1).normal(size=(N, 8))
    assert mig(codes, factors) < 0.03
    assert sap(codes, factors) < 0.01


def test_mixed_code_scores_in_between(factors):
    fully_mixed = _rotate_pairs(factors, 45.0)  # each factor split evenly over two dims
    partly = _rotate_pairs(factors, 25.0)
    assert sap(fully_mixed, factors) < 0.02
    assert 0.2 < sap(partly, factors) < 0.9
    assert 0.05 < mig(partly, factors) < 0.9
    assert mig(fully_mixed, factors) < mig(partly, factors) < mig(factors, factors)


def test_scores_per_group_and_constant_factors_ignored(factors):
    groups = {"colours": factors[:, :3], "state": np.c_[factors[:, 3:], np.ones(N)]}
    scores = disentanglement_scores(factors, groups)
    assert set(scores) == {"mig", "sap", "mig_top5", "sap_top5", "mig_colours", "sap_colours",
                           "mig_state", "sap_state"}
    assert all(0.9 < v <= 1.0 for v in scores.values())
    with pytest.raises(ValueError, match="same N"):
        mig(factors[:10], factors)
