"""Image decoder: a frozen Stable Diffusion pipeline (SD-1.5: 77x768, SD-2: 77x1024) fed `prompt_embeds`.

decoder = ImageDecoder.from_pretrained(cfg.model.decoders.image)
targets = decoder.encode_captions(["a red bus"])           # (1, 77, 768)
images = decoder.generate(targets, seed=0)                 # [uint8 (512, 512, 3)]
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import StableDiffusionPipeline
from torch import Tensor

from nextgpt.constants import Modality
from nextgpt.decoders.clip import ClipDecoder, convert_to_uint8
from nextgpt.decoders.inputs import check_media_batch

logger = logging.getLogger(__name__)


class ImageDecoder(ClipDecoder):
    """Stable Diffusion text-to-image pipeline conditioned through `prompt_embeds` (B, 77, D)."""

    modality = Modality.IMAGE
    pipeline_class = StableDiffusionPipeline

    @classmethod
    def extra_load_kwargs(cls, pipeline_path: Path) -> dict[str, Any]:
        """Skip the safety checker when the folder has none (instead of requiring one)."""
        if (pipeline_path / "safety_checker").is_dir():
            return {}
        return {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}

    def collect_media(self, output: Any) -> list[np.ndarray]:
        """B uint8 images (H, W, 3) from the pipeline's float `images`."""
        return [convert_to_uint8(image) for image in output.images]

    @torch.no_grad()
    def encode_latents(self, target: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Scaled VAE latents (B, C, H / f, W / f) of pixels (B, 3, H, W) in [-1, 1] from `prepare_image_target`."""
        check_media_batch(target, ("B", 3, "H", "W"), self.modality, "prepare_image_target")
        return self.encode_vae_latents(target, generator)
