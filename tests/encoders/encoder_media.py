"""Writers of real media for the encoder tests: PCM WAV (stdlib `wave`), H.264 MP4 (PyAV), image pans."""

from __future__ import annotations

import wave
from pathlib import Path

import av
import numpy as np
from skimage import data as skdata

WAV_RATE = 44100


def write_wav(path: Path, samples: np.ndarray, sample_rate: int = WAV_RATE, width: int = 2) -> Path:
    """Write (N,) or (N, C) float samples in [-1, 1] as integer PCM with the stdlib `wave` module."""
    frames = samples.reshape(len(samples), -1)
    if width == 1:
        raw = np.clip(np.round(frames * 127 + 128), 0, 255).astype(np.uint8).tobytes()
    elif width == 3:
        ints = np.clip(np.round(frames * 8388607), -8388608, 8388607).astype("<i4")
        raw = ints.view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
    else:
        dtype = {2: "<i2", 4: "<i4"}[width]
        raw = np.round(frames * (2 ** (8 * width - 1) - 1)).astype(dtype).tobytes()
    with wave.open(str(path), "wb") as writer:
        writer.setnchannels(frames.shape[1])
        writer.setsampwidth(width)
        writer.setframerate(sample_rate)
        writer.writeframes(raw)
    return path


def tone(seconds: float, sample_rate: int = WAV_RATE, freq: float = 440.0) -> np.ndarray:
    """A 0.5-amplitude sine with a slow 3 Hz tremolo, so clips taken at different times differ."""
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    return 0.5 * np.sin(2 * np.pi * freq * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))


def write_mp4(path: Path, frames: list[np.ndarray], fps: int, lossless: bool = False) -> Path:
    """Encode RGB uint8 frames as H.264 MP4 with PyAV."""
    height, width = frames[0].shape[:2]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if lossless:
            stream.options = {"crf": "0"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def astronaut_pan(num_frames: int, height: int = 64, width: int = 96) -> list[np.ndarray]:
    """Frames of a window sliding down the astronaut photo (real image content, moving)."""
    photo = skdata.astronaut()
    return [photo[100 + 3 * i : 100 + 3 * i + height, 150 : 150 + width] for i in range(num_frames)]
