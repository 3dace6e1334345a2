"""Fréchet distance between two feature sets (FID on Inception features, FD on PANNs embeddings).

The distance itself is pytorch-fid's `calculate_frechet_distance` (a maintained implementation, with its diagonal
offset when the covariance product is singular); this module only turns feature matrices into the Gaussian statistics
it takes, in float64.

    fid = frechet_distance(generated_features, reference_features)   # (N, D), (M, D) -> float
"""

from __future__ import annotations

import numpy as np
import torch


def feature_statistics(features: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of (N, D) features, in float64.

    Raises:
        ValueError: fewer than two rows (no covariance).
    """
    array = features.detach().cpu().double().numpy() if torch.is_tensor(features) else np.asarray(features, np.float64)
    if array.ndim != 2 or array.shape[0] < 2:
        raise ValueError(
            f"Fréchet statistics need (N >= 2, D) features, got shape {array.shape}; evaluate more samples"
        )
    return array.mean(axis=0), np.cov(array, rowvar=False)


def frechet_distance(features_a: torch.Tensor | np.ndarray, features_b: torch.Tensor | np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two (N, D) and (M, D) feature sets.

    Raises:
        ValueError: fewer than two rows in a set, or different widths.
    """
    from pytorch_fid.fid_score import calculate_frechet_distance

    mu_a, sigma_a = feature_statistics(features_a)
    mu_b, sigma_b = feature_statistics(features_b)
    if mu_a.shape != mu_b.shape:
        raise ValueError(f"feature widths differ: {mu_a.shape[0]} vs {mu_b.shape[0]}")
    return float(calculate_frechet_distance(mu_a, sigma_a, mu_b, sigma_b))
