"""Tool choices in the OpenAI format: when calls are on, which names a reply may call, and that only the reply (never
the user's text) becomes a call. The whole server path is exercised with a trained tool checkpoint below."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nextgpt.serving.api_schema import ChatRequest
from nextgpt.serving.tool_calls import callable_names, tool_call_of
from nextgpt.tiny.tools import tiny_tool_library

ANSWER = "{'api_name': tiny/shape-counter}"


def _body(**extra) -> ChatRequest:
    return ChatRequest(messages=[{"role": "user", "content": "How many shapes are there?"}], **extra)


def _function(name: str) -> dict:
    return {"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}


def test_a_library_turns_a_tool_answer_into_an_openai_tool_call():
    call = tool_call_of(ANSWER, tiny_tool_library(), _body())
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] == "tiny/shape-counter"
    assert json.loads(call["function"]["arguments"]) == {"request": "How many shapes are there?"}


def test_request_tools_narrow_or_enable_the_names():
    library = tiny_tool_library()
    assert callable_names(None, _body()) is None
    assert callable_names(library, _body(tool_choice="none")) is None
    assert callable_names(library, _body(tools=[_function("tiny/pitch-meter")])) == {"tiny/pitch-meter"}
    assert tool_call_of(ANSWER, library, _body(tools=[_function("tiny/pitch-meter")])) is None
    assert tool_call_of(ANSWER, None, _body(tools=[_function("tiny/shape-counter")]))["function"]["name"]


@pytest.mark.parametrize("reply", ["{'api_name': unknown}", "{'api_name': tiny/made-up}", "3 shapes", ""])
def test_unknown_invented_or_plain_replies_stay_text(reply: str):
    assert tool_call_of(reply, tiny_tool_library(), _body()) is None


def test_the_users_text_never_becomes_a_call():
    body = ChatRequest(messages=[{"role": "user", "content": ANSWER}])
    assert tool_call_of("Sure, here it is.", tiny_tool_library(), body) is None


@pytest.mark.slow
@pytest.mark.numerics
def test_tool_calls_come_back_from_the_server(tool_checkpoint: Path, tool_world: Path, serve):
    """The trained tool checkpoint behind the API: its choice arrives as tool_calls (plain and streamed)."""
    from openai import OpenAI

    from nextgpt.inference.pipeline import NextGPTPipeline
    from nextgpt.serving.api import create_app
    from nextgpt.serving.api_config import ServeConfig

    pipeline = NextGPTPipeline.from_pretrained(tool_checkpoint, overrides=["generation.temperature=0"])
    app = create_app(ServeConfig(tools=tool_world.parent / "tools.json"), pipeline)
    messages = [{"role": "user", "content": "Please draw a picture of a red circle."}]
    with serve(app) as url:
        client = OpenAI(base_url=f"{url}/v1", api_key="none")
        reply = client.chat.completions.create(model=tool_checkpoint.name, messages=messages)
        (call,) = reply.choices[0].message.tool_calls
        assert reply.choices[0].finish_reason == "tool_calls"
        assert call.function.name == "nextgpt/image-decoder"
        chunks = list(client.chat.completions.create(model=tool_checkpoint.name, messages=messages, stream=True))
        last = [c for c in chunks if c.choices and c.choices[0].finish_reason][-1]
        assert last.choices[0].finish_reason == "tool_calls"
        assert last.choices[0].delta.tool_calls[0].function.name == "nextgpt/image-decoder"
        off = client.chat.completions.create(
            model=tool_checkpoint.name, messages=messages, extra_body={"tool_choice": "none"}
        )
        assert off.choices[0].message.tool_calls is None and "api_name" in off.choices[0].message.content
