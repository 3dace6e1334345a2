"""Generated media → content parts of the reply: base64 data URIs, or URLs of files kept in an output folder.

Files are written by the project's writers (`save_outputs`: PNG, H.264 MP4, 16-bit WAV), so a reply's bytes are
the same files predict.py writes. In URL mode the folder keeps at most `keep` files: the oldest go first, so a
long-running server's disk use stays bounded.

    parts = MediaWriter(config).parts(pipeline, result, "chatcmpl-1a2b")
    # [{"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR..."}}]
"""

from __future__ import annotations

import base64
import shutil
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Any

from nextgpt.constants import MODALITIES, Modality
from nextgpt.inference.generation import GenerationResult
from nextgpt.inference.pipeline import NextGPTPipeline
from nextgpt.serving.api_config import ServeConfig

MIME_TYPES = {Modality.IMAGE: "image/png", Modality.VIDEO: "video/mp4", Modality.AUDIO: "audio/wav"}
PART_TYPES = {Modality.IMAGE: "image_url", Modality.VIDEO: "video_url", Modality.AUDIO: "audio_url"}
"""The part type of each generated modality (the same types a request may send)."""
FILES_ROUTE = "/v1/files"


class MediaWriter:
    """Turns a generation's arrays into reply content parts.

    Args:
        config: `media_output`, `output_dir` and `keep_outputs`.
    """

    def __init__(self, config: ServeConfig):
        self.as_url = config.media_output == "url"
        self.keep = config.keep_outputs
        self.folder = Path(config.output_dir or tempfile.mkdtemp(prefix="nextgpt-api-out-"))
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def parts(self, pipeline: NextGPTPipeline, result: GenerationResult, prefix: str) -> list[dict[str, Any]]:
        """Write the media and return one part per item (image, then video, then audio)."""
        if not any(result.outputs(m) for m in MODALITIES):
            return []
        scratch = Path(tempfile.mkdtemp(prefix="nextgpt-api-render-"))
        try:
            reply = pipeline.save(result, scratch, prefix)
            parts = []
            for item in reply.saved:
                if self.as_url:
                    name = f"{uuid.uuid4().hex[:12]}-{item.path.name}"
                    shutil.move(item.path, self.folder / name)
                    url = f"{FILES_ROUTE}/{name}"
                else:
                    encoded = base64.b64encode(item.path.read_bytes()).decode("ascii")
                    url = f"data:{MIME_TYPES[item.modality]};base64,{encoded}"
                kind = PART_TYPES[item.modality]
                parts.append({"type": kind, kind: {"url": url}})
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        if self.as_url:
            self._prune()
        return parts

    def find(self, name: str) -> Path | None:
        """A kept file by its name (a bare name: no folder parts), or None."""
        if not name or "/" in name or "\\" in name or name.startswith("."):
            return None
        path = self.folder / name
        return path if path.is_file() else None

    def _prune(self) -> None:
        with self._lock:
            files = sorted(self.folder.iterdir(), key=lambda p: p.stat().st_mtime)
            for old in files[: max(0, len(files) - self.keep)]:
                old.unlink(missing_ok=True)
