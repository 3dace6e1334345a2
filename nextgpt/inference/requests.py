"""Chat requests: messages with their files, the conversation checks, and the JSON / JSONL request formats.

Where a user message has files of a modality but no placeholder of it in its text, one placeholder per file is put in
front of the text on its own line (as LLaVA does): "What is this?" with one image becomes "<image>\\nWhat is this?".
An assistant message keeps the files it generated; a placeholder per file is appended to its text, which the prompt
turns into that modality's signal tokens, exactly as in training.

A message in JSON is `{"role": "user", "text": "...", "image": ["a.png"], "video": [...], "audio": [...]}` (a single
path may be a string; relative paths are read from the JSON file's folder). A request is either a whole conversation
`{"id": "q1", "messages": [...]}` or a single prompt `{"id": "q1", "prompt": "...", "image": [...]}`; a conversation
file holds one request (or a bare list of messages), a batch file one request per line.

    requests = read_requests_jsonl(Path("batch.jsonl"))   # [ChatRequest(id="q1", messages=[Message(...)]), ...]
    turns, files = build_turns(requests[0].messages)      # prompt turns + user files in splice order
"""

from __future__ import annotations

import difflib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from nextgpt.constants import MODALITIES, PLACEHOLDERS, Modality
from nextgpt.inference.input_checks import check_request_id, join_problems
from nextgpt.llm.conversation import Turn
from nextgpt.llm.tokenizer import split_placeholders

logger = logging.getLogger(__name__)

_MESSAGE_KEYS = {"role", "text", *(m.value for m in MODALITIES)}
_REQUEST_KEYS = {"id", "messages", "prompt", *(m.value for m in MODALITIES)}
_EXAMPLE_EXTENSIONS = {Modality.IMAGE: ".png", Modality.VIDEO: ".mp4", Modality.AUDIO: ".wav"}


@dataclass
class Message:
    """One chat message.

    Attributes:
        role: "user" or "assistant"; conversations start with the user and alternate.
        text: the message; may hold `<image>` / `<video>` / `<audio>` placeholders.
        media: user message: input files, spliced in placeholder order. Assistant message: the files it generated
            (shown to people; the model sees them as its signal tokens, never re-reads the files).
    """

    role: Literal["user", "assistant"]
    text: str
    media: dict[Modality, list[Path]] = field(default_factory=dict)


def check_conversation(messages: Sequence[Message]) -> None:
    """Check roles and that the last (user) message asks for something.

    Args:
        messages: the conversation.

    Raises:
        ValueError: no messages, wrong role order, or an empty final prompt (no text and no files).
    """
    if not messages:
        raise ValueError("the conversation is empty; give at least one user message (a prompt)")
    for index, message in enumerate(messages):
        expected = "user" if index % 2 == 0 else "assistant"
        if message.role != expected:
            raise ValueError(
                f"message {index} must have role {expected!r} (start with the user and alternate), got {message.role!r}"
            )
    last = messages[-1]
    if last.role != "user":
        raise ValueError(
            "the conversation ends with an assistant message; add the user's next message (predict.py: --prompt)"
        )
    if not last.text.strip() and not any(last.media.values()):
        raise ValueError("the prompt is empty; type a request, e.g. 'Please generate an image of a cat.'")
    for index, message in enumerate(messages[:-1]):
        if message.role == "user" and not message.text.strip() and not any(message.media.values()):
            raise ValueError(f"message {index} (user) has no text and no files; write what the user said")


def _with_placeholders(message: Message, index: int) -> str:
    """The message text with one placeholder per file of every modality that has files but no placeholder."""
    counts = {m: 0 for m in MODALITIES}
    for part in split_placeholders(message.text):
        if isinstance(part, Modality):
            counts[part] += 1
    missing = []
    for modality in MODALITIES:
        num_files = len(message.media.get(modality, ()))
        if num_files and not counts[modality]:
            missing += [PLACEHOLDERS[modality]] * num_files
        elif message.role == "user" and counts[modality] != num_files:
            raise ValueError(
                f"message {index} has {counts[modality]} {PLACEHOLDERS[modality]} placeholder(s) but {num_files} "
                f"{modality.value} file(s); give one file per placeholder, or no placeholders to add them in front"
            )
    if not missing:
        return message.text
    if message.role == "user":
        return "\n".join(missing) + "\n" + message.text
    return f"{message.text} {' '.join(missing)}".strip()


def build_turns(messages: Sequence[Message]) -> tuple[list[Turn], dict[Modality, list[Path]]]:
    """Turn messages into prompt turns plus the user files in splice order.

    Args:
        messages: a checked conversation (see `check_conversation`).

    Returns:
        The turns, and per modality the user-side files in order of appearance.

    Raises:
        ValueError: a user message whose placeholder count differs from its file count.
    """
    turns: list[Turn] = []
    files: dict[Modality, list[Path]] = {m: [] for m in MODALITIES}
    for index, message in enumerate(messages):
        turns.append(Turn(message.role, _with_placeholders(message, index)))
        if message.role == "user":
            for modality in MODALITIES:
                files[modality] += [Path(p) for p in message.media.get(modality, ())]
    return turns, {m: paths for m, paths in files.items() if paths}


@dataclass
class ChatRequest:
    """One conversation to answer, with a name for its output files."""

    id: str
    messages: list[Message]


def _read_paths(obj: dict[str, Any], base_dir: Path, where: str) -> dict[Modality, list[Path]]:
    media: dict[Modality, list[Path]] = {}
    for modality in MODALITIES:
        value = obj.get(modality.value, [])
        paths = [value] if isinstance(value, str) else value
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
            raise ValueError(
                f"{where}: {modality.value!r} must be a path or a list of paths, got {value!r}; "
                f'write e.g. "{modality.value}": ["cat{_EXAMPLE_EXTENSIONS[modality]}"]'
            )
        if any(not p.strip() or "\x00" in p for p in paths):
            raise ValueError(f"{where}: {modality.value!r} holds an empty or invalid path {value!r}; name a file")
        if paths:
            media[modality] = [base_dir / p for p in paths]  # an absolute p replaces base_dir
    return media


def _check_keys(obj: Any, allowed: set[str], where: str) -> None:
    if not isinstance(obj, dict):
        raise ValueError(f"{where} must be a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - allowed)
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), sorted(allowed), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(f"{where} has unknown key(s) {unknown}; {hint}allowed: {sorted(allowed)}")


def parse_messages(items: Any, base_dir: Path, where: str = "conversation") -> list[Message]:
    """Read a JSON list of messages.

    Args:
        items: the decoded JSON list.
        base_dir: folder that relative file paths are read from.
        where: names the source in error messages.

    Returns:
        The messages (not yet checked; see `check_conversation`).

    Raises:
        ValueError: not a list of message objects, or a malformed message.
    """
    if not isinstance(items, list):
        raise ValueError(f"{where}: 'messages' must be a list of message objects, got {type(items).__name__}")
    messages = []
    for index, item in enumerate(items):
        at = f"{where} message {index}"
        _check_keys(item, _MESSAGE_KEYS, at)
        role, text = item.get("role"), item.get("text", "")
        if role not in ("user", "assistant"):
            raise ValueError(f"{at}: 'role' must be 'user' or 'assistant', got {role!r}")
        if not isinstance(text, str):
            raise ValueError(f"{at}: 'text' must be a string, got {type(text).__name__}")
        messages.append(Message(role, text, _read_paths(item, base_dir, at)))
    return messages


def parse_request(obj: Any, base_dir: Path, default_id: str, where: str = "request") -> ChatRequest:
    """Read one request object: `{"messages": [...]}` or `{"prompt": ..., "image": [...]}`, optional "id".

    Args:
        obj: the decoded JSON object.
        base_dir: folder that relative file paths are read from.
        default_id: the id when the object has none.
        where: names the source in error messages.

    Returns:
        The request, with its conversation checked.

    Raises:
        ValueError: malformed request or conversation.
    """
    _check_keys(obj, _REQUEST_KEYS, where)
    if ("messages" in obj) == ("prompt" in obj):
        raise ValueError(f"{where} needs exactly one of 'messages' (a conversation) or 'prompt' (one question)")
    if "messages" in obj:
        if any(m.value in obj for m in MODALITIES):
            raise ValueError(f"{where}: with 'messages', put the files inside the messages, not next to them")
        messages = parse_messages(obj["messages"], base_dir, where)
    else:
        if not isinstance(obj["prompt"], str):
            raise ValueError(f"{where}: 'prompt' must be a string, got {type(obj['prompt']).__name__}")
        messages = [Message("user", obj["prompt"], _read_paths(obj, base_dir, where))]
    request_id = check_request_id(obj.get("id", default_id), where)
    check_request_messages(messages, where)
    return ChatRequest(request_id, messages)


def check_request_messages(messages: Sequence[Message], where: str) -> None:
    """Check a conversation as the pipeline will read it: roles, a final prompt, one file per placeholder.

    Args:
        messages: the conversation.
        where: names the source in error messages (a file and line, or a command-line flag).

    Raises:
        ValueError: the first problem, prefixed with `where`.
    """
    try:
        check_conversation(messages)
        build_turns(messages)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None


def read_text_file(path: Path, what: str, fix: str) -> str:
    """Read a UTF-8 request file, turning every way it can be unusable into one line with the fix.

    Args:
        path: the file.
        what: what the file is, e.g. "conversation file".
        fix: what the file should hold, for an empty file.

    Returns:
        Its text.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: a folder, unreadable, not UTF-8, or empty.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}; check the path")
    if path.is_dir():
        raise ValueError(f"{what} {path} is a folder; pass the file itself")
    try:
        data = path.read_bytes()
    except PermissionError:
        raise ValueError(f"cannot read {what} {path} (permission denied); make it readable (chmod u+r)") from None
    try:
        text = data.decode("utf-8-sig")  # a byte-order mark, as some editors write, is fine
    except UnicodeDecodeError as err:
        raise ValueError(f"{what} {path} is not UTF-8 text (byte {err.start}); save it as UTF-8 JSON") from None
    if not text.strip():
        raise ValueError(f"{what} {path} is empty; {fix}")
    return text


def read_conversation_file(path: Path) -> list[Message]:
    """Read a conversation JSON file: a request object with "messages", or a bare list of messages.

    Args:
        path: the .json file; relative media paths are read from its folder.

    Returns:
        The messages (the last one may be an assistant message when a prompt is appended later).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: unreadable, not valid JSON or not a conversation.
    """
    path = Path(path)
    shape = 'write a list of messages or {"messages": [...]}'
    text = read_text_file(path, "conversation file", shape)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); {shape}") from None
    if isinstance(obj, dict):
        _check_keys(obj, {"id", "messages"}, str(path))
        if "messages" not in obj:
            raise ValueError(f'{path} has no "messages" list; {shape}')
        obj = obj["messages"]
    elif not isinstance(obj, list):
        raise ValueError(f"{path} holds a JSON {type(obj).__name__}; {shape}")
    return parse_messages(obj, path.parent, str(path))


def read_requests_jsonl(path: Path) -> list[ChatRequest]:
    """Read a batch file: one request object per line (blank lines skipped), ids default to the line number.

    Every line is read before anything is reported, so all malformed lines are named at once.

    Args:
        path: the .jsonl file; relative media paths are read from its folder.

    Returns:
        The requests, each with a checked conversation.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: malformed lines (each named by its number), duplicate ids, or no requests.
    """
    path = Path(path)
    shape = 'write one request per line, e.g. {"id": "q1", "prompt": "Draw a cat."}'
    text = read_text_file(path, "batch file", shape)
    requests, problems = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            problems.append(f"{where} is not valid JSON ({err}); write one request object per line")
            continue
        try:
            requests.append(parse_request(obj, path.parent, f"{number:04d}", where))
        except ValueError as err:
            problems.append(str(err))
    if problems:
        raise ValueError(join_problems(problems, f"bad lines in {path}"))
    ids = [r.id for r in requests]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ValueError(f"{path}: request ids {duplicates} repeat; give every request a unique 'id'")
    return requests
