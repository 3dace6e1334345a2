"""Loss functions against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from nextgpt.constants import IGNORE_INDEX
from nextgpt.losses import compute_caption_l2_loss, compute_lm_loss


@pytest.mark.numerics
def test_lm_loss_of_uniform_logits_is_log_vocab() -> None:
    logits = torch.zeros(2, 4, 5)
    labels = torch.tensor([[IGNORE_INDEX, 1, 2, 3], [IGNORE_INDEX, IGNORE_INDEX, 0, 4]])
    assert compute_lm_loss(logits, labels).item() == pytest.approx(math.log(5))


@pytest.mark.numerics
def test_lm_loss_shifts_and_averages_over_labelled_tokens() -> None:
    logits = torch.zeros(2, 3, 3)
    logits[0, 0] = torch.tensor([2.0, 0.0, 0.0])  # predicts labels[0, 1] = 0: -log(e^2 / (e^2 + 2))
    logits[0, 1] = torch.tensor([0.0, 3.0, 0.0])  # predicts labels[0, 2] = 2: -log(1 / (e^3 + 2))
    logits[1, 1] = torch.tensor([1.0, 1.0, 1.0])  # predicts labels[1, 2] = 1: log 3
    logits[1, 2] = torch.tensor([9.0, 9.0, 9.0])  # last position predicts nothing
    labels = torch.tensor([[7, 0, 2], [IGNORE_INDEX, IGNORE_INDEX, 1]])
    # Mean over the three labelled targets (not the mean of per-sample means, which would be different).
    expected = (math.log(math.e**2 + 2) - 2 + math.log(math.e**3 + 2) + math.log(3)) / 3
    assert compute_lm_loss(logits, labels).item() == pytest.approx(expected, rel=1e-6)


def test_lm_loss_is_float32_zero_with_grad_when_nothing_is_labelled() -> None:
    logits = torch.randn(2, 3, 4, dtype=torch.bfloat16, requires_grad=True)
    loss = compute_lm_loss(logits, torch.full((2, 3), IGNORE_INDEX))
    assert loss.dtype == torch.float32 and loss.item() == 0.0
    loss.backward()
    assert logits.grad is not None and logits.grad.abs().sum() == 0


@pytest.mark.numerics
def test_lm_loss_runs_in_float32_for_half_logits() -> None:
    logits = torch.randn(1, 4, 6)
    labels = torch.tensor([[0, 1, 2, 3]])
    half = compute_lm_loss(logits.to(torch.bfloat16), labels)
    assert half.dtype == torch.float32
    assert half.item() == pytest.approx(compute_lm_loss(logits.to(torch.bfloat16).float(), labels).item(), rel=1e-6)


def test_lm_loss_shape_error() -> None:
    with pytest.raises(ValueError, match=r"got \(2, 3, 4\) and \(2, 4\)"):
        compute_lm_loss(torch.zeros(2, 3, 4), torch.zeros(2, 4, dtype=torch.long))


@pytest.mark.numerics
def test_caption_l2_is_mean_euclidean_distance_not_mse() -> None:
    pred = torch.zeros(2, 2, 2)
    target = torch.tensor([[[3.0, 4.0], [0.0, 1.0]], [[6.0, 8.0], [0.0, 0.0]]])  # distances 5, 1, 10, 0
    assert compute_caption_l2_loss(pred, target).item() == pytest.approx(4.0)


@pytest.mark.numerics
def test_caption_l2_accepts_flat_target_for_single_query() -> None:
    pred = torch.tensor([[[1.0, 1.0, 1.0, 1.0]]])  # (1, 1, 4)
    assert compute_caption_l2_loss(pred, torch.zeros(1, 4)).item() == pytest.approx(2.0)


def test_caption_l2_gradient_is_finite_at_zero_distance() -> None:
    pred = torch.ones(1, 3, 4, dtype=torch.bfloat16, requires_grad=True)
    loss = compute_caption_l2_loss(pred, torch.ones(1, 3, 4))
    assert loss.dtype == torch.float32 and loss.item() == 0.0
    loss.backward()
    assert pred.grad is not None and torch.isfinite(pred.grad.float()).all()


@pytest.mark.numerics
def test_caption_l2_gradient_is_unit_direction() -> None:
    pred = torch.tensor([[[3.0, 4.0]]], requires_grad=True)
    compute_caption_l2_loss(pred, torch.zeros(1, 1, 2)).backward()
    torch.testing.assert_close(pred.grad, torch.tensor([[[0.6, 0.8]]]))


def test_caption_l2_empty_batch_is_zero_with_grad() -> None:
    pred = torch.zeros(0, 77, 8, requires_grad=True)
    loss = compute_caption_l2_loss(pred, torch.zeros(0, 77, 8))
    loss.backward()
    assert loss.item() == 0.0


def test_caption_l2_shape_error_names_both_shapes() -> None:
    with pytest.raises(ValueError, match=r"pred \(2, 77, 8\) and target \(2, 77, 16\)"):
        compute_caption_l2_loss(torch.zeros(2, 77, 8), torch.zeros(2, 77, 16))
    with pytest.raises(ValueError, match=r"pred \(2, 77, 8\) and target \(2, 8\)"):
        compute_caption_l2_loss(torch.zeros(2, 77, 8), torch.zeros(2, 8))
