"""Reading checkpoint folders: file names, the architecture check and loading weights into a built model.

Shared by training (init_from, resume), merging, evaluation and inference, none of which needs the training code to
read a checkpoint. Writing checkpoints lives in `nextgpt.training.checkpoint`.

    model, cfg = load_model_from_folder(Path("runs/stage_3/final"))
    load_project_weights(model, Path("runs/stage_1/final"), cfg)
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from nextgpt.components import check_components, resolve_folder_paths
from nextgpt.config import Config, load_config, to_dict
from nextgpt.config_loader import from_dict, merge_dicts, parse_override
from nextgpt.constants import Modality
from nextgpt.manifest import CorruptCheckpointError, verify_manifest
from nextgpt.model import NextGPT, build_nextgpt
from nextgpt.parameters import base_row_modules, canonical_name, parameter_group

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


MERGED_LLM_DIR = "llm"
MERGED_MARKER = "merged_from"
"""meta.json key of a merged folder: the checkpoint it was merged from."""


def backbone_dir(ckpt_dir: Path) -> Path | None:
    """A checkpoint's trained backbone (`llm/`, written by a full fine-tune; `nextgpt.training.full_finetune`), or None
    when its stage left the base LLM frozen."""
    folder = Path(ckpt_dir) / MERGED_LLM_DIR
    return folder if (folder / "config.json").is_file() else None


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
    base_rows = base_row_modules(model)
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


def resolve_folder_config(folder: Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load a checkpoint or merged folder's config.

    Relative paths in the folder's config.yaml that exist inside the folder (a merged folder's `llm/`) are read
    relative to it; training saves every other component path absolute, so the folder works from any working
    directory and after a move. Overrides are applied afterwards, as given (relative to the current folder).
    """
    folder = Path(folder)
    saved = resolve_folder_paths(load_config(folder / CONFIG_FILE), folder)
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
    if not (folder / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{folder} has no {CONFIG_FILE}; pass a checkpoint folder (e.g. runs/stage_3/final)")
    verify_manifest(folder, exclude=(DEEPSPEED_DIR,))
    cfg = resolve_folder_config(folder, overrides)
    check_components(cfg.model, encoder=load_encoder, decoders=decoders)
    model = build_nextgpt(cfg.model, load_encoder=load_encoder)
    load_project_weights(model, folder, cfg)
    return model, cfg
