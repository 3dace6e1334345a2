"""User media in and generated media out: check and load input files, write PNG / MP4 / WAV files.

Inputs are checked before anything heavy runs (missing file, unsupported extension, over the size limit), then
preprocessed for ImageBind. Outputs are written in formats every player opens: PNG, H.264 MP4 (yuv420p) and 16-bit
PCM WAV.

    media = load_inputs({Modality.IMAGE: [Path("cat.png")]}, cfg.model.encoder)   # {IMAGE: (1, 3, 224, 224)}
    saved = save_outputs(result, Path("outputs"), prefix="reply", sample_rate=16000)
    [s.to_json() for s in saved]  # [{"modality": "image", "path": "outputs/reply-image-0.png", ...}]
"""

from __future__ import annotations

import logging
import wave
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from nextgpt.config import ImageBindConfig
from nextgpt.constants import MODALITIES, Modality
from nextgpt.encoders.media import SUPPORTED_EXTENSIONS
from nextgpt.encoders.transforms import load_media
from nextgpt.inference.input_checks import check_file_entry

logger = logging.getLogger(__name__)

DEFAULT_VIDEO_FPS = 8
"""Frame rate of written MP4 files (the original demo's 8 fps)."""

OUTPUT_EXTENSIONS: dict[Modality, str] = {Modality.IMAGE: ".png", Modality.VIDEO: ".mp4", Modality.AUDIO: ".wav"}


@dataclass
class SavedMedia:
    """One written output file and what a reader should find in it.

    Attributes:
        modality: image, video or audio.
        path: the file.
        info: shape facts: height/width (image, video), num_frames/fps (video), sample_rate/num_samples/seconds
            (audio).
    """

    modality: Modality
    path: Path
    info: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready record: modality, path (as a string) and the info fields."""
        return {"modality": self.modality.value, "path": str(self.path), **self.info}


def modality_of_file(path: Path) -> Modality:
    """The modality whose readers accept the file's extension.

    Args:
        path: a media file name.

    Returns:
        The modality.

    Raises:
        ValueError: the extension belongs to no modality.
    """
    suffix = Path(path).suffix.lower()
    for modality in MODALITIES:
        if suffix in SUPPORTED_EXTENSIONS[modality]:
            return modality
    accepted = ", ".join(e for m in MODALITIES for e in SUPPORTED_EXTENSIONS[m])
    raise ValueError(f"{Path(path).name} has extension {suffix!r}, which no reader supports; use one of {accepted}")


def check_input_file(path: Path, modality: Modality, max_bytes: int | None = None) -> Path:
    """Check an input file before loading it (without decoding it; `input_checks.probe_media_file` also decodes).

    Args:
        path: the file.
        modality: what it should contain.
        max_bytes: size limit; None for no limit.

    Returns:
        `path` as a Path.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: a folder, an unsupported extension, an empty, unreadable or oversized file.
    """
    check_file_entry(Path(path), modality, max_bytes)
    return Path(path)


def load_inputs(
    files: Mapping[Modality, Sequence[Path]], encoder_cfg: ImageBindConfig, max_bytes: int | None = None
) -> dict[Modality, torch.Tensor]:
    """Check every file first, then preprocess them for ImageBind, stacked per modality in the given order.

    Args:
        files: input files per modality, in placeholder order.
        encoder_cfg: `model.encoder` (preprocessing sizes).
        max_bytes: per-file size limit; None for no limit.

    Returns:
        Per modality with files: (N, ...) encoder inputs, e.g. images (N, 3, 224, 224).

    Raises:
        FileNotFoundError: a file does not exist.
        ValueError: an unsupported, unreadable or oversized file.
    """
    checked = {m: [check_input_file(p, m, max_bytes) for p in paths] for m, paths in files.items() if paths}
    return {
        modality: torch.stack([load_media(modality, path, encoder_cfg) for path in paths])  # N x (...) -> (N, ...)
        for modality, paths in checked.items()
    }


def save_image(image: np.ndarray, path: Path) -> Path:
    """Write an (H, W, 3) uint8 image as PNG.

    Args:
        image: RGB pixels.
        path: the .png file to write (parent folders are created).

    Returns:
        `path`.

    Raises:
        ValueError: not an (H, W, 3) uint8 array.
    """
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"save_image expects (H, W, 3) uint8, got {image.shape} {image.dtype}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, format="PNG")
    return path


def _pad_to_even(frames: np.ndarray) -> np.ndarray:
    """H.264 in yuv420p needs even sizes; pad odd sides by one replicated edge pixel (with a warning)."""
    _, height, width, _ = frames.shape
    pad_h, pad_w = height % 2, width % 2
    if not (pad_h or pad_w):
        return frames
    logger.warning(
        "video frames are %dx%d; padded to %dx%d because H.264 (yuv420p) needs even sizes",
        height,
        width,
        height + pad_h,
        width + pad_w,
    )
    return np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")


def save_video(frames: np.ndarray, path: Path, fps: int = DEFAULT_VIDEO_FPS) -> Path:
    """Write (F, H, W, 3) uint8 frames as an H.264 MP4 (yuv420p), one stream frame per array frame.

    Args:
        frames: RGB frames.
        path: the .mp4 file to write (parent folders are created).
        fps: frame rate.

    Returns:
        `path`.

    Raises:
        ValueError: not an (F, H, W, 3) uint8 array with F >= 1, or fps < 1.
    """
    import av

    if frames.ndim != 4 or frames.shape[0] < 1 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"save_video expects (F, H, W, 3) uint8 with F >= 1, got {frames.shape} {frames.dtype}")
    if fps < 1:
        raise ValueError(f"save_video needs fps >= 1, got {fps}")
    frames = _pad_to_even(frames)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames.shape[1], frames.shape[2]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
        container.mux(stream.encode())  # flush the encoder's delayed frames
    return path


def save_audio(waveform: np.ndarray, path: Path, sample_rate: int) -> Path:
    """Write a mono (T,) float waveform in [-1, 1] as 16-bit PCM WAV.

    Args:
        waveform: samples; values outside [-1, 1] are clipped (with a warning).
        path: the .wav file to write (parent folders are created).
        sample_rate: Hz (the audio decoder's, 16 kHz for AudioLDM).

    Returns:
        `path`.

    Raises:
        ValueError: not a non-empty 1-D array, or a non-positive sample rate.
    """
    if waveform.ndim != 1 or waveform.shape[0] == 0:
        raise ValueError(f"save_audio expects a non-empty (T,) waveform, got shape {waveform.shape}")
    if sample_rate <= 0:
        raise ValueError(f"save_audio needs a positive sample rate, got {sample_rate}")
    samples = np.asarray(waveform, dtype=np.float32)
    peak = float(np.abs(samples).max())
    if peak > 1.0:
        logger.warning("audio peaks at %.3f; clipped to [-1, 1] for 16-bit PCM", peak)
    pcm = np.round(np.clip(samples, -1.0, 1.0) * 32767).astype("<i2")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(sample_rate)
        writer.writeframes(pcm.tobytes())
    return path


def free_path(path: Path) -> Path:
    """`path`, or `<stem>-2<suffix>`, `-3`, ... when it is taken: earlier outputs are never overwritten."""
    candidate, number = Path(path), 1
    while candidate.exists():
        number += 1
        candidate = path.with_name(f"{path.stem}-{number}{path.suffix}")
    if candidate != path:
        logger.warning("%s exists; writing %s instead", path, candidate.name)
    return candidate


def save_outputs(
    outputs: Mapping[Modality, Sequence[np.ndarray]],
    output_dir: Path,
    prefix: str,
    sample_rate: int | None = None,
    fps: int = DEFAULT_VIDEO_FPS,
) -> list[SavedMedia]:
    """Write every generated item as `<prefix>-<modality>-<k>.png|mp4|wav` under `output_dir` (see `free_path`).

    Args:
        outputs: generated arrays per modality (images (H, W, 3), videos (F, H, W, 3), audio (T,)).
        output_dir: the folder (created if missing).
        prefix: file name prefix, e.g. a request id.
        sample_rate: the audio decoder's rate; required when there is audio.
        fps: frame rate of videos.

    Returns:
        The written files in modality order (image, video, audio), then item order.

    Raises:
        ValueError: audio without a sample rate, or arrays of the wrong shape.
    """
    saved: list[SavedMedia] = []
    for modality in MODALITIES:
        for index, array in enumerate(outputs.get(modality, ())):
            path = free_path(Path(output_dir) / f"{prefix}-{modality.value}-{index}{OUTPUT_EXTENSIONS[modality]}")
            if modality is Modality.IMAGE:
                info = {"height": int(array.shape[0]), "width": int(array.shape[1])}
                save_image(array, path)
            elif modality is Modality.VIDEO:
                info = {"num_frames": int(array.shape[0]), "height": int(array.shape[1]), "width": int(array.shape[2])}
                info["fps"] = fps
                save_video(array, path, fps)
            else:
                if sample_rate is None:
                    raise ValueError("save_outputs got audio but no sample_rate; pass the audio decoder's sample_rate")
                info = {"sample_rate": sample_rate, "num_samples": int(array.shape[0])}
                info["seconds"] = round(array.shape[0] / sample_rate, 4)
                save_audio(array, path, sample_rate)
            saved.append(SavedMedia(modality, path, info))
    return saved
