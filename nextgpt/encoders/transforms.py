"""Media files -> ImageBind-ready tensors, with the official ImageBind preprocessing numbers (`imagebind/data.py`).

Clip times follow pytorchvideo's `ConstantClipsPerVideoSampler` (the revision ImageBind pins): `num_clips` clips of
`clip_seconds` whose starts are spread evenly over [0, duration - clip_seconds]; media shorter than one clip give
`num_clips` clips that all start at 0 (they repeat), media shorter than `num_clips` clips give overlapping clips.

    pixels = load_image(Path("cat.jpg"), cfg.model.encoder)   # (3, 224, 224)
    clips = load_video(Path("dog.mp4"), cfg.model.encoder)    # (15, 3, 2, 224, 224)
    fbanks = load_audio(Path("bark.wav"), cfg.model.encoder)  # (3, 1, 128, 204)
"""

from __future__ import annotations

import logging
import math
from fractions import Fraction
from pathlib import Path

import torch
import torchaudio
from torchaudio.compliance import kaldi
from torchvision.transforms import functional as tvf

from nextgpt.config import ImageBindConfig
from nextgpt.constants import Modality
from nextgpt.encoders.media import probe_video, read_audio, read_image, read_video_frames

logger = logging.getLogger(__name__)

CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
FBANK_FRAME_LENGTH_MS = 25.0
FBANK_FRAME_SHIFT_MS = 10.0
PAD_WARNING_FRACTION = 0.2
"""Warn when an fbank is padded or cut by more than this fraction of its frames (as the official code does)."""


def compute_clip_timepoints(duration: float, clip_seconds: float, num_clips: int) -> list[tuple[Fraction, Fraction]]:
    """Start and end times of the clips that ImageBind reads from one media item.

    Args:
        duration: media length in seconds.
        clip_seconds: clip length.
        num_clips: clips per item.

    Returns:
        `num_clips` (start, end) pairs in exact fractions of a second.
    """
    clip = Fraction(clip_seconds)
    max_start = Fraction(max(duration - clip_seconds, 0))
    step = max_start / max(num_clips - 1, 1)
    return [(step * i, step * i + clip) for i in range(num_clips)]


def load_image(path: Path, cfg: ImageBindConfig) -> torch.Tensor:
    """Read an image: short side to `image_size` (bicubic), center crop, CLIP mean/std.

    Args:
        path: image file.
        cfg: `model.encoder` (`image_size`).

    Returns:
        (3, S, S) float32.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if it is not a readable image of a supported format.
    """
    image = read_image(path)
    image = tvf.resize(image, cfg.image_size, interpolation=tvf.InterpolationMode.BICUBIC)
    image = tvf.center_crop(image, cfg.image_size)
    return tvf.normalize(tvf.to_tensor(image), CLIP_MEAN, CLIP_STD)


def _scale_short_side(clip: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize so the shorter spatial side is `size` (pytorchvideo `short_side_scale`)."""
    _, _, height, width = clip.shape
    if width < height:
        new_height, new_width = int(math.floor(height / width * size)), size
    else:
        new_height, new_width = size, int(math.floor(width / height * size))
    return torch.nn.functional.interpolate(clip, size=(new_height, new_width), mode="bilinear", align_corners=False)


def _spatial_crops(clip: torch.Tensor, size: int, num_crops: int) -> list[torch.Tensor]:
    """Square crops along the longer side: start, center, end (3) or center (1); official `SpatialCrop`."""
    _, _, height, width = clip.shape
    crops = []
    for index in (0, 1, 2) if num_crops == 3 else (1,):
        y_offset = math.ceil((height - size) / 2)
        x_offset = math.ceil((width - size) / 2)
        if height > width and index != 1:
            y_offset = 0 if index == 0 else height - size
        elif height <= width and index != 1:
            x_offset = 0 if index == 0 else width - size
        crops.append(clip[:, :, y_offset : y_offset + size, x_offset : x_offset + size])
    return crops


def _clip_frame_indices(start: Fraction, end: Fraction, fps: float, num_frames: int, per_clip: int) -> list[int]:
    """Frames of [start, end) (pytorchvideo decord `get_clip`), then `per_clip` of them evenly spaced."""
    first = math.ceil(fps * float(start))
    stop = min(math.ceil(fps * float(end)), num_frames)
    if stop <= first:
        raise ValueError(f"no frames between {float(start):.3f} s and {float(end):.3f} s")
    span = torch.linspace(0, stop - first - 1, per_clip).clamp(0, stop - first - 1).long()
    return [first + int(i) for i in span]


def load_video(path: Path, cfg: ImageBindConfig) -> torch.Tensor:
    """Read a video as ImageBind clips: `video_num_clips` x `video_num_crops` views of `video_frames_per_clip` frames.

    Per clip: frames of the clip window, `video_frames_per_clip` evenly spaced, /255, short side to `image_size`
    (bilinear), CLIP mean/std, then `video_num_crops` square crops. Views are ordered clip-major.

    Args:
        path: video file.
        cfg: `model.encoder` (`video_*`, `image_size`).

    Returns:
        (num_clips * num_crops, 3, frames_per_clip, S, S) float32, e.g. (15, 3, 2, 224, 224).

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if it cannot be decoded, or `video_num_crops` is not 1 or 3.
    """
    if cfg.video_num_crops not in (1, 3):
        raise ValueError(
            f"model.encoder.video_num_crops must be 1 or 3 (official SpatialCrop), got {cfg.video_num_crops}"
        )
    info = probe_video(path)
    timepoints = compute_clip_timepoints(info.duration, cfg.video_clip_seconds, cfg.video_num_clips)
    try:
        indices = [
            i
            for start, end in timepoints
            for i in _clip_frame_indices(start, end, info.fps, info.num_frames, cfg.video_frames_per_clip)
        ]
    except ValueError as err:
        raise ValueError(f"could not sample clips from video {path}: {err}; re-encode the file") from err
    frames = read_video_frames(path, indices).float()  # (clips*T, H, W, 3) uint8 -> float
    per_clip = cfg.video_frames_per_clip
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1, 1)
    views = []
    for clip in frames.split(per_clip):
        clip = clip.permute(3, 0, 1, 2) / 255.0  # (T, H, W, 3) -> (3, T, H, W)
        clip = (_scale_short_side(clip, cfg.image_size) - mean) / std
        views += _spatial_crops(clip, cfg.image_size, cfg.video_num_crops)
    return torch.stack(views)  # num_clips*num_crops x (3, T, S, S) -> (V, 3, T, S, S)


def compute_fbank(
    clip: torch.Tensor, sample_rate: int, cfg: ImageBindConfig, warn_source: str | None = None
) -> torch.Tensor:
    """Kaldi log-mel filterbank of one mono clip, padded or cut to `audio_target_frames`, not yet normalised.

    Args:
        clip: (1, samples) waveform at `sample_rate`.
        sample_rate: Hz.
        cfg: `model.encoder` (`audio_num_mel_bins`, `audio_target_frames`).
        warn_source: when given, a warning naming it is logged if more than 20% of the frames are padded or cut.

    Returns:
        (1, num_mel_bins, target_frames).

    Raises:
        ValueError: if the clip is shorter than one 25 ms frame.
    """
    if clip.shape[1] < sample_rate * FBANK_FRAME_LENGTH_MS / 1000:
        raise ValueError(f"audio clip of {clip.shape[1]} samples is shorter than one 25 ms fbank frame")
    fbank = kaldi.fbank(
        clip - clip.mean(),
        htk_compat=True,
        sample_frequency=sample_rate,
        use_energy=False,
        window_type="hanning",
        num_mel_bins=cfg.audio_num_mel_bins,
        dither=0.0,
        frame_length=FBANK_FRAME_LENGTH_MS,
        frame_shift=FBANK_FRAME_SHIFT_MS,
    ).T  # (frames, mel) -> (mel, frames)
    num_frames, target = fbank.shape[1], cfg.audio_target_frames
    if warn_source is not None and abs(target - num_frames) / num_frames > PAD_WARNING_FRACTION:
        logger.warning(
            "audio %s: a %.2f s clip gives %d fbank frames, padded/cut to %d (model.encoder.audio_target_frames)",
            warn_source,
            clip.shape[1] / sample_rate,
            num_frames,
            target,
        )
    if num_frames < target:
        fbank = torch.nn.functional.pad(fbank, (0, target - num_frames))
    return fbank[:, :target].unsqueeze(0)  # (mel, frames) -> (1, mel, target)


def load_audio(path: Path, cfg: ImageBindConfig) -> torch.Tensor:
    """Read audio as ImageBind fbank clips: mono, 16 kHz, `audio_num_clips` clips of `audio_clip_seconds`.

    Channels are averaged (the official code feeds all channels to Kaldi fbank, which reads only the first; the
    two agree on mono files). Each clip has its mean removed (on a copy: the official code subtracts in place,
    which shifts later overlapping clips of files shorter than `num_clips` clips), is turned into a Kaldi fbank,
    padded/cut, and normalised with `audio_mean`/`audio_std`. All clips have the same length, so a padding
    warning is logged once per file.

    Args:
        path: audio file.
        cfg: `model.encoder` (`audio_*`).

    Returns:
        (num_clips, 1, num_mel_bins, target_frames) float32, e.g. (3, 1, 128, 204).

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if it cannot be decoded or is shorter than 25 ms.
    """
    waveform, sample_rate = read_audio(path)
    waveform = waveform.mean(dim=0, keepdim=True)  # (C, N) -> (1, N)
    if sample_rate != cfg.audio_sample_rate:
        waveform = torchaudio.functional.resample(waveform, orig_freq=sample_rate, new_freq=cfg.audio_sample_rate)
    rate = cfg.audio_sample_rate
    timepoints = compute_clip_timepoints(waveform.shape[1] / rate, cfg.audio_clip_seconds, cfg.audio_num_clips)
    clips = []
    for index, (start, end) in enumerate(timepoints):
        source = str(path) if index == 0 else None
        try:
            fbank = compute_fbank(waveform[:, int(start * rate) : int(end * rate)], rate, cfg, warn_source=source)
        except ValueError as err:
            raise ValueError(f"audio {path} is too short: {err}; use at least 25 ms of sound") from err
        clips.append((fbank - cfg.audio_mean) / cfg.audio_std)
    return torch.stack(clips)  # num_clips x (1, mel, frames) -> (N, 1, mel, frames)


def load_media(modality: Modality, path: Path, cfg: ImageBindConfig) -> torch.Tensor:
    """Read one media file into the encoder input of its modality.

    Args:
        modality: image, video or audio.
        path: the file.
        cfg: `model.encoder`.

    Returns:
        `load_image`, `load_video` or `load_audio` of the file.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: for an unknown modality or unreadable media.
    """
    loaders = {Modality.IMAGE: load_image, Modality.VIDEO: load_video, Modality.AUDIO: load_audio}
    if modality not in loaders:
        raise ValueError(f"no ImageBind preprocessing for modality {modality!r}; use Modality.IMAGE/VIDEO/AUDIO")
    return loaders[modality](Path(path), cfg)
