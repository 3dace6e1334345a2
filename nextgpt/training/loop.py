"""The training recipe shared by all three stages: check → setup → train → save, driven by one `Config`.

Launch with `deepspeed train.py --config configs/stage_N.yaml` (or torchrun / plain python for one process). The stage
is defined entirely by its YAML: datasets, trainable groups, loss weights, schedule, the previous stage's checkpoint.

A run never loses or repeats work silently: everything checkable is checked before the model is built
(`preflight`); rank 0 holds the run folder's lock (`run_lock`) and a launched trainer dies with its launcher
(`launcher_watch`); a re-run resumes from the newest intact checkpoint (`resume`), reads DeepSpeed state without
unpickling code (`safe_load`), says so when the run is already finished, and continues from `final/` when the config
asks for more steps; metrics.jsonl holds every step once.

    result = run(load_config("configs/tiny_stage_1.yaml"))
    result.final_dir  # runs/.../final
"""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from nextgpt.checkpoints import backbone_dir
from nextgpt.config import Config
from nextgpt.data.batch import NextGPTBatch
from nextgpt.llm.backbone import compile_decoder_layers
from nextgpt.manifest import CorruptCheckpointError
from nextgpt.model import NextGPT, build_nextgpt, with_media_features
from nextgpt.training import checkpoint as ckpt
from nextgpt.training.data_health import EpochHealth
from nextgpt.training.data_setup import TrainingData, build_training_data
from nextgpt.training.distributed import (
    capture_rng_state,
    init_distributed,
    is_rank_zero,
    rank,
    restore_rng_state,
    seed_everything,
    world_size,
)
from nextgpt.training.engine import build_engine, build_lr_lambda, resolve_deepspeed_config, zero_stage
from nextgpt.training.full_finetune import trains_backbone, write_backbone
from nextgpt.training.launcher_watch import watch_launcher
from nextgpt.training.metrics import MetricLogger, PendingMetrics
from nextgpt.training.preflight import preflight
from nextgpt.training.resume import (
    ResumePlan,
    check_resume_changes,
    data_order,
    finished_message,
    plan_resume,
    resume_position,
    target_steps,
)
from nextgpt.training.run_lock import RunLock
from nextgpt.training.safe_load import check_pickles, load_weights_only, weights_only_loads
from nextgpt.training.stages import apply_trainable_groups
from nextgpt.training.step_gc import StepGC
from nextgpt.training.step_loss import StepLossPlan, count_group, step_means
from nextgpt.training.universal import (
    convert_to_universal,
    needs_universal,
    remove_scratch,
    repair_universal_load,
    scratch_state_dir,
)
from nextgpt.training.zero import clear_unused_gradients, gathered_checkpoint_weights
from nextgpt.utils.step_timer import StepTimer, phase

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a run reports (`steps`: the step the run stands at; `losses`: those this process trained)."""

    final_dir: Path
    steps: int
    losses: list[float] = field(default_factory=list)
    num_skipped: int = 0
    finished_before: bool = False
    """True when `final/` already held every step asked for and nothing was trained."""


@dataclass
class _Position:
    """Where training stands: optimizer step, epoch, micro-batches consumed in the epoch."""

    step: int = 0
    epoch: int = 0
    micro_in_epoch: int = 0


@dataclass
class _Layout:
    """The run's length, fixed once the data is built, and what meta.json records for resume."""

    micro_per_epoch: int
    steps_per_epoch: int
    total_steps: int
    order: dict[str, dict[str, Any]]


def build_model_for_training(cfg: Config) -> NextGPT:
    """Build the model, load the previous stage's weights and set exactly the stage's trainable groups."""
    trained = backbone_dir(cfg.train.init_from) if cfg.train.init_from is not None else None
    if trained is not None:
        logger.info("train.init_from %s trained the LLM itself: starting from its backbone %s", cfg.train.init_from,
                    trained)  # fmt: skip
        cfg.model.llm.model_path = trained
    model = build_nextgpt(cfg.model, load_encoder=cfg.data.feature_cache_dir is None)
    if cfg.train.init_from is not None:
        ckpt.load_project_weights(model, cfg.train.init_from, cfg)
    apply_trainable_groups(model, cfg.train.trainable)
    if cfg.model.llm.compile_layers:
        logger.info(
            "compiling the decoder layers (model.llm.compile_layers): the first steps take about a minute longer"
        )
        compile_decoder_layers(model.llm)
    return model


def _barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def _save(engine, model: NextGPT, cfg: Config, pos: _Position, layout: _Layout, name: str) -> None:
    """Checkpoint collectively: every rank writes its DeepSpeed/RNG state, rank 0 the weights and the rename.

    A failed write (full disk, read-only folder) removes the staging folder and raises the OSError; the previous
    checkpoints are untouched.
    """
    run_dir = Path(cfg.train.output_dir)
    target = run_dir / name
    staging = ckpt.staging_dir(target)
    try:
        # The frozen base (13.5 GB of a 7B LLM in bf16) is not training state: it is rebuilt from the base checkpoint
        # at every start, so each save holds the trainable weights and their optimizer state only.
        engine.save_checkpoint(
            str(staging / ckpt.DEEPSPEED_DIR), tag=ckpt.DEEPSPEED_TAG, exclude_frozen_parameters=True
        )
        torch.save(capture_rng_state(), staging / ckpt.DEEPSPEED_DIR / f"rng_rank{rank()}.pt")
    except Exception as err:
        if is_rank_zero():
            shutil.rmtree(staging, ignore_errors=True)
        os_error = ckpt.as_os_error(err, run_dir)
        if os_error is not None:
            raise os_error from err
        raise
    _barrier()
    if trains_backbone(cfg.train.trainable):  # every rank: a collective under ZeRO-3
        write_backbone(model, staging / ckpt.MERGED_LLM_DIR, engine.zero_optimization_stage(), write=is_rank_zero())
    with gathered_checkpoint_weights(model, engine.zero_optimization_stage()):  # every rank: a collective
        if is_rank_zero():
            _write_weights(model, cfg, pos, layout, target)
    if is_rank_zero() and name.startswith("step-"):
        ckpt.prune_checkpoints(run_dir, cfg.train.keep_last)
    _barrier()


def _write_weights(model: NextGPT, cfg: Config, pos: _Position, layout: _Layout, target: Path) -> None:
    """Rank 0's part of a save: the weights, config and metadata beside the DeepSpeed state, then the rename."""
    meta = {
        "epoch": pos.epoch,
        "micro_in_epoch": pos.micro_in_epoch,
        "micro_per_epoch": layout.micro_per_epoch,
        "steps_per_epoch": layout.steps_per_epoch,
        "total_steps": layout.total_steps,
        **layout.order,
    }
    ckpt.save_checkpoint(target, model, cfg, step=pos.step, meta=meta)


def _check_ranks_agree(plan: ResumePlan) -> None:
    """Every rank chose its resume point on its own (before the process group existed); they must agree."""
    if not torch.distributed.is_initialized():
        return
    mine = (str(plan.point.folder), plan.point.step) if plan.point is not None else None
    chosen: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(chosen, mine)
    if len({repr(c) for c in chosen}) > 1:
        raise CorruptCheckpointError(
            f"ranks chose different checkpoints to resume from ({chosen}); the run folder differs between nodes or "
            "changed during the start; make it the same for all ranks and resume again"
        )


def _resume(engine, cfg: Config, plan: ResumePlan, layout: _Layout, universal: bool = False) -> _Position:
    """Restore engine, RNG and data position from the plan's checkpoint (weights-only reads of its state).

    `universal`: the checkpoint was written by another number of processes; rank 0 first converts its partitioned
    optimizer state into one that any number can load (`nextgpt.training.universal`).
    """
    _check_ranks_agree(plan)
    if plan.point is None:
        return _Position()
    state_dir = plan.point.folder / ckpt.DEEPSPEED_DIR
    run_dir = Path(cfg.train.output_dir)
    trust = cfg.train.trust_checkpoint_pickles
    load_dir = scratch_state_dir(run_dir).parent if universal else state_dir
    if universal and is_rank_zero():
        convert_to_universal(state_dir, run_dir, trust=trust)
    _barrier()
    repair = repair_universal_load(engine.optimizer) if universal else contextlib.nullcontext()
    with weights_only_loads(engine, trust=trust), repair:
        # Saves leave the frozen base out (`_save`); the module already holds it.
        load_path, _ = engine.load_checkpoint(str(load_dir), tag=ckpt.DEEPSPEED_TAG, load_module_strict=False)
    _barrier()
    if universal and is_rank_zero():
        remove_scratch(run_dir)
    if load_path is None:
        raise CorruptCheckpointError(f"DeepSpeed found no state in {state_dir}; resume from another checkpoint")
    rng_file = state_dir / f"rng_rank{rank()}.pt"
    if rng_file.is_file():
        restore_rng_state(load_weights_only(rng_file))
    else:
        logger.warning("%s is missing (world size changed?): this rank keeps its seeded RNG", rng_file)
    step, epoch, micro = resume_position(plan.point, layout.micro_per_epoch)
    logger.info("resumed from %s at step %d (epoch %d, micro-batch %d)", plan.point.folder, step, epoch, micro)
    return _Position(step=step, epoch=epoch, micro_in_epoch=micro)


def _layout(cfg: Config, data: TrainingData, order: dict[str, dict[str, Any]]) -> _Layout:
    micro_per_epoch = len(data.batch_sampler)
    steps_per_epoch = max(1, micro_per_epoch // cfg.train.grad_accum_steps)
    total = target_steps(cfg, steps_per_epoch)
    sizes = {d.name: len(d) for d in data.datasets}
    order = {**order, "data_order": {**order["data_order"], "dataset_sizes": sizes}}
    return _Layout(micro_per_epoch, steps_per_epoch, total, order)


def run(cfg: Config) -> TrainResult:
    """Train one stage end to end (or report that its run folder already holds every step asked for).

    Args:
        cfg: the resolved config (stage YAML + overrides).

    Returns:
        TrainResult with the final checkpoint folder and the per-step losses of this process's run.

    Raises:
        PreflightError: config, catalog, components or output folder problems (before any model is built).
        RunLockedError: another trainer writes to train.output_dir.
        CorruptCheckpointError / UnsafeCheckpointError / ConfigError: no checkpoint to resume from is intact, one
            needs unsafe unpickling, or the config changed what a resume must keep.
        NoUsableDataError: an epoch without a single usable sample.
    """
    # 1. Checks: everything that can fail does so before the model is built; rank 0 locks the folder before writing.
    watch_launcher()
    preflight(cfg)
    init_distributed()
    lock = RunLock(Path(cfg.train.output_dir)).acquire() if is_rank_zero() else None
    try:
        return _run_locked(cfg)
    finally:
        if lock is not None:
            lock.release()


def _run_locked(cfg: Config) -> TrainResult:
    ds = resolve_deepspeed_config(cfg)
    order = data_order(cfg, world_size(), zero_stage(ds))
    plan = plan_resume(cfg, order)
    if plan.finished:
        logger.info(finished_message(plan.point))
        return TrainResult(final_dir=plan.point.folder, steps=plan.point.step, finished_before=True)
    if plan.point is not None:
        check_pickles(plan.point.folder / ckpt.DEEPSPEED_DIR, trust=cfg.train.trust_checkpoint_pickles)
    # 2. Setup: seeds, model, data, engine, position.
    seed_everything(cfg.seed)
    model = build_model_for_training(cfg)
    data = build_training_data(cfg, model)
    layout = _layout(cfg, data, order)
    if plan.point is not None and "data_order" in plan.point.meta:
        sizes = {"data_order": {"dataset_sizes": layout.order["data_order"]["dataset_sizes"]}}
        check_resume_changes(plan.point.meta, sizes, cfg.train.allow_resume_changes, plan.point.folder)
    # The frozen encoder runs outside DeepSpeed: ZeRO-3 would partition its weights and gather them per modality, a
    # collective that ranks whose micro-batches hold different media would not all join.
    encoder, model.encoder = model.encoder, None
    model.data_parallel = world_size() > 1
    universal = plan.point is not None and needs_universal(plan.point.meta, world_size(), ds)
    engine = build_engine(cfg, model, build_lr_lambda(cfg.train, layout.total_steps), load_universal=universal)
    if encoder is not None:
        encoder.to(engine.device)
    pos = _resume(engine, cfg, plan, layout, universal)
    run_dir = Path(cfg.train.output_dir)
    metrics = MetricLogger(run_dir, enabled=is_rank_zero(), tensorboard=cfg.train.tensorboard, resume_step=pos.step)
    # 3. Train, then save the final weights with their optimizer state (a longer run continues from them).
    result = TrainResult(final_dir=run_dir / "final", steps=layout.total_steps)
    try:
        _train(engine, model, encoder, data, cfg, pos, layout, metrics, result)
        _save(engine, model, cfg, pos, layout, "final")
    finally:
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


LOOP_PHASES = ("data", "to_device", "forward", "backward", "optimizer", "log")
"""The phases `_train` marks in every step; the model marks its own inside `forward` (encode, llm, projectors, loss)."""
_HOST_PHASES = ("data", "log")
"""Host-only work: waiting for the loader, writing metrics (their GPU "time" would only be the queue draining)."""


def _log_timing_keys(cuda: bool) -> None:
    gpu = [p for p in LOOP_PHASES if p not in _HOST_PHASES]
    clock = (
        f"GPU time from CUDA events for {', '.join(gpu)} and the model's phases (host_ms_<phase>: their host time), "
        f"host time for {', '.join(_HOST_PHASES)}"
        if cuda
        else "host time"
    )
    logger.info(
        "metrics.jsonl times every step in ms: %s, ms_gc (garbage collection pauses, at the step's end), ms_step (the "
        "step's host wall time), and ms_<phase> for each phase the model marks in forward (ms_encode, ms_llm, "
        "ms_projectors, ms_loss); ms_<phase> is %s",
        ", ".join(f"ms_{p}" for p in LOOP_PHASES),
        clock,
    )


def _micro_batches(
    data: TrainingData, pos: _Position, health: EpochHealth, result: TrainResult
) -> Iterator[NextGPTBatch]:
    """The trainable micro-batches (still on the CPU) from `pos` on, epoch after epoch.

    `pos`, the epoch's health and the skipped-sample count advance as batches are consumed, so a checkpoint taken
    between two pulls records exactly the micro-batches trained; an epoch ends (and is judged) when the next one is
    pulled, so a run that stops at an epoch's last batch leaves the epoch as the checkpoint saw it.
    """
    while True:
        data.batch_sampler.set_epoch(pos.epoch)
        data.batch_sampler.skip_batches(pos.micro_in_epoch)
        health.start_epoch(pos.epoch)
        for collated in data.loader:
            pos.micro_in_epoch += 1
            trained = collated is not None and collated.batch is not None
            health.record(collated, trained)
            if collated is not None:
                result.num_skipped += collated.num_skipped
            if trained:
                yield collated.batch
        health.finish_epoch()
        pos.epoch, pos.micro_in_epoch = pos.epoch + 1, 0


def _accumulate(
    engine,
    model: NextGPT,
    encoder: torch.nn.Module | None,
    batches: Iterator[NextGPTBatch],
    decoders: dict | None,
    grad_accum_steps: int,
    counts_over: torch.distributed.ProcessGroup | None,
) -> tuple[dict[str, torch.Tensor], int]:
    """Run the step's micro-batches until DeepSpeed steps the optimizer (on the `grad_accum_steps`-th), marking each
    phase. Every loss term is normalised over the whole step (`nextgpt.training.step_loss`), so the step trains on
    the mean over all its samples however they are split into micro-batches and ranks.

    Nothing here reads a GPU value, so the host can queue the next micro-batch while the GPU works.

    Args:
        encoder: the frozen media encoder, run here on raw media before the engine's forward; None when the batches
            bring precomputed features (the feature cache).
        counts_over: the CPU group the loss counts are summed over (`count_group`); None for one process.

    Returns:
        The step's loss and terms (on the device, unread; means over every rank's samples), and the real tokens of
        this rank's micro-batches, stripped shared prefixes included (counted on the CPU batches before they move).
    """
    with phase("data", device=False):
        cpu_batches = [next(batches) for _ in range(grad_accum_steps)]
        plan = StepLossPlan.build([b.loss_counts() for b in cpu_batches], counts_over)
    # Every term the step has anywhere, on every rank (a rank without an image target adds a zero), so the ranks sum
    # the same vector.
    shares = {name: torch.zeros((), device=engine.device) for name, total in plan.totals.items() if total > 0}
    for i, cpu_batch in enumerate(cpu_batches):
        with phase("to_device"):
            batch = cpu_batch.to(engine.device, non_blocking=True)
        if encoder is not None:
            with phase("encode"):
                batch = with_media_features(encoder, batch)
        with phase("forward"):
            out = engine(batch, decoders=decoders)
            loss = model.weighted_loss(plan.scaled(i, out.loss_terms))
            if out.participation is not None:  # idle projectors take part: every rank reduces the same gradients
                loss = loss + out.participation
        with phase("backward"):
            engine.backward(loss)
        with phase("optimizer"):
            stepped = engine.is_gradient_accumulation_boundary()
            engine.step()  # DeepSpeed steps the optimizer on the last micro-batch of the step only
            if stepped:
                clear_unused_gradients(engine)
        for name, value in plan.scaled(i, out.loss_terms, which="shares").items():
            if name in shares:
                shares[name] = shares[name] + value.detach()
    means = step_means(shares, distributed=counts_over is not None)
    total = model.weighted_loss(means) if means else torch.zeros((), device=engine.device)  # no term had a count
    return {"loss": total, **means}, sum(b.num_tokens for b in cpu_batches)


class TrainingDivergedError(RuntimeError):
    """A step's loss is not finite: the weights are no longer usable, so the run stops before saving them."""


def _flush(pending: PendingMetrics, result: TrainResult, progress: tqdm) -> None:
    """Write the pending steps' records (one wait for the GPU) and collect their losses.

    Raises:
        TrainingDivergedError: a loss is NaN or infinite. DeepSpeed's per-parameter overflow scan is off in bf16
            (`nextgpt.training.engine`), so this check, at every flush and so before every save, is what stops a
            diverged run.
    """
    written = pending.flush()
    result.losses.extend(record["loss"] for _, record in written)
    if written:
        progress.set_postfix(loss=f"{written[-1][1]['loss']:.4f}")
    bad = [step for step, record in written if not math.isfinite(record["loss"])]
    if bad:
        raise TrainingDivergedError(
            f"the loss is not finite at step {bad[0]} (metrics.jsonl has every step); the run stops before saving "
            "these weights: lower train.lr or check the data, then resume from the last checkpoint"
        )


def _train(
    engine,
    model: NextGPT,
    encoder: torch.nn.Module | None,
    data: TrainingData,
    cfg: Config,
    pos: _Position,
    layout: _Layout,
    metrics: MetricLogger,
    result: TrainResult,
) -> None:
    """The optimizer-step loop from `pos` to `layout.total_steps`, saving every `train.save_every` steps.

    Loss values stay on the device until the metrics are flushed: every `train.log_every` steps, before each save, at
    the end and after an error. A due flush opens the next step (as its `log` phase), so its wait for the GPU counts in
    a step's wall time instead of vanishing between steps; checkpoint saves are not part of any step. Python's garbage
    collector runs only at the end of each step (`StepGC`; its pauses are the step's `ms_gc`), never inside a forward.
    """
    health = EpochHealth(data.datasets, cfg.data.catalog_path)
    progress = tqdm(
        total=layout.total_steps, initial=pos.step, disable=not is_rank_zero(), desc=f"stage {cfg.train.stage}"
    )
    timer = StepTimer(cuda=torch.device(engine.device).type == "cuda")
    _log_timing_keys(timer.cuda)
    pending = PendingMetrics(metrics, echo_every=cfg.train.log_every)
    batches = _micro_batches(data, pos, health, result)
    counts_over = count_group()  # every rank creates it, at the same point
    try:
        with StepGC() as collector:
            while pos.step < layout.total_steps:
                with timer.step() as timing:
                    if len(pending) and pos.step % cfg.train.log_every == 0:
                        with phase("log", device=False):
                            _flush(pending, result, progress)
                    values, num_tokens = _accumulate(
                        engine, model, encoder, batches, data.decoders, cfg.train.grad_accum_steps, counts_over
                    )
                    pos.step += 1
                    with phase("log", device=False):
                        pending.add(pos.step, values, engine.get_lr()[0], num_tokens, timing)
                        progress.update(1)
                    collector.end_step(pos.step)
                if pos.step % cfg.train.save_every == 0 and pos.step < layout.total_steps:
                    _flush(pending, result, progress)  # a resume from this checkpoint keeps every record up to it
                    _save(engine, model, cfg, pos, layout, f"step-{pos.step:06d}")
        _flush(pending, result, progress)
    except BaseException:
        num_pending = len(pending)
        try:
            _flush(pending, result, progress)
        except Exception as err:  # e.g. the GPU failed: keep the original error
            logger.warning("the metrics of the last %d steps were lost after the error (%s)", num_pending, err)
        raise
    finally:
        batches.close()
        progress.close()
