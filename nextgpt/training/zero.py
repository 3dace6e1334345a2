"""What ZeRO-3 needs from the loop, which partitions every parameter across the ranks.

- Between steps a rank holds only its shard of each parameter, and the module's tensors are empty placeholders.
  Whatever reads whole weights outside DeepSpeed's forward (a checkpoint save, the parameter counts in its
  meta.json) gathers them first, on every rank (`gathered_checkpoint_weights`).
- ZeRO-3 keeps the step's gradients in one flat buffer that each parameter's backward overwrites; a parameter
  without a gradient this step (the output projector of a modality the batch does not generate) keeps last step's,
  and the optimizer would apply it a second time. ZeRO-1/2 fill such gradients with zeros, so the buffer is cleared
  after every optimizer step (`clear_unused_gradients`) and all stages train the same weights.

    with gathered_checkpoint_weights(model, engine.zero_optimization_stage()):
        if is_rank_zero():
            save_checkpoint(folder, model, cfg, step)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

from nextgpt.parameters import base_row_modules, parameter_group


def is_partitioned(param: nn.Parameter) -> bool:
    """Whether ZeRO-3 holds this parameter in shards (its local tensor is then an empty placeholder)."""
    return hasattr(param, "ds_id")


def full_numel(param: nn.Parameter) -> int:
    """Elements of the whole parameter, partitioned or not."""
    return int(getattr(param, "ds_numel", param.numel()))


def clear_unused_gradients(engine) -> None:
    """After an optimizer step under ZeRO-3: zero the flat gradient buffer, so a parameter the next step leaves
    without a gradient contributes zeros (as under ZeRO-1/2) instead of this step's gradient again.

    Args:
        engine: the DeepSpeed engine (any stage; only ZeRO-3 has the buffer).

    Raises:
        RuntimeError: a ZeRO-3 optimizer without the buffer (a DeepSpeed release this was not checked with).
    """
    if engine.zero_optimization_stage() != 3:
        return
    buffer = getattr(engine.optimizer, "grad_partitions_flat_buffer", None)
    if buffer is None:
        raise RuntimeError(
            "this DeepSpeed's ZeRO-3 optimizer has no grad_partitions_flat_buffer, so unused parameters could be "
            "stepped with stale gradients; install the DeepSpeed of requirements.txt"
        )
    buffer.zero_()


def checkpoint_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters a checkpoint holds: every trainable group's, and the vocabulary base rows the token-row modules
    keep (saved when a loaded checkpoint changed them; `nextgpt.parameters.project_state_dict`)."""
    params = [p for name, p in model.named_parameters() if parameter_group(name) is not None]
    params += [module.base_weight for module in base_row_modules(model).values() if module.base_rows_changed]
    return params


@contextmanager
def gathered_checkpoint_weights(model: nn.Module, zero_stage: int) -> Iterator[None]:
    """Inside, every checkpoint parameter is whole on every rank (read-only); outside ZeRO-3 nothing happens.

    A collective: every rank must enter it, also those that write nothing.

    Args:
        model: the module DeepSpeed trains.
        zero_stage: the engine's ZeRO stage.
    """
    with gathered(checkpoint_parameters(model), zero_stage):
        yield


@contextmanager
def gathered(params: list[nn.Parameter], zero_stage: int) -> Iterator[None]:
    """Inside, `params` are whole on every rank (read-only); outside ZeRO-3, or with none partitioned, nothing happens.

    A collective under ZeRO-3: every rank must enter it with the same parameters.
    """
    partitioned = [p for p in params if is_partitioned(p)] if zero_stage == 3 else []
    if not partitioned:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(partitioned, modifier_rank=None):
        yield
