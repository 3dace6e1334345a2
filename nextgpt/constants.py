"""Project-wide constants: modalities, media placeholders, signal-token strings, ignore index.

This is the only module that spells signal-token strings; everything else asks for them here.

    >>> signal_token_strings(Modality.IMAGE, 4)
    ['<image_00>', '<image_01>', '<image_02>', '<image_03>']
"""

from __future__ import annotations

from enum import Enum

IGNORE_INDEX = -100
"""Label value that the cross-entropy loss skips (HF convention)."""


class Modality(str, Enum):
    """A non-text modality the model reads (through ImageBind) and writes (through a decoder)."""

    IMAGE = "image"
    VIDEO = "video"
    AUDIO = "audio"


MODALITIES: tuple[Modality, ...] = (Modality.IMAGE, Modality.VIDEO, Modality.AUDIO)

PLACEHOLDERS: dict[Modality, str] = {m: f"<{m.value}>" for m in MODALITIES}
"""Text placeholders marking where an input media item is spliced (`<image>`, `<video>`, `<audio>`)."""

SENTINEL_IDS: dict[Modality, int] = {Modality.IMAGE: -200, Modality.VIDEO: -300, Modality.AUDIO: -400}
"""Negative ids standing for a media placeholder inside token-id sequences (never real vocabulary ids)."""


LEGACY_SIGNAL_STEMS: dict[Modality, str] = {Modality.IMAGE: "IMG", Modality.VIDEO: "VID", Modality.AUDIO: "AUD"}
"""Stems of the legacy release's signal tokens (`[IMG0]`, `[VID0]`, `[AUD0]`)."""


def signal_token_strings(modality: Modality, num_tokens: int, style: str = "nextgpt") -> list[str]:
    """Return the signal-token strings of one modality, e.g. `<video_00>` … `<video_23>` or `[VID0]` … `[VID23]`.

    Args:
        modality: which modality's signal tokens.
        num_tokens: how many (config `signal_tokens.num_<modality>`).
        style: `nextgpt` (the NEW code's strings) or `legacy` (the `7b_tiva_v0` release's).

    Returns:
        The token strings in order.
    """
    if style == "legacy":
        return [f"[{LEGACY_SIGNAL_STEMS[modality]}{i}]" for i in range(num_tokens)]
    return [f"<{modality.value}_{i:02d}>" for i in range(num_tokens)]


PROJECT_GROUPS = ("input_projector", "output_projectors", "lora", "token_rows")
"""Trainable groups of the project's own weights, held by every checkpoint (`nextgpt.parameters`)."""
BACKBONE_GROUPS = ("llm", "embeddings")
"""Trainable groups of the base LLM's own weights (full fine-tuning): frozen unless named, saved only when trained."""
GROUPS = PROJECT_GROUPS + BACKBONE_GROUPS
"""Every name `train.trainable` accepts."""
