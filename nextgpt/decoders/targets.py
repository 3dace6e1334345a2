"""Read target media files (the `output_*` files of the generation datasets) into the tensors the denoising loss needs.

Sizes follow the decoder config, so training targets match what the decoder renders: images at `height × width`
(default: the pipeline's own size), videos as `num_frames` frames spread evenly over the clip, audio as the log-mel
spectrogram of `audio_seconds` at the vocoder's rate, padded or cut the way AudioLDM sizes its latents.

    load = build_target_loader(decoders, cfg.model.decoders)
    load(Modality.IMAGE, Path("data/.../000001.jpg"))  # (3, H, W) in [-1, 1]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchaudio

from nextgpt.config import DecodersConfig
from nextgpt.constants import Modality
from nextgpt.decoders.denoising import compute_log_mel, prepare_image_target, prepare_video_target
from nextgpt.encoders.media import probe_video, read_audio, read_image, read_video_frames

TargetLoader = Callable[[Modality, Path], torch.Tensor]


def default_pixel_size(decoder: Any) -> int:
    """The side a pipeline renders when no size is given: UNet sample size × VAE downscale."""
    pipeline = decoder.pipeline
    return int(pipeline.unet.config.sample_size * pipeline.vae_scale_factor)


def audio_num_frames(decoder: Any, seconds: float) -> int:
    """Spectrogram frames for `seconds` of audio, rounded up to what the VAE can downsample (AudioLDM's rule)."""
    pipeline = decoder.pipeline
    hop = math.prod(pipeline.vocoder.config.upsample_rates)
    frames = math.ceil(seconds * pipeline.vocoder.config.sampling_rate / hop)
    factor = pipeline.vae_scale_factor
    return int(math.ceil(frames / factor) * factor)


def build_target_loader(decoders: Mapping[Modality, Any], cfg: DecodersConfig) -> TargetLoader:
    """A function reading one target file of a modality into its denoising-target tensor.

    Args:
        decoders: loaded decoders (their pipelines fix default sizes, mel bins and rates).
        cfg: `model.decoders` (height / width / num_frames / audio_seconds).

    Returns:
        `load(modality, path)`: image (3, H, W), video (F, 3, H, W), audio (1, T, n_mel).
    """

    def load(modality: Modality, path: Path) -> torch.Tensor:
        decoder, dec_cfg = decoders[modality], getattr(cfg, modality.value)
        if modality is Modality.AUDIO:
            waveform, rate = read_audio(path)  # (C, N)
            waveform = waveform.mean(dim=0)
            if rate != decoder.sample_rate:
                waveform = torchaudio.functional.resample(waveform, rate, decoder.sample_rate)
            frames = audio_num_frames(decoder, dec_cfg.audio_seconds)
            mel = compute_log_mel(
                waveform[None], decoder.num_mel_bins, sample_rate=decoder.sample_rate, num_frames=frames
            )
            return mel[0]  # (1, 1, T, n_mel) -> (1, T, n_mel)
        side = default_pixel_size(decoder)
        size = (dec_cfg.height or side, dec_cfg.width or side)
        if modality is Modality.IMAGE:
            return prepare_image_target([np.asarray(read_image(path))], size)[0]  # (1, 3, H, W) -> (3, H, W)
        total = probe_video(path).num_frames
        indices = np.linspace(0, total - 1, dec_cfg.num_frames).round().astype(int).tolist()
        frames = read_video_frames(path, indices)  # (F, H, W, 3) uint8
        return prepare_video_target(frames[None], size)[0]  # (1, F, 3, H, W) -> (F, 3, H, W)

    return load
