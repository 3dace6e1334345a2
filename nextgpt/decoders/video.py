"""Video decoder: a frozen ZeroScope (`TextToVideoSDPipeline`, 77x1024 CLIP conditioning) fed `prompt_embeds`.

decoder = VideoDecoder.from_pretrained(cfg.model.decoders.video)
targets = decoder.encode_captions(["a dog runs on the beach"])   # (1, 77, 1024)
videos = decoder.generate(targets, num_frames=16, seed=0)         # [uint8 (16, 320, 576, 3)]
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from diffusers import TextToVideoSDPipeline
from torch import Tensor

from nextgpt.constants import Modality
from nextgpt.decoders.base import Decoder, check_media_batch, convert_to_uint8
from nextgpt.decoders.image import compute_clip_conditioning_shape, encode_clip_captions

logger = logging.getLogger(__name__)


class VideoDecoder(Decoder):
    """ZeroScope text-to-video pipeline conditioned through `prompt_embeds` (B, 77, D)."""

    modality = Modality.VIDEO
    pipeline_class = TextToVideoSDPipeline

    @property
    def conditioning_shape(self) -> tuple[int, ...]:
        """(77, 1024) for ZeroScope v2."""
        return compute_clip_conditioning_shape(self.pipeline)

    def encode_captions(self, texts: list[str]) -> Tensor:
        """CLIP last hidden state of each caption, (N, 77, D), as the pipeline computes it for `prompt`.

        Args:
            texts: N captions.

        Returns:
            (N, 77, D) in the text encoder's dtype, on the pipeline's device.
        """
        return encode_clip_captions(self.pipeline, texts, self.modality)

    def generate(
        self,
        prompt_embeds: Tensor,
        *,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        seed: int | None = 0,
        height: int | None = None,
        width: int | None = None,
        num_frames: int | None = None,
    ) -> list[np.ndarray]:
        """Generate one clip per conditioning row (classifier-free guidance against the empty prompt).

        Args:
            prompt_embeds: (B, 77, D) from the output projector or `encode_captions`.
            num_inference_steps: default `cfg.num_inference_steps`.
            guidance_scale: default `cfg.guidance_scale`; <= 1 disables guidance.
            seed: seeds the initial latents (CPU generator); None draws fresh noise.
            height: pixels, multiple of 8; default `cfg.height` (ZeroScope 576w: 320).
            width: pixels, multiple of 8; default `cfg.width` (ZeroScope 576w: 576).
            num_frames: default `cfg.num_frames`.

        Returns:
            B uint8 arrays of shape (F, H, W, 3).

        Raises:
            ValueError: wrong conditioning shape, size or frame count.
        """
        steps, guidance = self.resolve_sampling(num_inference_steps, guidance_scale)
        height = self.cfg.height if height is None else height
        width = self.cfg.width if width is None else width
        num_frames = self.cfg.num_frames if num_frames is None else num_frames
        self.check_pixel_size(height, width)
        if num_frames < 1:
            raise ValueError(
                f"video decoder needs num_frames >= 1, got {num_frames}; set model.decoders.video.num_frames"
            )
        output = self.pipeline(
            prompt_embeds=self.prepare_conditioning(prompt_embeds.detach()),
            num_inference_steps=steps,
            guidance_scale=guidance,
            height=height,
            width=width,
            num_frames=num_frames,
            generator=self.make_generator(seed),
            output_type="np",
        )
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
        vae = self.pipeline.vae
        frames = target.flatten(0, 1).to(device=vae.device, dtype=vae.dtype)  # (B, F, 3, H, W) -> (B*F, 3, H, W)
        latents = vae.encode(frames).latent_dist.sample(generator=generator) * vae.config.scaling_factor
        latents = latents.unflatten(0, (batch_size, num_frames))  # (B*F, C, h, w) -> (B, F, C, h, w)
        return latents.permute(0, 2, 1, 3, 4)  # (B, F, C, h, w) -> (B, C, F, h, w)

    def predict_noise(self, noisy_latents: Tensor, timesteps: Tensor, conditioning: Tensor) -> Tensor:
        """3-D UNet prediction with cross-attention on the conditioning (B, 77, D)."""
        unet = self.pipeline.unet
        return unet(noisy_latents.to(unet.dtype), timesteps, encoder_hidden_states=conditioning).sample
