"""`train.fused_optimizer`: AdamW's fused kernel takes the same steps as its multi-tensor kernel on the tiny model.

Both optimizers are fed the same gradients (one backward of the tiny model), so any difference is the kernels' own
arithmetic; feeding each its own forward would let Adam amplify float noise in parameters whose gradient is zero in
exact arithmetic (attention key biases)."""

from __future__ import annotations

import copy

import pytest
import torch
from batch_helpers import STAGE_1, STAGE_2, build_model, collate, make_items

from nextgpt.config import TrainConfig
from nextgpt.training.engine import build_optimizer


def _steps(model, grads: dict[str, torch.Tensor], fused: bool, steps: int) -> dict[str, torch.Tensor]:
    optimizer = build_optimizer(TrainConfig(stage=2, lr=1e-2, weight_decay=0.1, fused_optimizer=fused), model)
    assert all(bool(group["fused"]) == fused for group in optimizer.param_groups)
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    for _ in range(steps):
        for name, param in params.items():
            param.grad = grads[name].clone()
        optimizer.step()
    return {n: p.detach().clone() for n, p in params.items()}


@pytest.mark.numerics
def test_fused_adamw_takes_the_same_steps_as_the_default_kernel(tiny_root, tiny_cfg_path):
    model = build_model(tiny_root, tiny_cfg_path, 2)
    batch = collate(model, make_items(model, STAGE_1 + STAGE_2), packing=False).batch
    model(batch).loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}
    model.zero_grad(set_to_none=True)
    start = {n: p.detach().clone() for n, p in model.named_parameters() if n in grads}

    plain = _steps(copy.deepcopy(model), grads, fused=False, steps=3)
    fused = _steps(copy.deepcopy(model), grads, fused=True, steps=3)

    assert plain.keys() == fused.keys() == grads.keys() and len(grads) > 10
    moved = max(float((plain[n] - start[n]).abs().max()) for n in plain)
    assert moved > 1e-2  # three steps at lr 1e-2 moved the weights, so the equality below means something
    for name, value in plain.items():
        assert torch.allclose(fused[name], value, atol=1e-6, rtol=1e-5), name
