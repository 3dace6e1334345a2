"""Reference media of a generation benchmark as arrays the scores take: images (H, W, 3) uint8, videos (F, H, W, 3)
uint8 with F frames spread evenly over the clip, audio (T,) float32 mono at the audio classifier's rate.

    image = load_reference(Modality.IMAGE, path)
    video = load_reference(Modality.VIDEO, path, num_frames=16)
    wave = load_reference(Modality.AUDIO, path, sample_rate=16000)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from nextgpt.constants import Modality
from nextgpt.encoders.media import probe_video, read_audio, read_image, read_video_frames


def resample(waveform: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """(T,) float waveform from one rate to another (torchaudio's windowed-sinc resampler); unchanged if equal."""
    if from_rate == to_rate:
        return waveform.astype(np.float32)
    import torchaudio.functional as AF

    return AF.resample(torch.from_numpy(waveform.astype(np.float32)), from_rate, to_rate).numpy()


def load_reference(modality: Modality, path: Path, num_frames: int = 16, sample_rate: int = 16000) -> np.ndarray:
    """Read one reference file as the array its modality's scores take.

    Raises:
        FileNotFoundError, ValueError: unreadable file (from the project's media readers).
    """
    if modality == Modality.IMAGE:
        return np.asarray(read_image(path))
    if modality == Modality.VIDEO:
        total = probe_video(path).num_frames
        indices = np.linspace(0, total - 1, num=min(num_frames, total)).round().astype(int).tolist()
        return read_video_frames(path, indices).numpy()
    waveform, rate = read_audio(path)  # (C, T)
    return resample(waveform.mean(0).numpy(), rate, sample_rate)
