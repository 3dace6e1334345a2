"""Fixtures of the encoder tests: the tiny ImageBind file and real media written once per session.

Media: scikit-image's astronaut photo (PNG and JPEG), tones written with the stdlib `wave` module at 44.1 kHz (so
resampling runs), and MP4 files encoded with PyAV from pans over the astronaut photo.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from encoder_media import astronaut_pan, tone, write_mp4, write_wav
from PIL import Image
from skimage import data as skdata

from nextgpt.config import ImageBindConfig, load_config
from nextgpt.tiny.imagebind import write_tiny_imagebind

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def encoder_cfg(tmp_path_factory: pytest.TempPathFactory) -> ImageBindConfig:
    """configs/tiny.yaml `model.encoder` pointing at a freshly written tiny ImageBind file."""
    cfg = load_config(REPO_ROOT / "configs" / "tiny.yaml").model.encoder
    path = write_tiny_imagebind(tmp_path_factory.mktemp("imagebind") / "imagebind_tiny.pth", cfg, seed=0)
    return dataclasses.replace(cfg, checkpoint_path=path)


@pytest.fixture(scope="session")
def tiny_encoder(encoder_cfg: ImageBindConfig):
    """The tiny encoder loaded through `load_imagebind`."""
    from nextgpt.encoders.imagebind import load_imagebind

    return load_imagebind(encoder_cfg)


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real media files: photo.png/.jpg, tone_long/short/mid.wav (44.1 kHz), stereo.wav and stereo_offset.wav
    (2.5 s, so the three 2 s clips overlap), pan_long/short.mp4, counter.mp4 (frame i is uniform grey 5*i, losslessly
    encoded)."""
    root = tmp_path_factory.mktemp("media")
    photo = Image.fromarray(skdata.astronaut())
    photo.save(root / "photo.png")
    photo.resize((300, 200)).save(root / "photo.jpg", quality=95)
    write_wav(root / "tone_long.wav", tone(7.3))
    write_wav(root / "tone_short.wav", tone(1.2))
    write_wav(root / "tone_mid.wav", tone(3.7))
    write_wav(root / "stereo.wav", np.stack([tone(2.5), tone(2.5, freq=880.0)], axis=1))
    # Channels with different tones and DC offsets: the per-clip mean is large, so where clips overlap the in-place
    # centring of the official code leaves a step that a centring on copies does not.
    write_wav(root / "stereo_offset.wav", np.stack([tone(2.5) + 0.25, 0.5 * tone(2.5, freq=880.0) - 0.05], axis=1))
    write_mp4(root / "pan_long.mp4", astronaut_pan(12 * 11), fps=12)
    write_mp4(root / "pan_short.mp4", astronaut_pan(18), fps=12)
    greys = [np.full((48, 64, 3), 5 * i, dtype=np.uint8) for i in range(48)]
    write_mp4(root / "counter.mp4", greys, fps=12, lossless=True)
    return root
