"""ZeRO-1/2 with one data-parallel rank: no gradient reduction, because with one rank it changes nothing.

DeepSpeed's ZeRO-2 optimizer (`DeepSpeedZeroOptimizer`) puts a hook on every trainable tensor. Each time autograd
finishes a gradient, the hook appends it to a bucket and counts how many hooks are still to come. The first hook of a
backward also walks the autograd graph (`count_used_parameters_in_backward`). When the backward ends, the bucket is
flattened into one buffer, divided by the number of ranks, all-reduced over the data-parallel group and copied back
into each gradient. ZeRO-1 does the same in a loop over the parameters after the backward. With one rank, all of this
leaves every gradient as it was: the division is by 1, the all-reduce sums one term, and converting to the
communication dtype and back is exact when that dtype is the gradient's own or a wider float. Stage 3's ~290
trainable tensors still cost a Python hook call each, plus the flatten, the all-reduce call and ~290 copies back: host
time in a step whose speed is set by the host. Without them the 7B stage-3 loop's backward took 67 ms of host time
instead of 85 on an H200, and its step 155 ms instead of 177 (docs/benchmarks.md).

`skip_single_rank_reduction(engine)` removes the ZeRO-2 hooks and gives a ZeRO-1 optimizer instance a
`reduce_gradients` without the per-parameter loop. The rest of DeepSpeed's backward epilogue is untouched: it still
gathers the gradients from `param.grad`, fills unused parameters with zeros and builds the gradient partition that
`step` flattens. This module changes nothing in any of these cases:
- more than one data-parallel rank;
- CPU offload, overlapped communication or contiguous gradient buffers (these keep state in the hooks);
- a separate gradient-accumulation dtype;
- MoE layers, pipeline, sequence or model parallelism, ZenFlow, or AutoEP folding;
- a communication dtype that would round the gradients.

Backward must go through `engine.backward(loss)`: with the hooks gone, a bare `loss.backward()` no longer runs
DeepSpeed's epilogue (the training loop calls `engine.backward`).
"""

from __future__ import annotations

import logging
import types

import torch

logger = logging.getLogger(__name__)


def _exact_round_trip(comm: torch.dtype, grad: torch.dtype) -> bool:
    """Whether casting `grad`-dtype values to `comm` and back gives them back unchanged (same dtype, or a wider
    IEEE float: bf16/fp16 -> fp32, fp32 -> fp64)."""
    if comm == grad:
        return True
    wider = {
        torch.float32: (torch.bfloat16, torch.float16),
        torch.float64: (torch.bfloat16, torch.float16, torch.float32),
    }
    return grad in wider.get(comm, ())


def _reduction_is_identity(engine) -> bool:
    """Whether the engine's ZeRO-1/2 gradient reduction leaves every gradient unchanged (see the module docstring)."""
    import deepspeed.comm as dist
    from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer

    optimizer = engine.optimizer
    if not isinstance(optimizer, DeepSpeedZeroOptimizer):
        return False
    if dist.get_world_size(group=optimizer.dp_process_group) != 1:
        return False
    if optimizer.cpu_offload or optimizer.overlap_comm or optimizer.contiguous_gradients:
        return False
    if optimizer.use_grad_accum_attribute or optimizer.has_moe_layers or getattr(optimizer, "zenflow", False):
        return False
    if getattr(optimizer, "sequence_parallel_size", 1) != 1:
        return False
    if getattr(optimizer, "autoep_folding_tp_group", None) is not None:
        return False
    if getattr(engine, "pipeline_parallelism", False) or getattr(engine, "mpu", None) is not None:
        return False
    return all(_exact_round_trip(comm, optimizer.dtype) for comm in optimizer.ipg_buckets)


def _reduce_gradients_alone(self, pipeline_parallel: bool = False) -> None:
    """`DeepSpeedZeroOptimizer.reduce_gradients` (ZeRO-1) for one rank: only the epilogue, which collects the
    gradients for `step`. The per-parameter bucketing before it leads to an all-reduce over one rank."""
    self.overlapping_partition_gradients_reduce_epilogue()


def skip_single_rank_reduction(engine) -> bool:
    """Drop ZeRO-1/2's gradient reduction where one rank makes it an identity.

    Call it right after `deepspeed.initialize`, before the first backward.

    Returns:
        Whether the reduction was dropped (False: the engine is left as DeepSpeed built it).
    """
    if not _reduction_is_identity(engine):
        return False
    optimizer = engine.optimizer
    for handle in optimizer._grad_acc_hooks:
        handle.remove()
    num_hooks = len(optimizer._grad_acc_hooks)
    optimizer._grad_acc_hooks = []
    optimizer.reduce_gradients = types.MethodType(_reduce_gradients_alone, optimizer)
    logger.debug(
        "ZeRO-%d on one rank: the gradient reduction is skipped (%d hooks removed)",
        engine.zero_optimization_stage(),
        num_hooks,
    )
    return True
