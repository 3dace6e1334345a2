"""Inference fixtures: broken input files of every kind, and a merged folder of the taught checkpoint."""

from __future__ import annotations

import os
import wave
from pathlib import Path

import numpy as np
import pytest

from nextgpt.inference.media_io import save_audio, save_image, save_video


def make_bad_files(root: Path) -> dict[str, Path]:
    """Real broken files of every kind a user sends by mistake (also used by the CLI error tests)."""
    root.mkdir(parents=True, exist_ok=True)
    good_png = save_image(np.full((16, 16, 3), 90, np.uint8), root / "good.png")
    good_mp4 = save_video(np.zeros((4, 16, 16, 3), np.uint8), root / "good.mp4", fps=4)
    good_wav = save_audio(np.zeros(1600, np.float32), root / "good.wav", 16000)
    files = {"good_png": good_png, "good_mp4": good_mp4, "good_wav": good_wav}
    (root / "empty.png").write_bytes(b"")
    (root / "garbage.png").write_bytes(os.urandom(256))
    (root / "truncated.png").write_bytes(good_png.read_bytes()[:60])
    (root / "wav_named.png").write_bytes(good_wav.read_bytes())
    (root / "notes.txt").write_text("not media")
    (root / "folder.png").mkdir(exist_ok=True)
    (root / "text_named.mp4").write_text("not a video")
    (root / "truncated.mp4").write_bytes(good_mp4.read_bytes()[:200])
    (root / "png_named.mp4").write_bytes(good_png.read_bytes())
    (root / "garbage.wav").write_bytes(b"RIFF" + os.urandom(60))
    with wave.open(str(root / "silent0.wav"), "wb") as writer:  # a valid header with no samples
        writer.setnchannels(1), writer.setsampwidth(2), writer.setframerate(16000)
    (root / "text_named.mp3").write_text("not audio")
    for name in (
        "empty.png",
        "garbage.png",
        "truncated.png",
        "wav_named.png",
        "notes.txt",
        "folder.png",
        "text_named.mp4",
        "truncated.mp4",
        "png_named.mp4",
        "garbage.wav",
        "silent0.wav",
        "text_named.mp3",
    ):
        files[name] = root / name  # fmt: skip
    return files


@pytest.fixture(scope="module")
def bad(tmp_path_factory) -> dict[str, Path]:
    return make_bad_files(tmp_path_factory.mktemp("bad"))


@pytest.fixture(scope="session")
def bad_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Good and broken media files by name (see `make_bad_files`)."""
    return make_bad_files(tmp_path_factory.mktemp("bad"))


@pytest.fixture(scope="session")
def merged_checkpoint(tmp_path_factory: pytest.TempPathFactory, taught_checkpoint: Path) -> Path:
    """The taught stage-3 checkpoint merged into a standalone folder (LoRA folded into llm/)."""
    from nextgpt.training.merge import merge_checkpoint

    return merge_checkpoint(taught_checkpoint, tmp_path_factory.mktemp("merged") / "merged")
