"""How the OpenAI-compatible API is served and what it refuses: one typed dataclass, mapped 1:1 to serve.py's flags.

Every limit protects the one process that holds the model: a request over a limit is refused before it costs
anything, with one line naming the limit, its value and the flag that raises it.

    config = ServeConfig(api_key="s3cret", media_root=Path("/srv/media"), max_concurrent=16)
    app = create_app(config, pipeline)      # nextgpt.serving.api
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Literal

_MB = 1024 * 1024


@dataclass
class ServeConfig:
    """Server settings and limits (the defaults are safe: this machine only, no files read from disk)."""

    host: str = "127.0.0.1"
    """Interface to bind; 127.0.0.1 keeps the API on this machine (0.0.0.0 is an explicit opt-in)."""
    port: int = 8000
    """TCP port."""
    api_key: str | None = None
    """When set, every /v1 request needs `Authorization: Bearer <api_key>` (401 otherwise)."""
    model_name: str | None = None
    """The model id /v1/models lists and replies carry; None uses the checkpoint folder's name."""
    media_root: Path | None = None
    """Folder that `file://` media URLs may point into (symlinks and `..` resolved first); None refuses file URLs."""
    media_output: Literal["data_uri", "url"] = "data_uri"
    """Generated media in replies: base64 data URIs, or URLs under /v1/files served from `output_dir`."""
    output_dir: Path | None = None
    """Where `media_output: url` keeps generated files; None uses a fresh temporary folder."""
    keep_outputs: int = 200
    """`media_output: url`: at most this many generated files are kept; the oldest are deleted first."""
    max_upload_mb: float = 20.0
    """Per media item, after base64 decoding (413 above)."""
    max_request_mb: float = 64.0
    """Whole request body (413 above)."""
    max_media_seconds: float = 60.0
    """Longest input video or audio (400 above)."""
    max_prompt_chars: int = 8000
    """Total characters of text in a request's messages (400 above)."""
    max_media_items: int = 8
    """Media items in one request (400 above)."""
    max_concurrent: int = 32
    """Requests processed at once (reading media, decoding, rendering); later ones wait in the queue."""
    max_queue: int = 64
    """Requests waiting for a slot; beyond it a request is refused with 429 at once."""
    max_batch_size: int = 16
    """Most prompts decoded together in one text batch: the rows of the text decoder's static KV cache, every one
    computed at each step (a 7B step reads the weights once, so 32 rows cost little more than 1), held in memory for
    the server's life: rows x (model.llm.max_length + generation.max_new_tokens) x 0.5 MB for a 7B model in bf16
    (16 x 768 tokens: 6 GiB). Raise it to match max_concurrent on a large GPU."""
    batch_window_ms: float = 10.0
    """How long the text decoder waits for more prompts after the first one arrives (dynamic batching)."""
    max_inference_steps: int = 200
    """Upper bound of the per-request `num_inference_steps` option."""
    max_frames: int = 64
    """Upper bound of the per-request `num_frames` option."""
    max_audio_seconds: float = 30.0
    """Upper bound of the per-request `audio_seconds` option."""
    tools: Path | None = None
    """A tool library JSON (`nextgpt.tools.library`): a reply that chooses one of its tools (`{'api_name': <id>}`)
    is returned as an OpenAI `tool_calls` entry for the client to run (see `nextgpt.serving.tool_calls`)."""

    def __post_init__(self) -> None:
        positive = ("max_upload_mb", "max_request_mb", "max_media_seconds", "max_audio_seconds")
        for name in positive:
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value}")
        at_least_one = ("max_prompt_chars", "max_media_items", "max_concurrent", "max_batch_size", "keep_outputs")
        for name in (*at_least_one, "max_inference_steps", "max_frames"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_queue < 0:
            raise ValueError(f"max_queue must be >= 0, got {self.max_queue}")
        if not (math.isfinite(self.batch_window_ms) and self.batch_window_ms >= 0):
            raise ValueError(f"batch_window_ms must be a finite number >= 0, got {self.batch_window_ms}")
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be in [1, 65535], got {self.port}")
        if self.media_output not in ("data_uri", "url"):
            raise ValueError(f"media_output must be 'data_uri' or 'url', got {self.media_output!r}")
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("api_key is empty; pass a non-empty key or none")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * _MB)

    @property
    def max_request_bytes(self) -> int:
        return int(self.max_request_mb * _MB)

    @classmethod
    def flag_names(cls) -> list[str]:
        """The dataclass fields, which are serve.py's flags with dashes."""
        return [f.name for f in fields(cls)]
