"""ZeRO-1/2's foreach gradient norm and sync-free clip give DeepSpeed's own numbers, and train the same weights."""

from __future__ import annotations

import pytest
import torch
from zero_helpers import dtype_of, micro_backward, zero_engine

from nextgpt.training.zero_step import speed_up_zero_step


def _engine(stage: int, precision: str, clip: float, seed: int = 0, replace: bool = True, device: str = "cpu"):
    engine = zero_engine(stage, precision, clip, seed=seed, device=device)
    if replace:
        assert speed_up_zero_step(engine)
    return engine


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_foreach_norm_is_deepspeeds_norm(precision):
    from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer

    engine = _engine(2, precision, clip=1.0, replace=False)
    optimizer = engine.optimizer
    torch.manual_seed(1)
    grads = [(torch.randn(5, 3) * 3).to(dtype_of(engine)), torch.zeros(4, dtype=dtype_of(engine)), torch.randn(7)]
    params = [torch.empty(5, 3), torch.empty(4), torch.empty(7)]
    theirs = DeepSpeedZeroOptimizer.get_grad_norm_direct(optimizer, grads, params)
    assert speed_up_zero_step(engine)
    ours = optimizer.get_grad_norm_direct(grads, params)
    expected = torch.linalg.vector_norm(torch.cat([g.double().flatten() for g in grads])).float()
    assert ours.dtype == theirs.dtype == torch.float32
    # Both accumulate in float64 and round once to float32: equal up to that rounding.
    torch.testing.assert_close(ours, theirs, rtol=2**-23, atol=0)
    torch.testing.assert_close(ours, expected, rtol=2**-23, atol=0)


def test_a_non_finite_norm_is_deepspeeds_sentinel_and_clips_every_gradient_to_zero():
    from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer

    engine = _engine(2, "fp32", clip=1.0)
    optimizer = engine.optimizer
    grads = [torch.tensor([1.0, float("inf")]), torch.ones(3)]
    params = [torch.empty(2), torch.empty(3)]
    assert optimizer.get_grad_norm_direct(grads, params).item() == -1.0
    for norm in (torch.tensor(-1.0), torch.tensor(float("nan"))):
        ours, theirs = torch.ones(4), torch.ones(4)
        optimizer.unscale_and_clip_grads([ours], norm)
        DeepSpeedZeroOptimizer.unscale_and_clip_grads(optimizer, [theirs], norm)
        assert torch.equal(ours, theirs) and torch.equal(ours, torch.zeros(4))


@pytest.mark.parametrize("norm", [0.25, 1.0, 7.5])
def test_the_clip_scales_as_deepspeeds(norm):
    from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer

    engine = _engine(2, "fp32", clip=1.0)
    optimizer = engine.optimizer
    base = [torch.linspace(-2, 3, 6), torch.linspace(1, 2, 3)]
    ours, theirs = [t.clone() for t in base], [t.clone() for t in base]
    # A flat gradient and a list of sub-partitions, the two forms DeepSpeed passes.
    optimizer.unscale_and_clip_grads([ours[0], [ours[1]]], torch.tensor(norm))
    DeepSpeedZeroOptimizer.unscale_and_clip_grads(optimizer, [theirs[0], [theirs[1]]], torch.tensor(norm))
    for mine, deepspeeds, original in zip(ours, theirs, base, strict=True):
        torch.testing.assert_close(mine, deepspeeds, rtol=0, atol=0)
        torch.testing.assert_close(mine, original / max(1.0, norm + 1e-6))


@pytest.mark.parametrize("stage", [1, 2])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_steps_train_the_same_weights_as_deepspeeds_own_methods(stage, precision):
    """Clipped steps (the loss is scaled so the norm exceeds the clip) with and without the replacement."""
    weights = []
    for replace in (False, True):
        engine = _engine(stage, precision, clip=0.5, seed=3, replace=replace)
        for step in range(4):
            micro_backward(engine, scale=10.0 + step)
            engine.step()
        weights.append([p.detach().clone() for p in engine.module.parameters()])
        assert engine.get_global_grad_norm() > 0.5  # the clip was active
    # The norms agree up to float64 summation order, so the clip factors up to one float32 rounding.
    for ours, theirs in zip(weights[1], weights[0], strict=True):
        torch.testing.assert_close(ours, theirs)


def test_other_optimizers_keep_deepspeeds_methods():
    engine = _engine(0, "fp32", clip=1.0, replace=False)
    assert not speed_up_zero_step(engine)


@pytest.mark.gpu
def test_the_norm_and_clip_do_not_wait_for_the_gpu():
    """Under sync debug mode "error", any host read of a GPU value in the two replaced methods raises."""
    engine = _engine(2, "bf16", clip=0.5, device="cuda")
    grads = [torch.randn(64, 64, device="cuda", dtype=torch.bfloat16) for _ in range(5)]
    params = [torch.empty(64, 64, device="cuda") for _ in range(5)]
    flat = torch.randn(1000, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        norm = engine.optimizer.get_grad_norm_direct(grads, params)
        engine.optimizer.unscale_and_clip_grads([flat], norm)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    expected = torch.linalg.vector_norm(torch.cat([g.double().flatten() for g in grads])).float()
    torch.testing.assert_close(norm, expected, rtol=2**-23, atol=0)
