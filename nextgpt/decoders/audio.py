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
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AudioLDMPipeline
from torch import Tensor

from nextgpt.constants import Modality
from nextgpt.decoders.base import Decoder
from nextgpt.decoders.inputs import check_media_batch, tokenize_captions

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

    def resolve_sizes(self, *, audio_seconds: float | None = None) -> dict[str, Any]:
        """Fill an unset clip length from the config and check it.

        Args:
            audio_seconds: default `cfg.audio_seconds`; the waveform has round_down(audio_seconds * sample_rate)
                samples.

        Returns:
            The pipeline's `audio_length_in_s`.

        Raises:
            ValueError: a non-positive length.
        """
        audio_seconds = self.cfg.audio_seconds if audio_seconds is None else audio_seconds
        if audio_seconds <= 0:
            raise ValueError(
                f"audio decoder needs audio_seconds > 0, got {audio_seconds}; set model.decoders.audio.audio_seconds"
            )
        return {"audio_length_in_s": audio_seconds}

    def collect_media(self, output: Any) -> list[np.ndarray]:
        """B float32 waveforms (T,) at `sample_rate` from the pipeline's `audios`."""
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
        return self.encode_vae_latents(target, generator)

    def predict_noise(self, noisy_latents: Tensor, timesteps: Tensor, conditioning: Tensor) -> Tensor:
        """UNet prediction conditioned through `class_labels` (B, D); no cross-attention context."""
        unet = self.pipeline.unet
        return unet(
            noisy_latents.to(unet.dtype), timesteps, encoder_hidden_states=None, class_labels=conditioning
        ).sample
