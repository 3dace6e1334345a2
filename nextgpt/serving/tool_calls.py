"""Tool choices in the OpenAI format: a reply `{'api_name': <tool id>}` becomes a `tool_calls` entry.

Tool calls are on when the server was started with `--tools FILE` or the request carries OpenAI `tools`; the names a
reply may call are the library's ids, narrowed to the request's function names when it lists any (only the request's
names without a library). `tool_choice: "none"` turns them off. The server never runs the tool (as in OpenAI's API,
the client does); a reply naming a tool outside those names, or "unknown", stays a plain text reply. The tool is read
from the model's reply only: what the user wrote never becomes a call.

    call = tool_call_of("{'api_name': tiny/shape-counter}", library, body)
    call["function"]["name"], json.loads(call["function"]["arguments"])   # "tiny/shape-counter", {"request": ...}
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

from nextgpt.serving.api_schema import ChatRequest
from nextgpt.tools.answers import parse_tool_answer
from nextgpt.tools.library import ToolLibrary

logger = logging.getLogger(__name__)


def _function_names(tools: list[dict[str, Any]]) -> set[str]:
    names = set()
    for tool in tools:
        function = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            names.add(function["name"])
    return names


def callable_names(library: ToolLibrary | None, body: ChatRequest) -> set[str] | None:
    """The tool ids a reply to `body` may call; None when tool calls are off for it."""
    if body.tool_choice == "none" or (library is None and not body.tools):
        return None
    requested = _function_names(body.tools) if body.tools else None
    if library is None:
        return requested
    return set(library.tools) if requested is None else requested & set(library.tools)


def _last_user_text(body: ChatRequest) -> str:
    for message in reversed(body.messages):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def tool_call_of(text: str, library: ToolLibrary | None, body: ChatRequest) -> dict[str, Any] | None:
    """The OpenAI `tool_calls` entry of a reply, or None (tool calls off, or the reply calls no allowed tool).

    Args:
        text: the reply text.
        library: the server's tool library, if any.
        body: the request.

    Returns:
        {"id", "type": "function", "function": {"name": <tool id>, "arguments": JSON {"request": <user text>}}}.
    """
    names = callable_names(library, body)
    if names is None:
        return None
    answer = parse_tool_answer(text)
    if not answer.well_formed:
        return None
    if answer.first not in names:
        logger.warning("reply chose %r, which is not a callable tool here; returned as text", answer.first)
        return None
    arguments = json.dumps({"request": _last_user_text(body)})
    return {
        "id": f"call_{uuid.uuid4().hex[:24]}",
        "type": "function",
        "function": {"name": answer.first, "arguments": arguments},
    }
