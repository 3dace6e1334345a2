"""Self-describing, atomic checkpoints holding only the project's own weights.

A checkpoint folder (`step-000500/` or `final/`) holds:
    trainable.safetensors   projectors + new signal-token rows (canonical names, no peft prefix); also the base
                            vocabulary rows when a loaded checkpoint changed them (the legacy release trained the
                            whole embedding and LM-head matrices)
    lora/                   peft adapter format (adapter_config.json + adapter_model.safetensors), when LoRA is on
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
from safetensors.torch import load_file, save_file

from nextgpt.components import absolute_paths
from nextgpt.config import Config, load_config, save_config, to_dict
from nextgpt.manifest import CorruptCheckpointError, write_manifest
from nextgpt.training.stages import BASE_ROWS_NAME, canonical_name, parameter_group, project_state_dict
from nextgpt.utils.folders import replace_folder  # noqa: F401  (re-exported: merge and the converters use it)

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "trainable.safetensors"
LORA_DIR = "lora"
META_FILE = "meta.json"
CONFIG_FILE = "config.yaml"
LATEST_FILE = "latest"
DEEPSPEED_DIR = "deepspeed"
DEEPSPEED_TAG = "state"
"""DeepSpeed's tag (sub-folder of deepspeed/) for the engine state of a checkpoint."""

ARCHITECTURE_FIELDS = ("encoder.out_embed_dim", "input_projector", "output_projectors", "signal_tokens", "lora")
"""Model config sections whose values fix tensor shapes; a checkpoint must agree with the config on all of them."""


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
        model: the NextGPT whose project weights are saved (ZeRO-3 callers gather them first).
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
    save_config(absolute_paths(cfg, Path.cwd()), tmp_dir / CONFIG_FILE)
    counts: dict[str, int] = {}
    for name, param in model.named_parameters():
        group = parameter_group(name) or "frozen base"
        counts[group] = counts.get(group, 0) + param.numel()
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


def _lookup(section: dict[str, Any], dotted: str) -> Any:
    for key in dotted.split("."):
        section = section[key]
    return section


def check_architecture(ckpt_dir: Path, cfg: Config) -> None:
    """Fail loudly when a checkpoint was trained with a different architecture than `cfg` describes.

    Raises:
        ValueError: naming the first differing config field, both values and the fix.
    """
    saved = to_dict(load_config(Path(ckpt_dir) / CONFIG_FILE).model)
    current = to_dict(cfg.model)
    for section in ARCHITECTURE_FIELDS:
        old, new = _lookup(saved, section), _lookup(current, section)
        if section == "lora":  # only the adapter's shape matters, not whether this stage enables it
            old = {k: old[k] for k in ("r", "target_modules")} if old["enabled"] else None
            new = {k: new[k] for k in ("r", "target_modules")} if new["enabled"] and old is not None else old
        if old != new:
            diff = _first_difference(old, new, f"model.{section}")
            raise ValueError(f"checkpoint {ckpt_dir} does not match the config: {diff}")


def _first_difference(old: Any, new: Any, key: str) -> str:
    if isinstance(old, dict) and isinstance(new, dict):
        for sub in old:
            if old[sub] != new.get(sub):
                return _first_difference(old[sub], new.get(sub), f"{key}.{sub}")
    return f"{key} is {old!r} in the checkpoint but {new!r} in the config; set {key}={old!r} to load it"


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file; a truncated or damaged one is a one-line `CorruptCheckpointError` naming it.

    Raises:
        FileNotFoundError: the file is missing.
        CorruptCheckpointError: safetensors cannot parse it.
    """
    from safetensors import SafetensorError

    if not Path(path).is_file():
        raise FileNotFoundError(f"{path} is missing; the checkpoint is incomplete, use another one")
    try:
        return load_file(str(path))
    except (SafetensorError, ValueError, RuntimeError) as err:
        detail = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
        raise CorruptCheckpointError(
            f"{path} is truncated or damaged ({detail}); restore the checkpoint from a copy or use another one"
        ) from None


def load_project_weights(model: torch.nn.Module, ckpt_dir: Path, cfg: Config) -> None:
    """Load a checkpoint's projectors, token rows and (if the config enables LoRA and it has them) LoRA weights.

    Args:
        model: a NextGPT built from `cfg`.
        ckpt_dir: a checkpoint folder written by `save_checkpoint`.
        cfg: the current config (checked against the checkpoint's architecture).

    Raises:
        FileNotFoundError: the folder or its weights file is missing.
        CorruptCheckpointError: a weights file is truncated or damaged (named).
        ValueError: architecture mismatch, or missing / unexpected tensors (listed by group).
    """
    ckpt_dir = Path(ckpt_dir)
    weights = ckpt_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(
            f"no {WEIGHTS_FILE} in {ckpt_dir}; train.init_from must name a checkpoint folder (e.g. runs/stage_1/final)"
        )
    check_architecture(ckpt_dir, cfg)
    saved = read_safetensors(weights)
    params = {canonical_name(n): p for n, p in model.named_parameters() if parameter_group(n) not in (None, "lora")}
    base_rows = _base_row_modules(model)
    missing = sorted(set(params) - set(saved))
    unexpected = sorted(set(saved) - set(params) - set(base_rows))
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {ckpt_dir} does not fit the model: missing {_by_group(missing)}, unexpected {_by_group(unexpected)}"
        )
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(saved[name].to(param.dtype))
        for name, module in base_rows.items():
            if name in saved:
                _load_base_rows(module, saved[name], ckpt_dir)
    lora_dir = ckpt_dir / LORA_DIR
    if cfg.model.lora.enabled and lora_dir.is_dir():
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model.llm, read_safetensors(lora_dir / "adapter_model.safetensors"))
    logger.info("loaded %d project tensors from %s", len(params), ckpt_dir)


def _base_row_modules(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Token-row modules by the canonical name their base rows would have in a checkpoint."""
    return {
        canonical_name(f"{name}.{BASE_ROWS_NAME}"): module
        for name, module in model.named_modules()
        if isinstance(getattr(module, BASE_ROWS_NAME, None), torch.nn.Parameter) and hasattr(module, "new_rows")
    }


def _load_base_rows(module: torch.nn.Module, rows: torch.Tensor, ckpt_dir: Path) -> None:
    """Replace a vocabulary matrix's base rows with a checkpoint's (legacy trained whole matrices) and flag them so
    later saves keep them."""
    target = module.base_weight
    if tuple(rows.shape) != tuple(target.shape):
        raise ValueError(
            f"checkpoint {ckpt_dir} holds base vocabulary rows of shape {tuple(rows.shape)}, the LLM has "
            f"{tuple(target.shape)}; point model.llm.model_path at the base LLM the checkpoint was trained on"
        )
    target.copy_(rows.to(device=target.device, dtype=target.dtype))
    module.base_rows_changed = True


def _by_group(names: list[str]) -> str:
    if not names:
        return "none"
    groups: dict[str, int] = {}
    for name in names:
        key = parameter_group(name) or name.split(".")[0]
        groups[key] = groups.get(key, 0) + 1
    return ", ".join(f"{g}: {n}" for g, n in groups.items()) + f" (e.g. {names[0]})"
