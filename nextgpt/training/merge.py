"""Turn a stage-3 checkpoint (+ its base LLM) into a standalone folder that inference loads without peft.

A full fine-tune's checkpoint (its trained backbone in `llm/`) merges too: into the same layout, with nothing of the
run's training state, and without the base vocabulary rows twice.

The merged folder holds:
    llm/                   HF folder: LoRA merged into the weights, signal-token rows folded in, tokenizer with them
    trainable.safetensors  input/output projectors and the token rows (as in any checkpoint)
    config.yaml            the run's config with model.llm.model_path = llm (relative to the folder), every other
                           component path absolute, and LoRA off: the folder can be moved; a QLoRA run's
                           model.llm.quantization is kept (the merged weights are float, quantized when loaded)
    meta.json              where it was merged from
    manifest.json          size and SHA-256 of every file (checked when the folder is loaded)

    merge_checkpoint(Path("runs/stage_3/final"), Path("checkpoints/nextgpt-7b-merged"))
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from pathlib import Path

from safetensors.torch import save_file

from nextgpt.checkpoints import (  # noqa: F401  (re-exported)
    MERGED_LLM_DIR,
    MERGED_MARKER,
    backbone_dir,
    load_model_from_folder,
    resolve_folder_config,
)
from nextgpt.components import absolute_paths
from nextgpt.config import Config, save_config
from nextgpt.llm.backbone import save_merged_llm
from nextgpt.manifest import write_manifest
from nextgpt.model import NextGPT
from nextgpt.training import checkpoint as ckpt
from nextgpt.training.stages import BASE_ROWS_NAME, project_state_dict

logger = logging.getLogger(__name__)

UNQUANTIZED = "model.llm.quantization=none"
"""Override the merge loads the base LLM with: LoRA is folded into float weights, never into quantized ones."""


def check_checkpoint_folder(folder: Path, what: str = "--checkpoint-dir") -> None:
    """Fail in one line when `folder` is not a checkpoint folder (missing, a file, empty, without its files).

    Raises:
        FileNotFoundError: naming the folder, what is missing and what to pass instead.
    """
    folder = Path(folder)
    example = "pass a checkpoint folder (e.g. runs/stage_3/final)"
    if not folder.exists():
        raise FileNotFoundError(f"{what} {folder} does not exist; {example}")
    if not folder.is_dir():
        raise FileNotFoundError(f"{what} {folder} is a file; {example}")
    missing = [n for n in (ckpt.CONFIG_FILE, ckpt.WEIGHTS_FILE) if not (folder / n).is_file()]
    if missing:
        found = "it is empty" if not any(folder.iterdir()) else f"it has no {' or '.join(missing)}"
        hint = " (a run folder: name one of its checkpoints)" if (folder / ckpt.LATEST_FILE).is_file() else ""
        raise FileNotFoundError(f"{what} {folder} is not a checkpoint: {found}{hint}; {example}")


def is_merged_folder(folder: Path) -> bool:
    """True for a folder a previous merge wrote (its meta.json names what it was merged from)."""
    try:
        return MERGED_MARKER in json.loads((Path(folder) / ckpt.META_FILE).read_text())
    except (OSError, ValueError, TypeError):
        return False


def check_merge_target(ckpt_dir: Path, out_dir: Path, overwrite: bool = False) -> None:
    """Refuse an output folder that would overwrite the input, its run's checkpoints or unrelated files.

    Args:
        ckpt_dir: the checkpoint being merged.
        out_dir: `--output-dir`.
        overwrite: replace a non-empty folder that is not a previous merge.

    Raises:
        ValueError: output equal to, inside or containing the checkpoint, or inside one of its run's checkpoints;
            a file; a non-empty non-merge folder without `overwrite`.
    """
    source, target = Path(ckpt_dir).resolve(), Path(out_dir).resolve()
    fix = "choose an --output-dir outside the training run's checkpoints (e.g. checkpoints/nextgpt-merged)"
    if target == source or source in target.parents:
        raise ValueError(f"--output-dir {out_dir} is inside the checkpoint being merged ({ckpt_dir}); {fix}")
    if target in source.parents:
        raise ValueError(f"--output-dir {out_dir} contains the checkpoint being merged ({ckpt_dir}); {fix}")
    run_dir = source.parent
    for sibling in run_dir.iterdir() if (run_dir / ckpt.LATEST_FILE).is_file() else ():
        is_checkpoint = sibling.name.startswith(("step-", ".step-", ".final")) or sibling.name == "final"
        if is_checkpoint and (target == sibling or sibling in target.parents):
            raise ValueError(f"--output-dir {out_dir} is a checkpoint of the run {run_dir}; {fix}")
    if target.exists() and not target.is_dir():
        raise ValueError(f"--output-dir {out_dir} is a file; pass a folder path")
    if target.is_dir() and any(target.iterdir()) and not is_merged_folder(target) and not overwrite:
        raise ValueError(
            f"--output-dir {out_dir} already holds files and is not a merged folder; choose another folder or pass "
            "--overwrite to replace it"
        )


def merge_checkpoint(
    ckpt_dir: Path, out_dir: Path, overrides: list[str] | tuple[str, ...] = (), overwrite: bool = False
) -> Path:
    """Merge a stage-3 (LoRA) checkpoint into a standalone folder, written atomically.

    The folder is assembled under a temporary name beside `out_dir` and renamed when complete; an existing `out_dir`
    (empty, a previous merge, or anything with `overwrite`) is replaced only then, so a failed merge leaves it as it
    was.

    Args:
        ckpt_dir: a checkpoint folder written by training (its manifest is verified).
        out_dir: the folder to write; never the checkpoint itself, inside it, or a checkpoint of its run.
        overrides: config overrides, e.g. `model.llm.model_path=...` when the base LLM moved.
        overwrite: replace a non-empty `out_dir` that is not a previous merge.

    Returns:
        `out_dir`.

    Raises:
        FileNotFoundError: not a checkpoint folder, or missing components.
        ValueError: a bad output folder (`check_merge_target`), a checkpoint without LoRA or a trained backbone,
            corrupt files.
    """
    ckpt_dir, out_dir = Path(ckpt_dir), Path(out_dir)
    check_checkpoint_folder(ckpt_dir)
    check_merge_target(ckpt_dir, out_dir, overwrite)
    saved = resolve_folder_config(ckpt_dir, overrides)
    if not saved.model.lora.enabled and backbone_dir(ckpt_dir) is None:
        raise ValueError(
            f"{ckpt_dir} was trained without LoRA (model.lora.enabled is false): there is nothing to merge; pass it to "
            "predict.py as it is, or merge a stage-3 checkpoint"
        )
    # LoRA merges into the base weights in float: a QLoRA run's base is reloaded unquantized (merging into 4/8-bit
    # weights would round the merged weights again); the merged folder keeps the run's quantization for loading.
    model, cfg = load_model_from_folder(ckpt_dir, [*overrides, UNQUANTIZED], load_encoder=False)
    llm_cfg = dataclasses.replace(cfg.model.llm, quantization=saved.model.llm.quantization)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, llm=llm_cfg))
    staging = out_dir.with_name(f".{out_dir.name}.merging-{os.getpid()}")
    try:
        _write_merged(model, cfg, ckpt_dir, staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    ckpt.replace_folder(staging, out_dir)
    logger.info("merged %s into %s", ckpt_dir, out_dir)
    return out_dir


def _write_merged(model: NextGPT, cfg: Config, ckpt_dir: Path, out_dir: Path) -> None:
    """The merged folder's files (see the module docstring), written into `out_dir`."""
    # 1. Project weights (projectors + token rows) keep their canonical names; LoRA goes into the LLM itself.
    out_dir.mkdir(parents=True)
    # Changed base vocabulary rows (legacy checkpoints) live in llm/ once folded, not twice.
    state = {
        k: v.contiguous().cpu()
        for k, v in project_state_dict(model).items()
        if "lora_" not in k and not k.endswith(f".{BASE_ROWS_NAME}")
    }
    save_file(state, str(out_dir / ckpt.WEIGHTS_FILE))
    # 2. The standalone LLM folder.
    save_merged_llm(model.llm, model.tokenizer, out_dir / MERGED_LLM_DIR)
    # 3. A config that needs no base LLM and no peft.
    merged_cfg = dataclasses.replace(
        absolute_paths(cfg, Path.cwd()),
        model=dataclasses.replace(
            cfg.model,
            llm=dataclasses.replace(cfg.model.llm, model_path=Path(MERGED_LLM_DIR)),
            lora=dataclasses.replace(cfg.model.lora, enabled=False),
        ),
    )
    save_config(merged_cfg, out_dir / ckpt.CONFIG_FILE)
    meta = {
        MERGED_MARKER: str(Path(ckpt_dir).absolute()),
        "base_llm": str(Path(cfg.model.llm.model_path).absolute()),
        "stage": cfg.train.stage,
    }
    (out_dir / ckpt.META_FILE).write_text(json.dumps(meta, indent=2))
    write_manifest(out_dir)
