"""Tiny decoder text encoders: pretrained, they give the world's captions clearly different stage-2 targets.

The checks read the caption embeddings through the decoders' own `encode_captions` (what preprocess_embeddings.py
caches), on the session's tiny tree (built with pretraining) and on freshly written random pipelines.
"""

from __future__ import annotations

import dataclasses
import filecmp
import shutil
from pathlib import Path

import pytest
import torch

from nextgpt.config import Config
from nextgpt.constants import MODALITIES, Modality
from nextgpt.tiny import data as world
from nextgpt.tiny.decoders import PIPELINE_DIR_NAMES
from nextgpt.tiny.pretrain_encoder import ATTRIBUTE_VALUES, enumerate_world_attrs, mean_cosine_between_captions
from nextgpt.tiny.pretrain_text_encoders import embed_captions, pretrain_tiny_text_encoders


@pytest.fixture(scope="module")
def random_decoders(tmp_path_factory: pytest.TempPathFactory, pretrained_cfg: Config) -> Path:
    """The three tiny pipelines with random weights, as `write_tiny_decoders` leaves them before pretraining."""
    from nextgpt.tiny.decoders import write_tiny_decoders

    widths = pretrained_cfg.model.output_projectors
    out_dir = tmp_path_factory.mktemp("random_decoders")
    write_tiny_decoders(out_dir, widths.image.out_dim, widths.video.out_dim, widths.audio.out_dim, seed=0)
    return out_dir


def _load(cfg: Config, modality: Modality, pipeline_dir: Path | None = None):
    from nextgpt.decoders.base import load_decoder

    decoder_cfg = getattr(cfg.model.decoders, modality.value)
    if pipeline_dir is not None:
        decoder_cfg = dataclasses.replace(decoder_cfg, pipeline_path=pipeline_dir)
    width = getattr(cfg.model.output_projectors, modality.value).out_dim
    return load_decoder(modality, decoder_cfg, width, device="cpu")


def _world_captions(modality: Modality) -> tuple[list[str], list[dict[str, str]]]:
    attrs = enumerate_world_attrs(modality)
    return [world.caption_of(modality, a) for a in attrs], attrs


@pytest.mark.numerics
@pytest.mark.parametrize("modality", MODALITIES, ids=[m.value for m in MODALITIES])
def test_pretrained_text_encoders_separate_the_world_captions(
    pretrained_cfg: Config, random_decoders: Path, modality: Modality
) -> None:
    captions, _ = _world_captions(modality)
    random_dir = random_decoders / PIPELINE_DIR_NAMES[modality]
    random = _load(pretrained_cfg, modality, random_dir).encode_captions(captions).flatten(1)
    pretrained = _load(pretrained_cfg, modality).encode_captions(captions).flatten(1)

    random_cosine = mean_cosine_between_captions(random, captions)
    pretrained_cosine = mean_cosine_between_captions(pretrained, captions)

    assert random_cosine > 0.6  # random encoders: nearly one embedding for every caption
    assert pretrained_cosine < random_cosine - 0.3
    assert pretrained_cosine < (0.5 if modality == Modality.AUDIO else 0.2)


@pytest.mark.numerics
@pytest.mark.parametrize("modality", MODALITIES, ids=[m.value for m in MODALITIES])
def test_pretrained_caption_embeddings_identify_every_attribute(pretrained_cfg: Config, modality: Modality) -> None:
    captions, attrs = _world_captions(modality)
    unit = torch.nn.functional.normalize(_load(pretrained_cfg, modality).encode_captions(captions).flatten(1), dim=-1)

    for attribute, values in ATTRIBUTE_VALUES[modality].items():
        labels = torch.tensor([values.index(a[attribute]) for a in attrs])
        centroids = torch.stack([unit[labels == v].mean(dim=0) for v in range(len(values))])  # (V, F)
        accuracy = float(((unit @ centroids.T).argmax(dim=-1) == labels).float().mean())  # (N, F) x (F, V) -> (N,)
        assert accuracy == 1.0, f"{modality.value} {attribute}: nearest-centroid accuracy {accuracy:.2f}"


@pytest.mark.numerics
@pytest.mark.parametrize("modality", MODALITIES, ids=[m.value for m in MODALITIES])
def test_embed_captions_is_what_the_decoder_caches(pretrained_cfg: Config, modality: Modality) -> None:
    captions, _ = _world_captions(modality)
    decoder = _load(pretrained_cfg, modality)

    with torch.no_grad():
        trained_on = embed_captions(decoder.pipeline, modality, captions[:5])

    torch.testing.assert_close(trained_on, decoder.encode_captions(captions[:5]).flatten(1))


def test_pretraining_rewrites_only_the_text_encoders(
    pretrained_cfg: Config, random_decoders: Path, tmp_path: Path
) -> None:
    decoders_dir = shutil.copytree(random_decoders, tmp_path / "decoders")

    result = pretrain_tiny_text_encoders(decoders_dir, num_steps=3)

    assert set(result.accuracy) == set(result.mean_cosine) == set(MODALITIES) and result.seconds > 0
    for modality in MODALITIES:
        before, after = random_decoders / PIPELINE_DIR_NAMES[modality], decoders_dir / PIPELINE_DIR_NAMES[modality]
        files = sorted(p.relative_to(before) for p in before.rglob("*") if p.is_file())
        assert files == sorted(p.relative_to(after) for p in after.rglob("*") if p.is_file())
        changed = [str(f) for f in files if not filecmp.cmp(before / f, after / f, shallow=False)]
        assert changed == ["text_encoder/model.safetensors"], modality.value
        _load(pretrained_cfg, modality, after)  # still a pipeline folder the decoders load


def test_pretraining_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="num_steps >= 1"):
        pretrain_tiny_text_encoders(tmp_path, num_steps=0)
    with pytest.raises(FileNotFoundError, match="write_tiny_decoders"):
        pretrain_tiny_text_encoders(tmp_path)
