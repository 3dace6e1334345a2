"""Media files -> encoder tensors: official shapes, clip timing, short media, readers and their errors."""

from __future__ import annotations

import dataclasses
import logging
import struct
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from encoder_media import tone, write_wav
from PIL import Image

from nextgpt.config import ImageBindConfig
from nextgpt.constants import Modality
from nextgpt.encoders.imagebind import ImageBindEncoder
from nextgpt.encoders.media import read_audio, read_image, to_rgb
from nextgpt.encoders.transforms import (
    CLIP_MEAN,
    CLIP_STD,
    audio_to_fbanks,
    compute_clip_timepoints,
    load_audio,
    load_image,
    load_media,
    load_video,
)


def _unnormalise(video: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1, 1)
    return (video * std + mean) * 255.0


@pytest.mark.parametrize(
    ("duration", "num_clips", "starts"),
    [
        (10.0, 5, [0, 2, 4, 6, 8]),
        (7.0, 3, [0, Fraction(5, 2), 5]),
        (4.0, 5, [0, Fraction(1, 2), 1, Fraction(3, 2), 2]),  # overlapping clips
        (1.0, 3, [0, 0, 0]),  # shorter than one clip: the clip repeats
        (2.0, 5, [0, 0, 0, 0, 0]),
        (9.0, 1, [0]),
    ],
)
def test_clip_timepoints_follow_constant_clips_per_video(duration: float, num_clips: int, starts: list) -> None:
    timepoints = compute_clip_timepoints(duration, 2.0, num_clips)
    assert [start for start, _ in timepoints] == starts
    assert all(end - start == 2 for start, end in timepoints)


def test_image_is_224_square_clip_normalised(media_dir: Path, encoder_cfg: ImageBindConfig) -> None:
    for name in ("photo.png", "photo.jpg"):
        pixels = load_image(media_dir / name, encoder_cfg)
        assert pixels.shape == (3, 224, 224) and pixels.dtype == torch.float32
        raw = pixels * torch.tensor(CLIP_STD).view(3, 1, 1) + torch.tensor(CLIP_MEAN).view(3, 1, 1)
        assert raw.min() >= -1e-6 and raw.max() <= 1 + 1e-6 and raw.std() > 0.1


def test_audio_gives_three_normalised_fbank_clips(media_dir: Path, encoder_cfg: ImageBindConfig) -> None:
    fbanks = load_audio(media_dir / "tone_long.wav", encoder_cfg)
    assert fbanks.shape == (3, 1, 128, 204) and fbanks.dtype == torch.float32
    assert not torch.equal(fbanks[0], fbanks[1])  # the tremolo differs between clip times
    # 2 s at 16 kHz give 198 frames; the 6 padded frames are zeros before normalisation.
    pad_value = (0.0 - encoder_cfg.audio_mean) / encoder_cfg.audio_std
    torch.testing.assert_close(fbanks[..., 198:], torch.full_like(fbanks[..., 198:], pad_value))
    assert (fbanks[..., :198] - pad_value).abs().amax() > 1.0


@pytest.mark.numerics
def test_audio_is_resampled_to_16khz(media_dir: Path, encoder_cfg: ImageBindConfig, tmp_path: Path) -> None:
    native = write_wav(tmp_path / "tone16k.wav", tone(7.3, sample_rate=16000), sample_rate=16000)
    resampled, reference = load_audio(media_dir / "tone_long.wav", encoder_cfg), load_audio(native, encoder_cfg)
    assert (resampled - reference).abs().mean() < 0.05 * reference.std()


def test_short_audio_repeats_one_padded_clip(
    media_dir: Path, encoder_cfg: ImageBindConfig, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="nextgpt.encoders.transforms"):
        fbanks = load_audio(media_dir / "tone_short.wav", encoder_cfg)
    warnings = [r.getMessage() for r in caplog.records if "padded/cut to 204" in r.getMessage()]
    assert len(warnings) == 1 and "tone_short.wav" in warnings[0]
    assert fbanks.shape == (3, 1, 128, 204)
    # Every clip is the whole file. The first clip centres the shared samples in place, so the later ones subtract
    # only the float32 residue of a mean of centred samples (~1e-9), which log-mel turns into at most ~1e-4 in the
    # quietest bins; centring on copies ("average") repeats the clip exactly.
    torch.testing.assert_close(fbanks[1:], fbanks[:1].expand(2, -1, -1, -1), atol=1e-4, rtol=0)
    averaged = load_audio(media_dir / "tone_short.wav", dataclasses.replace(encoder_cfg, audio_channel_mode="average"))
    torch.testing.assert_close(averaged[1:], averaged[:1].expand(2, -1, -1, -1), atol=0, rtol=0)


def test_mid_length_audio_has_overlapping_distinct_clips(media_dir: Path, encoder_cfg: ImageBindConfig) -> None:
    fbanks = load_audio(media_dir / "tone_mid.wav", encoder_cfg)
    assert fbanks.shape == (3, 1, 128, 204)
    assert not torch.equal(fbanks[0], fbanks[2])


@pytest.mark.numerics
def test_stereo_audio_default_reads_the_first_channel(
    media_dir: Path, encoder_cfg: ImageBindConfig, tmp_path: Path
) -> None:
    waveform, rate = read_audio(media_dir / "stereo.wav")
    assert waveform.shape == (2, int(2.5 * rate)) and rate == 44100
    np.testing.assert_allclose(waveform[1].numpy(), tone(2.5, freq=880.0), atol=1e-4)
    assert encoder_cfg.audio_channel_mode == "official"
    stereo_fbanks = load_audio(media_dir / "stereo.wav", encoder_cfg)
    left = write_wav(tmp_path / "left.wav", tone(2.5))
    mixed = write_wav(tmp_path / "mixed.wav", (tone(2.5) + tone(2.5, freq=880.0)) / 2)
    assert (stereo_fbanks - load_audio(left, encoder_cfg)).abs().mean() < 0.01
    assert (stereo_fbanks - load_audio(mixed, encoder_cfg)).abs().mean() > 0.1


@pytest.mark.numerics
def test_average_channel_mode_mixes_stereo_to_mono(
    media_dir: Path, encoder_cfg: ImageBindConfig, tmp_path: Path
) -> None:
    cfg = dataclasses.replace(encoder_cfg, audio_channel_mode="average")
    stereo_fbanks = load_audio(media_dir / "stereo.wav", cfg)
    mixed = write_wav(tmp_path / "mixed.wav", (tone(2.5) + tone(2.5, freq=880.0)) / 2)
    left = write_wav(tmp_path / "left.wav", tone(2.5))
    assert (stereo_fbanks - load_audio(mixed, cfg)).abs().mean() < 0.01
    assert (stereo_fbanks - load_audio(left, cfg)).abs().mean() > 0.1


def test_channel_modes_differ_on_stereo_and_agree_on_mono(media_dir: Path, encoder_cfg: ImageBindConfig) -> None:
    average = dataclasses.replace(encoder_cfg, audio_channel_mode="average")
    stereo = media_dir / "stereo.wav"
    assert (load_audio(stereo, encoder_cfg) - load_audio(stereo, average)).abs().mean() > 0.1
    # One channel and clips that do not overlap (7.3 s): both modes do the same float operations.
    mono = media_dir / "tone_long.wav"
    torch.testing.assert_close(load_audio(mono, encoder_cfg), load_audio(mono, average), atol=0, rtol=0)


def test_official_centring_leaves_the_callers_waveform_unchanged(encoder_cfg: ImageBindConfig) -> None:
    # Already at 16 kHz (nothing is resampled into a new tensor), two channels with offsets, overlapping clips.
    left, right = tone(2.5, sample_rate=16000) + 0.25, tone(2.5, sample_rate=16000, freq=880.0) - 0.05
    waveform = torch.from_numpy(np.stack([left, right]).astype(np.float32))  # (2, 40000)
    before = waveform.clone()
    first = audio_to_fbanks(waveform, 16000, encoder_cfg)
    torch.testing.assert_close(waveform, before, atol=0, rtol=0)
    torch.testing.assert_close(audio_to_fbanks(waveform, 16000, encoder_cfg), first, atol=0, rtol=0)


def test_unknown_channel_mode_is_an_error(media_dir: Path, encoder_cfg: ImageBindConfig) -> None:
    with pytest.raises(ValueError, match="audio_channel_mode must be 'official' or 'average', got 'left'"):
        load_audio(media_dir / "stereo.wav", dataclasses.replace(encoder_cfg, audio_channel_mode="left"))


def _gradient16(side: int) -> np.ndarray:
    """(side, side) uint16 ramp over the full 16-bit range, most values not multiples of 257."""
    return np.linspace(0, 65535, side * side).round().astype(np.uint16).reshape(side, side)


def test_16bit_png_is_scaled_to_8bit_not_clipped(tmp_path: Path, encoder_cfg: ImageBindConfig) -> None:
    side = encoder_cfg.image_size  # square at the crop size, so load_image does not resample
    wide = _gradient16(side)
    Image.fromarray(wide).save(tmp_path / "ramp16.png")
    with Image.open(tmp_path / "ramp16.png") as raw:
        assert raw.mode == "I;16"
    rgb = np.asarray(read_image(tmp_path / "ramp16.png"))  # (S, S, 3) uint8
    expected = np.round(wide.astype(np.float64) * 255 / 65535).astype(np.uint8)
    np.testing.assert_array_equal(rgb, np.repeat(expected[..., None], 3, axis=2))
    assert len(np.unique(rgb)) == 256  # the full ramp, not white
    # The same picture stored in 8 bits (high byte) loads to within one 8-bit step, after CLIP normalisation.
    Image.fromarray((wide >> 8).astype(np.uint8)).save(tmp_path / "ramp8.png")
    step = 1 / 255 / min(CLIP_STD)
    diff = (load_image(tmp_path / "ramp16.png", encoder_cfg) - load_image(tmp_path / "ramp8.png", encoder_cfg)).abs()
    assert diff.max() <= step + 1e-6  # float32 rounding of the normalisation


def test_wide_integer_modes_scale_alike() -> None:
    wide = _gradient16(16)
    images = {
        "I;16": Image.frombytes("I;16", (16, 16), wide.astype("<u2").tobytes()),
        "I;16B": Image.frombytes("I;16B", (16, 16), wide.astype(">u2").tobytes()),
        "I": Image.fromarray(wide.astype(np.int32)),
    }
    expected = np.round(wide.astype(np.float64) * 255 / 65535).astype(np.uint8)
    for mode, image in images.items():
        assert image.mode == mode
        np.testing.assert_array_equal(np.asarray(to_rgb(image))[..., 0], expected, err_msg=mode)


def test_8bit_images_are_unchanged(media_dir: Path) -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(12, 10, 4), dtype=np.uint8)
    for image in (
        Image.fromarray(pixels[..., 0]),
        Image.fromarray(pixels[..., :3]),
        Image.fromarray(pixels),
        Image.fromarray(pixels[..., :3]).convert("P"),
    ):
        np.testing.assert_array_equal(np.asarray(to_rgb(image)), np.asarray(image.convert("RGB")), err_msg=image.mode)
    with Image.open(media_dir / "photo.png") as photo:
        np.testing.assert_array_equal(np.asarray(read_image(media_dir / "photo.png")), np.asarray(photo.convert("RGB")))


def _write_float_wav(path: Path, samples: np.ndarray, rate: int) -> Path:
    body = samples.astype("<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, rate, rate * 4, 4, 32)  # WAVE_FORMAT_IEEE_FLOAT, mono
    chunks = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(body)) + body
    path.write_bytes(b"RIFF" + struct.pack("<I", len(chunks)) + chunks)
    return path


def _write_flac(path: Path, samples: np.ndarray, rate: int) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("flac", rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray((samples * 32767).astype(np.int16)[None], format="s16", layout="mono")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.mark.numerics
@pytest.mark.parametrize("kind", ["pcm8", "pcm24", "pcm32", "float32", "flac"])
def test_audio_formats_decode_to_the_same_samples(tmp_path: Path, kind: str) -> None:
    samples = tone(0.5, sample_rate=22050)
    writers = {
        "pcm8": lambda p: write_wav(p.with_suffix(".wav"), samples, 22050, width=1),
        "pcm24": lambda p: write_wav(p.with_suffix(".wav"), samples, 22050, width=3),
        "pcm32": lambda p: write_wav(p.with_suffix(".wav"), samples, 22050, width=4),
        "float32": lambda p: _write_float_wav(p.with_suffix(".wav"), samples, 22050),
        "flac": lambda p: _write_flac(p.with_suffix(".flac"), samples, 22050),
    }
    waveform, rate = read_audio(writers[kind](tmp_path / kind))
    assert rate == 22050 and waveform.shape == (1, len(samples))
    np.testing.assert_allclose(waveform[0].numpy(), samples, atol=1e-2 if kind == "pcm8" else 1e-4)


def test_video_gives_fifteen_two_frame_views(media_dir: Path, encoder_cfg: ImageBindConfig) -> None:
    views = load_video(media_dir / "pan_long.mp4", encoder_cfg)
    assert views.shape == (15, 3, 2, 224, 224) and views.dtype == torch.float32
    # Frames are 96 x 64 (wider than tall): short side to 224 -> 336 x 224, crops left / center / right.
    assert not torch.equal(views[0], views[1]) and not torch.equal(views[1], views[2])
    assert not torch.equal(views[0], views[3])  # the pan moves between clips


def test_video_frames_come_from_the_clip_windows(media_dir: Path, encoder_cfg: ImageBindConfig) -> None:
    # counter.mp4: 48 frames at 12 fps (4 s); frame i is uniform grey 5*i. Clips start at 0, .5, 1, 1.5, 2 s and
    # span [ceil(12*start), ceil(12*(start+2))); the two frames of a clip are its first and last frame.
    values = _unnormalise(load_video(media_dir / "counter.mp4", encoder_cfg)).mean(dim=(1, 3, 4))  # (15, 2)
    expected_frames = [(0, 23), (6, 29), (12, 35), (18, 41), (24, 47)]
    expected = torch.tensor([[5.0 * a, 5.0 * b] for a, b in expected_frames for _ in range(3)])
    torch.testing.assert_close(values, expected, atol=2.0, rtol=0)


def test_short_video_repeats_its_only_clip(media_dir: Path, encoder_cfg: ImageBindConfig) -> None:
    views = load_video(media_dir / "pan_short.mp4", encoder_cfg)  # 1.5 s: shorter than one clip
    assert views.shape == (15, 3, 2, 224, 224)
    for clip in range(1, 5):
        torch.testing.assert_close(views[3 * clip : 3 * clip + 3], views[:3])


def test_single_center_crop(media_dir: Path, encoder_cfg: ImageBindConfig) -> None:
    cfg = dataclasses.replace(encoder_cfg, video_num_crops=1)
    one = load_video(media_dir / "pan_long.mp4", cfg)
    three = load_video(media_dir / "pan_long.mp4", encoder_cfg)
    assert one.shape == (5, 3, 2, 224, 224)
    torch.testing.assert_close(one, three[1::3])
    with pytest.raises(ValueError, match="video_num_crops must be 1 or 3"):
        load_video(media_dir / "pan_long.mp4", dataclasses.replace(encoder_cfg, video_num_crops=2))


def test_load_media_feeds_the_encoder(
    media_dir: Path, encoder_cfg: ImageBindConfig, tiny_encoder: ImageBindEncoder
) -> None:
    files = {Modality.IMAGE: "photo.jpg", Modality.VIDEO: "pan_long.mp4", Modality.AUDIO: "tone_long.wav"}
    for modality, name in files.items():
        item = load_media(modality, media_dir / name, encoder_cfg)
        out = tiny_encoder(modality, torch.stack([item, item]))
        assert out.shape == (2, 32) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="no ImageBind preprocessing"):
        load_media("text", media_dir / "photo.jpg", encoder_cfg)


@pytest.mark.parametrize(
    ("modality", "name"), [(Modality.IMAGE, "x.png"), (Modality.VIDEO, "x.mp4"), (Modality.AUDIO, "x.wav")]
)
def test_missing_files_are_file_not_found(
    tmp_path: Path, encoder_cfg: ImageBindConfig, modality: Modality, name: str
) -> None:
    with pytest.raises(FileNotFoundError, match=rf"{modality.value} file not found: .*{name}"):
        load_media(modality, tmp_path / name, encoder_cfg)


@pytest.mark.parametrize(
    ("modality", "name"), [(Modality.IMAGE, "notes.txt"), (Modality.VIDEO, "clip.gif"), (Modality.AUDIO, "a.mp4")]
)
def test_unsupported_extensions_list_the_supported_ones(
    tmp_path: Path, encoder_cfg: ImageBindConfig, modality: Modality, name: str
) -> None:
    (tmp_path / name).write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match=rf"not a supported {modality.value} format; convert it to one of \.") as err:
        load_media(modality, tmp_path / name, encoder_cfg)
    assert name in str(err.value)


@pytest.mark.parametrize(
    ("modality", "name"), [(Modality.IMAGE, "bad.png"), (Modality.VIDEO, "bad.mp4"), (Modality.AUDIO, "bad.wav")]
)
def test_corrupt_files_are_value_errors_naming_the_path(
    tmp_path: Path, encoder_cfg: ImageBindConfig, modality: Modality, name: str
) -> None:
    (tmp_path / name).write_bytes(b"this is not media " * 20)
    with pytest.raises(ValueError, match=rf"could not read .*{name} as {modality.value}"):
        load_media(modality, tmp_path / name, encoder_cfg)


def test_audio_shorter_than_one_frame_is_an_error(tmp_path: Path, encoder_cfg: ImageBindConfig) -> None:
    path = write_wav(tmp_path / "blip.wav", tone(0.01))
    with pytest.raises(ValueError, match=r"blip\.wav is too short.*25 ms"):
        load_audio(path, encoder_cfg)
