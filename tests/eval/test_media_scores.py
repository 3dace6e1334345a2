"""Media scores: KL and IS on distributions with known values; CLIP score, FID and audio scores through the tiny
metric models in the published formats (a set against itself scores FID 0, and noise raises it)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from nextgpt.eval import media_scores
from nextgpt.eval.frechet import frechet_distance
from nextgpt.eval.metric_models import load_audio_classifier, load_clip, load_inception


def test_kl_and_inception_score_have_their_textbook_values():
    one_hot = torch.eye(4, dtype=torch.float64)  # four confident, distinct predictions: IS = 4
    assert media_scores.inception_score(one_hot) == pytest.approx(4.0, rel=1e-6)
    assert media_scores.inception_score(torch.full((5, 4), 0.25, dtype=torch.float64)) == pytest.approx(1.0)
    p, q = torch.tensor([[0.5, 0.5]], dtype=torch.float64), torch.tensor([[0.9, 0.1]], dtype=torch.float64)
    expected = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    assert media_scores.kl_divergence(p, q) == pytest.approx(expected, rel=1e-6)
    assert media_scores.kl_divergence(p, p) == pytest.approx(0.0, abs=1e-9)


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(6)]


@pytest.mark.slow  # pytorch-fid takes the square root of a 2048 x 2048 matrix per FID: ~25 s each on 2 cores
def test_fid_is_zero_for_a_set_against_itself_and_rises_with_noise(tiny_root: Path, images: list[np.ndarray]):
    inception = load_inception(tiny_root / "metrics" / "inception.pth")
    reference = media_scores.inception_features(inception, images)  # (6, 2048); each forward is at 299x299
    rng = np.random.default_rng(1)
    fids = [frechet_distance(reference, reference)]
    for sigma in (20.0, 60.0):
        noisy = [np.clip(i + rng.normal(0, sigma, i.shape), 0, 255).astype(np.uint8) for i in images]
        fids.append(frechet_distance(media_scores.inception_features(inception, noisy), reference))
    assert abs(fids[0]) < 1e-6 * fids[2]  # float64 statistics of identical features
    assert 0 < fids[1] < fids[2]


def test_clip_score_is_the_clamped_scaled_cosine(tiny_root: Path, images: list[np.ndarray]):
    clip = load_clip(tiny_root / "metrics" / "clip")
    captions = ["a red circle on the left"] * 3
    cosine = (clip.image_embeds(images[:3]) * clip.text_embeds(captions)).sum(-1)  # (3,)
    expected = float((100 * cosine.clamp(min=0)).mean())
    assert media_scores.clip_score(clip, images[:3], captions) == pytest.approx(expected, rel=1e-5, abs=1e-5)
    with pytest.raises(ValueError, match="one caption per image"):
        media_scores.clip_score(clip, images[:3], captions[:2])


def test_audio_scores_of_identical_clips_and_of_other_clips(tiny_root: Path):
    classifier = load_audio_classifier(tiny_root / "metrics" / "cnn14.pth")
    t = np.arange(16000) / 16000
    tones = [np.sin(2 * np.pi * f * t).astype(np.float32) * 0.5 for f in (220, 440, 880, 1760)]
    same = media_scores.audio_scores(classifier, tones, tones)
    assert abs(same["FD"]) < 1e-6 and same["KL"] == pytest.approx(0.0, abs=1e-9) and same["IS"] >= 1.0
    noise = [np.random.default_rng(i).normal(0, 0.3, 16000).astype(np.float32) for i in range(4)]
    other = media_scores.audio_scores(classifier, noise, tones)
    assert other["FD"] > 1e-3 and other["KL"] > 0
