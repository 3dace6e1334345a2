"""Tiny ImageBind pretraining: the world's attribute grid, the helpers, and a short deterministic in-place run."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
import torch

from nextgpt.config import ImageBindConfig, load_config
from nextgpt.constants import MODALITIES, Modality
from nextgpt.tiny import data as world
from nextgpt.tiny.pretrain_encoder import (
    ATTRIBUTE_VALUES,
    enumerate_world_attrs,
    mean_cosine_between_captions,
    one_torch_thread,
    pretrain_tiny_imagebind,
    warmup_cosine,
)

TINY_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml"


@pytest.fixture(scope="module")
def encoder_cfg() -> ImageBindConfig:
    return load_config(TINY_CONFIG).model.encoder


@pytest.mark.parametrize(("modality", "count"), [(Modality.IMAGE, 48), (Modality.VIDEO, 48), (Modality.AUDIO, 4)])
def test_world_attrs_cover_every_combination_once(modality: Modality, count: int) -> None:
    attrs = enumerate_world_attrs(modality)

    assert len(attrs) == count
    assert len({world.caption_of(modality, a) for a in attrs}) == count
    for name, values in ATTRIBUTE_VALUES[modality].items():
        assert {a[name] for a in attrs} == set(values)
    sampled = world.sample_attrs(modality, random.Random(3))
    assert set(sampled) == set(ATTRIBUTE_VALUES[modality])
    assert all(sampled[name] in values for name, values in ATTRIBUTE_VALUES[modality].items())


def test_mean_cosine_between_captions_ignores_pairs_with_the_same_caption() -> None:
    embeddings = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0], [1.0, 1.0]])
    captions = ["a", "a", "b", "c"]

    # Pairs with different captions: (0,2) 0, (1,2) 0, (0,3) and (1,3) 1/sqrt2, (2,3) 1/sqrt2; each counted twice.
    expected = (0 + 0 + 3 / math.sqrt(2)) / 5
    assert mean_cosine_between_captions(embeddings, captions) == pytest.approx(expected)


def test_mean_cosine_between_captions_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="at least two distinct captions"):
        mean_cosine_between_captions(torch.ones(2, 3), ["a", "a"])
    with pytest.raises(ValueError, match="one caption per embedding"):
        mean_cosine_between_captions(torch.ones(3, 3), ["a", "b"])


def test_warmup_cosine_rises_then_decays_to_zero() -> None:
    factors = [warmup_cosine(step, 100, warmup_steps=10) for step in range(101)]

    assert factors[0] == pytest.approx(0.1)
    assert factors[9] == pytest.approx(1.0)
    assert factors[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:], strict=False))
    assert factors[100] == pytest.approx(0.0)


def test_one_torch_thread_restores_the_thread_count() -> None:
    before = torch.get_num_threads()
    with one_torch_thread():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_pretraining_is_deterministic_and_keeps_the_layout(encoder_cfg: ImageBindConfig, tmp_path: Path) -> None:
    from nextgpt.tiny.imagebind import write_tiny_imagebind

    paths = [write_tiny_imagebind(tmp_path / f"{name}.pth", encoder_cfg, seed=0) for name in ("a", "b")]
    original = torch.load(paths[0], weights_only=True)

    results = [pretrain_tiny_imagebind(p, encoder_cfg, num_steps=2, batch_size=2, seed=0) for p in paths]

    first, second = (torch.load(p, weights_only=True) for p in paths)
    assert list(first) == list(original)
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not torch.equal(first["modality_heads.vision.2.weight"], original["modality_heads.vision.2.weight"])
    assert not torch.equal(first["modality_heads.audio.2.weight"], original["modality_heads.audio.2.weight"])
    assert results[0].loss == results[1].loss
    assert set(results[0].accuracy) == set(MODALITIES)


def test_pretraining_rejects_bad_step_counts(encoder_cfg: ImageBindConfig, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="num_steps >= 1"):
        pretrain_tiny_imagebind(tmp_path / "missing.pth", encoder_cfg, num_steps=0)


@pytest.mark.numerics
def test_rendered_media_keep_equal_views_once_with_the_same_embedding(
    encoder_cfg: ImageBindConfig, tmp_path: Path
) -> None:
    import dataclasses

    from nextgpt.encoders.imagebind import load_imagebind
    from nextgpt.encoders.transforms import load_media
    from nextgpt.tiny.imagebind import write_tiny_imagebind
    from nextgpt.tiny.pretrain_encoder import render_world_media

    encoder_cfg = dataclasses.replace(
        encoder_cfg, checkpoint_path=write_tiny_imagebind(tmp_path / "ib.pth", encoder_cfg)
    )
    encoder = load_imagebind(encoder_cfg)
    rendered = render_world_media(encoder_cfg, (Modality.VIDEO, Modality.AUDIO))
    writers = {Modality.VIDEO: (world.write_video, "mp4"), Modality.AUDIO: (world.write_audio, "wav")}

    for modality, media in rendered.items():
        write, extension = writers[modality]
        path = tmp_path / f"item.{extension}"
        write(path, media.attrs[-1])
        full = load_media(modality, path, encoder_cfg)
        assert full.shape[0] > 1 and media.inputs[-1].shape == (1, *full.shape[1:])
        torch.testing.assert_close(encoder(modality, media.inputs[-1][None]), encoder(modality, full[None]))
