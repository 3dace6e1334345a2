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


def signal_token_strings(modality: Modality, num_tokens: int) -> list[str]:
    """Return the signal-token strings of one modality, e.g. `<video_00>` … `<video_23>`.

    Args:
        modality: which modality's signal tokens.
        num_tokens: how many (config `signal_tokens.num_<modality>`).

    Returns:
        The token strings in order.
    """
    return [f"<{modality.value}_{i:02d}>" for i in range(num_tokens)]
