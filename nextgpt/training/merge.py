"""Turn a stage-3 checkpoint (+ its base LLM) into a standalone folder that inference loads without peft.

The merged folder holds:
    llm/                   HF folder: LoRA merged into the weights, signal-token rows folded in, tokenizer with them
    trainable.safetensors  input/output projectors and the token rows (as in any checkpoint)
    config.yaml            the run's config with model.llm.model_path = llm (relative to the folder), every other
                           component path absolute, and LoRA off: the folder can be moved
    meta.json              where it was merged from
    manifest.json          size and SHA-256 of every file (checked when the folder is loaded)

    merge_checkpoint(Path("runs/stage_3/final"), Path("checkpoints/nextgpt-7b-merged"))
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterable
from pathlib import Path

from safetensors.torch import save_file

from nextgpt.components import absolute_paths, check_components, resolve_folder_paths
from nextgpt.config import Config, load_config, save_config
from nextgpt.config_loader import from_dict, merge_dicts, parse_override, to_dict
from nextgpt.constants import Modality
from nextgpt.llm.backbone import save_merged_llm
from nextgpt.manifest import verify_manifest, write_manifest
from nextgpt.model import NextGPT, build_nextgpt
from nextgpt.training import checkpoint as ckpt
from nextgpt.training.stages import project_state_dict

logger = logging.getLogger(__name__)

MERGED_LLM_DIR = "llm"
MERGED_MARKER = "merged_from"


def resolve_folder_config(folder: Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load a checkpoint or merged folder's config.

    Relative paths in the folder's config.yaml that exist inside the folder (a merged folder's `llm/`) are read
    relative to it; training saves every other component path absolute, so the folder works from any working
    directory and after a move. Overrides are applied afterwards, as given (relative to the current folder).
    """
    folder = Path(folder)
    saved = resolve_folder_paths(load_config(folder / ckpt.CONFIG_FILE), folder)
    data = to_dict(saved)
    for text in overrides:
        data = merge_dicts(data, parse_override(text))
    return from_dict(Config, data)


def load_model_from_folder(
    folder: Path,
    overrides: list[str] | tuple[str, ...] = (),
    load_encoder: bool = True,
    decoders: Iterable[Modality] = (),
) -> tuple[NextGPT, Config]:
    """Build NextGPT from a checkpoint folder (stage N) or a merged folder, with its weights loaded.

    Before anything loads, the folder's files are checked against its manifest and every component the caller needs
    (LLM, ImageBind when `load_encoder`, the decoders named in `decoders`) is checked to exist, all at once.

    Raises:
        FileNotFoundError: the folder lacks config.yaml or its weights, or components are missing (all named).
        CorruptCheckpointError: a file differs from the folder's manifest.
    """
    folder = Path(folder)
    if not (folder / ckpt.CONFIG_FILE).is_file():
        raise FileNotFoundError(
            f"{folder} has no {ckpt.CONFIG_FILE}; pass a checkpoint folder (e.g. runs/stage_3/final)"
        )
    verify_manifest(folder, exclude=(ckpt.DEEPSPEED_DIR,))
    cfg = resolve_folder_config(folder, overrides)
    check_components(cfg.model, encoder=load_encoder, decoders=decoders)
    model = build_nextgpt(cfg.model, load_encoder=load_encoder)
    ckpt.load_project_weights(model, folder, cfg)
    return model, cfg


def merge_checkpoint(ckpt_dir: Path, out_dir: Path, overrides: list[str] | tuple[str, ...] = ()) -> Path:
    """Merge a (LoRA) checkpoint into a standalone folder.

    Args:
        ckpt_dir: a checkpoint folder written by training.
        out_dir: the folder to write.
        overrides: config overrides, e.g. `model.llm.model_path=...` when the base LLM moved.

    Returns:
        `out_dir`.
    """
    out_dir = Path(out_dir)
    model, cfg = load_model_from_folder(ckpt_dir, overrides, load_encoder=False)
    # 1. Project weights (projectors + token rows) keep their canonical names; LoRA goes into the LLM itself.
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous().cpu() for k, v in project_state_dict(model).items() if "lora_" not in k}
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
    logger.info("merged %s into %s", ckpt_dir, out_dir)
    return out_dir
