"""MLLM-Tool (ToolMMBench) records, as released in `data/IT_data_ins/T+X-T_data/*.json`, for training and evaluation.

Released layout of one record (`audio_tx2t.json`, `video_tx2t.json`, `image_tx2t.json`, `text_t2t.json`):

    {"id": 1, "image_path": "", "video_path": "", "audio_path": "audioset2/1/4.wav",
     "input_modality": "audio", "output_modality": "text",
     "conversations": [
       {"from": "human", "value": "Can you help determine what the command in this recording is?",
        "input_modality": "audio"},
       {"from": "gpt", "value": "MIT/ast-finetuned-speech-commands-v2", "ambiguity": -1, "output_modality": "text"}]}

Each right tool of a request is a record of its own there (same paths and request, another `value`);
`combined_data.json` already lists them (`"value": [...]`) and adds `ifambiguity`, `onetomulti` and a top-level
`ambiguity` (an int, or the string "-1" on text records). `ambiguity` is -1 for a clear request and 1-5 for the
benchmark's ambiguity types; "unknown" is the answer when no tool fits. The original code reads media as
`mm_dataset/image/<image_path>`, `mm_dataset/<video_path>` (the value starts with `video/`) and
`mm_dataset/audio/<audio_path>`: the catalog entry's `image_dir` / `video_dir` / `audio_dir` say the same.

Training reads one record per right tool (`expand_tool_records`); evaluation groups the records that share input and
request into one example with every right tool (`group_tool_records`).

    spec = parse_tool_record(record, entry)       # SampleSpec: "<audio>\\n<request>" -> "{'api_name': MIT/...}"
    examples, stats = group_tool_records(records, entry, library)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nextgpt.config import DatasetEntryConfig
from nextgpt.constants import MODALITIES, PLACEHOLDERS, Modality
from nextgpt.data.records import MalformedRecordError, SampleSpec, resolve_media_path
from nextgpt.llm.conversation import Turn
from nextgpt.tools.answers import UNKNOWN_TOOL, format_tool_answer
from nextgpt.tools.library import TOOL_MODALITIES, ToolLibrary

PATH_KEYS: dict[Modality, str] = {m: f"{m.value}_path" for m in MODALITIES}
"""Record field naming the input file of each modality (empty string when unused)."""
NO_AMBIGUITY = -1


@dataclass(frozen=True)
class ToolRecord:
    """One released record, read and checked.

    Attributes:
        input_modality: "text", "image", "video" or "audio".
        media: the input file (inside the entry's folder for that modality), None for text.
        request: the human turn's text.
        tools: the right tool(s) the record names, in order (one in the per-modality files).
        ambiguity: -1 (none) or the benchmark's ambiguity type.
        record_id: the record's `id`, if any.
    """

    input_modality: str
    media: Path | None
    request: str
    tools: tuple[str, ...]
    ambiguity: int = NO_AMBIGUITY
    record_id: Any = None

    def user_text(self) -> str:
        """The user turn: the media placeholder first (where MLLM-Tool puts the media), then the request."""
        if self.input_modality == "text":
            return self.request
        return f"{PLACEHOLDERS[Modality(self.input_modality)]}\n{self.request}"


def _ambiguity(record: dict[str, Any], answer: dict[str, Any]) -> int:
    """The answer turn's `ambiguity` (else the record's); ints or numeric strings ("-1" in combined_data.json)."""
    value = answer.get("ambiguity", record.get("ambiguity", NO_AMBIGUITY))
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise MalformedRecordError(f"'ambiguity' must be an integer (-1 for none), got {value!r}")
    return value


def _tools(answer: dict[str, Any]) -> tuple[str, ...]:
    value = answer.get("value")
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n.strip() for n in names):
        raise MalformedRecordError(f"the gpt turn's value must be a tool id or a non-empty list of ids, got {value!r}")
    return tuple(dict.fromkeys(n.strip() for n in names))


def _media(record: dict[str, Any], modality: str, entry: DatasetEntryConfig) -> Path | None:
    named = {m: record.get(key) or "" for m, key in PATH_KEYS.items()}
    if not all(isinstance(v, str) for v in named.values()):
        raise MalformedRecordError(f"{', '.join(PATH_KEYS.values())} must be strings ('' when unused)")
    if modality == "text":
        if any(named.values()):
            raise MalformedRecordError(f"input_modality is 'text' but the record names files {named}")
        return None
    m = Modality(modality)
    others = [PATH_KEYS[o] for o, v in named.items() if v and o != m]
    if not named[m] or others:
        raise MalformedRecordError(f"input_modality '{modality}' needs {PATH_KEYS[m]} and no other file")
    return resolve_media_path(getattr(entry, f"{m.value}_dir"), named[m], m)


def read_tool_record(record: Any, entry: DatasetEntryConfig) -> ToolRecord:
    """Read one released record (either layout: one tool per record, or a list).

    Args:
        record: one element of the JSON list.
        entry: its catalog entry (kind "tool"); the media folders resolve `*_path`.

    Returns:
        The checked record.

    Raises:
        MalformedRecordError: missing fields, a bad modality, files that do not match the modality or leave their
            folder, a request holding a media placeholder, or an empty answer.
    """
    if not isinstance(record, dict):
        raise MalformedRecordError(f"record must be a JSON object, got {type(record).__name__}")
    modality = record.get("input_modality")
    if modality not in TOOL_MODALITIES:
        raise MalformedRecordError(f"input_modality must be one of {list(TOOL_MODALITIES)}, got {modality!r}")
    turns = record.get("conversations")
    if (
        not isinstance(turns, list)
        or len(turns) != 2
        or not all(isinstance(t, dict) for t in turns)
        or [t.get("from") for t in turns] != ["human", "gpt"]
    ):
        raise MalformedRecordError("conversations must be one human turn and one gpt turn (the tool)")
    request = turns[0].get("value")
    if not isinstance(request, str) or not request.strip():
        raise MalformedRecordError("the human turn's value must be the request text")
    placeholders = [p for p in PLACEHOLDERS.values() if p in request]
    if placeholders:
        raise MalformedRecordError(f"the request holds {placeholders}, which mark media here; the file goes in *_path")
    return ToolRecord(
        input_modality=modality,
        media=_media(record, modality, entry),
        request=request.strip(),
        tools=_tools(turns[1]),
        ambiguity=_ambiguity(record, turns[1]),
        record_id=record.get("id"),
    )


def tool_sample_spec(tool_record: ToolRecord, tool: str | None = None) -> SampleSpec:
    """The training conversation of a record: user "<media>\\n<request>", assistant "{'api_name': <tool>}".

    Args:
        tool_record: the record.
        tool: which right tool to answer with (default: the first).
    """
    answer = format_tool_answer(tool or tool_record.tools[0])
    media = [] if tool_record.media is None else [(Modality(tool_record.input_modality), tool_record.media)]
    return SampleSpec(turns=[Turn("user", tool_record.user_text()), Turn("assistant", answer)], input_media=media)


def parse_tool_record(record: Any, entry: DatasetEntryConfig) -> SampleSpec:
    """`read_tool_record` then `tool_sample_spec` with the first right tool (see `expand_tool_records`)."""
    return tool_sample_spec(read_tool_record(record, entry))


def expand_tool_records(records: Sequence[Any]) -> list[Any]:
    """One record per right tool: a record listing several (`combined_data.json`) becomes one copy per tool, as the
    per-modality files are released. Other entries pass unchanged (the parser rejects bad ones)."""
    expanded: list[Any] = []
    for record in records:
        turns = record.get("conversations") if isinstance(record, dict) else None
        answer = turns[1] if isinstance(turns, list) and len(turns) == 2 and isinstance(turns[1], dict) else None
        value = answer.get("value") if answer is not None else None
        if not isinstance(value, list) or len(value) < 2:
            expanded.append(record)
            continue
        for tool in value:
            expanded.append({**record, "conversations": [turns[0], {**answer, "value": tool}]})
    return expanded


@dataclass
class ToolExample:
    """One request with every right tool: the records that share input modality, file and request.

    Attributes:
        input_modality: "text", "image", "video" or "audio".
        media: the input file, None for text.
        request: the request text.
        right_tools: every right tool, in record order ("unknown" when no tool fits).
        ambiguity: the records' ambiguity type (-1: none; the largest when records disagree).
        record_ids: ids of the grouped records.
    """

    input_modality: str
    media: Path | None
    request: str
    right_tools: list[str]
    ambiguity: int = NO_AMBIGUITY
    record_ids: list[Any] = field(default_factory=list)

    def user_text(self) -> str:
        """The user turn, as in training."""
        return ToolRecord(self.input_modality, self.media, self.request, tuple(self.right_tools)).user_text()


@dataclass
class ToolDataStats:
    """What a set of tool records holds.

    Attributes:
        num_records: records read.
        num_malformed: records skipped as malformed (first reasons in `malformed`).
        num_examples: distinct (input, request) examples after grouping.
        num_multi_answer: examples with more than one right tool.
        num_unknown: examples whose right answer is "unknown".
        not_in_library: right tools missing from the library (id -> examples), when a library is given.
        per_modality: examples per input modality.
    """

    num_records: int = 0
    num_malformed: int = 0
    num_examples: int = 0
    num_multi_answer: int = 0
    num_unknown: int = 0
    not_in_library: dict[str, int] = field(default_factory=dict)
    per_modality: dict[str, int] = field(default_factory=dict)
    malformed: list[str] = field(default_factory=list)


def group_tool_records(
    records: Sequence[Any], entry: DatasetEntryConfig, library: ToolLibrary | None = None
) -> tuple[list[ToolExample], ToolDataStats]:
    """Group records that share input and request into examples with several right tools, and count what they hold.

    Args:
        records: the JSON list of one or more released files.
        entry: their catalog entry (media folders).
        library: when given, right tools missing from it are counted in `not_in_library`.

    Returns:
        The examples in first-seen order, and the counts.
    """
    stats = ToolDataStats(num_records=len(records))
    examples: dict[tuple[str, str, str], ToolExample] = {}
    for index, record in enumerate(records):
        try:
            read = read_tool_record(record, entry)
        except MalformedRecordError as err:
            stats.num_malformed += 1
            if len(stats.malformed) < 5:
                stats.malformed.append(f"[{index}] {err}")
            continue
        key = (read.input_modality, str(read.media or ""), read.request)
        example = examples.get(key)
        if example is None:
            example = examples[key] = ToolExample(read.input_modality, read.media, read.request, [], read.ambiguity)
        example.right_tools += [t for t in read.tools if t not in example.right_tools]
        example.ambiguity = max(example.ambiguity, read.ambiguity)
        example.record_ids.append(read.record_id)
    grouped = list(examples.values())
    stats.num_examples = len(grouped)
    for example in grouped:
        stats.num_multi_answer += len(example.right_tools) > 1
        stats.num_unknown += UNKNOWN_TOOL in example.right_tools
        stats.per_modality[example.input_modality] = stats.per_modality.get(example.input_modality, 0) + 1
        for tool in example.right_tools:
            if library is not None and not library.is_known_answer(tool):
                stats.not_in_library[tool] = stats.not_in_library.get(tool, 0) + 1
    return grouped, stats


def library_from_examples(examples: Sequence[ToolExample]) -> ToolLibrary:
    """A tool library listing every right tool of the examples (ToolMMBench ships none): the input modality it is
    first asked with, text out, no description and no runner (add those by hand to run a tool).

    Args:
        examples: grouped examples, e.g. of every released file.

    Returns:
        The library, tools in first-seen order ("unknown" left out: it is the answer for no tool).
    """
    from nextgpt.tools.library import ToolSpec

    tools: dict[str, ToolSpec] = {}
    for example in examples:
        for tool in example.right_tools:
            if tool != UNKNOWN_TOOL and tool not in tools:
                tools[tool] = ToolSpec(tool, example.input_modality, "text", "")
    return ToolLibrary(tools)
