"""Input checks and output writers: PNG / MP4 / WAV files read back by independent readers (PIL, decord, wave)."""

from __future__ import annotations

import logging
import wave

import decord
import numpy as np
import pytest
from PIL import Image

from nextgpt.config import ImageBindConfig
from nextgpt.constants import Modality
from nextgpt.inference.media_io import (
    check_input_file,
    load_inputs,
    modality_of_file,
    save_audio,
    save_image,
    save_outputs,
    save_video,
)


def _frames(num_frames: int, height: int, width: int) -> np.ndarray:
    """Flat grey frames getting brighter, easy to compare after lossy coding."""
    levels = np.linspace(30, 220, num_frames).astype(np.uint8)
    return np.broadcast_to(levels[:, None, None, None], (num_frames, height, width, 3)).copy()


def test_image_round_trip(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    path = save_image(image, tmp_path / "sub" / "a.png")
    with Image.open(path) as read:
        assert read.format == "PNG" and read.size == (40, 24)
        np.testing.assert_array_equal(np.asarray(read.convert("RGB")), image)


def test_video_round_trip_keeps_frames_and_values(tmp_path):
    frames = _frames(6, 32, 64)
    path = save_video(frames, tmp_path / "v.mp4", fps=8)
    reader = decord.VideoReader(str(path), ctx=decord.cpu(0))
    assert len(reader) == 6 and reader.get_avg_fps() == pytest.approx(8)
    read = reader.get_batch(list(range(6)))
    read = read.asnumpy() if hasattr(read, "asnumpy") else read.numpy()
    assert read.shape == (6, 32, 64, 3)
    assert np.abs(read.astype(float).mean(axis=(1, 2, 3)) - frames[:, 0, 0, 0]).max() < 4


def test_odd_video_size_is_padded_with_a_warning(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="nextgpt.inference.media_io"):
        path = save_video(_frames(3, 15, 21), tmp_path / "odd.mp4")
    assert "padded to 16x22" in caplog.text
    reader = decord.VideoReader(str(path), ctx=decord.cpu(0))
    assert len(reader) == 3 and reader[0].shape == (16, 22, 3)


def test_audio_round_trip_and_clipping(tmp_path, caplog):
    t = np.arange(16000, dtype=np.float32) / 16000
    waveform = 0.5 * np.sin(2 * np.pi * 440 * t)
    path = save_audio(waveform, tmp_path / "a.wav", 16000)
    with wave.open(str(path)) as reader:
        assert (reader.getframerate(), reader.getnchannels(), reader.getsampwidth()) == (16000, 1, 2)
        read = np.frombuffer(reader.readframes(reader.getnframes()), dtype="<i2") / 32767
    assert read.shape == (16000,) and np.abs(read - waveform).max() < 1e-4
    with caplog.at_level(logging.WARNING, logger="nextgpt.inference.media_io"):
        save_audio(np.array([0.0, 1.5, -2.0], dtype=np.float32), tmp_path / "loud.wav", 16000)
    assert "clipped" in caplog.text


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda p: save_image(np.zeros((4, 4), np.uint8), p / "x.png"), "(H, W, 3) uint8"),
        (lambda p: save_video(np.zeros((0, 4, 4, 3), np.uint8), p / "x.mp4"), "F >= 1"),
        (lambda p: save_audio(np.zeros((2, 4), np.float32), p / "x.wav", 16000), "(T,) waveform"),
        (lambda p: save_audio(np.zeros(4, np.float32), p / "x.wav", 0), "positive sample rate"),
    ],
)
def test_writers_reject_bad_arrays(tmp_path, call, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        call(tmp_path)


def test_save_outputs_names_and_describes_files(tmp_path):
    outputs = {
        Modality.IMAGE: [np.zeros((16, 24, 3), np.uint8)] * 2,
        Modality.VIDEO: [_frames(4, 16, 16)],
        Modality.AUDIO: [np.zeros(8000, np.float32)],
    }
    saved = save_outputs(outputs, tmp_path, prefix="q1", sample_rate=16000, fps=4)
    assert [s.path.name for s in saved] == ["q1-image-0.png", "q1-image-1.png", "q1-video-0.mp4", "q1-audio-0.wav"]
    assert all(s.path.is_file() for s in saved)
    assert saved[0].to_json() == {
        "modality": "image",
        "path": str(tmp_path / "q1-image-0.png"),
        "height": 16,
        "width": 24,
    }
    assert saved[2].info == {"num_frames": 4, "height": 16, "width": 16, "fps": 4}
    assert saved[3].info == {"sample_rate": 16000, "num_samples": 8000, "seconds": 0.5}
    with pytest.raises(ValueError, match="no sample_rate"):
        save_outputs({Modality.AUDIO: [np.zeros(10, np.float32)]}, tmp_path, "q2")


def test_save_outputs_never_overwrites(tmp_path, caplog):
    first = save_outputs({Modality.IMAGE: [np.zeros((8, 8, 3), np.uint8)]}, tmp_path, prefix="q1")[0].path
    before = first.read_bytes()
    second = save_outputs({Modality.IMAGE: [np.full((8, 8, 3), 255, np.uint8)]}, tmp_path, prefix="q1")[0].path
    assert second.name == "q1-image-0-2.png" and first.read_bytes() == before
    assert "q1-image-0.png exists; writing q1-image-0-2.png instead" in caplog.text


def test_input_checks(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.png not found; check the path"):
        check_input_file(tmp_path / "missing.png", Modality.IMAGE)
    text_file = tmp_path / "notes.txt"
    text_file.write_text("hello")
    with pytest.raises(ValueError, match="not a supported image format"):
        check_input_file(text_file, Modality.IMAGE)
    big = save_image(np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8), tmp_path / "big.png")
    with pytest.raises(ValueError, match="over the 0.0 MB upload limit"):
        check_input_file(big, Modality.IMAGE, max_bytes=1000)
    assert check_input_file(big, Modality.IMAGE, max_bytes=10**7) == big
    assert modality_of_file(tmp_path / "x.MP4") is Modality.VIDEO
    assert modality_of_file(tmp_path / "x.flac") is Modality.AUDIO
    with pytest.raises(ValueError, match="which no reader supports"):
        modality_of_file(text_file)


def test_load_inputs_stacks_each_modality_in_order(tmp_path):
    cfg = ImageBindConfig()
    red = save_image(np.full((40, 60, 3), (255, 0, 0), np.uint8), tmp_path / "red.png")
    blue = save_image(np.full((40, 60, 3), (0, 0, 255), np.uint8), tmp_path / "blue.png")
    clip = save_video(_frames(8, 32, 32), tmp_path / "clip.mp4", fps=8)
    sound = save_audio(np.zeros(8000, np.float32), tmp_path / "s.wav", 16000)
    files = {Modality.IMAGE: [red, blue], Modality.VIDEO: [clip], Modality.AUDIO: [sound]}
    media = load_inputs(files, cfg)
    assert media[Modality.IMAGE].shape == (2, 3, 224, 224)
    assert media[Modality.IMAGE][0, 0].mean() > media[Modality.IMAGE][1, 0].mean()  # red first
    assert media[Modality.VIDEO].shape == (1, 15, 3, 2, 224, 224)
    assert media[Modality.AUDIO].shape == (1, 3, 1, 128, 204)
    # Every file is checked before any is decoded.
    with pytest.raises(FileNotFoundError, match="gone.wav"):
        load_inputs({Modality.IMAGE: [red], Modality.AUDIO: [tmp_path / "gone.wav"]}, cfg)
