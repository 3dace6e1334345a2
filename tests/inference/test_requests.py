"""Chat requests: placeholder insertion, splice order across turns, conversation checks, JSON / JSONL parsing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nextgpt.constants import Modality
from nextgpt.inference.requests import (
    Message,
    build_turns,
    check_conversation,
    parse_request,
    read_conversation_file,
    read_requests_jsonl,
)


def test_placeholders_are_prepended_per_file_and_files_keep_conversation_order():
    messages = [
        Message("user", "Compare these.", {Modality.IMAGE: [Path("a.png"), Path("b.png")]}),
        Message("assistant", "Here is a mix of both.", {Modality.IMAGE: [Path("out.png")]}),
        Message(
            "user", "<audio> sounds like <image>?", {Modality.IMAGE: [Path("c.png")], Modality.AUDIO: [Path("s.wav")]}
        ),
    ]
    turns, files = build_turns(messages)
    assert turns[0].text == "<image>\n<image>\nCompare these."
    # The assistant's generated file becomes its placeholder (= signal tokens), not an input to splice.
    assert turns[1].text == "Here is a mix of both. <image>"
    assert turns[2].text == "<audio> sounds like <image>?"
    assert files == {Modality.IMAGE: [Path("a.png"), Path("b.png"), Path("c.png")], Modality.AUDIO: [Path("s.wav")]}


def test_placeholder_count_must_match_files():
    with pytest.raises(ValueError, match=r"message 0 has 2 <image> placeholder\(s\) but 1 image file\(s\)"):
        build_turns([Message("user", "<image> and <image>", {Modality.IMAGE: [Path("a.png")]})])
    with pytest.raises(ValueError, match=r"1 <video> placeholder\(s\) but 0 video file"):
        build_turns([Message("user", "What happens in <video>?")])
    # Assistant placeholders without files are signal tokens from a given history: allowed.
    turns, files = build_turns(
        [Message("user", "Draw."), Message("assistant", "Done <image>"), Message("user", "Again")]
    )
    assert turns[1].text == "Done <image>" and files == {}


@pytest.mark.parametrize(
    ("messages", "message"),
    [
        ([], "conversation is empty"),
        ([Message("user", "   ")], "prompt is empty"),
        ([Message("assistant", "Hi")], "message 0 must have role 'user'"),
        ([Message("user", "Hi"), Message("assistant", "Hello")], "ends with an assistant message"),
    ],
)
def test_bad_conversations(messages, message):
    with pytest.raises(ValueError, match=message):
        check_conversation(messages)


def test_media_without_text_is_a_prompt():
    check_conversation([Message("user", "", {Modality.IMAGE: [Path("a.png")]})])


def test_parse_request_forms(tmp_path):
    single = parse_request({"prompt": "Describe", "image": "cat.png", "id": "q7"}, tmp_path, "0001")
    assert single.id == "q7" and single.messages == [
        Message("user", "Describe", {Modality.IMAGE: [tmp_path / "cat.png"]})
    ]
    chat = parse_request(
        {
            "messages": [
                {"role": "user", "text": "Hi", "audio": ["/abs/a.wav"]},
                {"role": "assistant", "text": "Hey"},
                {"role": "user", "text": "Sing"},
            ]
        },
        tmp_path,
        "0002",
    )
    assert chat.id == "0002" and chat.messages[0].media == {Modality.AUDIO: [Path("/abs/a.wav")]}
    for obj, message in [
        ({"prompt": "a", "messages": []}, "exactly one of 'messages'"),
        ({"prompt": "a", "images": ["x.png"]}, r"unknown key\(s\) \['images'\]"),
        ({"prompt": "a", "image": [3]}, "must be a path or a list of paths"),
        ({"prompt": "a", "id": "../x"}, "cannot name output files"),
        ({"prompt": "a", "id": "x" * 65}, "65 characters long, over the limit of 64"),
        ({"prompt": "a", "id": None}, "'id' must be a string"),
        ({"prompt": "<image> and <image>", "image": ["a.png"]}, r"2 <image> placeholder\(s\) but 1 image file"),
        ({"prompt": "a", "image": [""]}, "empty or invalid path"),
        ({"prompt": "a", "imgae": "a.png"}, "did you mean 'image'"),
        ({"messages": [{"role": "bot", "text": "a"}]}, "'role' must be 'user' or 'assistant'"),
        ({"prompt": ""}, "prompt is empty"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_request(obj, tmp_path, "0003")


def test_batch_and_conversation_files(tmp_path):
    batch = tmp_path / "batch.jsonl"
    batch.write_text('{"prompt": "one"}\n\n{"id": "b", "prompt": "two", "video": "v.mp4"}\n')
    requests = read_requests_jsonl(batch)
    assert [r.id for r in requests] == ["0001", "b"]
    assert requests[1].messages[0].media == {Modality.VIDEO: [tmp_path / "v.mp4"]}
    batch.write_text('{"prompt": "one"}\n{"prompt": \n[1]\n{"prompt": "x", "id": "a/b"}\n')
    with pytest.raises(
        ValueError, match=r"3 bad lines in .*batch.jsonl:2 is not valid JSON.*batch.jsonl:3 must be a JSON obj"
    ):
        read_requests_jsonl(batch)  # every bad line named at once
    batch.write_text('{"id": "a", "prompt": "one"}\n{"id": "a", "prompt": "two"}\n')
    with pytest.raises(ValueError, match=r"ids \['a'\] repeat"):
        read_requests_jsonl(batch)
    with pytest.raises(FileNotFoundError, match="batch file not found"):
        read_requests_jsonl(tmp_path / "none.jsonl")
    with pytest.raises(ValueError, match="is a folder; pass the file itself"):
        read_requests_jsonl(tmp_path)
    batch.write_bytes(b"\xff\xfe{}")
    with pytest.raises(ValueError, match="is not UTF-8 text"):
        read_requests_jsonl(batch)
    batch.write_text("\n  \n")
    with pytest.raises(ValueError, match="is empty; write one request per line"):
        read_requests_jsonl(batch)
    conversation = tmp_path / "chat.json"
    conversation.write_text(
        json.dumps([{"role": "user", "text": "Hi", "image": "x.png"}, {"role": "assistant", "text": "Yo"}])
    )
    messages = read_conversation_file(conversation)
    assert [m.role for m in messages] == ["user", "assistant"] and messages[0].media[Modality.IMAGE] == [
        tmp_path / "x.png"
    ]
    conversation.write_text(json.dumps({"messages": [{"role": "user", "text": "Hi"}]}))
    assert read_conversation_file(conversation) == [Message("user", "Hi")]
