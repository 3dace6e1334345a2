"""The training recipe shared by all three stages: setup → train → save, driven by one `Config`.

Launch with `deepspeed train.py --config configs/stage_N.yaml` (or torchrun / plain python for one process). The stage
is defined entirely by its YAML: datasets, trainable groups, loss weights, schedule, the previous stage's checkpoint.

    result = run(load_config("configs/tiny_stage_1.yaml"))
    result.final_dir  # runs/.../final
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from nextgpt.config import Config
from nextgpt.llm.backbone import compile_decoder_layers
from nextgpt.model import NextGPT, build_nextgpt
from nextgpt.training import checkpoint as ckpt
from nextgpt.training.data_setup import build_training_data
from nextgpt.training.distributed import (
    capture_rng_state,
    init_distributed,
    is_rank_zero,
    rank,
    restore_rng_state,
    seed_everything,
)
from nextgpt.training.engine import build_engine, build_lr_lambda
from nextgpt.training.metrics import MetricLogger
from nextgpt.training.stages import apply_trainable_groups

logger = logging.getLogger(__name__)

DS_TAG = "state"


@dataclass
class TrainResult:
    """What a finished run reports."""

    final_dir: Path
    steps: int
    losses: list[float] = field(default_factory=list)
    num_skipped: int = 0


@dataclass
class _Position:
    """Where training stands: optimizer step, epoch, micro-batches consumed in the epoch."""

    step: int = 0
    epoch: int = 0
    micro_in_epoch: int = 0


def build_model_for_training(cfg: Config) -> NextGPT:
    """Build the model, load the previous stage's weights and set exactly the stage's trainable groups."""
    model = build_nextgpt(cfg.model, load_encoder=cfg.data.feature_cache_dir is None)
    if cfg.train.init_from is not None:
        ckpt.load_project_weights(model, cfg.train.init_from, cfg)
    apply_trainable_groups(model, cfg.train.trainable)
    model.prefix_reuse = cfg.train.prefix_reuse  # checked against the trainable set on the first forward
    if cfg.model.llm.compile_layers:
        compile_decoder_layers(model.llm)
    return model


def _save(engine, model: NextGPT, cfg: Config, pos: _Position, name: str, with_state: bool) -> None:
    """Checkpoint collectively: every rank writes its DeepSpeed/RNG state, rank 0 the weights and the rename."""
    run_dir = Path(cfg.train.output_dir)
    target = run_dir / name
    staging = ckpt.staging_dir(target)
    if with_state:
        engine.save_checkpoint(str(staging / "deepspeed"), tag=DS_TAG)
        torch.save(capture_rng_state(), staging / "deepspeed" / f"rng_rank{rank()}.pt")
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
    if is_rank_zero():
        meta = {"epoch": pos.epoch, "micro_in_epoch": pos.micro_in_epoch}
        ckpt.save_checkpoint(target, model, cfg, step=pos.step, meta=meta)
        if name.startswith("step-"):
            ckpt.prune_checkpoints(run_dir, cfg.train.keep_last)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def _resume(engine, cfg: Config) -> _Position:
    """Restore engine, RNG and data position from the run's latest checkpoint, if any and if asked."""
    latest = ckpt.latest_checkpoint(cfg.train.output_dir) if cfg.train.resume else None
    if latest is None or not (latest / "deepspeed").is_dir():
        return _Position()
    engine.load_checkpoint(str(latest / "deepspeed"), tag=DS_TAG)
    restore_rng_state(torch.load(latest / "deepspeed" / f"rng_rank{rank()}.pt", weights_only=True))
    meta = json.loads((latest / ckpt.META_FILE).read_text())
    logger.info("resumed from %s at step %d", latest, meta["step"])
    return _Position(step=meta["step"], epoch=meta["epoch"], micro_in_epoch=meta["micro_in_epoch"])


def run(cfg: Config) -> TrainResult:
    """Train one stage end to end.

    Args:
        cfg: the resolved config (stage YAML + overrides).

    Returns:
        TrainResult with the final checkpoint folder and the per-step losses of this process's run.
    """
    # 1. Setup: processes, seeds, model, data, engine.
    init_distributed()
    seed_everything(cfg.seed)
    model = build_model_for_training(cfg)
    data = build_training_data(cfg, model)
    micro_per_epoch = len(data.batch_sampler)
    steps_per_epoch = max(1, micro_per_epoch // cfg.train.grad_accum_steps)
    total_steps = cfg.train.max_steps or steps_per_epoch * cfg.train.epochs
    engine = build_engine(cfg, model, build_lr_lambda(cfg.train, total_steps))
    pos = _resume(engine, cfg)
    metrics = MetricLogger(Path(cfg.train.output_dir), enabled=is_rank_zero(), tensorboard=cfg.train.tensorboard)
    # 2. Train.
    result = TrainResult(final_dir=Path(cfg.train.output_dir) / "final", steps=total_steps)
    progress = tqdm(total=total_steps, initial=pos.step, disable=not is_rank_zero(), desc=f"stage {cfg.train.stage}")
    window: list[dict[str, float]] = []
    tokens, window_start = 0, time.perf_counter()
    while pos.step < total_steps:
        data.batch_sampler.set_epoch(pos.epoch)
        data.batch_sampler.skip_batches(pos.micro_in_epoch)
        for collated in data.loader:
            pos.micro_in_epoch += 1
            if collated is not None:
                result.num_skipped += collated.num_skipped
            if collated is None or collated.batch is None:
                continue
            batch = collated.batch.to(engine.device)
            out = engine(batch, decoders=data.decoders)
            engine.backward(out.loss)
            engine.step()
            tokens += int(batch.attention_mask.sum())
            window.append({"loss": out.loss.item(), **{k: v.item() for k, v in out.loss_terms.items()}})
            if len(window) < cfg.train.grad_accum_steps:  # DeepSpeed steps the optimizer on the last micro-batch
                continue
            pos.step += 1
            step_metrics = {k: sum(w[k] for w in window if k in w) / len(window) for k in window[0]}
            elapsed = time.perf_counter() - window_start
            step_metrics.update(lr=engine.get_lr()[0], tokens_per_s=tokens / max(elapsed, 1e-9))
            result.losses.append(step_metrics["loss"])
            metrics.log(pos.step, step_metrics, echo=pos.step % cfg.train.log_every == 0)
            progress.update(1)
            progress.set_postfix(loss=f"{step_metrics['loss']:.4f}")
            window, tokens, window_start = [], 0, time.perf_counter()
            if pos.step % cfg.train.save_every == 0 and pos.step < total_steps:
                _save(engine, model, cfg, pos, f"step-{pos.step:06d}", with_state=True)
            if pos.step >= total_steps:
                break
        else:
            pos.epoch, pos.micro_in_epoch = pos.epoch + 1, 0
    progress.close()
    # 3. Save the final weights.
    _save(engine, model, cfg, pos, "final", with_state=False)
    metrics.close()
    logger.info(
        "finished stage %d: %d steps, final loss %s, skipped %d bad samples, checkpoint %s",
        cfg.train.stage,
        pos.step,
        f"{result.losses[-1]:.4f}" if result.losses else "n/a",
        result.num_skipped,
        result.final_dir,
    )
    return result
