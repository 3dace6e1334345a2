"""Write converted weights as an ordinary project checkpoint folder (what `save_checkpoint` writes, no model built).

Converting a released 7B checkpoint must not need the 7B LLM in memory, so the converters map keys and shapes only
and this module writes the folder: `trainable.safetensors` (canonical names), `lora/` in the peft adapter format,
`config.yaml`, `meta.json` and `manifest.json`, assembled under a temporary name and renamed when complete.
Loading the folder (`load_model_from_folder`) then checks that every tensor fits the model built from its config.

    write_converted_checkpoint(out_dir, ConvertedCheckpoint(cfg, trainable, lora, meta), overwrite=False)
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from nextgpt import checkpoints as ckpt
from nextgpt.components import absolute_paths
from nextgpt.config import Config, save_config
from nextgpt.manifest import write_manifest
from nextgpt.utils.folders import replace_folder


@dataclass
class ConvertedCheckpoint:
    """What a converter produces.

    Attributes:
        cfg: the config the weights belong to (architecture, template, signal tokens, component paths).
        trainable: canonical name -> tensor (projectors, token rows, changed base vocabulary rows).
        lora: peft adapter keys (`base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight`) -> tensor.
        meta: extra meta.json fields (where it was converted from).
    """

    cfg: Config
    trainable: dict[str, torch.Tensor]
    lora: dict[str, torch.Tensor] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


def _check_target(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not overwrite:
        raise FileExistsError(f"--output-dir {out_dir} exists and is not empty; pass --overwrite to replace it")


def write_converted_checkpoint(out_dir: Path, converted: ConvertedCheckpoint, overwrite: bool = False) -> Path:
    """Write `converted` as a checkpoint folder at `out_dir`, atomically.

    Raises:
        FileExistsError: `out_dir` holds files and `overwrite` is False.
    """
    from peft import LoraConfig

    out_dir = Path(out_dir)
    _check_target(out_dir, overwrite)
    staging = out_dir.with_name(f".{out_dir.name}.converting")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir(parents=True)
        save_file({k: v.contiguous() for k, v in converted.trainable.items()}, str(staging / ckpt.WEIGHTS_FILE))
        lora_cfg = converted.cfg.model.lora
        if lora_cfg.enabled:
            lora_dir = staging / ckpt.LORA_DIR
            adapter = LoraConfig(
                r=lora_cfg.r,
                lora_alpha=lora_cfg.alpha,
                lora_dropout=lora_cfg.dropout,
                target_modules=list(lora_cfg.target_modules),
                bias="none",
                task_type="CAUSAL_LM",
            )
            adapter.save_pretrained(str(lora_dir))
            save_file(
                {k: v.contiguous() for k, v in converted.lora.items()}, str(lora_dir / "adapter_model.safetensors")
            )
        save_config(absolute_paths(converted.cfg, Path.cwd()), staging / ckpt.CONFIG_FILE)
        meta = {"stage": converted.cfg.train.stage, "step": 0, **converted.meta}
        (staging / ckpt.META_FILE).write_text(json.dumps(meta, indent=2))
        write_manifest(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    replace_folder(staging, out_dir)
    return out_dir
