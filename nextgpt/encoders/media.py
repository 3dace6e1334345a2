"""Read media files into raw arrays: images (PIL), audio waveforms (stdlib wave or PyAV), video frames (decord).

Only reading and error reporting live here; the ImageBind preprocessing is in `nextgpt.encoders.transforms`.

    waveform, sample_rate = read_audio(Path("dog.wav"))  # (channels, samples) float32 in [-1, 1]
    info = probe_video(Path("clip.mp4")); frames = read_video_frames(Path("clip.mp4"), [0, 5])  # (2, H, W, 3) uint8
"""

from __future__ import annotations

import logging
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from nextgpt.constants import Modality

logger = logging.getLogger(__name__)

SUPPORTED_EXTENSIONS: dict[Modality, tuple[str, ...]] = {
    Modality.IMAGE: (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"),
    Modality.VIDEO: (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"),
    Modality.AUDIO: (".wav", ".flac", ".mp3", ".ogg", ".m4a"),
}
"""File extensions accepted per modality (case-insensitive)."""

_PCM_SCALE = {1: 128.0, 2: 32768.0, 3: 8388608.0, 4: 2147483648.0}
"""Full-scale value of 8/16/24/32-bit PCM; the same scaling torchaudio.load applies."""


def check_media_path(path: Path, modality: Modality) -> Path:
    """Fail early on a missing file or an extension the readers do not handle.

    Args:
        path: the media file.
        modality: what the file should contain.

    Returns:
        `path` as a Path.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if the extension is not supported for `modality`.
    """
    path = Path(path)
    supported = SUPPORTED_EXTENSIONS[modality]
    if not path.is_file():
        raise FileNotFoundError(f"{modality.value} file not found: {path}; check the path (accepted: {supported})")
    if path.suffix.lower() not in supported:
        raise ValueError(
            f"{path} has extension {path.suffix!r}, not a supported {modality.value} format; convert it to one of "
            f"{', '.join(supported)}"
        )
    return path


def _unreadable(path: Path, modality: Modality, err: Exception) -> ValueError:
    return ValueError(
        f"could not read {path} as {modality.value} ({type(err).__name__}: {err}); re-encode it as one of "
        f"{', '.join(SUPPORTED_EXTENSIONS[modality])}"
    )


def _is_wide_integer_mode(mode: str) -> bool:
    """PIL modes of more than 8 bits per integer sample: "I" (32-bit) and the 16-bit "I;16", "I;16B", "I;16L", ..."""
    return mode == "I" or mode.startswith("I;")


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert a PIL image to 8-bit RGB, scaling wide integer samples (16-bit PNG/TIFF) to 8 bits first.

    PIL's own `convert("RGB")` clamps wide integer samples to 255 instead of scaling them, which turns almost every
    pixel of a 16-bit image white. Here the samples are mapped from the 16-bit range to 8 bits,
    round(value * 255 / 65535), before the RGB conversion. Mode "I" is treated as 16-bit too (PIL decodes 16-bit
    files into it); values outside [0, 65535] are clipped. 8-bit images go straight to `convert("RGB")`.

    Args:
        image: any PIL image.

    Returns:
        An RGB image.
    """
    if _is_wide_integer_mode(image.mode):
        wide = np.clip(np.asarray(image).astype(np.int64), 0, 65535)  # (H, W) samples, any byte order
        # value/257 is never exactly halfway between integers, so adding half the divisor rounds to nearest.
        image = Image.fromarray(((wide * 255 + 65535 // 2) // 65535).astype(np.uint8))  # -> mode "L"
    return image.convert("RGB")


def read_image(path: Path) -> Image.Image:
    """Open an image file as RGB (the first frame of animated formats); 16-bit images are scaled to 8 bits.

    Args:
        path: image file.

    Returns:
        The decoded RGB image (`to_rgb`).

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if the file is not a readable image of a supported format.
    """
    path = check_media_path(path, Modality.IMAGE)
    try:
        with Image.open(path) as image:
            return to_rgb(image)
    except (UnidentifiedImageError, OSError) as err:
        raise _unreadable(path, Modality.IMAGE, err) from err


def _read_pcm_wav(path: Path) -> tuple[torch.Tensor, int]:
    with wave.open(str(path), "rb") as reader:
        num_channels, width, sample_rate = reader.getnchannels(), reader.getsampwidth(), reader.getframerate()
        raw = reader.readframes(reader.getnframes())
    if width == 1:
        samples = np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0
    elif width == 3:
        triples = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)  # (3*N*C,) -> (N*C, 3)
        packed = triples[:, 0] | (triples[:, 1] << 8) | (triples[:, 2] << 16)
        samples = np.where(packed >= 1 << 23, packed - (1 << 24), packed).astype(np.float32)
    else:
        samples = np.frombuffer(raw, dtype={2: "<i2", 4: "<i4"}[width]).astype(np.float32)
    samples = samples / _PCM_SCALE[width]
    waveform = torch.from_numpy(samples.reshape(-1, num_channels).T.copy())  # (N*C,) -> (C, N)
    return waveform, sample_rate


def _read_with_pyav(path: Path) -> tuple[torch.Tensor, int]:
    import av

    chunks: list[np.ndarray] = []
    with av.open(str(path)) as container:
        if not container.streams.audio:
            raise ValueError("the file has no audio stream")
        stream = container.streams.audio[0]
        sample_rate = stream.codec_context.sample_rate
        resampler = av.AudioResampler(format="fltp", layout=stream.codec_context.layout, rate=sample_rate)
        for frame in container.decode(stream):
            chunks += [f.to_ndarray() for f in resampler.resample(frame)]
        chunks += [f.to_ndarray() for f in resampler.resample(None)]
    if not chunks:
        raise ValueError("the audio stream has no samples")
    return torch.from_numpy(np.concatenate(chunks, axis=1).astype(np.float32)), sample_rate


def read_audio(path: Path) -> tuple[torch.Tensor, int]:
    """Decode an audio file to float samples (PCM WAV through the stdlib, everything else through PyAV).

    Args:
        path: audio file.

    Returns:
        (channels, samples) float32 waveform in [-1, 1] and its sample rate.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if the file cannot be decoded or holds no samples.
    """
    path = check_media_path(path, Modality.AUDIO)
    try:
        if path.suffix.lower() == ".wav":
            try:
                waveform, sample_rate = _read_pcm_wav(path)
            except wave.Error as err:
                # Float or compressed WAV: the stdlib reads integer PCM only.
                logger.debug("stdlib wave cannot read %s (%s); decoding with PyAV", path, err)
                waveform, sample_rate = _read_with_pyav(path)
        else:
            waveform, sample_rate = _read_with_pyav(path)
    except (EOFError, OSError, ValueError) as err:
        raise _unreadable(path, Modality.AUDIO, err) from err
    if waveform.shape[1] == 0:
        raise _unreadable(path, Modality.AUDIO, ValueError("no samples"))
    return waveform, sample_rate


@dataclass(frozen=True)
class VideoInfo:
    """Frame count and average rate of a video stream, as decord reports them."""

    num_frames: int
    fps: float

    @property
    def duration(self) -> float:
        """Seconds: frames / fps (pytorchvideo's `EncodedVideoDecord.duration`)."""
        return self.num_frames / self.fps


def _open_video(path: Path):
    import decord

    path = check_media_path(path, Modality.VIDEO)
    try:
        return decord.VideoReader(str(path), ctx=decord.cpu(0))
    except (decord.DECORDError, RuntimeError) as err:
        raise _unreadable(path, Modality.VIDEO, err) from err


def probe_video(path: Path) -> VideoInfo:
    """Read a video's frame count and average frame rate.

    Args:
        path: video file.

    Returns:
        The stream's `VideoInfo`.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if decord cannot open it or it has no frames.
    """
    reader = _open_video(path)
    info = VideoInfo(num_frames=len(reader), fps=float(reader.get_avg_fps()))
    if info.num_frames == 0 or info.fps <= 0:
        raise _unreadable(Path(path), Modality.VIDEO, ValueError(f"{info.num_frames} frames at {info.fps} fps"))
    return info


def read_video_frames(path: Path, indices: list[int]) -> torch.Tensor:
    """Decode selected frames.

    Args:
        path: video file.
        indices: frame numbers (any order, repeats allowed).

    Returns:
        (len(indices), H, W, 3) uint8 RGB frames.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if decord cannot open or decode it.
    """
    reader = _open_video(path)
    unique = sorted(set(indices))
    try:
        batch = reader.get_batch(unique)
    except Exception as err:  # decord raises its own error types from C++
        raise _unreadable(Path(path), Modality.VIDEO, err) from err
    # decord returns its own NDArray or a torch tensor depending on the process-wide bridge setting.
    frames = batch if isinstance(batch, torch.Tensor) else torch.from_numpy(batch.asnumpy())
    position = {index: i for i, index in enumerate(unique)}
    return frames[[position[i] for i in indices]]  # (U, H, W, 3) -> (len(indices), H, W, 3)
