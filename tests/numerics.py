"""Tolerances for tests that compare floating-point computations, derived from the dtype and the size of the work.

Two float32 paths that compute the same function (packed vs padded rows, prefix KV reuse vs the full pass, compiled vs
eager layers, a folded vs an unfolded weight) differ only by rounding, and how much depends on the order of their
additions, which changes with the CPU's instruction set (`ATEN_CPU_CAPABILITY`: default, avx2, avx512) and the number
of threads. A tolerance fitted to the difference seen on one machine fails on another, so the tests here bound each
result's distance to the exact value instead:

* the exact value is the same computation in float64 (rounding about 2**29 times smaller than float32's), and
* the bound is the probabilistic forward-error bound of a sum of n rounded terms: rounding errors of size
  eps * |term| add up like a random walk, so a dot product or reduction of n terms of magnitude <= scale is off by
  about eps * sqrt(n) * scale (Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed., section 3.4 and
  Higham & Mary 2019, "A new approach to probabilistic rounding error analysis"). `k` covers the chain of such sums in
  a network (embedding, attention, MLP and head in each layer, then the backward pass) and the constant of the
  bound; it is the same for every test of a kind, not fitted per test.

A real bug (a wrong mask, a missing or shifted prefix token, a sample attending to its neighbour) changes results by a
fraction of their magnitude, several orders above eps * sqrt(n).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping

import torch

EPS32 = torch.finfo(torch.float32).eps
"""float32 machine epsilon (2**-23, about 1.2e-7)."""

NETWORK_K = 8.0
"""Chained sums in a forward + backward pass of the tiny LLM stack (two decoder layers, projectors, head)."""


def rounding_bound(scale: float, num_terms: int, dtype: torch.dtype = torch.float32, k: float = NETWORK_K) -> float:
    """The largest |computed - exact| expected from rounding: k * eps(dtype) * sqrt(num_terms) * scale.

    Args:
        scale: magnitude of the result (for a tensor: its largest absolute entry).
        num_terms: length of the longest sum behind each entry (tokens attended over, summed into a gradient, ...).
        dtype: the dtype the computation ran in.
        k: number of chained roundings of that size (see the module docstring).
    """
    return k * torch.finfo(dtype).eps * math.sqrt(max(num_terms, 1)) * scale


def max_abs(values: torch.Tensor | Iterable[torch.Tensor]) -> float:
    """Largest absolute entry of a tensor or of several."""
    if isinstance(values, torch.Tensor):
        values = [values]
    return max(float(v.detach().abs().max()) for v in values)


def assert_rounding_close(
    got: torch.Tensor,
    exact: torch.Tensor,
    num_terms: int,
    what: str,
    scale: float | None = None,
    k: float = NETWORK_K,
) -> float:
    """Assert that a float32 result is within the rounding bound of its float64 (or otherwise exact) value.

    Args:
        got: the float32 result.
        exact: the same quantity computed in float64.
        num_terms: see `rounding_bound`.
        what: name shown in the failure message.
        scale: magnitude the bound is relative to; the largest |exact| when None. Pass a shared scale (e.g. the
            largest gradient of the whole model) for quantities whose exact value may be near zero.
        k: see `rounding_bound`.

    Returns:
        The error as a fraction of the bound (for reports).
    """
    assert got.shape == exact.shape, f"{what}: shape {tuple(got.shape)} != {tuple(exact.shape)}"
    scale = max_abs(exact) if scale is None else scale
    bound = rounding_bound(scale, num_terms, got.dtype, k)
    error = float((got.detach().double() - exact.detach().double()).abs().max())
    assert error <= bound, (
        f"{what}: |{got.dtype} - float64| = {error:.3g} > {bound:.3g} = {k:g} * eps * sqrt({num_terms}) * {scale:.3g}"
    )
    return error / bound if bound else 0.0


def assert_float32_paths_close(
    got: torch.Tensor, other: torch.Tensor, num_terms: int, what: str, k: float = NETWORK_K
) -> float:
    """Two float32 computations of the same quantity (say a folded and an unfolded weight): each is within
    `rounding_bound` of the exact value, so they are within twice that of each other (scale: the larger of the two)."""
    scale = max(max_abs(got), max_abs(other))
    return assert_rounding_close(got, other, num_terms, what, scale=scale, k=2 * k)


def assert_grads_rounding_close(
    got: Mapping[str, torch.Tensor], exact: Mapping[str, torch.Tensor], num_terms: int, what: str
) -> None:
    """Every gradient within the rounding bound of its float64 value, relative to the largest gradient of the model
    (a parameter whose exact gradient is tiny still carries the rounding of the large activations it depends on)."""
    assert got.keys() == exact.keys(), f"{what}: gradients of {sorted(got)} vs {sorted(exact)}"
    scale = max_abs(exact.values())
    for name in exact:
        assert_rounding_close(got[name], exact[name], num_terms, f"{what} gradient of {name}", scale=scale)


def float64_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A float64 copy of a module (the original is left as it is)."""
    return copy.deepcopy(module).double()
