"""Where the pretrained components live: path resolution for self-contained checkpoint folders and one up-front check
that every component a command needs exists.

A checkpoint's `config.yaml` records component paths as absolute paths (resolved when it is saved) or, for what the
folder itself holds (a merged `llm/`), as paths relative to the folder; so the folder can be moved and used from any
working directory.

    cfg = absolute_paths(cfg, Path.cwd())                  # before saving config.yaml
    cfg = resolve_folder_paths(load_config(folder / "config.yaml"), folder)
    check_components(cfg.model, encoder=True, decoders=MODALITIES)   # one error naming every missing key
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from nextgpt.config_loader import ConfigError, find_config_file
from nextgpt.constants import Modality

CONFIG_FILE_FIELDS = frozenset({"train.deepspeed_config", "data.catalog_path"})
"""Path fields that may name a shipped config file (`nextgpt.config_loader.find_config_file`)."""

DECODER_CLASSES = {
    Modality.IMAGE: "StableDiffusionPipeline",
    Modality.VIDEO: "TextToVideoSDPipeline",
    Modality.AUDIO: "AudioLDMPipeline",
}


def _map_paths(obj: Any, fn, prefix: str = "") -> Any:
    """A copy of config dataclass `obj` with `fn(dotted_key, path)` applied to every Path-valued field."""
    if not dataclasses.is_dataclass(obj):
        return obj
    changes = {}
    for f in dataclasses.fields(obj):
        key = f"{prefix}.{f.name}" if prefix else f.name
        value = getattr(obj, f.name)
        if isinstance(value, Path):
            changes[f.name] = fn(key, value)
        elif dataclasses.is_dataclass(value):
            changes[f.name] = _map_paths(value, fn, key)
    return dataclasses.replace(obj, **changes)


def absolute_paths(cfg: Any, base_dir: Path) -> Any:
    """Make every relative path of `cfg` that exists under `base_dir` absolute (shipped config files included).

    Paths that do not exist are kept as written, so a later check still reports them under their key.
    """
    base_dir = Path(base_dir).absolute()

    def fix(key: str, path: Path) -> Path:
        if path.is_absolute():
            return path
        if (base_dir / path).exists():
            return (base_dir / path).resolve()
        if key in CONFIG_FILE_FIELDS:
            try:
                return find_config_file(path).resolve()
            except ConfigError:
                return path
        return path

    return _map_paths(cfg, fix)


def resolve_folder_paths(cfg: Any, folder: Path) -> Any:
    """Read the relative paths of a checkpoint folder's config as relative to that folder when they exist there."""
    folder = Path(folder).absolute()

    def fix(key: str, path: Path) -> Path:
        if path.is_absolute() or not (folder / path).exists():
            return path
        return folder / path

    return _map_paths(cfg, fix)


def missing_components(model_cfg: Any, encoder: bool, decoders: Iterable[Modality], llm: bool = True) -> list[str]:
    """One `key = value (problem)` line per component that is unset or absent.

    Args:
        model_cfg: `cfg.model`.
        encoder: whether ImageBind is needed (not when training from a feature cache).
        decoders: the modalities whose diffusers folders are needed.
        llm: whether the LLM folder is needed.
    """
    problems: list[str] = []
    if llm:
        path = model_cfg.llm.model_path
        if path is None:
            problems.append("model.llm.model_path is not set")
        elif not (Path(path) / "config.json").is_file():
            problems.append(f"model.llm.model_path = {path} (no HF model folder there)")
    if encoder:
        path = model_cfg.encoder.checkpoint_path
        if path is None:
            problems.append("model.encoder.checkpoint_path is not set")
        elif not Path(path).is_file():
            problems.append(f"model.encoder.checkpoint_path = {path} (no such file)")
    for modality in decoders:
        path = getattr(model_cfg.decoders, modality.value).pipeline_path
        key = f"model.decoders.{modality.value}.pipeline_path"
        if path is None:
            problems.append(f"{key} is not set")
        elif not (Path(path) / "model_index.json").is_file():
            problems.append(f"{key} = {path} (no diffusers {DECODER_CLASSES[modality]} folder there)")
    return problems


def check_components(model_cfg: Any, encoder: bool, decoders: Iterable[Modality], llm: bool = True) -> None:
    """Fail before any model loads when a needed component is missing, naming every one of them at once.

    Raises:
        FileNotFoundError: one line listing each missing component with its config key.
    """
    problems = missing_components(model_cfg, encoder=encoder, decoders=decoders, llm=llm)
    if problems:
        raise FileNotFoundError(
            f"{len(problems)} missing component(s): "
            + "; ".join(problems)
            + "; set the keys (key=value) to local paths"
        )
