"""What the decoders take in, checked at the boundary: the pipeline folder, captions and denoising media batches.

pipeline_path = check_pipeline_dir(Modality.IMAGE, cfg.pipeline_path, "StableDiffusionPipeline")
tokens = tokenize_captions(pipeline.tokenizer, ["a red bus"], Modality.IMAGE)
check_media_batch(pixels, ("B", 3, "H", "W"), Modality.IMAGE, "prepare_image_target")
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from torch import Tensor
from transformers import PreTrainedTokenizerBase

from nextgpt.constants import Modality

logger = logging.getLogger(__name__)


def format_shape(shape: tuple[int | str, ...]) -> str:
    """Format a shape as `(B, 77, 768)` for error messages."""
    return "(" + ", ".join(str(s) for s in shape) + ")"


def check_pipeline_dir(modality: Modality, pipeline_path: Path | None, expected_class: str) -> Path:
    """Check that `pipeline_path` is a local diffusers pipeline folder of the expected class.

    Args:
        modality: whose decoder (for the config key in messages).
        pipeline_path: `model.decoders.<modality>.pipeline_path`.
        expected_class: the `_class_name` model_index.json must carry, e.g. "StableDiffusionPipeline".

    Returns:
        The folder as a Path.

    Raises:
        FileNotFoundError: no path, no folder, or no model_index.json.
        ValueError: the folder holds another pipeline class.
    """
    key = f"model.decoders.{modality.value}.pipeline_path"
    if pipeline_path is None:
        raise FileNotFoundError(f"{modality.value} decoder needs a local {expected_class} folder, got none; set {key}")
    pipeline_path = Path(pipeline_path)
    if not pipeline_path.is_dir():
        raise FileNotFoundError(f"{modality.value} decoder folder {pipeline_path} does not exist; set {key}")
    index_path = pipeline_path / "model_index.json"
    if not index_path.is_file():
        raise FileNotFoundError(
            f"{modality.value} decoder folder {pipeline_path} has no model_index.json; "
            f"set {key} to a diffusers pipeline folder (save_pretrained layout)"
        )
    class_name = json.loads(index_path.read_text()).get("_class_name")
    if class_name != expected_class:
        raise ValueError(
            f"{modality.value} decoder expects a {expected_class} folder, got {class_name} in {index_path}; set {key}"
        )
    return pipeline_path


def tokenize_captions(tokenizer: PreTrainedTokenizerBase, texts: list[str], modality: Modality) -> Any:
    """Tokenize captions the way the diffusers pipelines do (pad and truncate to `model_max_length`).

    Args:
        tokenizer: the pipeline's tokenizer.
        texts: captions.
        modality: whose decoder (for messages).

    Returns:
        The tokenizer's batch encoding (`input_ids`, `attention_mask`) as PyTorch tensors.

    Raises:
        ValueError: `texts` is empty or not a list of strings.
    """
    if not texts or not all(isinstance(t, str) for t in texts):
        raise ValueError(f"{modality.value} decoder encode_captions expects a non-empty list of str, got {texts!r}")
    max_length = tokenizer.model_max_length
    num_too_long = sum(len(ids) > max_length for ids in tokenizer(texts).input_ids)
    if num_too_long:
        logger.warning(
            "%d of %d captions exceed the %s text encoder's %d tokens and were truncated (as the pipeline does)",
            num_too_long,
            len(texts),
            modality.value,
            max_length,
        )
    return tokenizer(texts, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")


def check_media_batch(target: Tensor, expected_shape: tuple[int | str, ...], modality: Modality, hint: str) -> None:
    """Check a denoising target's rank and channel count (RGB pixel or mel tensors).

    Args:
        target: the media batch.
        expected_shape: e.g. ("B", 3, "H", "W"); ints are checked, strings are free.
        modality: whose decoder (for messages).
        hint: which helper builds the tensor, named in the message.

    Raises:
        ValueError: wrong rank or fixed dimension.
    """
    got = tuple(target.shape)
    fixed_ok = all(isinstance(e, str) or e == g for e, g in zip(expected_shape, got, strict=False))
    if len(got) != len(expected_shape) or not fixed_ok:
        raise ValueError(
            f"{modality.value} denoising target must be {format_shape(expected_shape)}, got {format_shape(got)}; "
            f"build it with {hint}"
        )
