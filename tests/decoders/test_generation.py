"""Generation through `prompt_embeds`: equivalence with the pipelines' own text path, outputs, input checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nextgpt.decoders import AudioDecoder, ImageDecoder, VideoDecoder

CAPTIONS = ["a red bus on a bridge", "two cats asleep on a sofa"]


def _as_uint8(pixels: np.ndarray) -> np.ndarray:
    return (pixels * 255).round().astype(np.uint8)


@pytest.mark.numerics
def test_image_embeddings_match_pipeline_text_path(image_decoder: ImageDecoder) -> None:
    embeds = image_decoder.encode_captions(CAPTIONS)
    ours = image_decoder.generate(embeds, seed=3, guidance_scale=7.5)
    reference = image_decoder.pipeline(
        prompt=CAPTIONS,
        num_inference_steps=2,
        guidance_scale=7.5,
        height=32,
        width=32,
        generator=torch.Generator().manual_seed(3),
        output_type="np",
    ).images
    np.testing.assert_array_equal(np.stack(ours), _as_uint8(reference))
    assert not np.array_equal(ours[0], ours[1])  # the conditioning reaches the output


@pytest.mark.numerics
def test_video_embeddings_match_pipeline_text_path(video_decoder: VideoDecoder) -> None:
    embeds = video_decoder.encode_captions(CAPTIONS)
    ours = video_decoder.generate(embeds, seed=5, guidance_scale=9.0)
    reference = video_decoder.pipeline(
        prompt=CAPTIONS,
        num_inference_steps=2,
        guidance_scale=9.0,
        height=32,
        width=32,
        num_frames=4,
        generator=torch.Generator().manual_seed(5),
        output_type="np",
    ).frames
    np.testing.assert_array_equal(np.stack(ours), _as_uint8(np.asarray(reference)))
    assert not np.array_equal(ours[0], ours[1])


@pytest.mark.numerics
def test_audio_embeddings_match_pipeline_text_path(audio_decoder: AudioDecoder) -> None:
    embeds = audio_decoder.encode_captions(CAPTIONS)
    ours = audio_decoder.generate(embeds, seed=7, guidance_scale=2.5, audio_seconds=1.0)
    reference = audio_decoder.pipeline(
        prompt=CAPTIONS,
        num_inference_steps=2,
        guidance_scale=2.5,
        audio_length_in_s=1.0,
        generator=torch.Generator().manual_seed(7),
        output_type="np",
    ).audios
    np.testing.assert_allclose(np.stack(ours), reference, rtol=0, atol=1e-6)
    assert not np.allclose(ours[0], ours[1])


@pytest.mark.numerics
def test_encode_captions_shapes_and_norm(
    image_decoder: ImageDecoder, video_decoder: VideoDecoder, audio_decoder: AudioDecoder
) -> None:
    assert image_decoder.encode_captions(CAPTIONS).shape == (2, 77, 32)
    assert video_decoder.encode_captions(CAPTIONS).shape == (2, 77, 24)
    audio_embeds = audio_decoder.encode_captions(CAPTIONS)
    assert audio_embeds.shape == (2, 16)
    torch.testing.assert_close(audio_embeds.norm(dim=-1), torch.ones(2))


def test_long_caption_is_truncated_with_warning(image_decoder: ImageDecoder, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="nextgpt.decoders.base"):
        embeds = image_decoder.encode_captions(["word " * 200])
    assert embeds.shape == (1, 77, 32)
    assert "truncated" in caplog.text


def test_encode_captions_rejects_empty(image_decoder: ImageDecoder) -> None:
    with pytest.raises(ValueError, match="non-empty list of str"):
        image_decoder.encode_captions([])


def test_image_output_format_and_size_override(image_decoder: ImageDecoder) -> None:
    embeds = torch.randn(3, 77, 32)
    images = image_decoder.generate(embeds, seed=0)
    assert len(images) == 3
    assert all(im.dtype == np.uint8 and im.shape == (32, 32, 3) for im in images)
    (wide,) = image_decoder.generate(embeds[:1], seed=0, height=24, width=40, num_inference_steps=1)
    assert wide.shape == (24, 40, 3)


def test_video_output_format(video_decoder: VideoDecoder) -> None:
    videos = video_decoder.generate(torch.randn(2, 77, 24), seed=0)
    assert len(videos) == 2
    assert all(v.dtype == np.uint8 and v.shape == (4, 32, 32, 3) for v in videos)
    (short,) = video_decoder.generate(torch.randn(1, 77, 24), num_frames=2, height=16, width=24)
    assert short.shape == (2, 16, 24, 3)


@pytest.mark.parametrize("seconds", [0.5, 1.0, 1.5, 2.0])
def test_audio_output_format(audio_decoder: AudioDecoder, seconds: float) -> None:
    waves = audio_decoder.generate(torch.randn(2, 16), seed=0, audio_seconds=seconds)
    assert audio_decoder.sample_rate == 16000
    assert len(waves) == 2
    assert all(w.dtype == np.float32 and w.shape == (int(seconds * 16000),) for w in waves)
    assert all(np.isfinite(w).all() for w in waves)


@pytest.mark.numerics
def test_audio_conditioning_is_normalised(audio_decoder: AudioDecoder) -> None:
    embeds = torch.randn(1, 16)
    (raw,) = audio_decoder.generate(embeds, seed=1, audio_seconds=0.5)
    (scaled,) = audio_decoder.generate(embeds * 7.0, seed=1, audio_seconds=0.5)
    np.testing.assert_allclose(raw, scaled, atol=1e-6)


def test_seed_controls_noise(image_decoder: ImageDecoder) -> None:
    embeds = torch.randn(1, 77, 32)
    first, second, other = (image_decoder.generate(embeds, seed=s)[0] for s in (11, 11, 12))
    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first, other)


@pytest.mark.parametrize(
    ("fixture", "bad_shape", "message"),
    [
        (
            "image_decoder",
            (2, 77, 1024),
            r"image decoder expects prompt_embeds \(B, 77, 32\), got \(2, 77, 1024\); "
            r"check model\.output_projectors\.image\.out_dim",
        ),
        ("image_decoder", (2, 4, 32), r"got \(2, 4, 32\); check model\.output_projectors\.image\.num_queries$"),
        ("video_decoder", (1, 77, 32), r"video decoder expects prompt_embeds \(B, 77, 24\)"),
        ("audio_decoder", (2, 1, 16), r"audio decoder expects prompt_embeds \(B, 16\), got \(2, 1, 16\)"),
        ("audio_decoder", (2, 512), r"check model\.output_projectors\.audio\.out_dim"),
    ],
)
def test_conditioning_shape_errors(
    request: pytest.FixtureRequest, fixture: str, bad_shape: tuple[int, ...], message: str
) -> None:
    decoder = request.getfixturevalue(fixture)
    with pytest.raises(ValueError, match=message):
        decoder.check_conditioning(torch.zeros(bad_shape))
    with pytest.raises(ValueError, match=message):
        decoder.generate(torch.zeros(bad_shape))


def test_bad_generation_options(image_decoder: ImageDecoder, audio_decoder: AudioDecoder) -> None:
    with pytest.raises(
        ValueError, match=r"height to be a positive multiple of 8, got 30; set model\.decoders\.image\.height"
    ):
        image_decoder.generate(torch.zeros(1, 77, 32), height=30)
    with pytest.raises(ValueError, match="num_inference_steps >= 1"):
        image_decoder.generate(torch.zeros(1, 77, 32), num_inference_steps=0)
    with pytest.raises(ValueError, match="audio_seconds > 0"):
        audio_decoder.generate(torch.zeros(1, 16), audio_seconds=0.0)
