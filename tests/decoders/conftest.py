"""Tiny decoder pipelines written once per session, and the three loaded decoders built on them."""

from __future__ import annotations

from pathlib import Path

import pytest

from nextgpt.config import DecoderConfig
from nextgpt.constants import Modality
from nextgpt.decoders import AudioDecoder, ImageDecoder, VideoDecoder, load_decoder
from nextgpt.tiny.decoders import write_tiny_decoders

TINY_DIMS: dict[Modality, int] = {Modality.IMAGE: 32, Modality.VIDEO: 24, Modality.AUDIO: 16}
"""Conditioning widths of configs/tiny.yaml."""


@pytest.fixture(scope="session")
def tiny_decoder_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[Modality, Path]:
    """The three tiny pipeline folders (sd/, zeroscope/, audioldm/)."""
    root = tmp_path_factory.mktemp("tiny_decoders")
    return write_tiny_decoders(
        root,
        image_dim=TINY_DIMS[Modality.IMAGE],
        video_dim=TINY_DIMS[Modality.VIDEO],
        audio_dim=TINY_DIMS[Modality.AUDIO],
    )


@pytest.fixture(scope="session")
def tiny_decoder_cfgs(tiny_decoder_dirs: dict[Modality, Path]) -> dict[Modality, DecoderConfig]:
    """Decoder configs as in configs/tiny.yaml, pointing at the session's folders."""
    return {
        Modality.IMAGE: DecoderConfig(
            pipeline_path=tiny_decoder_dirs[Modality.IMAGE], num_inference_steps=2, height=32, width=32
        ),
        Modality.VIDEO: DecoderConfig(
            pipeline_path=tiny_decoder_dirs[Modality.VIDEO], num_inference_steps=2, height=32, width=32, num_frames=4
        ),
        Modality.AUDIO: DecoderConfig(
            pipeline_path=tiny_decoder_dirs[Modality.AUDIO],
            num_inference_steps=2,
            guidance_scale=2.5,
            audio_seconds=1.0,
        ),
    }


@pytest.fixture(scope="session")
def image_decoder(tiny_decoder_cfgs: dict[Modality, DecoderConfig]) -> ImageDecoder:
    return load_decoder(Modality.IMAGE, tiny_decoder_cfgs[Modality.IMAGE], expected_dim=TINY_DIMS[Modality.IMAGE])


@pytest.fixture(scope="session")
def video_decoder(tiny_decoder_cfgs: dict[Modality, DecoderConfig]) -> VideoDecoder:
    return load_decoder(Modality.VIDEO, tiny_decoder_cfgs[Modality.VIDEO], expected_dim=TINY_DIMS[Modality.VIDEO])


@pytest.fixture(scope="session")
def audio_decoder(tiny_decoder_cfgs: dict[Modality, DecoderConfig]) -> AudioDecoder:
    return load_decoder(Modality.AUDIO, tiny_decoder_cfgs[Modality.AUDIO], expected_dim=TINY_DIMS[Modality.AUDIO])
