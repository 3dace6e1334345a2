"""Image decoder: a frozen Stable Diffusion pipeline (SD-1.5: 77x768, SD-2: 77x1024) fed `prompt_embeds`.

Also owns the CLIP caption encoding shared with the ZeroScope video decoder.

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
from diffusers import DiffusionPipeline, StableDiffusionPipeline
from torch import Tensor

from nextgpt.constants import Modality
from nextgpt.decoders.base import Decoder, check_media_batch, convert_to_uint8, tokenize_captions

logger = logging.getLogger(__name__)


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


class ImageDecoder(Decoder):
    """Stable Diffusion text-to-image pipeline conditioned through `prompt_embeds` (B, 77, D)."""

    modality = Modality.IMAGE
    pipeline_class = StableDiffusionPipeline

    @classmethod
    def extra_load_kwargs(cls, pipeline_path: Path) -> dict[str, Any]:
        """Skip the safety checker when the folder has none (instead of requiring one)."""
        if (pipeline_path / "safety_checker").is_dir():
            return {}
        return {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}

    @property
    def conditioning_shape(self) -> tuple[int, ...]:
        """(77, 768) for SD-1.5, (77, 1024) for SD-2."""
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
    ) -> list[np.ndarray]:
        """Generate one image per conditioning row (classifier-free guidance against the empty prompt).

        Args:
            prompt_embeds: (B, 77, D) from the output projector or `encode_captions`.
            num_inference_steps: default `cfg.num_inference_steps`.
            guidance_scale: default `cfg.guidance_scale`; <= 1 disables guidance.
            seed: seeds the initial latents (CPU generator); None draws fresh noise.
            height: pixels, multiple of 8; default `cfg.height`, then the pipeline's native size.
            width: pixels, multiple of 8; default `cfg.width`, then the pipeline's native size.

        Returns:
            B uint8 arrays of shape (H, W, 3).

        Raises:
            ValueError: wrong conditioning shape or size.
        """
        steps, guidance = self.resolve_sampling(num_inference_steps, guidance_scale)
        height = self.cfg.height if height is None else height
        width = self.cfg.width if width is None else width
        self.check_pixel_size(height, width)
        output = self.pipeline(
            prompt_embeds=self.prepare_conditioning(prompt_embeds.detach()),
            num_inference_steps=steps,
            guidance_scale=guidance,
            height=height,
            width=width,
            generator=self.make_generator(seed),
            output_type="np",
        )
        return [convert_to_uint8(image) for image in output.images]

    @torch.no_grad()
    def encode_latents(self, target: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """VAE latents of images (B, 3, H, W) in [-1, 1], times the VAE scaling factor.

        Args:
            target: pixels from `prepare_image_target`.
            generator: draws the posterior sample.

        Returns:
            (B, C, H / f, W / f) in the VAE's dtype.
        """
        check_media_batch(target, ("B", 3, "H", "W"), self.modality, "prepare_image_target")
        vae = self.pipeline.vae
        posterior = vae.encode(target.to(device=vae.device, dtype=vae.dtype)).latent_dist
        return posterior.sample(generator=generator) * vae.config.scaling_factor

    def predict_noise(self, noisy_latents: Tensor, timesteps: Tensor, conditioning: Tensor) -> Tensor:
        """UNet prediction with cross-attention on the conditioning (B, 77, D)."""
        unet = self.pipeline.unet
        return unet(noisy_latents.to(unet.dtype), timesteps, encoder_hidden_states=conditioning).sample
