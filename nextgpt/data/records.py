"""Parse one annotation record of any official NExT-GPT JSON format into a normalised `SampleSpec`.

One parser covers every format (spec §3.2): `*_comprehension` (input_image/video/audio), `*_generation`
(output_* + `{x}_captions` + `{x}_caption_embeddings`), T2M instruction sets (caption lists), LLaVA (one
`input_image` per `<image>` of the user turns), Alpaca (text only), VideoChat (input_video) and MosIT (media on
both sides: `<image>` placeholders plus inline `<Image>file</Image>` tags, with `image_list` captions).

The released T2M files `*_t2x.json` keep the legacy layout: no placeholder in the text; each answer that makes
media says so in its own `output_modality` and `caption`, and the record's `mm_name` names the cached embedding
(`<caption_embed_dir>/<basename of mm_name>.npy`). The legacy model appended the signal tokens to the end of that
answer; here the answer gets its placeholder there, so both layouts yield the same targets.

    spec = parse_record(record, entry)        # entry: the dataset's DatasetEntryConfig
    spec.turns[0].text                        # "<image>\\nWhat's the image really about?"
    spec.input_media                          # [(Modality.IMAGE, Path("data/.../images/001312382.jpg"))]
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

from nextgpt.config import DatasetEntryConfig
from nextgpt.constants import MODALITIES, PLACEHOLDERS, Modality
from nextgpt.data.embeddings import EMBEDDING_SUFFIX, caption_embedding_path
from nextgpt.llm.conversation import Turn

ROLE_NAMES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
"""Accepted values of a turn's `from` field and the role each maps to."""

_TAG_NAMES = {Modality.IMAGE: "Image", Modality.VIDEO: "Video", Modality.AUDIO: "Audio"}
_MEDIA_PATTERN = re.compile(
    "|".join(
        [re.escape(PLACEHOLDERS[m]) for m in MODALITIES]
        + [rf"<{_TAG_NAMES[m]}>(?P<{m.value}>.*?)</{_TAG_NAMES[m]}>" for m in MODALITIES]
    )
)
"""Matches a placeholder `<image>` or an inline tag `<Image>name</Image>` (MosIT style), in text order."""


class MalformedRecordError(ValueError):
    """An annotation record does not fit the format (the message says what and how to fix it)."""


class Target(NamedTuple):
    """One generation target: the assistant placeholder's modality, caption and cached embedding file."""

    modality: Modality
    caption: str
    embedding_path: Path | None


@dataclass
class SampleSpec:
    """A record reduced to what training needs; nothing is loaded yet.

    Attributes:
        turns: alternating user/assistant turns; media positions are `<image>`/`<video>`/`<audio>` placeholders.
        input_media: user-side media files in placeholder order (all modalities interleaved).
        targets: assistant-side generation targets in placeholder order.
        target_media: for each target, the target media file (`output_*` of the generation sets) or None.
    """

    turns: list[Turn]
    input_media: list[tuple[Modality, Path]] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    target_media: list[Path | None] = field(default_factory=list)

    @property
    def modalities(self) -> list[Modality]:
        """Modalities appearing on either side, in canonical order."""
        used = {m for m, _ in self.input_media} | {t.modality for t in self.targets}
        return [m for m in MODALITIES if m in used]


def load_records(annotation_path: Path) -> list[Any]:
    """Read an annotation file: a JSON list of records.

    Entries that are not objects are returned as they are: `parse_record` rejects them one by one, so the dataset
    skips, counts and logs them like any other malformed record instead of refusing the whole file.

    Args:
        annotation_path: the dataset's `annotation_path`.

    Returns:
        The list's entries.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is unreadable, not valid JSON, or its top level is not a list.
    """
    return read_json_list(
        Path(annotation_path), "annotation file", "check the catalog's annotation_path", "regenerate it"
    )


def read_json_list(path: Path, label: str, missing_fix: str, invalid_fix: str) -> list[Any]:
    """Read a file whose top level is a JSON list; every failure is one line naming `label path` and the fix.

    Args:
        path: the file.
        label: what it is, placed before the path in messages ("annotation file", "AudioCaps pairs:").
        missing_fix: the fix when the file does not exist.
        invalid_fix: the fix when it is not valid JSON or not a list.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is unreadable, not valid JSON, or its top level is not a list.
    """
    if not path.is_file():
        raise FileNotFoundError(f"{label} {path} does not exist; {missing_fix}")
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{label} {path} is not valid JSON ({err}); {invalid_fix}") from err
    except OSError as err:
        raise ValueError(f"{label} {path} cannot be read ({err.strerror or err}); check its permissions") from err
    if not isinstance(records, list):
        raise ValueError(
            f"{label} {path} must hold a JSON list of records, got a {type(records).__name__}; {invalid_fix}"
        )
    return records


def as_name_list(value: Any, key: str) -> list[str]:
    """Normalise a record field that is a string or a list of strings (absent: empty list).

    Raises:
        MalformedRecordError: any other type.
    """
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise MalformedRecordError(f"field '{key}' must be a string or a list of strings, got {value!r}")


def resolve_media_path(folder: Path | None, name: str, modality: Modality) -> Path:
    """Join a record's media name to the dataset folder, refusing names that leave the folder.

    Args:
        folder: the dataset's folder for `modality` (`image_dir` …).
        name: relative file name from the record (backslashes count as folder separators).
        modality: for the error messages.

    Returns:
        `folder / name`.

    Raises:
        MalformedRecordError: no folder configured, an empty or absolute name, or a `..` component.
    """
    if folder is None:
        raise MalformedRecordError(
            f"record names {modality.value} file {name!r} but the catalog entry has no {modality.value}_dir; set it"
        )
    relative = PurePosixPath(name.replace("\\", "/"))
    if not name.strip() or relative.is_absolute() or ".." in relative.parts:
        raise MalformedRecordError(
            f"{modality.value} file name {name!r} must be a relative path inside {folder} (no absolute path, no '..')"
        )
    return Path(folder) / Path(*relative.parts)


def _conversations(record: dict[str, Any]) -> list[tuple[str, str]]:
    """(role, text) pairs, checked to alternate user/assistant and to end with an answer."""
    raw = record.get("conversations", record.get("conversation"))
    if not isinstance(raw, list) or not raw:
        raise MalformedRecordError("record needs a non-empty 'conversations' list of {from, value} objects")
    turns = []
    for i, turn in enumerate(raw):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str) or turn.get("from") not in ROLE_NAMES:
            raise MalformedRecordError(
                f"conversations[{i}] must be {{'from': 'human'|'gpt', 'value': str}}, got {str(turn)[:80]!r}"
            )
        turns.append((ROLE_NAMES[turn["from"]], turn["value"]))
    for i, (role, _) in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if role != expected:
            raise MalformedRecordError(
                f"conversations[{i}] is a {role} turn where a {expected} turn belongs; turns must alternate "
                "human/gpt starting with human"
            )
    if turns[-1][0] != "assistant":
        raise MalformedRecordError("the last conversation turn is a human turn without an answer; remove it")
    return turns


def _named_captions(record: dict[str, Any], modality: Modality) -> dict[str, str]:
    """MosIT `{x}_list` entries: media name -> caption."""
    entries = record.get(f"{modality.value}_list") or []
    name_key = f"{modality.value}_name"
    if not isinstance(entries, list) or not all(
        isinstance(e, dict) and isinstance(e.get(name_key), str) and isinstance(e.get("caption"), str) for e in entries
    ):
        raise MalformedRecordError(f"field '{modality.value}_list' must be a list of {{{name_key}, caption}} objects")
    return {e[name_key]: e["caption"] for e in entries}


@dataclass
class _Queues:
    """Per-modality names still to be matched with placeholders, consumed front to back."""

    inputs: dict[Modality, list[str]]
    outputs: dict[Modality, list[str]]
    captions: dict[Modality, list[str]]
    embeddings: dict[Modality, list[str]]
    named_captions: dict[Modality, dict[str, str]]


def _read_queues(record: dict[str, Any]) -> _Queues:
    queues = _Queues({}, {}, {}, {}, {})
    for m in MODALITIES:
        queues.inputs[m] = as_name_list(record.get(f"input_{m.value}"), f"input_{m.value}")
        queues.outputs[m] = as_name_list(record.get(f"output_{m.value}"), f"output_{m.value}")
        queues.captions[m] = as_name_list(record.get(f"{m.value}_captions"), f"{m.value}_captions")
        embeddings = as_name_list(record.get(f"{m.value}_caption_embeddings"), f"{m.value}_caption_embeddings")
        if embeddings and len(embeddings) != len(queues.captions[m]):
            raise MalformedRecordError(
                f"record has {len(queues.captions[m])} {m.value}_captions but {len(embeddings)} "
                f"{m.value}_caption_embeddings; they pair by position"
            )
        queues.embeddings[m] = embeddings
        queues.named_captions[m] = _named_captions(record, m)
    return queues


LEGACY_EMBEDDING_KEYS = ("mm_name", "image_name")
"""Record keys naming a legacy T2M target, in order of precedence: the legacy dataset reads `mm_name`; the T2M
construction script wrote the same name as `image_name` (for every modality)."""


class _LegacyTarget(NamedTuple):
    """An answer of a legacy T2M record that makes media: its turn index, modality and caption."""

    turn_index: int
    modality: Modality
    caption: str


def _legacy_targets(record: dict[str, Any]) -> list[_LegacyTarget]:
    """Answers that name a media `output_modality` while the record lists no captions for it (legacy T2M).

    A record in the NEW layout (`{x}_captions`, or MosIT's `{x}_list`, present) keeps its placeholders and tags, which
    the caption queues resolve.
    """
    raw_turns = record.get("conversations", record.get("conversation"))
    found = []
    for i, turn in enumerate(raw_turns):
        output = turn.get("output_modality")
        if ROLE_NAMES[turn["from"]] != "assistant" or output is None or output == "text":
            continue
        if output not in [m.value for m in MODALITIES]:
            raise MalformedRecordError(
                f"conversations[{i}].output_modality must be text, image, video or audio, got {output!r}"
            )
        modality = Modality(output)
        if f"{modality.value}_captions" in record or f"{modality.value}_list" in record:
            continue
        caption = turn.get("caption")
        if not isinstance(caption, str) or not caption.strip():
            raise MalformedRecordError(
                f"conversations[{i}] makes {modality.value} (output_modality) but has no 'caption'; add the caption "
                "its embedding was computed from"
            )
        found.append(_LegacyTarget(i, modality, caption))
    return found


def _legacy_embedding_name(record: dict[str, Any], num_targets: int) -> str:
    """`<basename of mm_name>.npy`, the file the legacy T2M dataset read for the record's one target."""
    key = next((k for k in LEGACY_EMBEDDING_KEYS if k in record), None)
    name = record.get(key) if key else None
    if not isinstance(name, str) or not PurePosixPath(name.replace("\\", "/")).name.strip():
        raise MalformedRecordError(
            "record makes media (an answer's output_modality) without '{x}_captions' or a file name in 'mm_name'; "
            "add 'mm_name' naming its caption embedding"
        )
    if num_targets > 1:
        raise MalformedRecordError(
            f"record has {num_targets} answers that make media but one 'mm_name' (one caption embedding); "
            "split it or convert it with prepare_data.py"
        )
    return PurePosixPath(name.replace("\\", "/")).name + EMBEDDING_SUFFIX


def _add_legacy_targets(record: dict[str, Any], conversation: list[tuple[str, str]], queues: _Queues) -> None:
    """Give each legacy T2M answer its placeholder (at the end, where the legacy model put the signal tokens) and
    queue its caption and embedding name, so the answer yields a target like a NEW-format one."""
    legacy = _legacy_targets(record)
    if not legacy:
        return
    embedding = _legacy_embedding_name(record, len(legacy))
    for target in legacy:
        role, text = conversation[target.turn_index]
        placeholder = PLACEHOLDERS[target.modality]
        if placeholder not in text:
            conversation[target.turn_index] = (role, f"{text} {placeholder}")
        queues.captions[target.modality].append(target.caption)
        queues.embeddings[target.modality].append(embedding)


def _embedding_path(entry: DatasetEntryConfig, name: str | None) -> Path | None:
    if name is None:
        return None
    if entry.caption_embed_dir is None:
        raise MalformedRecordError(
            f"record names caption embedding {name!r} but the catalog entry has no caption_embed_dir; set it"
        )
    try:
        return caption_embedding_path(entry.caption_embed_dir, name)
    except ValueError as err:
        raise MalformedRecordError(str(err)) from err


def _folder(entry: DatasetEntryConfig, modality: Modality) -> Path | None:
    return getattr(entry, f"{modality.value}_dir")


def _substitute_media(
    text: str, on_tag: Callable[[Modality, str], None], on_placeholder: Callable[[Modality], None]
) -> str:
    """Replace every inline tag of `text` by its modality's placeholder, calling a handler per placeholder or tag.

    Args:
        text: one turn's text.
        on_tag: called with the modality and the tag's content for `<Image>name</Image>`-style tags.
        on_placeholder: called with the modality for each `<image>`-style placeholder.

    Returns:
        The text with placeholders only, in the original order.
    """

    def replace(match: re.Match[str]) -> str:
        for m in MODALITIES:
            tagged = match.group(m.value)
            if tagged is not None:
                on_tag(m, tagged)
                return PLACEHOLDERS[m]
            if match.group(0) == PLACEHOLDERS[m]:
                on_placeholder(m)
                return PLACEHOLDERS[m]
        raise AssertionError(f"unmatched media pattern {match.group(0)!r}")

    return _MEDIA_PATTERN.sub(replace, text)


def _user_turn(text: str, queues: _Queues, entry: DatasetEntryConfig, spec: SampleSpec) -> str:
    """Resolve user-side placeholders and inline tags into input files; return the text with placeholders only."""

    def add_tagged(m: Modality, tagged: str) -> None:
        name = tagged.strip()
        if not name or any(ch.isspace() for ch in name):
            raise MalformedRecordError(f"inline <{_TAG_NAMES[m]}> tag in a user turn must name a file, got {tagged!r}")
        spec.input_media.append((m, resolve_media_path(_folder(entry, m), name, m)))

    def add_listed(m: Modality) -> None:
        if not queues.inputs[m]:
            raise MalformedRecordError(
                f"user turns hold more {PLACEHOLDERS[m]} placeholders than the record's input_{m.value} files"
            )
        name = queues.inputs[m].pop(0)
        spec.input_media.append((m, resolve_media_path(_folder(entry, m), name, m)))

    return _substitute_media(text, add_tagged, add_listed)


def _assistant_turn(text: str, queues: _Queues, entry: DatasetEntryConfig, spec: SampleSpec) -> str:
    """Resolve assistant-side placeholders and inline tags into generation targets."""

    def add_tagged(m: Modality, tagged: str) -> None:
        name = tagged.strip()
        if name not in queues.named_captions[m]:
            raise MalformedRecordError(
                f"assistant tag <{_TAG_NAMES[m]}>{name}</{_TAG_NAMES[m]}> has no entry in '{m.value}_list'"
            )
        spec.targets.append(Target(m, queues.named_captions[m][name], _embedding_path(entry, name)))
        spec.target_media.append(None)

    def add_listed(m: Modality) -> None:
        if not queues.captions[m]:
            raise MalformedRecordError(
                f"assistant turns hold more {PLACEHOLDERS[m]} placeholders than the record's {m.value}_captions"
            )
        caption = queues.captions[m].pop(0)
        embedding = queues.embeddings[m].pop(0) if queues.embeddings[m] else None
        output = queues.outputs[m].pop(0) if queues.outputs[m] else None
        spec.targets.append(Target(m, caption, _embedding_path(entry, embedding)))
        spec.target_media.append(None if output is None else resolve_media_path(_folder(entry, m), output, m))

    return _substitute_media(text, add_tagged, add_listed)


def _check_all_used(queues: _Queues) -> None:
    for m in MODALITIES:
        leftovers = {
            f"input_{m.value}": queues.inputs[m],
            f"{m.value}_captions": queues.captions[m],
            f"output_{m.value}": queues.outputs[m],
        }
        for key, rest in leftovers.items():
            if rest:
                side = "user" if key.startswith("input") else "assistant"
                raise MalformedRecordError(
                    f"record has {len(rest)} more '{key}' entries than {PLACEHOLDERS[m]} placeholders in its "
                    f"{side} turns; every entry needs one placeholder"
                )


def parse_record(record: dict[str, Any], entry: DatasetEntryConfig) -> SampleSpec:
    """Normalise one record of any official format.

    Args:
        record: one element of the annotation JSON list.
        entry: the catalog entry of the dataset the record belongs to (its folders resolve the file names); kind
            "tool" reads an MLLM-Tool record (`nextgpt.data.tool_records.parse_tool_record`).

    Returns:
        The sample's turns (placeholders only), input media, targets and target media.

    Raises:
        MalformedRecordError: wrong field types, turns that do not alternate, placeholder counts that differ from
            the listed media / captions, or file names that leave their folder.
    """
    if entry.kind == "tool":
        from nextgpt.data.tool_records import parse_tool_record

        return parse_tool_record(record, entry)
    if not isinstance(record, dict):
        raise MalformedRecordError(f"record must be a JSON object, got {type(record).__name__}")
    conversation = _conversations(record)
    queues = _read_queues(record)
    _add_legacy_targets(record, conversation, queues)
    spec = SampleSpec(turns=[])
    for role, text in conversation:
        if role == "user":
            text = _user_turn(text, queues, entry, spec)
        else:
            text = _assistant_turn(text, queues, entry, spec)
        spec.turns.append(Turn(role=role, text=text))
    _check_all_used(queues)
    return spec
