"""DeepSpeed engine construction: the stage's JSON config filled from `TrainConfig`, a torch AdamW over the trainable
parameters only, and a warmup + cosine/linear schedule.

    engine = build_engine(cfg, model, build_lr_lambda(cfg.train, total_steps))
    out = engine(batch); engine.backward(out.loss); engine.step()
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from typing import Any

import torch

from nextgpt.config import Config, ConfigError, TrainConfig
from nextgpt.config_loader import find_config_file
from nextgpt.training.distributed import world_size
from nextgpt.training.zero_single import skip_single_rank_reduction
from nextgpt.training.zero_step import speed_up_zero_step

logger = logging.getLogger(__name__)


def build_lr_lambda(train_cfg: TrainConfig, total_steps: int) -> Callable[[int], float]:
    """LR multiplier per optimizer step: linear warmup over `warmup_ratio` of the run, then the schedule's decay."""
    warmup = int(round(train_cfg.warmup_ratio * total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total_steps - warmup)
        if train_cfg.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        if train_cfg.schedule == "linear":
            return max(0.0, 1.0 - progress)
        return 1.0

    return factor


SINGLE_PROCESS_ZERO = {"overlap_comm": False, "contiguous_gradients": False}
"""ZeRO-1/2 settings forced when one process trains. Both only pay off when gradients are reduced across ranks
(overlapping the reduction with the backward; one contiguous buffer to reduce from). Alone, each of stage 3's ~350
gradient tensors is still copied into the bucket on a side stream inside the backward's hooks, host work the GPU waits
for in a host-bound step. The numbers are the same either way. Without them, `build_engine` can also drop the
reduction itself (`nextgpt.training.zero_single`)."""


def resolve_deepspeed_config(
    cfg: Config, num_processes: int | None = None, load_universal: bool = False
) -> dict[str, Any]:
    """Read the stage's DeepSpeed JSON and fill every "auto" value from `cfg.train`.

    Args:
        cfg: the run's config.
        num_processes: data-parallel processes (default: WORLD_SIZE); with one, ZeRO-1/2 get `SINGLE_PROCESS_ZERO`.
        load_universal: the engine will load a universal checkpoint (a resume on another number of processes,
            `nextgpt.training.universal`).

    Raises:
        ConfigError: the JSON named by train.deepspeed_config is missing, unreadable or not a JSON object.
    """
    train = cfg.train
    ds: dict[str, Any] = {"zero_optimization": {"stage": 0}}
    if train.deepspeed_config is not None:
        path = find_config_file(train.deepspeed_config, "DeepSpeed config (train.deepspeed_config)")
        try:
            ds = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise ConfigError(f"train.deepspeed_config {path} is not readable JSON ({err}); fix the file") from None
        if not isinstance(ds, dict):
            raise ConfigError(f"train.deepspeed_config {path} must hold a JSON object, got {type(ds).__name__}")
    filled = {
        "train_micro_batch_size_per_gpu": train.micro_batch_size,
        "gradient_accumulation_steps": train.grad_accum_steps,
        "gradient_clipping": train.grad_clip,
        "steps_per_print": 10**9,
        # bf16 has no loss scale to adjust, and DeepSpeed's overflow scan before every step reads each trainable tensor
        # separately (about 75 ms of host time a step at stage 3's ~650 tensors; docs/benchmarks.md); the loop stops
        # on a non-finite loss instead (`TrainingDivergedError`).
        "bf16": {"enabled": train.precision == "bf16", "check_grad_overflow": False},
        "fp16": {"enabled": False},
    }
    for key, value in filled.items():
        if ds.get(key, "auto") == "auto" or key in ("bf16", "fp16", "steps_per_print"):
            ds[key] = value
    ds.pop("train_batch_size", None)  # derived by DeepSpeed from micro batch × accumulation × world size
    section = ds.get("zero_optimization")
    if isinstance(section, dict) and section.get("stage") in (1, 2):
        if (world_size() if num_processes is None else num_processes) == 1:
            section.update(SINGLE_PROCESS_ZERO)
    if load_universal:
        ds["checkpoint"] = {**ds.get("checkpoint", {}), "load_universal": True}
    return ds


def zero_stage(ds: dict[str, Any]) -> int:
    """The ZeRO stage of a resolved DeepSpeed config.

    Raises:
        ConfigError: zero_optimization.stage is not 0, 1, 2 or 3.
    """
    section = ds.get("zero_optimization", {})
    stage = section.get("stage", 0) if isinstance(section, dict) else None
    if stage not in (0, 1, 2, 3):
        raise ConfigError(f"train.deepspeed_config: zero_optimization.stage must be 0, 1, 2 or 3, got {stage!r}")
    return int(stage)


def build_optimizer(train: TrainConfig, model: torch.nn.Module) -> torch.optim.AdamW:
    """torch AdamW over the trainable parameters (weight decay on matrices only).

    A torch optimizer avoids DeepSpeed's JIT-compiled fused Adam (a minute of compilation on CPU machines);
    `train.fused_optimizer` picks torch's own fused kernel instead of its multi-tensor one: one launch for all
    parameters instead of several per tensor list, the same update up to rounding.
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in trainable if p.dim() >= 2]
    no_decay = [p for p in trainable if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": train.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        [g for g in groups if g["params"]],
        lr=train.lr,
        betas=tuple(train.betas),
        eps=1e-8,
        fused=train.fused_optimizer or None,
    )


def build_engine(cfg: Config, model: torch.nn.Module, lr_lambda: Callable[[int], float], load_universal: bool = False):
    """Wrap the model in a DeepSpeed engine that optimises only the trainable parameters (ZeRO-1/2 with the foreach
    gradient norm and the sync-free clip of `nextgpt.training.zero_step`, and, with one process, without the gradient
    reduction that one rank makes an identity: `nextgpt.training.zero_single`).

    `load_universal`: the engine will resume from a universal checkpoint (`resolve_deepspeed_config`).

    Returns:
        The DeepSpeed engine (callable like the model; `backward`, `step`, `save_checkpoint`, `load_checkpoint`).
    """
    import deepspeed

    optimizer = build_optimizer(cfg.train, model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=scheduler,
        config=resolve_deepspeed_config(cfg, load_universal=load_universal),
    )
    speed_up_zero_step(engine)
    skip_single_rank_reduction(engine)
    return engine
