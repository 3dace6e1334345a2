"""Self-describing, atomic checkpoints holding only the project's own weights.

A checkpoint folder (`step-000500/` or `final/`) holds:
    trainable.safetensors   projectors + new signal-token rows (canonical names, no peft prefix); also the base
                            vocabulary rows when a loaded checkpoint changed them (the legacy release trained the
                            whole embedding and LM-head matrices)
    lora/                   peft adapter format (adapter_config.json + adapter_model.safetensors), when LoRA is on
    llm/                    the trained backbone as an HF folder, when the stage trains `llm` / `embeddings` (a full
                            fine-tune; `nextgpt.training.full_finetune`); config.yaml's model.llm.model_path points at it
    config.yaml             the resolved config of the run
    meta.json               stage, step, parameter counts per group, base checkpoint paths, code version
    manifest.json           size and SHA-256 of every other file (verified before the folder is trusted)
    deepspeed/              optimizer / scheduler / RNG state for `resume` (final/ too: a longer run continues it)
Folders are written under a temporary name and renamed when complete, and `latest` is replaced atomically, so a kill
during a save never corrupts the newest checkpoint; a save that fails (full disk, read-only folder) removes its
temporary folder and raises the OSError unchanged, leaving the previous checkpoints as they were.

    save_checkpoint(run_dir / "step-000100", model, cfg, step=100)
    load_project_weights(model, Path("runs/stage_1/final"), cfg)
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from nextgpt.checkpoints import (  # noqa: F401  (re-exported: the training code reads them from here)
    ARCHITECTURE_FIELDS,
    CONFIG_FILE,
    DEEPSPEED_DIR,
    DEEPSPEED_TAG,
    LATEST_FILE,
    LORA_DIR,
    MERGED_LLM_DIR,
    META_FILE,
    WEIGHTS_FILE,
    check_architecture,
    load_project_weights,
    read_safetensors,
)
from nextgpt.components import absolute_paths
from nextgpt.config import Config, save_config
from nextgpt.manifest import write_manifest
from nextgpt.training.stages import parameter_group, project_state_dict
from nextgpt.training.zero import full_numel
from nextgpt.utils.folders import replace_folder  # noqa: F401  (re-exported: merge and the converters use it)

logger = logging.getLogger(__name__)


def _git_sha() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def write_atomic_text(path: Path, text: str) -> None:
    """Write a small text file so that readers see the old or the new content, never a partial one."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


_OS_ERROR_CODE = re.compile(r"os error (\d+)")
_LOW_SPACE_BYTES = 16 << 20


def as_os_error(err: BaseException, folder: Path) -> OSError | None:
    """The OSError behind a failed checkpoint write that a library reported as something else, or None.

    safetensors reports a full disk as `SafetensorError(... (os error 28))` and `torch.save` as a `RuntimeError`
    about stream positions; both become `OSError(ENOSPC, ..., folder)` here, so scripts print one line with the fix
    (`nextgpt.utils.cli`). OSErrors themselves are returned unchanged by the caller (None here).
    """
    if isinstance(err, OSError) or not isinstance(err, Exception):
        return None
    match = _OS_ERROR_CODE.search(str(err))
    if match:
        code = int(match.group(1))
        return OSError(code, os.strerror(code), str(folder))
    try:
        low_space = shutil.disk_usage(folder).free < _LOW_SPACE_BYTES
    except OSError:
        low_space = False
    if isinstance(err, RuntimeError) and low_space:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder))
    return None


def staging_dir(ckpt_dir: Path) -> Path:
    """The temporary folder a checkpoint is assembled in (the same name on every rank) before its rename."""
    ckpt_dir = Path(ckpt_dir)
    return ckpt_dir.with_name(f".{ckpt_dir.name}.tmp")


def save_checkpoint(
    ckpt_dir: Path,
    model: torch.nn.Module,
    cfg: Config,
    step: int,
    meta: dict[str, Any] | None = None,
) -> Path:
    """Write a complete checkpoint folder atomically (rank 0 only).

    Anything already in `staging_dir(ckpt_dir)` (e.g. the DeepSpeed state every rank wrote there) becomes part of it.

    Args:
        ckpt_dir: final folder name (e.g. run_dir / "step-000100"); replaced if it exists.
        model: the NextGPT whose project weights are saved (under ZeRO-3 inside `gathered_checkpoint_weights`).
        cfg: resolved config, saved as config.yaml.
        step: optimizer step.
        meta: extra metadata fields (e.g. the data position for resume).

    Returns:
        `ckpt_dir`.
    """
    ckpt_dir = Path(ckpt_dir)
    tmp_dir = staging_dir(ckpt_dir)
    try:
        tmp_dir.mkdir(parents=True, exist_ok=True)
        num_tensors = _write_contents(tmp_dir, model, cfg, step, meta)
        write_manifest(tmp_dir)  # checksums of everything above and of the DeepSpeed state the ranks wrote
    except BaseException as err:
        shutil.rmtree(tmp_dir, ignore_errors=True)  # frees the space a full disk needs; older checkpoints stay
        os_error = as_os_error(err, ckpt_dir.parent)
        if os_error is not None:
            raise os_error from err
        raise
    # The atomic swap.
    replace_folder(tmp_dir, ckpt_dir)
    write_atomic_text(ckpt_dir.parent / LATEST_FILE, ckpt_dir.name + "\n")
    logger.info("saved checkpoint %s (%d tensors)", ckpt_dir, num_tensors)
    return ckpt_dir


def _write_contents(tmp_dir: Path, model: torch.nn.Module, cfg: Config, step: int, meta: dict[str, Any] | None) -> int:
    """Weights, LoRA adapter, config.yaml and meta.json of a checkpoint; returns the number of tensors saved."""
    # 1. Projectors + token rows (LoRA goes to its own folder in the peft format).
    state = {k: v.contiguous().cpu() for k, v in project_state_dict(model).items() if "lora_" not in k}
    save_file(state, str(tmp_dir / WEIGHTS_FILE))
    if cfg.model.lora.enabled:
        # Token rows live in trainable.safetensors; the adapter folder holds LoRA only.
        model.llm.save_pretrained(str(tmp_dir / LORA_DIR), save_embedding_layers=False)
    # 2. Config (component paths absolute: the folder works from anywhere) and metadata.
    saved_cfg = absolute_paths(cfg, Path.cwd())
    if (tmp_dir / MERGED_LLM_DIR).is_dir():  # a full fine-tune's trained backbone (written by every rank's `_save`)
        llm = dataclasses.replace(saved_cfg.model.llm, model_path=Path(MERGED_LLM_DIR))
        saved_cfg = dataclasses.replace(saved_cfg, model=dataclasses.replace(saved_cfg.model, llm=llm))
    save_config(saved_cfg, tmp_dir / CONFIG_FILE)
    counts: dict[str, int] = {}
    for name, param in model.named_parameters():
        group = parameter_group(name) or "frozen base"
        counts[group] = counts.get(group, 0) + full_numel(param)  # ZeRO-3 shards hold an empty local tensor
    info = {
        "stage": cfg.train.stage,
        "step": step,
        "parameter_counts": counts,
        "llm_path": str(cfg.model.llm.model_path),
        "encoder_path": str(cfg.model.encoder.checkpoint_path),
        "git_sha": _git_sha(),
        **(meta or {}),
    }
    (tmp_dir / META_FILE).write_text(json.dumps(info, indent=2))
    return len(state)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run folder, or None."""
    pointer = Path(run_dir) / LATEST_FILE
    if not pointer.is_file():
        return None
    candidate = Path(run_dir) / pointer.read_text().strip()
    return candidate if (candidate / META_FILE).is_file() else None


def prune_checkpoints(run_dir: Path, keep_last: int) -> None:
    """Delete all but the newest `keep_last` step-* folders (and stale temporary folders)."""
    run_dir = Path(run_dir)
    for stale in run_dir.glob(".step-*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    steps = sorted(run_dir.glob("step-*"))
    for old in steps[: max(0, len(steps) - keep_last)]:
        shutil.rmtree(old, ignore_errors=True)
