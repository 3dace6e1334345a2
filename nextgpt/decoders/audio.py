"""Audio decoder: a frozen AudioLDM pipeline conditioned on one CLAP text vector (512 for l-full).

AudioLDM's UNet takes the conditioning as `class_labels` (no cross-attention). The model was trained on
L2-normalised CLAP embeddings, and the pipeline normalises only the embeddings it computes from text
itself; `prompt_embeds` are passed through as given. Our projector is trained towards normalised targets
(`encode_captions`) but its outputs are never exactly unit-norm, so this wrapper normalises every
conditioning it receives (generation and denoising loss alike) to keep it where the UNet was trained.

    decoder = AudioDecoder.from_pretrained(cfg.model.decoders.audio)
    targets = decoder.encode_captions(["rain on a tin roof"])        # (1, 512), unit norm
    waves = decoder.generate(targets, audio_seconds=5.0, seed=0)      # [float32 (80000,)] at 16 kHz
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AudioLDMPipeline
from torch import Tensor

from nextgpt.constants import Modality
from nextgpt.decoders.base import Decoder, check_media_batch, tokenize_captions

logger = logging.getLogger(__name__)


class AudioDecoder(Decoder):
    """AudioLDM text-to-audio pipeline conditioned through `prompt_embeds` (B, D)."""

    modality = Modality.AUDIO
    pipeline_class = AudioLDMPipeline

    @property
    def conditioning_shape(self) -> tuple[int, ...]:
        """(projection_dim,) of the CLAP text encoder: (512,) for AudioLDM."""
        return (int(self.pipeline.text_encoder.config.projection_dim),)

    @property
    def sample_rate(self) -> int:
        """Output sample rate in Hz (the vocoder's; 16 kHz for AudioLDM)."""
        return int(self.pipeline.vocoder.config.sampling_rate)

    @property
    def num_mel_bins(self) -> int:
        """Mel bins of the spectrograms the VAE encodes and the vocoder reads (64 for AudioLDM)."""
        return int(self.pipeline.vocoder.config.model_in_dim)

    def prepare_conditioning(self, embeds: Tensor) -> Tensor:
        """Check, L2-normalise (see the module docstring) and move `embeds` to the pipeline's device and dtype.

        Args:
            embeds: (B, D) from the output projector or `encode_captions`.

        Returns:
            Unit-norm (B, D), differentiable.
        """
        self.check_conditioning(embeds)
        return F.normalize(embeds.float(), dim=-1).to(device=self.device, dtype=self.dtype)

    @torch.no_grad()
    def encode_captions(self, texts: list[str]) -> Tensor:
        """L2-normalised CLAP `text_embeds` of each caption, as the pipeline computes them for `prompt`.

        Args:
            texts: N captions.

        Returns:
            (N, D) in the text encoder's dtype, on the pipeline's device.
        """
        tokens = tokenize_captions(self.pipeline.tokenizer, texts, self.modality)
        text_encoder = self.pipeline.text_encoder
        output = text_encoder(
            tokens.input_ids.to(text_encoder.device), attention_mask=tokens.attention_mask.to(text_encoder.device)
        )
        return F.normalize(output.text_embeds, dim=-1).to(dtype=text_encoder.dtype)

    def generate(
        self,
        prompt_embeds: Tensor,
        *,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        seed: int | None = 0,
        audio_seconds: float | None = None,
    ) -> list[np.ndarray]:
        """Generate one waveform per conditioning row (classifier-free guidance against the empty prompt).

        Args:
            prompt_embeds: (B, D) from the output projector or `encode_captions`; normalised here.
            num_inference_steps: default `cfg.num_inference_steps`.
            guidance_scale: default `cfg.guidance_scale` (AudioLDM: 2.5); <= 1 disables guidance.
            seed: seeds the initial latents (CPU generator); None draws fresh noise.
            audio_seconds: default `cfg.audio_seconds`.

        Returns:
            B float32 arrays of shape (round_down(audio_seconds * sample_rate),).

        Raises:
            ValueError: wrong conditioning shape or a non-positive length.
        """
        steps, guidance = self.resolve_sampling(num_inference_steps, guidance_scale)
        audio_seconds = self.cfg.audio_seconds if audio_seconds is None else audio_seconds
        if audio_seconds <= 0:
            raise ValueError(
                f"audio decoder needs audio_seconds > 0, got {audio_seconds}; set model.decoders.audio.audio_seconds"
            )
        output = self.pipeline(
            prompt_embeds=self.prepare_conditioning(prompt_embeds.detach()),
            num_inference_steps=steps,
            guidance_scale=guidance,
            audio_length_in_s=audio_seconds,
            generator=self.make_generator(seed),
            output_type="np",
        )
        return [np.asarray(wave, dtype=np.float32) for wave in output.audios]

    @torch.no_grad()
    def encode_latents(self, target: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """VAE latents of log-mel spectrograms (B, 1, T, n_mel), times the VAE scaling factor.

        Args:
            target: spectrograms from `compute_log_mel` with `n_mel=num_mel_bins`.
            generator: draws the posterior sample.

        Returns:
            (B, C, T / f, n_mel / f) in the VAE's dtype.
        """
        hint = f"compute_log_mel(waveform, n_mel={self.num_mel_bins})"
        check_media_batch(target, ("B", 1, "T", self.num_mel_bins), self.modality, hint)
        vae = self.pipeline.vae
        posterior = vae.encode(target.to(device=vae.device, dtype=vae.dtype)).latent_dist
        return posterior.sample(generator=generator) * vae.config.scaling_factor

    def predict_noise(self, noisy_latents: Tensor, timesteps: Tensor, conditioning: Tensor) -> Tensor:
        """UNet prediction conditioned through `class_labels` (B, D); no cross-attention context."""
        unet = self.pipeline.unet
        return unet(
            noisy_latents.to(unet.dtype), timesteps, encoder_hidden_states=None, class_labels=conditioning
        ).sample
