"""With one rank, ZeRO-1/2 without its gradient reduction trains exactly DeepSpeed's weights."""

from __future__ import annotations

import pytest
import torch
from zero_helpers import micro_backward, zero_engine

from nextgpt.training.zero_single import _exact_round_trip, skip_single_rank_reduction
from nextgpt.training.zero_step import speed_up_zero_step


def _train(engine, steps: int, grad_accum: int) -> tuple[list[torch.Tensor], list[float]]:
    """Clipped steps of `grad_accum` different micro-batches each; the weights after them and each step's norm."""
    norms = []
    for step in range(steps):
        for micro in range(grad_accum):
            micro_backward(engine, scale=10.0 + step, shift=0.25 * micro)
            engine.step()
        norms.append(float(engine.get_global_grad_norm()))
    return [p.detach().clone() for p in engine.module.parameters()], norms


@pytest.mark.parametrize("grad_accum", [1, 3])
@pytest.mark.parametrize("stage", [1, 2])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_same_weights_bit_for_bit_as_deepspeeds_reduction(stage, precision, grad_accum):
    """Clipped steps (norms above the clip), an unused branch (zero gradients), micro-batches accumulated."""
    runs = []
    for skip in (False, True):
        engine = zero_engine(stage, precision, clip=0.5, seed=3, grad_accum=grad_accum)
        assert speed_up_zero_step(engine)
        if skip:
            assert skip_single_rank_reduction(engine)
        runs.append(_train(engine, steps=4, grad_accum=grad_accum))
    (theirs, their_norms), (ours, our_norms) = runs
    assert min(their_norms) > 0.5  # the clip was active
    assert our_norms == their_norms
    for mine, deepspeeds in zip(ours, theirs, strict=True):
        assert torch.equal(mine, deepspeeds)
    assert not torch.equal(ours[0], zero_engine(stage, precision, clip=0.5, seed=3).module.used[0].weight)  # it trained


def test_no_hook_runs_in_the_backward():
    engine = zero_engine(2, "bf16", clip=0.5)
    assert engine.optimizer._grad_acc_hooks  # DeepSpeed's ZeRO-2 hooks every trainable tensor
    calls = []
    engine.optimizer.process_gradients = lambda param, i: calls.append(i)  # what each hook calls
    micro_backward(engine, scale=1.0)
    assert len(calls) == 4  # the used branch's four tensors
    engine.step()
    assert skip_single_rank_reduction(engine)
    calls.clear()
    micro_backward(engine, scale=1.0)
    engine.step()
    assert calls == [] and engine.optimizer._grad_acc_hooks == []


@pytest.mark.parametrize(
    "zero",
    [{"contiguous_gradients": True}, {"overlap_comm": True}, {"reduce_scatter": False, "contiguous_gradients": True}],
)
def test_settings_that_keep_state_in_the_hooks_keep_deepspeeds_reduction(zero):
    engine = zero_engine(2, "bf16", clip=0.5, **zero)
    hooks = list(engine.optimizer._grad_acc_hooks)
    assert not skip_single_rank_reduction(engine)
    assert engine.optimizer._grad_acc_hooks == hooks and "reduce_gradients" not in vars(engine.optimizer)


def test_a_rounding_communication_dtype_keeps_deepspeeds_reduction():
    engine = zero_engine(2, "fp32", clip=0.5)
    engine.optimizer.ipg_buckets = {torch.bfloat16: engine.optimizer.ipg_buckets[torch.float32]}
    assert not skip_single_rank_reduction(engine)


def test_other_optimizers_are_left_alone():
    assert not skip_single_rank_reduction(zero_engine(0, "fp32", clip=1.0))


@pytest.mark.parametrize(
    ("comm", "grad", "exact"),
    [
        (torch.bfloat16, torch.bfloat16, True),
        (torch.float32, torch.bfloat16, True),
        (torch.float32, torch.float16, True),
        (torch.float64, torch.float32, True),
        (torch.bfloat16, torch.float32, False),
        (torch.float16, torch.bfloat16, False),
        (torch.bfloat16, torch.float16, False),
    ],
)
def test_exact_round_trips(comm, grad, exact):
    assert _exact_round_trip(comm, grad) is exact
    values = torch.tensor([1 + 2**-7, 3e-8, 6e4, -1.5e38], dtype=torch.float64).to(grad)
    assert torch.equal(values.to(comm).to(grad), values) or not exact
