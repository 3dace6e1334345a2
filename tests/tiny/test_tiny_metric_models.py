"""The tiny metric models: the published file formats and key layouts, at tiny widths where the graph allows."""

from __future__ import annotations

from pathlib import Path

import torch

from nextgpt.eval.metric_models import load_audio_classifier


def test_the_tiny_files_have_the_published_layouts(tiny_root: Path):
    inception_state = torch.load(tiny_root / "metrics" / "inception.pth", weights_only=True)
    assert inception_state["fc.weight"].shape == (1008, 2048)  # FID Inception: 1008 TF classes
    assert "Mixed_7c.branch3x3dbl_3a.conv.weight" in inception_state
    checkpoint = torch.load(tiny_root / "metrics" / "cnn14.pth", weights_only=True)
    assert checkpoint["model"]["logmel_extractor.melW"].shape == (257, 64)
    assert (tiny_root / "metrics" / "clip" / "model.safetensors").is_file()
    assert load_audio_classifier(tiny_root / "metrics" / "cnn14.pth").cfg.width == 4
