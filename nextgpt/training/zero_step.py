"""ZeRO-1/2's optimizer step without its per-tensor host work: the same numbers, fewer launches, no wait for the GPU.

DeepSpeed's ZeRO-1/2 optimizer (`DeepSpeedZeroOptimizer`) computes the gradient norm for clipping one tensor at a
time: each gradient is copied to float64 and normed on its own, two launches and two allocations per tensor. Stage 3
trains ~650 tensors, so that is ~1,300 launches of host time a step (~25 ms on an H200 host: `bench/deepspeed_probe.py`,
docs/benchmarks.md). Its clipping then asks the host whether that norm is finite, which waits for the whole backward:
the host cannot queue the optimizer and the next forward while the GPU finishes the backward.

`speed_up_zero_step(engine)` replaces both methods on the engine's optimizer instance (not on the class), with:
- one `torch._foreach_norm` over the gradients, still accumulated in DeepSpeed's norm dtype (float64 where the device
  has it), summed over the data-parallel group and turned into DeepSpeed's -1 sentinel when not finite, as before;
- the finite checks as tensors (`torch.where`, `masked_fill_`), so the clip factor is the same and the host does not
  wait.

Only the data-parallel case is replaced; under CPU offload, pipeline or model parallelism or MoE layers the optimizer
keeps DeepSpeed's methods (those paths norm differently).
"""

from __future__ import annotations

import logging
import types
from typing import Any

import torch

logger = logging.getLogger(__name__)


def foreach_grad_norm(self, gradients: list[torch.Tensor], params: list[torch.Tensor], norm_type: float = 2) -> Any:
    """`DeepSpeedZeroOptimizer.get_grad_norm_direct` for the L2 norm, in one foreach launch.

    Returns:
        The norm over this rank's gradients and every data-parallel rank's, a float32 0-d tensor on the device; -1
        where it is not finite (DeepSpeed's sentinel).
    """
    import deepspeed.comm as dist
    from deepspeed.runtime.zero.utils import get_norm_dtype

    if float(norm_type) != 2.0:
        return type(self).get_grad_norm_direct(self, gradients, params, norm_type)
    grads = [g.detach() for g in gradients if not getattr(g, "_zero_padding", False)]
    grads = grads[: len(params)]  # DeepSpeed pairs gradients with params by zip
    if grads:
        norms = torch._foreach_norm(grads, 2.0, dtype=get_norm_dtype())  # one 0-d float64 per tensor
        total = torch.stack(norms).pow(2).sum().float()
    else:
        total = torch.tensor(0.0, dtype=torch.float32, device=self.device)
    dist.all_reduce(total, op=dist.ReduceOp.SUM, group=self.dp_process_group)
    self._model_parallel_all_reduce(tensor=total, op=dist.ReduceOp.SUM)
    total = total.pow(0.5)
    # DeepSpeed's own masking builds its -1 from a host scalar (a copy that waits for the GPU); a fill does not.
    return total.masked_fill_(~torch.isfinite(total), -1.0)


def clip_without_sync(self, grad_groups_flat: list[Any], total_norm: Any) -> None:
    """`DeepSpeedZeroOptimizer.unscale_and_clip_grads` with the finite check kept on the device.

    An invalid norm (not finite or DeepSpeed's -1) clips with an infinite norm, as DeepSpeed does.
    """
    if self.clip_grad == 0.0 and self.loss_scale == 1.0:
        return
    combined_scale = self.loss_scale
    if self.clip_grad > 0.0:
        clip_norm = torch.as_tensor(total_norm, dtype=torch.float32, device=self.device)
        invalid = ~torch.isfinite(clip_norm) | (clip_norm < 0)
        clip_norm = torch.where(invalid, torch.full_like(clip_norm, float("inf")), clip_norm)
        clip = ((clip_norm / self.loss_scale) + 1e-6) / self.clip_grad
        combined_scale = torch.clamp(clip, min=1.0) * self.loss_scale
    for grad in grad_groups_flat:
        for g in grad if isinstance(grad, list) else [grad]:
            g.data.mul_(1.0 / combined_scale)


def speed_up_zero_step(engine) -> bool:
    """Give a ZeRO-1/2 engine's optimizer the foreach norm and the sync-free clip.

    Returns:
        Whether the methods were replaced (False for other optimizers and the offload / pipeline / MoE cases).
    """
    from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer

    optimizer = engine.optimizer
    if not isinstance(optimizer, DeepSpeedZeroOptimizer):
        return False
    if optimizer.cpu_offload or optimizer.has_moe_layers or getattr(engine, "pipeline_parallelism", False):
        return False
    if getattr(engine, "mpu", None) is not None:  # model-parallel norms count each shard once per group
        return False
    optimizer.get_grad_norm_direct = types.MethodType(foreach_grad_norm, optimizer)
    optimizer.unscale_and_clip_grads = types.MethodType(clip_without_sync, optimizer)
    logger.debug("ZeRO-%d step: foreach gradient norm, clip without a host wait", engine.zero_optimization_stage())
    return True
