"""Fréchet distance: the closed form for diagonal Gaussians, zero for a set against itself, and input checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nextgpt.eval.frechet import feature_statistics, frechet_distance


def test_matches_the_closed_form_for_diagonal_gaussians():
    # Samples whose empirical mean and covariance are exactly (mu, diag(var)): whitened noise, rescaled.
    rng = np.random.default_rng(0)
    n, d = 400, 6

    def exact(mu: np.ndarray, var: np.ndarray) -> np.ndarray:
        x = rng.normal(size=(n, d))
        x -= x.mean(0)
        x = x @ np.linalg.inv(np.linalg.cholesky(np.cov(x, rowvar=False)).T)  # empirical covariance = I
        return x * np.sqrt(var) + mu

    mu_a, var_a = rng.normal(size=d), rng.uniform(0.5, 2.0, size=d)
    mu_b, var_b = rng.normal(size=d), rng.uniform(0.5, 2.0, size=d)
    expected = np.sum((mu_a - mu_b) ** 2) + np.sum(var_a + var_b - 2 * np.sqrt(var_a * var_b))
    assert frechet_distance(exact(mu_a, var_a), exact(mu_b, var_b)) == pytest.approx(expected, rel=1e-6)


def test_a_set_against_itself_is_zero_and_tensors_are_accepted():
    features = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
    assert abs(frechet_distance(features, features)) < 1e-9
    mu, sigma = feature_statistics(features)
    assert mu.dtype == np.float64 and sigma.shape == (8, 8)


def test_refuses_too_few_rows_and_mismatched_widths():
    with pytest.raises(ValueError, match="N >= 2"):
        frechet_distance(np.zeros((1, 4)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="widths differ"):
        frechet_distance(np.random.rand(5, 4), np.random.rand(5, 3))
