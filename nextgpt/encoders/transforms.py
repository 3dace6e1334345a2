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


def _fbank_of_centred_clip(
    clip: torch.Tensor, sample_rate: int, cfg: ImageBindConfig, warn_source: str | None
) -> torch.Tensor:
    """Kaldi fbank of channel 0 of an already centred (C, samples) clip, padded or cut: (1, mel, target_frames)."""
    if clip.shape[1] < sample_rate * FBANK_FRAME_LENGTH_MS / 1000:
        raise ValueError(f"audio clip of {clip.shape[1]} samples is shorter than one 25 ms fbank frame")
    fbank = kaldi.fbank(
        clip[:1],  # (C, n) -> (1, n): Kaldi fbank reads channel 0 only (the official code hands it all channels)
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
        fbank = torch.nn.functional.pad(fbank, (0, target - num_frames))  # zero frames appended at the end
    return fbank[:, :target].unsqueeze(0)  # (mel, frames) -> (1, mel, target)


def compute_fbank(
    clip: torch.Tensor, sample_rate: int, cfg: ImageBindConfig, warn_source: str | None = None
) -> torch.Tensor:
    """Kaldi log-mel filterbank of one clip (official `waveform2melspec`), padded or cut, not yet normalised.

    The clip's mean over all its channels is subtracted (on a copy; the official function subtracts in place, which
    `audio_to_fbanks` reproduces across clips), then the fbank of channel 0 is taken, as Kaldi fbank does.

    Args:
        clip: (C, samples) waveform at `sample_rate`; C is 1 for mono.
        sample_rate: Hz.
        cfg: `model.encoder` (`audio_num_mel_bins`, `audio_target_frames`).
        warn_source: when given, a warning naming it is logged if more than 20% of the frames are padded or cut.

    Returns:
        (1, num_mel_bins, target_frames).

    Raises:
        ValueError: if the clip is shorter than one 25 ms frame.
    """
    return _fbank_of_centred_clip(clip - clip.mean(), sample_rate, cfg, warn_source)


def audio_to_fbanks(
    waveform: torch.Tensor, sample_rate: int, cfg: ImageBindConfig, source: str = "waveform"
) -> torch.Tensor:
    """Turn a waveform into ImageBind fbank clips: 16 kHz, `audio_num_clips` clips of `audio_clip_seconds`.

    With `audio_channel_mode="official"` (the default) this is ImageBind's `load_and_transform_audio_data` step for
    step, because checkpoints trained on official features must see the same inputs: all channels are kept through
    resampling; each clip is the slice [int(start * rate), int(end * rate)) of the one shared waveform, and its mean
    over all channels is subtracted from that slice in place, so a later clip that overlaps an earlier one sees the
    samples the earlier one already shifted; the fbank then reads channel 0. The in-place steps run on a private copy,
    so `waveform` itself is left unchanged. With "average", channels are averaged first and each clip is centred on a
    copy. Each fbank is padded (zeros) or cut to `audio_target_frames` and normalised with `audio_mean`/`audio_std`.
    All clips have the same length, so a padding warning is logged once.

    Args:
        waveform: (C, samples) float32 at `sample_rate`.
        sample_rate: Hz.
        cfg: `model.encoder` (`audio_*`).
        source: names the audio in warnings and errors.

    Returns:
        (num_clips, 1, num_mel_bins, target_frames) float32, e.g. (3, 1, 128, 204).

    Raises:
        ValueError: if the audio is shorter than one 25 ms fbank frame, or the channel mode is unknown.
    """
    if cfg.audio_channel_mode not in ("official", "average"):
        raise ValueError(
            f"model.encoder.audio_channel_mode must be 'official' or 'average', got {cfg.audio_channel_mode!r}"
        )
    official = cfg.audio_channel_mode == "official"
    loaded = waveform
    if not official:
        waveform = waveform.mean(dim=0, keepdim=True)  # (C, N) -> (1, N)
    rate = cfg.audio_sample_rate
    if sample_rate != rate:
        waveform = torchaudio.functional.resample(waveform, orig_freq=sample_rate, new_freq=rate)  # (C, N) -> (C, M)
    if official and waveform is loaded:
        waveform = waveform.clone()  # the in-place centring below must not reach the caller's tensor
    timepoints = compute_clip_timepoints(waveform.shape[1] / rate, cfg.audio_clip_seconds, cfg.audio_num_clips)
    clips = []
    for index, (start, end) in enumerate(timepoints):
        clip = waveform[:, int(start * rate) : int(end * rate)]  # (C, n), a view of the shared waveform
        if official:
            clip -= clip.mean()  # in place: later overlapping clips read these shifted samples
        else:
            clip = clip - clip.mean()
        try:
            fbank = _fbank_of_centred_clip(clip, rate, cfg, warn_source=source if index == 0 else None)
        except ValueError as err:
            raise ValueError(f"audio {source} is too short: {err}; use at least 25 ms of sound") from err
        clips.append((fbank - cfg.audio_mean) / cfg.audio_std)
    return torch.stack(clips)  # num_clips x (1, mel, frames) -> (N, 1, mel, frames)


def load_audio(path: Path, cfg: ImageBindConfig) -> torch.Tensor:
    """Read audio as ImageBind fbank clips (`audio_to_fbanks`, which says how channels and clips are handled).

    Args:
        path: audio file.
        cfg: `model.encoder` (`audio_*`).

    Returns:
        (num_clips, 1, num_mel_bins, target_frames) float32, e.g. (3, 1, 128, 204).

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if it cannot be decoded or is shorter than 25 ms.
    """
    waveform, sample_rate = read_audio(path)  # (C, N)
    return audio_to_fbanks(waveform, sample_rate, cfg, source=str(path))


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
