"""What a request brings, checked before any model loads: its media files decode and its id can name files.

A bad file used to surface only after the LLM, ImageBind and the decoders had loaded (15-55 s on real weights), one
file at a time. `check_request_media` opens every user file of every request the way the loaders will (the image is
decoded, the video container is probed and one frame decoded, the audio header parsed) and reports all problems in
one line.

    check_request_id("q1", "requests.jsonl:1")          # "q1"; raises ValueError for "../x" or 300 characters
    probe_media_file(Path("cat.png"), Modality.IMAGE)   # raises FileNotFoundError / ValueError with the fix
    check_request_media(requests)                       # every problem of a batch in one ValueError
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import wave
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from nextgpt.constants import MODALITIES, Modality
from nextgpt.encoders.media import SUPPORTED_EXTENSIONS

MAX_ID_CHARS = 64
"""Longest request id: ids become file-name parts (`<id>-<modality>-<k>.mp4`), and file names end at 255 bytes."""

_ID_PATTERN = re.compile(r"[\w.-]+")
_NATIVE_PREFIX = re.compile(r"^\[[\d:]+\] \S+:\d+: (\[the file\] )?")
"""decord's "[12:00:00] src/video/video_reader.cc:270: [path] " prefix, useless to a person."""
_MIN_AUDIO_SECONDS = 0.025
"""ImageBind's audio features need at least one 25 ms filterbank frame."""
_MAX_LISTED = 6
"""Problems spelled out in one error line; the rest are counted."""
_BYTES_PER_MB = 1024 * 1024


def one_line(text: object, limit: int = 300) -> str:
    """The first line of a library's error text, cut to `limit` characters (decord appends C++ stack traces)."""
    first = str(text).strip().splitlines()[0] if str(text).strip() else type(text).__name__
    return first if len(first) <= limit else first[: limit - 1] + "…"


def join_problems(problems: Sequence[str], what: str) -> str:
    """One line for several problems: the first few spelled out, the rest counted."""
    if len(problems) == 1:
        return problems[0]
    listed = "; ".join(problems[:_MAX_LISTED])
    more = f"; and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
    return f"{len(problems)} {what}: {listed}{more}"


def check_name_part(value: object, what: str) -> str:
    """Check that a user-chosen name can be part of a file name.

    Args:
        value: the name as given (a string, or an integer from JSON).
        what: names the value in error messages, e.g. "requests.jsonl:3: 'id'".

    Returns:
        The name as a string.

    Raises:
        ValueError: not a string or integer, empty, too long, or with characters other than letters, digits, '.', '_'
            and '-' (path separators, spaces, control characters), or starting with '.' or '-'.
    """
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError(f'{what} must be a string such as "q1", got {type(value).__name__} {value!r}')
    text = str(value)
    rule = f"use 1-{MAX_ID_CHARS} letters, digits, '.', '_' or '-', not starting with '.' or '-' (e.g. \"q1\")"
    if len(text) > MAX_ID_CHARS:
        raise ValueError(f"{what} is {len(text)} characters long, over the limit of {MAX_ID_CHARS}; {rule}")
    if not _ID_PATTERN.fullmatch(text) or text[0] in ".-":
        raise ValueError(f"{what} {text!r} cannot name output files; {rule}")
    return text


def check_request_id(value: object, where: str) -> str:
    """Check a request id (it names the request's output files); see `check_name_part`."""
    return check_name_part(value, f"{where}: 'id'")


def check_file_entry(path: Path, modality: Modality, max_bytes: int | None = None) -> None:
    """Check existence, type, extension, size and read permission: everything short of decoding.

    Args:
        path: the file.
        modality: what it should contain.
        max_bytes: size limit; None for no limit.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: a folder or special file, an unsupported extension, an empty, oversized or unreadable file.
    """
    label = f"{modality.value} file {path}"
    accepted = ", ".join(SUPPORTED_EXTENSIONS[modality])
    if not path.exists():
        raise FileNotFoundError(f"{label} not found; check the path (accepted formats: {accepted})")
    if path.is_dir():
        raise ValueError(f"{label} is a folder; pass a {modality.value} file ({accepted})")
    if not path.is_file():
        raise ValueError(f"{label} is not a regular file (a pipe or device); save it to a file first")
    if path.suffix.lower() not in SUPPORTED_EXTENSIONS[modality]:
        raise ValueError(
            f"{label} has extension {path.suffix or '(none)'!r}, not a supported {modality.value} format; "
            f"convert it to one of {accepted}"
        )
    size = path.stat().st_size
    if size == 0:
        raise ValueError(f"{label} is empty (0 bytes); export or download it again")
    if max_bytes is not None and size > max_bytes:
        raise ValueError(
            f"{label} is {size / _BYTES_PER_MB:.1f} MB, over the {max_bytes / _BYTES_PER_MB:.1f} MB upload limit; "
            "send a smaller file or raise the limit"
        )
    try:
        with open(path, "rb") as handle:
            handle.read(16)
    except PermissionError:
        raise ValueError(f"cannot read {label} (permission denied); make it readable (chmod u+r) or copy it") from None
    except OSError as err:
        raise ValueError(f"cannot read {label} ({err.strerror or err}); copy it to a local disk and retry") from None


def _decode_image(path: Path) -> None:
    from PIL import Image

    with Image.open(path) as image:
        image.verify()  # chunk checksums (PNG) and structure, without decoding pixels
    with Image.open(path) as image:
        image.load()  # the pixels: catches truncated files that verify() lets through


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Silence what C libraries write to file descriptor 2 (decord and FFmpeg print their own multi-line reports of
    a broken file; the probe reports it in one line). Process-wide, so only around the few milliseconds of a probe."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _decode_video(path: Path) -> None:
    import decord

    with _native_stderr_silenced():
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0))
        num_frames, fps = len(reader), float(reader.get_avg_fps())
        if num_frames == 0 or fps <= 0:
            raise ValueError(f"{num_frames} frames at {fps} fps")
        reader[0]  # decode one frame: a container with an undecodable stream fails here, not in the encoder


def _decode_audio(path: Path) -> float:
    if path.suffix.lower() == ".wav":
        try:
            with wave.open(str(path), "rb") as reader:
                seconds = reader.getnframes() / reader.getframerate()
        except wave.Error:
            seconds = _audio_seconds_with_pyav(path)  # float or compressed WAV: PyAV reads those
    else:
        seconds = _audio_seconds_with_pyav(path)
    return seconds


def _audio_seconds_with_pyav(path: Path) -> float:
    import av

    with av.open(str(path)) as container:
        if not container.streams.audio:
            raise ValueError("the file has no audio stream")
        stream = container.streams.audio[0]
        for frame in container.decode(stream):  # decode the first frame only: the stream is real
            if stream.duration is not None and stream.time_base is not None:
                return float(stream.duration * stream.time_base)
            if container.duration is not None:
                return container.duration / 1_000_000  # av.time_base: microseconds
            return frame.samples / frame.sample_rate
    raise ValueError("the audio stream has no samples")


_DECODERS = {Modality.IMAGE: _decode_image, Modality.VIDEO: _decode_video, Modality.AUDIO: _decode_audio}


def probe_media_file(path: Path, modality: Modality, max_bytes: int | None = None) -> Path:
    """Check that a user's media file will load: it exists, is a readable non-empty file of a supported format, and
    it decodes (image pixels, one video frame, the audio header and first samples).

    Args:
        path: the file.
        modality: what it should contain.
        max_bytes: size limit; None for no limit.

    Returns:
        `path` as a Path.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: a folder, an empty, unreadable, oversized or undecodable file, or an unsupported extension.
    """
    path = Path(path)
    check_file_entry(path, modality, max_bytes)
    try:
        seconds = _DECODERS[modality](path)
    except Exception as err:  # every decoder library raises its own types; all mean "cannot be read"
        reason = one_line(err, 400).replace(str(path), "the file")  # the path is named once, below
        reason = _NATIVE_PREFIX.sub("", reason)[:160]
        raise ValueError(
            f"{modality.value} file {path} does not decode as {modality.value} ({type(err).__name__}: {reason}); "
            f"re-encode it as one of {', '.join(SUPPORTED_EXTENSIONS[modality])}"
        ) from None
    if seconds is not None and seconds < _MIN_AUDIO_SECONDS:
        raise ValueError(
            f"audio file {path} holds {seconds * 1000:.0f} ms of sound; ImageBind needs at least 25 ms, "
            "send a longer recording"
        )
    return path


def request_media(messages: Iterable) -> list[tuple[Modality, Path]]:
    """The input files of a conversation's user messages (assistant files are outputs, never read)."""
    return [
        (modality, Path(path))
        for message in messages
        if message.role == "user"
        for modality in MODALITIES
        for path in message.media.get(modality, ())
    ]


def check_request_media(requests: Sequence, max_bytes: int | None = None) -> None:
    """Probe every input file of every request (each file once) and report all problems together.

    Args:
        requests: `ChatRequest`s.
        max_bytes: per-file size limit; None for no limit.

    Raises:
        ValueError: one line naming each bad file, the request that uses it and the fix.
    """
    problems: list[str] = []
    seen: set[tuple[Modality, Path]] = set()
    for request in requests:
        for modality, path in request_media(request.messages):
            if (modality, path) in seen:
                continue
            seen.add((modality, path))
            try:
                probe_media_file(path, modality, max_bytes)
            except (FileNotFoundError, ValueError) as err:
                where = f"request {request.id}: " if len(requests) > 1 else ""
                problems.append(f"{where}{err}")
    if problems:
        raise ValueError(join_problems(problems, "bad input files"))
