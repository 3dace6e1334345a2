"""Resume on another number of processes: DeepSpeed's partitioned optimizer state re-read as a universal checkpoint.

ZeRO-1/2/3 (and DeepSpeed's bf16 optimizer at ZeRO-0) save each rank's slice of the fp32 weights and Adam moments in
its own file, so a checkpoint written by 2 processes cannot be loaded by 1 or 4 ("DP world size of 2 but the current
world size is 1"). DeepSpeed's converter (`deepspeed.checkpoint.ds_to_universal`) merges the slices into one file per
parameter, which any number of processes can load again (`"checkpoint": {"load_universal": true}`). The conversion
runs on rank 0 at the start of such a resume, into a scratch folder of the run (`.universal/`) outside the checkpoint,
whose files and manifest stay as they were; it is removed once every rank has loaded it. The converter's reads go
through the same weights-only loader as every other resume read (`safe_load`).

    if needs_universal(plan.point.meta, world_size(), ds):
        state_dir = convert_to_universal(plan.point.folder / "deepspeed", run_dir, trust=False)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import shutil
from pathlib import Path
from typing import Any

import torch

from nextgpt.training import checkpoint as ckpt
from nextgpt.training.engine import zero_stage
from nextgpt.training.safe_load import weights_only_torch_load

logger = logging.getLogger(__name__)

SCRATCH_DIR = ".universal"
"""Folder of the run (beside its checkpoints) that holds a converted state while it is loaded."""


def saved_world_size(meta: dict[str, Any]) -> int | None:
    """Processes that wrote a checkpoint (its meta.json's data order), or None for checkpoints that predate it."""
    value = meta.get("data_order", {}).get("world_size")
    return int(value) if value is not None else None


def partitions_optimizer(ds: dict[str, Any]) -> bool:
    """Whether a resolved DeepSpeed config splits the optimizer state across ranks: ZeRO >= 1, or bf16 at ZeRO-0
    (DeepSpeed's bf16 optimizer partitions its fp32 masters like ZeRO-1)."""
    return zero_stage(ds) >= 1 or bool(ds.get("bf16", {}).get("enabled"))


def needs_universal(meta: dict[str, Any], current_world_size: int, ds: dict[str, Any]) -> bool:
    """Whether resuming from a checkpoint with `meta` on `current_world_size` processes needs the conversion."""
    saved = saved_world_size(meta)
    return saved is not None and saved != current_world_size and partitions_optimizer(ds)


def scratch_state_dir(run_dir: Path) -> Path:
    """Where `convert_to_universal` writes: `<run>/.universal/<tag>/` (the same path on every rank)."""
    return Path(run_dir) / SCRATCH_DIR / ckpt.DEEPSPEED_TAG


def convert_to_universal(state_dir: Path, run_dir: Path, trust: bool = False) -> Path:
    """Convert a checkpoint's DeepSpeed state (`<ckpt>/deepspeed/`) into a universal one under `<run>/.universal/`.

    Rank 0 only; the other ranks wait at a barrier and then load the returned folder's parent with tag `state`. A
    scratch folder left by an interrupted conversion is replaced.

    Args:
        state_dir: the checkpoint's `deepspeed/` folder (holding the `state` tag).
        run_dir: the run folder (`train.output_dir`).
        trust: `train.trust_checkpoint_pickles` (True lets the converter unpickle without the allow-list).

    Returns:
        The folder to pass to `engine.load_checkpoint` (tag `state`).
    """
    from deepspeed.checkpoint import ds_to_universal

    scratch = Path(run_dir) / SCRATCH_DIR
    shutil.rmtree(scratch, ignore_errors=True)
    out = scratch_state_dir(run_dir)
    args = argparse.Namespace(
        input_folder=str(Path(state_dir) / ckpt.DEEPSPEED_TAG),
        output_folder=str(out),
        num_extract_workers=1,  # in this process: no fork of a process that holds a process group
        num_merge_workers=1,
        keep_temp_folder=False,
        strict=True,
        inject_missing_state=True,
    )
    logger.info("converting %s to a universal checkpoint in %s (the number of processes changed)", state_dir, out)
    report = io.StringIO()
    with weights_only_torch_load(trust), contextlib.redirect_stdout(report):
        ds_to_universal.main(args)
    logger.debug("ds_to_universal:\n%s", report.getvalue())
    return out.parent


SCHEDULED_KEYS = ("params", "lr", "initial_lr")
"""Param-group entries that `repair_universal_load` leaves to the load: the parameters and what the LR scheduler sets."""


@contextlib.contextmanager
def repair_universal_load(optimizer: Any):
    """Undo two side effects of DeepSpeed 0.19.8's ZeRO-3 universal load on the optimizer around `load_checkpoint`.

    - It copies the first param group's hyperparameters into every group, so the no-decay group (biases, norms) would
      be decayed from then on. They come from the config, which the resume checks against the checkpoint, so each
      group gets its own back; the learning rate stays the scheduler's.
    - It gives every flat fp32 group one and the same `step` tensor. torch's Adam advances each group's step in place,
      so a shared one would advance once per group and every optimizer step but the first group's would use the wrong
      bias correction (a 2e-4 relative loss difference one step after a tiny resume). Each group gets its own copy.

    Args:
        optimizer: the engine's optimizer (DeepSpeed's wrapper; its base torch optimizer is `optimizer.optimizer`).
    """
    saved = [{k: v for k, v in group.items() if k not in SCHEDULED_KEYS} for group in optimizer.param_groups]
    yield
    for group, values in zip(optimizer.param_groups, saved, strict=True):
        group.update(values)
    base = getattr(optimizer, "optimizer", optimizer)
    seen: set[int] = set()
    for state in base.state.values():
        step = state.get("step")
        if torch.is_tensor(step):
            if id(step) in seen:
                state["step"] = step.clone()
            seen.add(id(state["step"]))


def remove_scratch(run_dir: Path) -> None:
    """Delete the converted state once every rank has loaded it (rank 0)."""
    shutil.rmtree(Path(run_dir) / SCRATCH_DIR, ignore_errors=True)
