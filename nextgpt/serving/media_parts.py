"""OpenAI chat messages → the pipeline's `Message`s, with every media part checked and staged as a file.

Accepted content: a string, or a list of parts (in order; each media part becomes one placeholder where it stands):

| part | shape | modality |
|---|---|---|
| `text` | `{"type": "text", "text": "..."}` | - |
| `image_url` | `{"type": "image_url", "image_url": {"url": "data:image/png;base64,..." or "file:///..."}}` | image |
| `video_url` | `{"type": "video_url", "video_url": {"url": "data:video/mp4;base64,..." or "file:///..."}}` | video |
| `input_audio` | `{"type": "input_audio", "input_audio": {"data": "<base64>", "format": "wav"}}` | audio |
| `audio_url` | `{"type": "audio_url", "audio_url": {"url": "data:audio/wav;base64,..." or "file:///..."}}` | audio |

Nothing is fetched from the network. A `file://` URL must resolve (symlinks and `..` followed) inside
`ServeConfig.media_root`. Media in an assistant message stand for what that reply generated: the model sees them as
its signal tokens, as in training, and their bytes are never read. User text may not contain the placeholder strings
(`<image>`, ...): only media parts place media.

    messages = read_messages(body["messages"], config, scratch_dir)   # files written to scratch_dir, then probed
"""

from __future__ import annotations

import base64
import binascii
import mimetypes
import re
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from nextgpt.constants import PLACEHOLDERS, Modality
from nextgpt.encoders.media import SUPPORTED_EXTENSIONS
from nextgpt.inference.input_checks import probe_media_file
from nextgpt.inference.requests import Message
from nextgpt.serving.api_config import ServeConfig
from nextgpt.serving.api_errors import ApiError

PART_MODALITIES = {
    "image_url": Modality.IMAGE,
    "video_url": Modality.VIDEO,
    "audio_url": Modality.AUDIO,
    "input_audio": Modality.AUDIO,
}
"""Media part types and the modality each carries."""
PART_TYPES = ("text", *PART_MODALITIES)
_DATA_URI = re.compile(r"^data:([\w.+-]+/[\w.+-]+)?(?:;[\w=.+-]+)*;base64,(.*)$", re.DOTALL)
_EXTRA_TYPES = {"audio/wav": ".wav", "audio/x-wav": ".wav", "audio/wave": ".wav", "audio/mp3": ".mp3"}
_MB = 1024 * 1024


def read_messages(raw: Any, config: ServeConfig, folder: Path) -> list[Message]:
    """Convert the request's `messages` and stage its media under `folder`.

    Args:
        raw: the decoded `messages` value.
        config: limits and the media root.
        folder: a fresh folder for this request's decoded uploads.

    Returns:
        The conversation, user files pointing into `folder` or the media root.

    Raises:
        ApiError: 400 for a malformed message or part, 403 for a path outside the media root, 413 for an oversized
            upload.
    """
    if not isinstance(raw, list) or not raw:
        raise ApiError(400, "messages must be a non-empty list of {role, content} objects", "messages")
    stager = _Stager(config, folder)
    messages = [stager.message(index, item) for index, item in enumerate(raw)]
    chars = sum(len(m.text) for m in messages)
    if chars > config.max_prompt_chars:
        raise ApiError(
            400,
            f"the messages hold {chars} characters of text, over the limit of {config.max_prompt_chars} "
            "(--max-prompt-chars); shorten them",
            "messages",
        )
    return messages


class _Stager:
    def __init__(self, config: ServeConfig, folder: Path):
        self.config = config
        self.folder = folder
        self.num_items = 0

    def message(self, index: int, item: Any) -> Message:
        where = f"messages[{index}]"
        if not isinstance(item, dict):
            raise ApiError(400, f"{where} must be an object with 'role' and 'content'", "messages")
        role = item.get("role")
        if role in ("system", "developer"):
            raise ApiError(
                400, f"{where}: role {role!r} is not supported (the checkpoint's template has its own system "
                "prompt); drop that message", "messages",
            )  # fmt: skip
        if role not in ("user", "assistant"):
            raise ApiError(400, f"{where}: role must be 'user' or 'assistant', got {role!r}", "messages")
        content = item.get("content")
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if not isinstance(parts, list):
            raise ApiError(400, f"{where}: content must be a string or a list of parts", "messages")
        pieces: list[str] = []
        media: dict[Modality, list[Path]] = {}
        for number, part in enumerate(parts):
            at = f"{where}.content[{number}]"
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                text = part.get("text")
                if not isinstance(text, str):
                    raise ApiError(400, f"{at}: a text part needs a string 'text'", "messages")
                _check_no_placeholders(text, at)
                pieces.append(text)
            elif kind in PART_MODALITIES:
                modality = PART_MODALITIES[kind]
                self.num_items += 1
                if self.num_items > self.config.max_media_items:
                    raise ApiError(
                        400,
                        f"{at}: more than {self.config.max_media_items} media items in one request "
                        "(--max-media-items); send fewer",
                        "messages",
                    )
                if role == "assistant":  # stands for a generated item: seen as its signal tokens, never read
                    media.setdefault(modality, []).append(Path(f"generated-{number}"))
                    continue
                path = self.stage(part, kind, modality, at, f"{index}-{number}")
                media.setdefault(modality, []).append(path)
                pieces.append(PLACEHOLDERS[modality])
            else:
                raise ApiError(400, f"{at}: unknown part type {kind!r}; use one of {', '.join(PART_TYPES)}", "messages")
        return Message(role, "\n".join(pieces), media)

    def stage(self, part: dict, kind: str, modality: Modality, at: str, name: str) -> Path:
        """Write (data URI, base64) or locate (file URL) one media part, then check it decodes and its length."""
        body = part.get(kind)
        if not isinstance(body, dict):
            raise ApiError(400, f"{at}: a {kind} part needs an object {kind!r}", "messages")
        if kind == "input_audio":
            data, fmt = body.get("data"), body.get("format")
            if not isinstance(data, str) or not isinstance(fmt, str):
                raise ApiError(400, f"{at}: input_audio needs 'data' (base64) and 'format' (e.g. 'wav')", "messages")
            path = self._write(data, "." + fmt.lower().lstrip("."), modality, at, name)
        else:
            url = body.get("url")
            if not isinstance(url, str):
                raise ApiError(400, f"{at}: {kind} needs a string 'url' (a data URI or a file:// URL)", "messages")
            if url.startswith("data:"):
                path = self._from_data_uri(url, modality, at, name)
            elif url.startswith("file:"):
                path = self._from_file_url(url, modality, at)
            else:
                raise ApiError(
                    400, f"{at}: only data: URIs and file:// URLs are read (nothing is downloaded); inline the "
                    "media as a base64 data URI", "messages",
                )  # fmt: skip
        try:
            probe_media_file(path, modality, self.config.max_upload_bytes)
        except (FileNotFoundError, ValueError) as err:
            message = str(err).replace(str(path), "the upload" if path.is_relative_to(self.folder) else path.name)
            raise ApiError(400, f"{at}: {message}", "messages") from None
        if modality is not Modality.IMAGE:
            seconds = media_seconds(path)
            if seconds > self.config.max_media_seconds:
                raise ApiError(
                    400,
                    f"{at}: the {modality.value} lasts {seconds:.1f} s, over the {self.config.max_media_seconds:g} s "
                    "limit (--max-media-seconds); send a shorter clip",
                    "messages",
                )
        return path

    def _from_data_uri(self, url: str, modality: Modality, at: str, name: str) -> Path:
        match = _DATA_URI.match(url)
        if match is None:
            raise ApiError(400, f"{at}: not a base64 data URI; write data:<mime type>;base64,<data>", "messages")
        mime = (match.group(1) or "").lower()
        suffix = _EXTRA_TYPES.get(mime) or mimetypes.guess_extension(mime) or ""
        return self._write(match.group(2), suffix, modality, at, name)

    def _write(self, data: str, suffix: str, modality: Modality, at: str, name: str) -> Path:
        accepted = SUPPORTED_EXTENSIONS[modality]
        if suffix not in accepted:
            raise ApiError(
                400,
                f"{at}: {suffix.lstrip('.') or 'that type'} is not a supported {modality.value} format; send one "
                f"of {', '.join(e.lstrip('.') for e in accepted)}",
                "messages",
            )
        limit = self.config.max_upload_bytes
        if len(data) * 3 // 4 > limit:  # refused before decoding it
            raise ApiError(
                413,
                f"{at}: the {modality.value} is {len(data) * 3 / 4 / _MB:.1f} MB, over the {limit / _MB:.1f} MB "
                "upload limit (--max-upload-mb); send a smaller file",
                "messages",
            )
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(400, f"{at}: the data is not valid base64", "messages") from None
        path = self.folder / f"{name}{suffix}"
        path.write_bytes(raw)
        return path

    def _from_file_url(self, url: str, modality: Modality, at: str) -> Path:
        root = self.config.media_root
        if root is None:
            raise ApiError(
                403, f"{at}: file:// URLs are off; start the server with --media-root FOLDER to allow a folder",
                "messages",
            )  # fmt: skip
        parsed = urlparse(url)
        if parsed.netloc not in ("", "localhost"):
            raise ApiError(400, f"{at}: a file URL names no host; write file:///path/inside/the/media/root", "messages")
        path = Path(unquote(parsed.path))
        try:
            resolved = path.resolve(strict=True)  # follows every symlink and `..`
        except (FileNotFoundError, RuntimeError, OSError):
            resolved = None
        inside = resolved is not None and resolved.is_relative_to(Path(root).resolve())
        if not inside:
            raise ApiError(403, f"{at}: {path} is not a file inside the media root (--media-root)", "messages")
        size = resolved.stat().st_size
        if size > self.config.max_upload_bytes:
            raise ApiError(
                413,
                f"{at}: {path.name} is {size / _MB:.1f} MB, over the {self.config.max_upload_mb:.1f} MB upload limit "
                "(--max-upload-mb)",
                "messages",
            )
        return resolved


def _check_no_placeholders(text: str, at: str) -> None:
    for placeholder in PLACEHOLDERS.values():
        if placeholder in text:
            raise ApiError(
                400,
                f"{at}: the text holds {placeholder!r}, which would place media; send media as parts "
                f"({', '.join(PART_MODALITIES)}) and remove it from the text",
                "messages",
            )


def media_seconds(path: Path) -> float:
    """Length of a video or audio file in seconds (container duration, else the longest stream's)."""
    import av

    with av.open(str(path)) as container:
        if container.duration is not None:
            return container.duration / 1_000_000  # av.time_base: microseconds
        lengths = [float(s.duration * s.time_base) for s in container.streams if s.duration and s.time_base]
        return max(lengths, default=0.0)
