"""Conditional latent-denoising loss through a frozen decoder, and the target-media tensors it needs.

The loss (spec 1.11) encodes the target media with the decoder's VAE, noises the latents at random
training timesteps and asks the frozen UNet to denoise them given the projector's conditioning; the
only trainable path is the conditioning. Min-SNR-gamma weights are computed per sample.

    pixels = prepare_image_target(images_uint8, size=512)                 # (B, 3, 512, 512) in [-1, 1]
    loss = compute_denoising_loss(image_decoder, pixels, projected, snr_gamma=5.0)
    mel = compute_log_mel(waveforms, n_mel=audio_decoder.num_mel_bins)     # (B, 1, T, 64)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchaudio
from diffusers import DDPMScheduler
from PIL import Image
from torch import Tensor

from nextgpt.decoders.acceleration import run_eagerly_under_autograd
from nextgpt.decoders.base import Decoder
from nextgpt.encoders.media import to_rgb

logger = logging.getLogger(__name__)

LOG_MEL_FLOOR = 1e-5
"""Magnitude clamp before the log (AudioLDM / HiFi-GAN dynamic-range compression)."""


def compute_denoising_target(scheduler: DDPMScheduler, latents: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
    """What the UNet should predict under `scheduler.config.prediction_type`.

    Args:
        scheduler: the training scheduler.
        latents: clean latents x0.
        noise: the added noise.
        timesteps: (B,) integer train timesteps.

    Returns:
        noise ("epsilon"), the velocity ("v_prediction") or the clean latents ("sample").

    Raises:
        ValueError: any other prediction type.
    """
    prediction_type = scheduler.config.prediction_type
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    if prediction_type == "sample":
        return latents
    raise ValueError(
        f"denoising loss supports prediction_type epsilon, v_prediction or sample, got {prediction_type!r}; "
        "check the pipeline's scheduler/scheduler_config.json"
    )


def compute_min_snr_weights(scheduler: DDPMScheduler, timesteps: Tensor, snr_gamma: float) -> Tensor:
    """Per-sample Min-SNR-gamma loss weights (Hang et al. 2023), one per timestep.

    Args:
        scheduler: the training scheduler (its `alphas_cumprod` and prediction type).
        timesteps: (B,) integer train timesteps.
        snr_gamma: the clamp gamma (5 in the paper).

    Returns:
        (B,) float32 weights: min(SNR, gamma) / SNR for epsilon, / (SNR + 1) for v, unscaled for sample.
    """
    alphas_cumprod = scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()
    snr = alphas_cumprod / (1.0 - alphas_cumprod)
    clamped = snr.clamp(max=snr_gamma)
    prediction_type = scheduler.config.prediction_type
    if prediction_type == "epsilon":
        return clamped / snr
    if prediction_type == "v_prediction":
        return clamped / (snr + 1.0)
    return clamped


def compute_denoising_loss(
    decoder: Decoder,
    target: Tensor,
    conditioning: Tensor,
    snr_gamma: float | None,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Mean conditional denoising loss of a batch; gradients reach only `conditioning`.

    Random draws, in this order and all from `generator`: the VAE posterior sample, the timesteps
    (uniform in [0, num_train_timesteps)), then the Gaussian noise.

    Args:
        decoder: a frozen decoder (its VAE, UNet and scheduler config are used).
        target: media tensor: image (B, 3, H, W) in [-1, 1]; video (B, F, 3, H, W) in [-1, 1];
            audio log-mel (B, 1, T, n_mel).
        conditioning: (B, *decoder.conditioning_shape) from the output projector.
        snr_gamma: Min-SNR-gamma clamp; None for plain per-sample MSE.
        generator: makes the draws reproducible; None uses the global RNG.

    Returns:
        A float32 scalar.

    Raises:
        ValueError: wrong conditioning or target shape, batch sizes that differ, or an unknown prediction type.
    """
    prepared = decoder.prepare_conditioning(conditioning)
    if target.shape[0] != prepared.shape[0]:
        raise ValueError(
            f"{decoder.modality.value} denoising loss needs one target per conditioning row, "
            f"got {target.shape[0]} targets for {prepared.shape[0]} rows; check the batch collation"
        )
    scheduler = decoder.build_noise_scheduler()
    # Noising and targets in float32 even for half-precision decoders; the UNet casts its own input.
    latents = decoder.encode_latents(target, generator=generator).float()
    draw_device = generator.device if generator is not None else torch.device("cpu")
    timesteps = torch.randint(
        0, scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator, device=draw_device
    ).to(latents.device)
    noise = torch.randn(latents.shape, generator=generator, device=draw_device).to(latents.device)
    noisy_latents = scheduler.add_noise(latents, noise, timesteps)
    with run_eagerly_under_autograd(decoder.pipeline.unet):  # compiled gradients were wrong; see there
        prediction = decoder.predict_noise(noisy_latents, timesteps, prepared)
    expected = compute_denoising_target(scheduler, latents, noise, timesteps)
    squared_error = F.mse_loss(prediction.float(), expected.float(), reduction="none")
    per_sample = squared_error.flatten(1).mean(dim=1)  # (B, ...) -> (B,): weights apply per sample
    if snr_gamma is not None:
        per_sample = per_sample * compute_min_snr_weights(scheduler, timesteps, snr_gamma)
    return per_sample.mean()


def _to_uint8_frames(item: Any, what: str) -> np.ndarray:
    """One RGB image (PIL or uint8 (H, W, 3)) or a stack (..., H, W, 3) as a uint8 array."""
    if isinstance(item, Image.Image):
        return np.asarray(to_rgb(item))  # 16-bit images scaled to 8 bits, not clamped
    array = item.numpy() if isinstance(item, Tensor) else np.asarray(item)
    if array.dtype != np.uint8 or array.ndim < 3 or array.shape[-1] != 3:
        raise ValueError(
            f"{what} expects uint8 RGB arrays (..., H, W, 3) or PIL images, "
            f"got {array.dtype} {tuple(array.shape)}; convert with np.asarray(image.convert('RGB'))"
        )
    return array


def _resize_center_crop(frames: np.ndarray, size: tuple[int, int]) -> Tensor:
    """Resize (antialiased bilinear) so the frames cover `size`, center-crop, and map to [-1, 1]."""
    pixels = torch.from_numpy(np.array(frames)).permute(0, 3, 1, 2).float() / 255.0  # (N, H, W, 3) -> (N, 3, H, W)
    height, width = pixels.shape[-2:]
    scale = max(size[0] / height, size[1] / width)
    resized_hw = (max(size[0], round(height * scale)), max(size[1], round(width * scale)))
    if resized_hw != (height, width):
        pixels = F.interpolate(pixels, size=resized_hw, mode="bilinear", antialias=True, align_corners=False)
    top = (resized_hw[0] - size[0]) // 2
    left = (resized_hw[1] - size[1]) // 2
    pixels = pixels[:, :, top : top + size[0], left : left + size[1]]
    return (pixels * 2.0 - 1.0).clamp(-1.0, 1.0)


def _as_size(size: int | tuple[int, int]) -> tuple[int, int]:
    height, width = (size, size) if isinstance(size, int) else size
    if height <= 0 or width <= 0:
        raise ValueError(f"target size must be positive, got {size}; pass an int or (height, width)")
    return int(height), int(width)


def prepare_image_target(
    images: np.ndarray | Tensor | Sequence[Image.Image | np.ndarray], size: int | tuple[int, int]
) -> Tensor:
    """Turn RGB images into the VAE's pixel tensor: resize to cover `size`, center-crop, scale to [-1, 1].

    Args:
        images: uint8 (B, H, W, 3) array/tensor (a single (H, W, 3) image is a batch of one), or a list of
            PIL images / uint8 (H, W, 3) arrays.
        size: output side, or (height, width).

    Returns:
        (B, 3, height, width) float32 in [-1, 1].

    Raises:
        ValueError: not uint8 RGB, or an empty batch.
    """
    size_hw = _as_size(size)
    if isinstance(images, (np.ndarray, Tensor)):
        batch = _to_uint8_frames(images, "prepare_image_target")
        arrays = list(batch) if batch.ndim == 4 else [batch]
    else:
        arrays = [_to_uint8_frames(item, "prepare_image_target") for item in images]
    if not arrays or any(np.ndim(array) != 3 for array in arrays):
        raise ValueError(
            f"prepare_image_target expects a batch (B, H, W, 3) or a list of (H, W, 3) images, "
            f"got {[np.shape(a) for a in arrays]}; add a batch axis or list the images"
        )
    return torch.cat(
        [_resize_center_crop(array[None], size_hw) for array in arrays]
    )  # B x (1, 3, h, w) -> (B, 3, h, w)


def prepare_video_target(
    videos: np.ndarray | Tensor | Sequence[np.ndarray | Tensor], size: int | tuple[int, int]
) -> Tensor:
    """Turn RGB clips into per-frame VAE pixel tensors: resize to cover `size`, center-crop, scale to [-1, 1].

    Args:
        videos: uint8 (B, F, H, W, 3), or a list of uint8 (F, H, W, 3) clips with equal F.
        size: output side, or (height, width).

    Returns:
        (B, F, 3, height, width) float32 in [-1, 1].

    Raises:
        ValueError: not uint8 RGB, an empty batch, or clips with different frame counts.
    """
    size_hw = _as_size(size)
    clips = [_to_uint8_frames(clip, "prepare_video_target") for clip in videos]
    if not clips or any(clip.ndim != 4 for clip in clips):
        raise ValueError(
            f"prepare_video_target expects clips of shape (F, H, W, 3), got {[c.shape for c in clips]}; "
            "stack frames per clip"
        )
    frame_counts = sorted({clip.shape[0] for clip in clips})
    if len(frame_counts) > 1:
        raise ValueError(
            f"prepare_video_target needs clips with equal frame counts, got {frame_counts}; "
            "sample or pad every clip to the same number of frames"
        )
    return torch.stack([_resize_center_crop(clip, size_hw) for clip in clips])


def _fit_waveform_length(waveform: Tensor, num_samples: int) -> Tensor:
    """Zero-pad (silence) or cut (with a warning) the last axis to `num_samples`."""
    length = waveform.shape[-1]
    if length > num_samples:
        logger.warning("compute_log_mel: cut waveforms from %d to %d samples (num_frames)", length, num_samples)
        return waveform[..., :num_samples]
    return F.pad(waveform, (0, num_samples - length))


def compute_log_mel(
    waveform: np.ndarray | Tensor,
    n_mel: int,
    *,
    sample_rate: int = 16000,
    n_fft: int = 1024,
    hop_length: int = 160,
    win_length: int = 1024,
    f_min: float = 0.0,
    f_max: float = 8000.0,
    num_frames: int | None = None,
    normalize: bool = True,
) -> Tensor:
    """AudioLDM's log-mel spectrogram (HiFi-GAN convention) of 16 kHz waveforms.

    Reflect-pad (n_fft - hop) / 2 per side, STFT magnitude (Hann, no centering), Slaney mel filters,
    natural log after clamping at 1e-5: one frame per `hop_length` samples.

    Args:
        waveform: (T,) or (B, T) float samples at `sample_rate`.
        n_mel: mel bins; the audio decoder's `num_mel_bins` (AudioLDM: 64).
        sample_rate: waveform rate in Hz.
        n_fft: FFT size.
        hop_length: samples per frame.
        win_length: Hann window length.
        f_min: lowest mel filter edge in Hz.
        f_max: highest mel filter edge in Hz (<= sample_rate / 2).
        num_frames: pad with silence / cut the waveform to exactly this many frames (AudioLDM: 1024).
        normalize: remove the mean and scale the peak to 0.5 per waveform first, as AudioLDM's data does.

    Returns:
        (B, 1, frames, n_mel) float32.

    Raises:
        ValueError: wrong rank, a waveform shorter than the STFT padding, or f_max above Nyquist.
    """
    samples = torch.as_tensor(waveform, dtype=torch.float32)
    samples = samples[None] if samples.ndim == 1 else samples  # (T,) -> (1, T)
    if samples.ndim != 2:
        raise ValueError(
            f"compute_log_mel expects (T,) or (B, T) samples, got {tuple(samples.shape)}; squeeze channels"
        )
    if f_max > sample_rate / 2:
        raise ValueError(
            f"compute_log_mel needs f_max <= sample_rate / 2 = {sample_rate / 2}, got {f_max}; lower f_max"
        )
    if normalize:
        samples = samples - samples.mean(dim=-1, keepdim=True)
        samples = 0.5 * samples / (samples.abs().amax(dim=-1, keepdim=True) + 1e-8)
    if num_frames is not None:
        samples = _fit_waveform_length(samples, num_frames * hop_length)
    pad = (n_fft - hop_length) // 2
    if samples.shape[-1] <= pad:
        raise ValueError(
            f"compute_log_mel needs more than {pad} samples, got {samples.shape[-1]}; pass a longer clip or num_frames"
        )
    padded = F.pad(samples[:, None], (pad, pad), mode="reflect")[:, 0]  # (B, T) -> (B, T + 2 * pad)
    window = torch.hann_window(win_length, device=samples.device)
    spectrum = torch.stft(
        padded, n_fft, hop_length=hop_length, win_length=win_length, window=window, center=False, return_complex=True
    ).abs()  # (B, n_fft // 2 + 1, frames)
    mel_filters = torchaudio.functional.melscale_fbanks(
        n_fft // 2 + 1, f_min, f_max, n_mel, sample_rate, norm="slaney", mel_scale="slaney"
    ).to(samples.device)  # (n_fft // 2 + 1, n_mel)
    mel = torch.matmul(spectrum.transpose(1, 2), mel_filters)  # (B, freq, frames) -> (B, frames, n_mel)
    return torch.log(mel.clamp(min=LOG_MEL_FLOOR))[:, None]  # (B, frames, n_mel) -> (B, 1, frames, n_mel)
