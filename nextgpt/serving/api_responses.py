"""OpenAI's response shapes: a `chat.completion`, the `chat.completion.chunk`s of a stream as server-sent events,
and the streamer that carries decoded text from the decoding thread to the event loop.

A reply with media has `message.content` as a list of parts (the text part, then `image_url` / `video_url` /
`audio_url` parts); a text-only reply keeps the plain string every client expects. A stream sends the text as
`delta.content` strings and the media in one chunk as `delta.media` (a list of the same parts), a field clients
that only read text ignore.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from transformers import TextStreamer


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def message_content(text: str, media_parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """The plain text, or the text part followed by the media parts."""
    if not media_parts:
        return text
    return [{"type": "text", "text": text}, *media_parts]


def completion(
    completion_id: str,
    model: str,
    content: Any,
    finish_reason: str,
    token_usage: dict[str, int],
    tool_calls: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A whole `chat.completion` object (with `tool_calls` in the message when a reply calls a tool)."""
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
        "usage": token_usage,
    }


def chunk(
    completion_id: str,
    model: str,
    delta: dict[str, Any],
    finish_reason: str | None = None,
    token_usage: dict[str, int] | None = None,
) -> str:
    """One `chat.completion.chunk` as a server-sent event (a usage-only chunk has no choices, as OpenAI sends it)."""
    body: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [] if token_usage is not None else [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }
    if token_usage is not None:
        body["usage"] = token_usage
    return f"data: {json.dumps(body)}\n\n"


DONE = "data: [DONE]\n\n"


def error_event(body: dict[str, Any]) -> str:
    """An error after the stream started (the status line is already sent): an event holding OpenAI's error body."""
    return f"data: {json.dumps(body)}\n\n"


class LoopStreamer(TextStreamer):
    """An HF streamer whose finished words go into an asyncio queue (None marks the end), from any thread.

    Args:
        tokenizer: the LLM's tokenizer.
        loop: the event loop that reads `queue`.
        queue: receives text pieces, then None.
    """

    def __init__(self, tokenizer: Any, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.loop = loop
        self.queue = queue

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if text:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, text)
        if stream_end:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, None)
