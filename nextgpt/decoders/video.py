"""Video decoder: a frozen ZeroScope (`TextToVideoSDPipeline`, 77x1024 CLIP conditioning) fed `prompt_embeds`.

decoder = VideoDecoder.from_pretrained(cfg.model.decoders.video)
targets = decoder.encode_captions(["a dog runs on the beach"])   # (1, 77, 1024)
videos = decoder.generate(targets, num_frames=16, seed=0)         # [uint8 (16, 320, 576, 3)]
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from diffusers import TextToVideoSDPipeline
from torch import Tensor

from nextgpt.constants import Modality
from nextgpt.decoders.clip import ClipDecoder, convert_to_uint8
from nextgpt.decoders.inputs import check_media_batch

logger = logging.getLogger(__name__)


class VideoDecoder(ClipDecoder):
    """ZeroScope text-to-video pipeline conditioned through `prompt_embeds` (B, 77, D)."""

    modality = Modality.VIDEO
    pipeline_class = TextToVideoSDPipeline

    def resolve_sizes(
        self, *, height: int | None = None, width: int | None = None, num_frames: int | None = None
    ) -> dict[str, Any]:
        """Fill unset frame sizes and count from the config and check them.

        Args:
            height: pixels, multiple of 8; default `cfg.height` (ZeroScope 576w: 320).
            width: pixels, multiple of 8; default `cfg.width` (ZeroScope 576w: 576).
            num_frames: default `cfg.num_frames`.

        Returns:
            The pipeline's `height`, `width` and `num_frames`.

        Raises:
            ValueError: a size that is not a positive multiple of 8, or fewer than one frame.
        """
        sizes = super().resolve_sizes(height=height, width=width)
        num_frames = self.cfg.num_frames if num_frames is None else num_frames
        if num_frames < 1:
            raise ValueError(
                f"video decoder needs num_frames >= 1, got {num_frames}; set model.decoders.video.num_frames"
            )
        return {**sizes, "num_frames": num_frames}

    def collect_media(self, output: Any) -> list[np.ndarray]:
        """B uint8 clips (F, H, W, 3) from the pipeline's float `frames`."""
        return [convert_to_uint8(np.asarray(frames)) for frames in output.frames]

    @torch.no_grad()
    def encode_latents(self, target: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Per-frame VAE latents of clips (B, F, 3, H, W) in [-1, 1], laid out for the 3-D UNet.

        Args:
            target: frames from `prepare_video_target`.
            generator: draws the posterior sample.

        Returns:
            (B, C, F, H / f, W / f) in the VAE's dtype, times the VAE scaling factor.
        """
        check_media_batch(target, ("B", "F", 3, "H", "W"), self.modality, "prepare_video_target")
        batch_size, num_frames = target.shape[:2]
        frames = target.flatten(0, 1)  # (B, F, 3, H, W) -> (B*F, 3, H, W)
        latents = self.encode_vae_latents(frames, generator)  # (B*F, 3, H, W) -> (B*F, C, h, w)
        latents = latents.unflatten(0, (batch_size, num_frames))  # (B*F, C, h, w) -> (B, F, C, h, w)
        return latents.permute(0, 2, 1, 3, 4)  # (B, F, C, h, w) -> (B, C, F, h, w)
