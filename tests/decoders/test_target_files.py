"""Target media files → denoising-target tensors sized like the decoders render, and a loss computed on them."""

from __future__ import annotations

import pytest
import torch

from nextgpt.config import load_config
from nextgpt.constants import MODALITIES, Modality
from nextgpt.decoders.base import load_decoder
from nextgpt.decoders.denoising import compute_denoising_loss
from nextgpt.decoders.targets import build_target_loader
from nextgpt.tiny.data import write_audio, write_image, write_video


@pytest.fixture(scope="module")
def loaded(tiny_root, tiny_cfg_path):
    from nextgpt.tiny.build import tiny_path_overrides

    cfg = load_config(tiny_cfg_path, overrides=tiny_path_overrides(tiny_root))
    decoders = {
        m: load_decoder(m, getattr(cfg.model.decoders, m.value), getattr(cfg.model.output_projectors, m.value).out_dim)
        for m in MODALITIES
    }
    return cfg, decoders


def test_each_target_file_loads_at_the_decoder_size_and_trains(loaded, tmp_path):
    cfg, decoders = loaded
    paths = {Modality.IMAGE: tmp_path / "t.png", Modality.VIDEO: tmp_path / "t.mp4", Modality.AUDIO: tmp_path / "t.wav"}
    write_image(paths[Modality.IMAGE], {"colour": "red", "shape": "circle", "position": "left"})
    write_video(paths[Modality.VIDEO], {"colour": "blue", "shape": "square", "direction": "up"})
    write_audio(paths[Modality.AUDIO], {"pitch": "high", "rhythm": "beeping"})
    load = build_target_loader(decoders, cfg.model.decoders)
    image, video, audio = (load(m, paths[m]) for m in MODALITIES)
    assert image.shape == (3, 32, 32) and image.min() >= -1 and image.max() <= 1
    assert video.shape == (cfg.model.decoders.video.num_frames, 3, 32, 32)
    assert audio.shape[0] == 1 and audio.shape[2] == decoders[Modality.AUDIO].num_mel_bins
    conditioning = {
        Modality.IMAGE: torch.randn(1, 77, 32, requires_grad=True),
        Modality.VIDEO: torch.randn(1, 77, 24, requires_grad=True),
        Modality.AUDIO: torch.randn(1, 16, requires_grad=True),
    }
    for modality, target in zip(MODALITIES, (image, video, audio), strict=True):
        loss = compute_denoising_loss(decoders[modality], target[None], conditioning[modality], snr_gamma=5.0)
        loss.backward()
        assert torch.isfinite(loss) and conditioning[modality].grad is not None
