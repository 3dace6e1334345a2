"""Held-out evaluation data: which catalog datasets each metric reads, their parsed records, and their input media.

The evaluation reads the same annotation files as training, through the same record parser and media preprocessing,
only from the held-out `<name>_eval` catalog entries (see `nextgpt.tiny.data.write_synthetic_world`).

    names = EvalDatasets()
    specs = load_specs(catalog, names.captioning[Modality.IMAGE], max_items=32)
    media = load_input_media(specs[0].input_media, cfg.model.encoder)   # {Modality.IMAGE: (1, 3, 224, 224)}
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from nextgpt.config import DatasetEntryConfig, GenerationConfig, ImageBindConfig
from nextgpt.constants import MODALITIES, Modality
from nextgpt.data.records import MalformedRecordError, SampleSpec, load_records, parse_record

logger = logging.getLogger(__name__)


def _per_modality(prefixes: dict[Modality, str], suffix: str) -> dict[Modality, str]:
    return {m: f"{prefix}{suffix}" for m, prefix in prefixes.items()}


_PAIR_PREFIXES = {Modality.IMAGE: "cc3m", Modality.VIDEO: "webvid", Modality.AUDIO: "audiocap"}


@dataclass
class EvalDatasets:
    """Catalog names of the held-out datasets each metric reads (defaults: the synthetic world's `_eval` entries).

    Attributes:
        captioning: stage 1, X -> caption records (`*_comprehension` format) per input modality.
        alignment: stage 2, caption -> media records (`*_generation` format) per output modality.
        generation_requests: stage 3, text -> X requests (T2M instruction format) per output modality.
        text_requests: stage 3, requests answered with text only (no media in the reply).
        questions: stage 3, X -> text questions about an input item, with the input's modality.
        tools: tool use, held-out MLLM-Tool records (catalog kind "tool").
    """

    captioning: dict[Modality, str] = field(default_factory=lambda: _per_modality(_PAIR_PREFIXES, "_enc_eval"))
    alignment: dict[Modality, str] = field(default_factory=lambda: _per_modality(_PAIR_PREFIXES, "_dec_eval"))
    generation_requests: dict[Modality, str] = field(
        default_factory=lambda: {m: f"{m.value}_instruction_eval" for m in MODALITIES}
    )
    text_requests: tuple[str, ...] = ("alpaca_instruction_eval",)
    questions: dict[str, Modality] = field(
        default_factory=lambda: {
            "llava_instruction_eval": Modality.IMAGE,
            "videochat_instruction_eval": Modality.VIDEO,
        }
    )
    tools: tuple[str, ...] = ("tool_text_eval", "tool_image_eval", "tool_video_eval", "tool_audio_eval")


def catalog_entry(catalog: dict[str, DatasetEntryConfig], name: str) -> DatasetEntryConfig:
    """The entry `name` of the catalog.

    Raises:
        ValueError: the catalog has no such entry.
    """
    if name not in catalog:
        raise ValueError(
            f"evaluation dataset '{name}' is not in the catalog (known: {', '.join(sorted(catalog))}); write the "
            "held-out split with data/make_tiny_world.py or pass a catalog that has it"
        )
    return catalog[name]


def load_specs(catalog: dict[str, DatasetEntryConfig], name: str, max_items: int | None = None) -> list[SampleSpec]:
    """Parse the first `max_items` records of a held-out dataset (malformed ones are skipped with a warning).

    Args:
        catalog: from `load_catalog`.
        name: a catalog name, e.g. "cc3m_enc_eval".
        max_items: keep at most this many records (None: all).

    Returns:
        The parsed records, in file order.

    Raises:
        ValueError: unknown name or an unreadable annotation file.
        FileNotFoundError: the annotation file is missing.
    """
    entry = catalog_entry(catalog, name)
    records = load_records(entry.annotation_path)
    if max_items is not None:
        records = records[:max_items]
    specs = []
    for index, record in enumerate(records):
        try:
            specs.append(parse_record(record, entry))
        except MalformedRecordError as err:
            logger.warning("%s[%d] skipped from evaluation: %s", name, index, err)
    return specs


def load_input_media(
    items: Sequence[tuple[Modality, Path]], encoder_cfg: ImageBindConfig
) -> dict[Modality, torch.Tensor]:
    """Preprocess input media files for the encoder, stacked per modality in placeholder order.

    Args:
        items: (modality, path) pairs, e.g. `SampleSpec.input_media`.
        encoder_cfg: `model.encoder` (preprocessing settings).

    Returns:
        Modality -> (N, ...) encoder inputs.
    """
    from nextgpt.encoders.transforms import load_media

    tensors: dict[Modality, list[torch.Tensor]] = {}
    for modality, path in items:
        tensors.setdefault(modality, []).append(load_media(modality, path, encoder_cfg))
    return {m: torch.stack(t) for m, t in tensors.items()}  # N x (...) -> (N, ...)


def greedy_generation(cfg: GenerationConfig, max_new_tokens: int | None = None) -> GenerationConfig:
    """The run's generation settings with greedy decoding, so that every evaluation is deterministic."""
    return dataclasses.replace(cfg, temperature=0.0, max_new_tokens=max_new_tokens or cfg.max_new_tokens)
