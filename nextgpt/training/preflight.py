"""Every check a training run can make before it builds a model, reported together in one line.

Building the model takes from seconds (tiny) to minutes (Vicuna-7B + ImageBind-Huge); a typo in a dataset name or a
missing folder found after that wastes the wait and then shows one problem at a time. Single-field limits (lr > 0,
micro_batch_size >= 1, ...) already fail while the config loads (`TrainConfig.__post_init__`); this adds what needs
the file system or several sections: components, the catalog and its files, `train.init_from`, the DeepSpeed JSON,
the output folder and the precision/dtype pairing.

    preflight(cfg)   # raises PreflightError("3 problem(s) found before building the model: ...; ...; ...")
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from nextgpt.components import missing_components
from nextgpt.config import Config, ConfigError
from nextgpt.constants import MODALITIES
from nextgpt.manifest import CorruptCheckpointError, verify_manifest

logger = logging.getLogger(__name__)


class PreflightError(ValueError):
    """Problems found before any model was built; the message lists each with its config key and fix."""


def _precision_problems(cfg: Config) -> list[str]:
    problems = []
    if cfg.train.precision == "fp32" and cfg.model.llm.dtype != "float32":
        problems.append(
            f"model.llm.dtype={cfg.model.llm.dtype} with train.precision=fp32 mixes dtypes in one graph (DeepSpeed "
            "keeps fp32 modules only under fp32); set train.precision=bf16 for mixed precision or "
            "model.llm.dtype=float32"
        )
    if cfg.model.llm.quantization == "4bit" and cfg.train.precision == "bf16" and cfg.model.llm.dtype != "bfloat16":
        # The 4-bit layers compute in the dtype they were loaded with; DeepSpeed's bf16 cast does not reach it.
        problems.append(
            f"model.llm.quantization=4bit computes its layers in model.llm.dtype ({cfg.model.llm.dtype}), not in "
            "train.precision=bf16; set model.llm.dtype=bfloat16"
        )
    if "lora" in cfg.train.trainable and not cfg.model.lora.enabled:
        problems.append("train.trainable names lora but model.lora.enabled is false; set model.lora.enabled=true")
    return problems


def _deepspeed_problems(cfg: Config) -> list[str]:
    from nextgpt.training.engine import resolve_deepspeed_config, zero_stage

    try:
        zero_stage(resolve_deepspeed_config(cfg))
    except ConfigError as err:
        return [str(err)]
    return []


def _output_problems(output_dir: Path) -> list[str]:
    if output_dir.exists() and not output_dir.is_dir():
        return [f"train.output_dir {output_dir} is a file; set train.output_dir to a folder"]
    existing = output_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        return [f"train.output_dir {output_dir} cannot be written ({existing} is read-only for you); choose another"]
    return []


def _init_from_problems(cfg: Config) -> list[str]:
    from nextgpt.training.checkpoint import CONFIG_FILE, DEEPSPEED_DIR, WEIGHTS_FILE, check_architecture

    folder = cfg.train.init_from
    if folder is None:
        return []
    folder = Path(folder)
    key = f"train.init_from {folder}"
    if not folder.is_dir():
        return [f"{key} is not a folder; name the previous stage's checkpoint (e.g. runs/stage_1/final)"]
    missing = [n for n in (WEIGHTS_FILE, CONFIG_FILE) if not (folder / n).is_file()]
    if missing:
        return [f"{key} has no {' or '.join(missing)}; name a checkpoint folder (e.g. runs/stage_1/final)"]
    try:
        verify_manifest(folder, exclude=(DEEPSPEED_DIR,))
        check_architecture(folder, cfg)
    except (CorruptCheckpointError, ValueError) as err:
        return [f"train.init_from: {err}"]
    return []


def _data_problems(cfg: Config) -> list[str]:
    from nextgpt.data.catalog import dataset_problems, load_catalog
    from nextgpt.data.features import dataset_cache_dir, read_manifest

    try:
        catalog = load_catalog(cfg.data.catalog_path)
    except (ConfigError, FileNotFoundError, ValueError, OSError) as err:
        return [f"data.catalog_path: {err}"]
    media = cfg.data.feature_cache_dir is None
    problems = dataset_problems(list(cfg.data.datasets), catalog, media=media)
    if not media:
        for name in dict.fromkeys(cfg.data.datasets):
            if name in catalog and read_manifest(dataset_cache_dir(cfg.data.feature_cache_dir, name)) is None:
                problems.append(
                    f"data.feature_cache_dir {cfg.data.feature_cache_dir} has no cache for {name}; run "
                    f"preprocess_features.py --datasets {name} or unset data.feature_cache_dir"
                )
    return problems


def preflight_problems(cfg: Config) -> list[str]:
    """Every problem of a training config that shows without building a model, one line each."""
    problems = _precision_problems(cfg) + _output_problems(Path(cfg.train.output_dir)) + _deepspeed_problems(cfg)
    decoders = MODALITIES if cfg.model.loss.denoise_weight > 0 else ()
    encoder = cfg.data.feature_cache_dir is None
    problems += missing_components(cfg.model, encoder=encoder, decoders=decoders)
    problems += _init_from_problems(cfg)
    problems += _data_problems(cfg)
    return problems


def preflight(cfg: Config) -> None:
    """Fail before any model is built when the run cannot work.

    Raises:
        PreflightError: one line listing every problem found.
    """
    problems = preflight_problems(cfg)
    if problems:
        raise PreflightError(f"{len(problems)} problem(s) found before building the model: " + "; ".join(problems))
    logger.info("preflight passed: config, components, %d dataset(s) and output folder", len(cfg.data.datasets))
