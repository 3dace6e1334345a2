"""Where a run continues: finished, resumed from its newest intact checkpoint, or started from step 0.

Decided before any model is built, so a bad run folder fails in seconds:
1. `final/` already holds the steps the config asks for -> finished: nothing is trained or rewritten.
2. Otherwise the newest checkpoint (`step-*` or `final/`, by step) whose files match its manifest, whose meta.json
   reads and which holds DeepSpeed state is the resume point; each newer one that fails is skipped with a warning
   saying why. Checkpoints that exist but all fail are an error, never a silent restart from step 0.
3. The resume point's recorded data order (`nextgpt.config.RESUME_ORDER_KEYS`) and optimizer-state layout must
   match the config, or the key is named with both values (`train.allow_resume_changes` accepts data-order keys).

    plan = plan_resume(cfg, world_size())
    if plan.finished: return
    step = plan.point.step if plan.point else 0
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nextgpt.config import RESUME_ORDER_KEYS, Config, ConfigError
from nextgpt.manifest import CorruptCheckpointError, verify_manifest
from nextgpt.training import checkpoint as ckpt

logger = logging.getLogger(__name__)

STATE_LAYOUT_KEYS = ("train.trainable", "train.precision", "model.lora.enabled", "zero_stage")
"""What lays out the DeepSpeed optimizer state: a checkpoint written under other values cannot be loaded at all."""


@dataclass
class ResumePoint:
    """A verified checkpoint to continue from and its meta.json."""

    folder: Path
    meta: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.meta["step"])


@dataclass
class ResumePlan:
    """The decision of `plan_resume`.

    Attributes:
        point: the checkpoint to resume from; None starts at step 0.
        finished: `final/` already holds the steps the config asks for (point is then `final/`).
        allowed_changes: data-order keys changed with `train.allow_resume_changes`: key -> (old, new).
    """

    point: ResumePoint | None = None
    finished: bool = False
    allowed_changes: dict[str, tuple[Any, Any]] = field(default_factory=dict)


def _get(cfg: Config, dotted: str) -> Any:
    value: Any = cfg
    for part in dotted.split("."):
        value = getattr(value, part)
    return list(value) if isinstance(value, tuple) else value


def data_order(cfg: Config, world_size: int, zero_stage: int) -> dict[str, dict[str, Any]]:
    """The values a resume must agree on, as recorded in meta.json (`dataset_sizes` is added once data is built)."""
    order = {key: _get(cfg, key) for key in RESUME_ORDER_KEYS if key not in ("world_size", "dataset_sizes")}
    order["world_size"] = world_size
    layout = {key: _get(cfg, key) for key in STATE_LAYOUT_KEYS if key != "zero_stage"}
    layout["zero_stage"] = zero_stage
    return {"data_order": order, "state_layout": layout}


def target_steps(cfg: Config, steps_per_epoch: int) -> int:
    """Optimizer steps the config asks for: `train.max_steps`, else `train.epochs` epochs."""
    return cfg.train.max_steps or steps_per_epoch * cfg.train.epochs


def _folder_step(folder: Path) -> float:
    if folder.name.startswith("step-"):
        try:
            return int(folder.name.split("-", 1)[1])
        except ValueError:
            return -1
    try:
        return int(json.loads((folder / ckpt.META_FILE).read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return math.inf  # an unreadable final/ is still the newest candidate: try (and report) it first


def checkpoint_folders(run_dir: Path) -> list[Path]:
    """Every checkpoint folder of a run (`step-*`, `final`), newest (highest step) first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    folders = [p for p in run_dir.iterdir() if p.is_dir() and (p.name.startswith("step-") or p.name == "final")]
    return sorted(folders, key=lambda p: (_folder_step(p), p.name == "final"), reverse=True)


def read_meta(folder: Path) -> dict[str, Any]:
    """A checkpoint's meta.json.

    Raises:
        CorruptCheckpointError: missing, unreadable or without step / epoch / micro_in_epoch.
    """
    path = Path(folder) / ckpt.META_FILE
    if not path.is_file():
        raise CorruptCheckpointError(f"{path} is missing (its save did not finish)")
    try:
        meta = json.loads(path.read_text())
        for key in ("step", "epoch", "micro_in_epoch"):
            int(meta[key])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CorruptCheckpointError(f"{path} is unreadable ({type(err).__name__}: {err})") from None
    return meta


def checkpoint_problem(folder: Path, need_state: bool = True) -> str | None:
    """Why a checkpoint folder cannot be resumed from (None when it is intact).

    Checks meta.json, every file against manifest.json (DeepSpeed state included) and, with `need_state`, that the
    DeepSpeed state exists.
    """
    try:
        read_meta(folder)
        verify_manifest(folder, required=True)
    except CorruptCheckpointError as err:
        return str(err)
    if need_state and not (Path(folder) / ckpt.DEEPSPEED_DIR / ckpt.DEEPSPEED_TAG).is_dir():
        return f"{folder} holds no {ckpt.DEEPSPEED_DIR}/ resume state"
    return None


def find_resume_checkpoint(run_dir: Path) -> ResumePoint | None:
    """The newest intact checkpoint of a run folder; newer broken ones are skipped with a warning each.

    Returns:
        None when the folder holds no checkpoint at all.

    Raises:
        CorruptCheckpointError: checkpoints exist but none is intact (each named with its problem).
    """
    folders = checkpoint_folders(run_dir)
    problems = []
    for folder in folders:
        problem = checkpoint_problem(folder)
        if problem is None:
            if problems:
                logger.warning("resuming from the older checkpoint %s", folder)
            return ResumePoint(folder, read_meta(folder))
        problems.append(f"{folder.name}: {problem}")
        logger.warning("skipping checkpoint %s: %s", folder, problem)
    if problems:
        raise CorruptCheckpointError(
            f"none of the {len(problems)} checkpoints in {run_dir} can be resumed from ({'; '.join(problems)}); "
            "restore one from a copy, move them away to start over, or set train.output_dir to a new folder"
        )
    return None


_GLOBAL_BATCH_KEYS = ("world_size", "train.micro_batch_size")


def _same_global_batch(old: dict[str, Any], new: dict[str, Any]) -> tuple[int, int, int, int] | None:
    """(new processes, new micro batch, old processes, old micro batch) when the number of processes changed but not
    the samples per micro-step over all of them, else None.

    The samplers draw each micro-step's global batch (processes x micro batch samples) from the seed alone and only
    then split it between the ranks (`nextgpt.data.samplers`), so such a change keeps every step's samples.
    """
    try:
        old_ws, old_mb = int(old["world_size"]), int(old["train.micro_batch_size"])
        new_ws, new_mb = int(new["world_size"]), int(new["train.micro_batch_size"])
    except (KeyError, TypeError, ValueError):
        return None
    if old_ws == new_ws or old_ws * old_mb != new_ws * new_mb:
        return None
    return new_ws, new_mb, old_ws, old_mb


def check_resume_changes(
    meta: dict[str, Any], current: dict[str, dict[str, Any]], allowed: tuple[str, ...], folder: Path
) -> dict[str, tuple[Any, Any]]:
    """Compare a checkpoint's recorded data order and state layout with the current run.

    Args:
        meta: the checkpoint's meta.json.
        current: `data_order(...)` of this run (plus `dataset_sizes` once known).
        allowed: `train.allow_resume_changes`.
        folder: the checkpoint, for the messages.

    Returns:
        The allowed data-order changes, key -> (old, new).

    Raises:
        ConfigError: one line naming every other changed key with its old and new value.
    """
    if "data_order" not in meta:
        logger.warning("%s predates recorded data orders: micro batch size, seed, ... are not checked", folder)
        return {}
    refused, accepted = [], {}
    regrouped = _same_global_batch(meta.get("data_order", {}), current.get("data_order", {}))
    if regrouped:
        logger.info("resuming on %s processes with %s samples each (was %s x %s): the same global batches, so the "
                    "same data order", *regrouped)  # fmt: skip
    for section, keys in (("state_layout", STATE_LAYOUT_KEYS), ("data_order", RESUME_ORDER_KEYS)):
        old_values, new_values = meta.get(section, {}), current.get(section, {})
        for key in keys:
            if key not in old_values or key not in new_values or old_values[key] == new_values[key]:
                continue
            if regrouped and key in _GLOBAL_BATCH_KEYS:
                continue
            change = (old_values[key], new_values[key])
            if section == "data_order" and key in allowed:
                accepted[key] = change
            else:
                refused.append((section, key, change))
    if refused:
        parts = [f"{key} was {old!r} and is {new!r} now" for _, key, (old, new) in refused]
        layout = any(section == "state_layout" for section, _, _ in refused)
        fix = (
            "set it back, or start a new train.output_dir with train.init_from=" + str(folder)
            if layout
            else "set it back, list it in train.allow_resume_changes to continue in a different data order "
            f"(e.g. train.allow_resume_changes=[{refused[0][1]}]), or set train.output_dir to a new folder"
        )
        raise ConfigError(f"cannot resume from {folder}: {'; '.join(parts)}; {fix}")
    for key, (old, new) in accepted.items():
        logger.warning("resuming with %s changed from %r to %r (train.allow_resume_changes): the data order "
                       "differs from an uninterrupted run", key, old, new)  # fmt: skip
    return accepted


def _finished(cfg: Config, run_dir: Path) -> ResumePoint | None:
    """`final/` when it is intact and holds at least the steps the config asks for."""
    final = run_dir / "final"
    if not final.is_dir() or checkpoint_problem(final, need_state=False) is not None:
        return None
    meta = read_meta(final)
    if cfg.train.max_steps is None and "steps_per_epoch" not in meta:
        return ResumePoint(final, meta)  # written before runs recorded their length: never overwrite it
    if int(meta["step"]) >= target_steps(cfg, int(meta.get("steps_per_epoch", 0))):
        return ResumePoint(final, meta)
    return None


def plan_resume(cfg: Config, current: dict[str, dict[str, Any]]) -> ResumePlan:
    """Decide whether the run is finished, resumes (from which checkpoint) or starts at step 0.

    Args:
        cfg: the run's config.
        current: `data_order(cfg, world_size, zero_stage)` of this run.

    Raises:
        CorruptCheckpointError: checkpoints exist but none is intact.
        ConfigError: the resume point was written with another data order / state layout (see
            `check_resume_changes`).
    """
    run_dir = Path(cfg.train.output_dir)
    if not cfg.train.resume:
        existing = checkpoint_folders(run_dir)
        if existing:
            logger.warning("train.resume=false: starting %s over at step 0; its checkpoints %s will be replaced",
                           run_dir, [p.name for p in existing])  # fmt: skip
        return ResumePlan()
    done = _finished(cfg, run_dir)
    if done is not None:
        return ResumePlan(point=done, finished=True)
    point = find_resume_checkpoint(run_dir)
    if point is None:
        return ResumePlan()
    allowed = check_resume_changes(point.meta, current, cfg.train.allow_resume_changes, point.folder)
    if "steps_per_epoch" in point.meta and not allowed:
        target = target_steps(cfg, int(point.meta["steps_per_epoch"]))
        if point.step > target:
            raise ConfigError(
                f"{point.folder} is at step {point.step}, past the {target} steps the config asks for "
                f"(train.max_steps / train.epochs); raise them to continue it, or set train.output_dir to a new folder"
            )
    return ResumePlan(point=point, allowed_changes=allowed)


def finished_message(point: ResumePoint) -> str:
    """The one line a re-run of a finished run logs."""
    step = point.step
    return (
        f"nothing to do: {point.folder} already holds step {step}, all the config asks for; to train longer run the "
        f"same command with train.max_steps={2 * step} (or a larger train.epochs) and it continues from there with "
        "its optimizer state; to start over set train.output_dir to a new folder"
    )


def resume_position(point: ResumePoint, micro_per_epoch: int) -> tuple[int, int, int]:
    """(step, epoch, micro-batches consumed in the epoch) to continue from.

    When an allowed change altered the micro-batches per epoch, the same fraction of the epoch is skipped.
    """
    meta = point.meta
    micro = int(meta["micro_in_epoch"])
    old_per_epoch = int(meta.get("micro_per_epoch", micro_per_epoch))
    if old_per_epoch != micro_per_epoch and old_per_epoch > 0:
        micro = min(micro_per_epoch, round(micro * micro_per_epoch / old_per_epoch))
    return point.step, int(meta["epoch"]), micro
