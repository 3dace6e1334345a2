"""Checks of the device and the checkpoint folder that run before any weights are read.

A wrong `--device`, a folder that is not a checkpoint, a truncated weights file, a config override with a typo or a
component that moved used to fail after (or while) the LLM loaded, some with a traceback. `inspect_checkpoint` reads
only config.yaml, the components' marker files and the safetensors headers, so it answers in well under a second
even for a 7B merged folder; the full checksum check (`nextgpt.manifest`) runs when the folder is loaded.

    device = resolve_device("cuda:1")                             # raises ValueError when there is no such GPU
    cfg = inspect_checkpoint(Path("runs/stage_3/final"), ["generation.temperature=0"])
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from nextgpt.checkpoints import CONFIG_FILE, LORA_DIR, WEIGHTS_FILE, check_architecture, resolve_folder_config
from nextgpt.components import DECODER_CLASSES, check_components
from nextgpt.config import Config, ConfigError
from nextgpt.constants import MODALITIES, Modality
from nextgpt.inference.input_checks import one_line

logger = logging.getLogger(__name__)

_MAX_HEADER_BYTES = 100 * 1024 * 1024
"""safetensors refuses headers over 100 MB; a larger length field means the first bytes are damaged."""


def resolve_device(name: str | None) -> torch.device:
    """The torch device to run on, checked to exist.

    Args:
        name: "cpu", "cuda", "cuda:1", "mps"; None picks CUDA when available, else the CPU.

    Returns:
        The device.

    Raises:
        ValueError: not a device name, or a GPU that this machine does not have.
    """
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"device {name!r} is not a torch device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {name!r} asked for a GPU, but PyTorch sees none (torch.cuda.is_available() is False); "
                "use --device cpu, or check the driver and CUDA_VISIBLE_DEVICES"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(f"device {name!r}: this machine has {count} GPU(s), cuda:0 to cuda:{count - 1}")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"device {name!r}: Apple's MPS backend is not available here; use --device cpu")
    elif device.type != "cpu":
        raise ValueError(f"device {name!r} is not supported for inference; use cpu, cuda or cuda:N")
    return device


def check_safetensors_file(path: Path) -> None:
    """Check a safetensors file's header and that the file is as long as the header says (no weights are read).

    Catches truncated and overwritten files even in folders without a manifest.

    Args:
        path: a .safetensors file.

    Raises:
        ValueError: the header is unreadable or the size differs from what it describes.
    """
    path = Path(path)
    size = path.stat().st_size
    fix = "restore it from a copy or use another checkpoint"
    with open(path, "rb") as handle:
        length_bytes = handle.read(8)
        length = int.from_bytes(length_bytes, "little") if len(length_bytes) == 8 else -1
        if length < 2 or length > min(size - 8, _MAX_HEADER_BYTES):
            raise ValueError(f"{path} is not a complete safetensors file ({size} bytes, damaged header); {fix}")
        try:
            header = json.loads(handle.read(length))
            end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as err:
            raise ValueError(f"{path} has a damaged safetensors header ({one_line(err, 80)}); {fix}") from None
    if 8 + length + end != size:
        raise ValueError(
            f"{path} is {size} bytes but its header describes {8 + length + end} (truncated or overwritten); {fix}"
        )


def _not_a_checkpoint(folder: Path) -> str:
    hints = [p.name for p in (folder / "final", *sorted(folder.glob("step-*"))[-1:]) if (p / CONFIG_FILE).is_file()]
    hint = f"; did you mean {folder / hints[0]}?" if hints else ""
    return (
        f"{folder} is not a checkpoint folder (no {CONFIG_FILE}); pass a training checkpoint (runs/<stage>/final, "
        f"step-N) or a merged folder{hint}"
    )


def configured_decoders(cfg: Config) -> tuple[Modality, ...]:
    """Modalities whose decoder folder the config names (the others cannot render and are reported)."""
    return tuple(m for m in MODALITIES if getattr(cfg.model.decoders, m.value).pipeline_path is not None)


def _check_decoder_classes(cfg: Config) -> None:
    """Each configured decoder folder holds the pipeline class its modality needs (read from model_index.json)."""
    for modality in configured_decoders(cfg):
        path = Path(getattr(cfg.model.decoders, modality.value).pipeline_path)
        key = f"model.decoders.{modality.value}.pipeline_path"
        try:
            class_name = json.loads((path / "model_index.json").read_text()).get("_class_name")
        except (ValueError, AttributeError) as err:
            raise ValueError(
                f"{key} = {path}: model_index.json is unreadable ({one_line(err, 80)}); fix {key}"
            ) from None
        if class_name != DECODER_CLASSES[modality]:
            raise ValueError(f"{key} = {path} holds a {class_name}, not a {DECODER_CLASSES[modality]}; fix {key}")


def _resolve_config(folder: Path, overrides: list[str]) -> Config:
    """The folder's config with the overrides; a bad one is named (the config loader's message names only the key)."""
    try:
        resolve_folder_config(folder, [])
    except ConfigError as err:
        raise ConfigError(
            f"{folder / CONFIG_FILE} is not a valid config ({err}); restore the checkpoint's config.yaml"
        ) from None
    try:
        return resolve_folder_config(folder, overrides)
    except ConfigError as err:
        culprit = next(
            (o for i, o in enumerate(overrides) if not _applies(folder, overrides[: i + 1])), ", ".join(overrides)
        )
        raise ConfigError(f"override {culprit!r}: {err}; fix it or drop it") from None


def _applies(folder: Path, overrides: list[str]) -> bool:
    try:
        resolve_folder_config(folder, overrides)
    except ConfigError:
        return False
    return True


def inspect_checkpoint(folder: Path, overrides: Sequence[str] = ()) -> Config:
    """Check a checkpoint or merged folder without reading its weights, and return its resolved config.

    Steps: the folder and its config.yaml and weights file exist; the config and the overrides parse (unknown keys and
    bad values are named); every component it needs (LLM, ImageBind, the configured decoders) exists and each decoder
    folder holds the right pipeline class; the architecture the config describes matches the checkpoint's; every
    safetensors file the load will read has an intact header and the size the header describes.

    Args:
        folder: `runs/.../final`, a `step-N` folder or a merged folder.
        overrides: `key.sub=value` config overrides.

    Returns:
        The checkpoint's config with the overrides applied.

    Raises:
        FileNotFoundError: the folder, its config or weights, or a component is missing (all components named).
        ValueError: not a folder, a bad override, an architecture mismatch or a damaged weights file.
    """
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"checkpoint folder {folder} does not exist; check --checkpoint-dir")
    if not folder.is_dir():
        raise ValueError(f"checkpoint {folder} is a file; pass the folder that holds {CONFIG_FILE} and {WEIGHTS_FILE}")
    if not (folder / CONFIG_FILE).is_file():
        raise FileNotFoundError(_not_a_checkpoint(folder))
    if not (folder / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(
            f"{folder} has no {WEIGHTS_FILE} (the save did not finish?); use another checkpoint of the run"
        )
    cfg = _resolve_config(folder, list(overrides))
    check_components(cfg.model, encoder=True, decoders=configured_decoders(cfg))
    _check_decoder_classes(cfg)
    check_architecture(folder, cfg)
    weights = [folder / WEIGHTS_FILE, *sorted(Path(cfg.model.llm.model_path).glob("*.safetensors"))]
    if cfg.model.lora.enabled:
        weights += sorted((folder / LORA_DIR).glob("*.safetensors"))
    for path in weights:
        check_safetensors_file(path)
    return cfg
