"""What the CLIP-conditioned decoders (Stable Diffusion, ZeroScope) share: (B, 77, D) cross-attention conditioning.

Both pipelines condition their UNet on the last hidden state of a CLIP text encoder and produce pixels whose
height and width must be multiples of 8; `ClipDecoder` owns those parts, the subclasses the rest.

    class ImageDecoder(ClipDecoder): ...
    targets = decoder.encode_captions(["a red bus"])           # (1, 77, 768)
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from diffusers import DiffusionPipeline
from torch import Tensor

from nextgpt.constants import Modality
from nextgpt.decoders.base import Decoder
from nextgpt.decoders.inputs import tokenize_captions

logger = logging.getLogger(__name__)


def convert_to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Map float pixels in [0, 1] (diffusers `output_type="np"`) to uint8 the way diffusers' PIL export does."""
    return (np.clip(pixels, 0.0, 1.0) * 255).round().astype(np.uint8)


@torch.no_grad()
def encode_clip_captions(pipeline: DiffusionPipeline, texts: list[str], modality: Modality) -> Tensor:
    """Last hidden state of a pipeline's CLIP text encoder, as SD / ZeroScope compute it for `prompt`.

    Args:
        pipeline: a pipeline with `tokenizer` and a CLIP `text_encoder`.
        texts: N captions.
        modality: whose decoder (for messages).

    Returns:
        (N, model_max_length, hidden_size) in the text encoder's dtype.
    """
    tokens = tokenize_captions(pipeline.tokenizer, texts, modality)
    text_encoder = pipeline.text_encoder
    # The pipelines pass the mask only for encoders configured to use it (CLIP ones are not).
    use_mask = bool(getattr(text_encoder.config, "use_attention_mask", False))
    attention_mask = tokens.attention_mask.to(text_encoder.device) if use_mask else None
    hidden = text_encoder(tokens.input_ids.to(text_encoder.device), attention_mask=attention_mask)[0]
    return hidden.to(dtype=text_encoder.dtype)


def compute_clip_conditioning_shape(pipeline: DiffusionPipeline) -> tuple[int, int]:
    """(tokens, width) of a CLIP-conditioned pipeline: tokenizer max length x text-encoder hidden size."""
    return (int(pipeline.tokenizer.model_max_length), int(pipeline.text_encoder.config.hidden_size))


class ClipDecoder(Decoder):
    """A pipeline whose UNet cross-attends to CLIP hidden states `prompt_embeds` (B, 77, D) and outputs pixels."""

    @property
    def conditioning_shape(self) -> tuple[int, ...]:
        """(77, 768) for SD-1.5, (77, 1024) for SD-2 and ZeroScope v2."""
        return compute_clip_conditioning_shape(self.pipeline)

    def encode_captions(self, texts: list[str]) -> Tensor:
        """CLIP last hidden state of each caption, (N, 77, D), as the pipeline computes it for `prompt`.

        Args:
            texts: N captions.

        Returns:
            (N, 77, D) in the text encoder's dtype, on the pipeline's device.
        """
        return encode_clip_captions(self.pipeline, texts, self.modality)

    def predict_noise(self, noisy_latents: Tensor, timesteps: Tensor, conditioning: Tensor) -> Tensor:
        """UNet (2-D or 3-D) prediction with cross-attention on the conditioning (B, 77, D)."""
        unet = self.pipeline.unet
        return unet(noisy_latents.to(unet.dtype), timesteps, encoder_hidden_states=conditioning).sample

    def resolve_sizes(self, *, height: int | None = None, width: int | None = None) -> dict[str, Any]:
        """Fill unset pixel sizes from the config and check them (multiples of 8, as diffusers requires).

        Args:
            height: pixels; default `cfg.height`, then the pipeline's native size (SD-1.5: 512, ZeroScope 576w: 320).
            width: pixels; default `cfg.width`, then the pipeline's native size (SD-1.5: 512, ZeroScope 576w: 576).

        Returns:
            `{"height": ..., "width": ...}`; None leaves the choice to the pipeline.

        Raises:
            ValueError: a size that is not a positive multiple of 8.
        """
        height = self.cfg.height if height is None else height
        width = self.cfg.width if width is None else width
        for name, value in (("height", height), ("width", width)):
            if value is not None and (value <= 0 or value % 8 != 0):
                raise ValueError(
                    f"{self.modality.value} decoder needs {name} to be a positive multiple of 8, got {value}; "
                    f"set model.decoders.{self.modality.value}.{name}"
                )
        return {"height": height, "width": width}
