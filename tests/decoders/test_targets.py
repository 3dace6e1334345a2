"""Target-media tensors for the denoising loss: image / video pixels and AudioLDM log-mel spectrograms."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nextgpt.decoders import compute_log_mel, prepare_image_target, prepare_video_target

DATA_DIR = Path(__file__).resolve().parent / "data"


def _striped(height: int, width: int) -> np.ndarray:
    """Green | red | blue vertical bands; the red band is the central `height` columns when width = 2 * height."""
    image = np.zeros((height, width, 3), dtype=np.uint8)
    quarter = width // 4
    image[:, :quarter, 1] = 255
    image[:, quarter : width - quarter, 0] = 255
    image[:, width - quarter :, 2] = 255
    return image


def test_image_target_center_crops_and_scales_to_unit_range() -> None:
    pixels = prepare_image_target(_striped(32, 64)[None], 32)
    assert pixels.shape == (1, 3, 32, 32) and pixels.dtype == torch.float32
    torch.testing.assert_close(pixels[0, 0], torch.ones(32, 32))
    torch.testing.assert_close(pixels[0, 1:], -torch.ones(2, 32, 32))


def test_image_target_resizes_to_cover_and_accepts_pil() -> None:
    images = [Image.fromarray(_striped(64, 128)), Image.fromarray(np.full((20, 30, 3), 255, np.uint8))]
    pixels = prepare_image_target(images, (16, 24))
    assert pixels.shape == (2, 3, 16, 24)
    assert pixels.min() >= -1 and pixels.max() <= 1
    torch.testing.assert_close(pixels[1], torch.ones(3, 16, 24))
    assert (pixels[0, 0] > 0.99).float().mean() > 0.5  # the red centre band survives the resize


def test_image_target_scales_16bit_pil_images() -> None:
    wide = np.linspace(0, 65535, 16 * 16).round().astype(np.uint16).reshape(16, 16)
    image = Image.fromarray(wide)
    assert image.mode == "I;16"  # PIL's own convert("RGB") would clamp nearly all of it to white
    narrow = Image.fromarray(np.round(wide.astype(np.float64) * 255 / 65535).astype(np.uint8))
    torch.testing.assert_close(prepare_image_target([image], 16), prepare_image_target([narrow], 16), atol=0, rtol=0)


def test_image_target_rejects_float_pixels() -> None:
    with pytest.raises(ValueError, match=r"uint8 RGB arrays \(\.\.\., H, W, 3\) or PIL images, got float32"):
        prepare_image_target(np.zeros((1, 8, 8, 3), np.float32), 8)
    with pytest.raises(ValueError, match="uint8 RGB"):
        prepare_image_target(np.zeros((1, 8, 8, 4), np.uint8), 8)


def test_video_target_layout() -> None:
    clips = np.random.default_rng(0).integers(0, 256, size=(2, 5, 20, 30, 3), dtype=np.uint8)
    frames = prepare_video_target(clips, 16)
    assert frames.shape == (2, 5, 3, 16, 16)
    torch.testing.assert_close(frames[1, 3], prepare_image_target(clips[1, 3][None], 16)[0])


def test_video_target_needs_equal_frame_counts() -> None:
    clips = [np.zeros((4, 8, 8, 3), np.uint8), np.zeros((6, 8, 8, 3), np.uint8)]
    with pytest.raises(ValueError, match=r"equal frame counts, got \[4, 6\]"):
        prepare_video_target(clips, 8)


def _three_tones(num_samples: int) -> np.ndarray:
    t = np.arange(num_samples, dtype=np.float64) / 16000
    waves = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.1 * np.sin(2 * np.pi * 3000 * t) + 0.05 * np.sin(2 * np.pi * 6500 * t)
    return waves.astype(np.float32)


@pytest.mark.numerics
def test_log_mel_matches_the_librosa_reference() -> None:
    """Reference: librosa 0.11 filters.mel + stft(center=False) after reflect padding, as AudioLDM's data code."""
    reference = np.load(DATA_DIR / "three_tones_log_mel64.npy")
    mel = compute_log_mel(_three_tones(8000), n_mel=64, normalize=False)
    assert mel.shape == (1, 1, 50, 64)
    # Compared as magnitudes: near the 1e-5 floor float32 STFT rounding moves the log by up to ~2e-3.
    np.testing.assert_allclose(np.exp(mel[0, 0].numpy()), np.exp(reference), rtol=1e-4, atol=1e-7)
    loud = reference > math.log(1e-2)
    np.testing.assert_allclose(mel[0, 0].numpy()[loud], reference[loud], atol=1e-4)


def _slaney_mel(hz: float) -> float:
    return 3 * hz / 200 if hz < 1000 else 15 + 27 * math.log(hz / 1000) / math.log(6.4)


@pytest.mark.parametrize("tone_hz", [500.0, 1000.0, 4000.0])
def test_log_mel_peaks_at_the_tone(tone_hz: float) -> None:
    t = torch.arange(16000) / 16000
    mel = compute_log_mel(torch.sin(2 * math.pi * tone_hz * t), n_mel=64)
    assert mel.shape == (1, 1, 100, 64)
    peak = int(mel[0, 0].mean(dim=0).argmax())
    spacing = _slaney_mel(8000) / 65  # n_mel + 2 equally spaced mel points from 0 to f_max
    assert abs(peak - (_slaney_mel(tone_hz) / spacing - 1)) <= 1


@pytest.mark.numerics
def test_log_mel_normalises_amplitude_and_floors_silence() -> None:
    wave = torch.from_numpy(_three_tones(4000))
    torch.testing.assert_close(
        compute_log_mel(wave, 16).exp(), compute_log_mel(10 * wave, 16).exp(), rtol=1e-4, atol=1e-7
    )
    loud = compute_log_mel(10 * wave, 16, normalize=False)
    assert not torch.allclose(compute_log_mel(wave, 16, normalize=False), loud)
    silence = compute_log_mel(torch.zeros(2, 1600), 16)
    torch.testing.assert_close(silence, torch.full((2, 1, 10, 16), math.log(1e-5)))


def test_log_mel_num_frames_pads_and_cuts(caplog: pytest.LogCaptureFixture) -> None:
    wave = torch.from_numpy(_three_tones(16000))
    padded = compute_log_mel(wave, 16, num_frames=150)
    assert padded.shape == (1, 1, 150, 16)
    torch.testing.assert_close(padded[0, 0, 140:], torch.full((10, 16), math.log(1e-5)))
    with caplog.at_level("WARNING", logger="nextgpt.decoders.denoising"):
        cut = compute_log_mel(wave, 16, num_frames=40)
    assert cut.shape == (1, 1, 40, 16)
    assert "cut waveforms from 16000 to 6400 samples" in caplog.text


def test_log_mel_input_errors() -> None:
    with pytest.raises(ValueError, match=r"\(T,\) or \(B, T\) samples, got \(1, 2, 1000\)"):
        compute_log_mel(torch.zeros(1, 2, 1000), 16)
    with pytest.raises(ValueError, match="more than 432 samples, got 100"):
        compute_log_mel(torch.zeros(100), 16)
    with pytest.raises(ValueError, match="f_max <= sample_rate / 2"):
        compute_log_mel(torch.zeros(16000), 16, f_max=9000.0)
