"""T2M (text -> text + media) and MosIT -> the instruction records of stage 3 with generation targets.

Official layouts:
    t2m/    {image,video,audio}_t2x.json (released; each answer that makes media carries `output_modality` and
            `caption`) or, where a t2x file is absent, the derived {image,video,audio}_instruction_tuning.json
    mosit/  mosit.json ({image,video,audio}_list + a conversation with inline `<Image>name</Image>` tags) or, where
            it is absent, the derived mosit_instruction_tuning.json; optional images/ videos/ audios/

Embedding names follow the original builders: `it_img_<i>.jpg.npy` / `it_vid_<i>.mp4.npy` for the i-th T2M record,
`<audiocap_id>.wav.npy` for T2M audio, `<listed file>.npy` for MosIT. Only text was released for MosIT, so a tag in a
user turn whose file is not present is dropped (as the original builder drops all of them) and counted in the report.

    converter = T2MConverter(DatasetSource(Path("raw/t2m")), options)
    converter.convert(converter.items()[0]).records["image_instruction"]["image_caption_embeddings"]   # ["it_img_0.jpg.npy"]
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from nextgpt.constants import MODALITIES, PLACEHOLDERS, Modality
from nextgpt.data.prepare.converter import Converted, DatasetSource, OutputSpec, RawItem
from nextgpt.data.prepare.options import PrepareOptions
from nextgpt.data.prepare.report import Skip, record_object
from nextgpt.data.prepare.sources import checked_media_name, embedding_name, read_json_list, record_id

T2M_PREFIX = {Modality.IMAGE: ("it_img", "jpg"), Modality.VIDEO: ("it_vid", "mp4"), Modality.AUDIO: ("it_aud", "wav")}
MOSIT_FOLDERS = {Modality.IMAGE: "images", Modality.VIDEO: "videos", Modality.AUDIO: "audios"}
_TAG = {m: re.compile(rf"<{m.value.capitalize()}>(.*?)</{m.value.capitalize()}>", re.DOTALL) for m in MODALITIES}
_PAIRED_PLACEHOLDER = {m: re.compile(rf"<{m.value}>(.*?)</{m.value}>", re.DOTALL) for m in MODALITIES}


def _conversation(record: dict[str, Any]) -> list[dict[str, Any]]:
    turns = record.get("conversation", record.get("conversations"))
    if not isinstance(turns, list) or not turns:
        raise Skip("malformed_record", "record needs a non-empty 'conversation' list")
    for i, turn in enumerate(turns):
        if (
            not isinstance(turn, dict)
            or not isinstance(turn.get("value"), str)
            or not isinstance(turn.get("from"), str)
        ):
            raise Skip("malformed_record", f"conversation[{i}] must be {{'from': str, 'value': str}}")
    return turns


def _t2m_embedding(modality: Modality, record: dict[str, Any], index: int, k: int) -> str:
    """The NEW builder's name of a T2M target: the AudioCaps clip for audio, else the record's position."""
    source = record.get("source_data")
    if modality is Modality.AUDIO and isinstance(source, dict) and source.get("audiocap_id") is not None:
        return f"{source['audiocap_id']}.wav.npy"
    prefix, extension = T2M_PREFIX[modality]
    return f"{prefix}_{index}{'' if k == 0 else f'_{k}'}.{extension}.npy"


def convert_t2x(record: Any, index: int) -> tuple[Modality, dict[str, Any]]:
    """One released `*_t2x.json` record -> the NEW layout: placeholders at the end of the answers that make media,
    `{x}_captions` and `{x}_caption_embeddings` in answer order.

    Raises:
        Skip: malformed_record / empty_caption.
    """
    record = record_object(record)
    turns, made = [], []
    for i, turn in enumerate(_conversation(record)):
        turn = dict(turn)
        output = turn.get("output_modality")
        if turn["from"] == "gpt" and output not in (None, "text"):
            if output not in [m.value for m in MODALITIES]:
                raise Skip("malformed_record", f"conversation[{i}].output_modality {output!r} is not a modality")
            caption = turn.get("caption")
            if not isinstance(caption, str) or not caption.strip():
                raise Skip("empty_caption", f"conversation[{i}] makes {output} but its 'caption' is empty")
            modality = Modality(output)
            if PLACEHOLDERS[modality] not in turn["value"]:
                turn["value"] = f"{turn['value']} {PLACEHOLDERS[modality]}"
            made.append((modality, caption))
        turns.append(turn)
    if not made:
        raise Skip("malformed_record", "no answer has output_modality image, video or audio")
    if len({m for m, _ in made}) > 1:
        raise Skip("malformed_record", "answers make more than one modality; T2M records make one")
    modality = made[0][0]
    out: dict[str, Any] = {
        f"{modality.value}_captions": [caption for _, caption in made],
        f"{modality.value}_caption_embeddings": [_t2m_embedding(modality, record, index, k) for k in range(len(made))],
        "conversations": turns,
    }
    if "source_data" in record:
        out["source_data"] = record["source_data"]
    return modality, out


class _MositTurns:
    """Rewrites raw MosIT turns: assistant tags of listed files -> placeholders + captions; user tags -> input files
    when present, else dropped; inline `<image>caption</image>` pairs and stray placeholders removed."""

    def __init__(self, record: dict[str, Any], media_dirs: dict[Modality, Path]) -> None:
        self.media_dirs = media_dirs
        self.listed = {m: _listed(record, m) for m in MODALITIES}
        self.inputs: dict[Modality, list[str]] = {m: [] for m in MODALITIES}
        self.captions: dict[Modality, list[str]] = {m: [] for m in MODALITIES}
        self.embeddings: dict[Modality, list[str]] = {m: [] for m in MODALITIES}
        self.changes: dict[str, str] = {}

    def rewrite(self, text: str, user: bool) -> str:
        for m in MODALITIES:
            text, n = _PAIRED_PLACEHOLDER[m].subn("", text)
            text, bare = re.subn(re.escape(PLACEHOLDERS[m]), "", text)
            if n or bare:
                self.changes["stray_placeholder_removed"] = f"{PLACEHOLDERS[m]} without a file was removed"
        for m in MODALITIES:
            text = _TAG[m].sub(lambda match, m=m: self._tag(m, match.group(1).strip(), user), text)
        return re.sub(r"[ \t]{2,}", " ", text).strip()

    def _tag(self, m: Modality, name: str, user: bool) -> str:
        if user:
            folder = self.media_dirs.get(m)
            try:
                if folder is None:
                    raise Skip("missing_media", f"no {MOSIT_FOLDERS[m]}/ folder")
                self.inputs[m].append(checked_media_name(folder, name, m))
            except Skip as skip:
                self.changes["user_media_dropped"] = f"user-side {m.value} {name!r} dropped: {skip.detail}"
                return ""
            return PLACEHOLDERS[m]
        if name not in self.listed[m]:
            self.changes["unlisted_tag_removed"] = f"assistant {m.value} {name!r} is not in {m.value}_list"
            return ""
        self.captions[m].append(self.listed[m][name])
        self.embeddings[m].append(embedding_name(name))
        return PLACEHOLDERS[m]


def _listed(record: dict[str, Any], m: Modality) -> dict[str, str]:
    entries = record.get(f"{m.value}_list") or []
    key = f"{m.value}_name"
    if not isinstance(entries, list) or not all(
        isinstance(e, dict) and isinstance(e.get(key), str) and isinstance(e.get("caption"), str) for e in entries
    ):
        raise Skip("malformed_record", f"'{m.value}_list' must be a list of {{{key}, caption}} objects")
    return {e[key]: " ".join(e["caption"].split()) for e in entries}


def convert_mosit(record: Any, media_dirs: dict[Modality, Path]) -> Converted:
    """One raw `mosit.json` record -> the NEW layout (see `_MositTurns`).

    Raises:
        Skip: malformed_record.
    """
    record = record_object(record)
    rewriter = _MositTurns(record, media_dirs)
    turns = [
        {"from": t["from"], "value": rewriter.rewrite(t["value"], t["from"] in ("human", "user"))}
        for t in _conversation(record)
    ]
    out: dict[str, Any] = {}
    for m in MODALITIES:
        if rewriter.inputs[m]:
            out[f"input_{m.value}"] = rewriter.inputs[m]
        if rewriter.captions[m]:
            out[f"{m.value}_captions"] = rewriter.captions[m]
            out[f"{m.value}_caption_embeddings"] = rewriter.embeddings[m]
    out["conversations"] = turns
    return Converted({"mosit_instruction": out}, changes=rewriter.changes)


def _pick(root: Path, raw: str, derived: str) -> Path | None:
    """The released raw file when present, else the derived NEW-layout one."""
    return next((root / n for n in (raw, derived) if (root / n).is_file()), None)


def _modality_of(path: Path) -> Modality:
    for m in MODALITIES:
        if path.name.startswith(f"{m.value}_"):
            return m
    raise ValueError(f"t2m: cannot tell the modality of {path.name}; name it <image|video|audio>_t2x.json")


class T2MConverter:
    """The three T2M files -> `{image,video,audio}_instruction_tuning.json` (catalog `{x}_instruction`)."""

    dataset = "t2m"

    def __init__(self, source: DatasetSource, options: PrepareOptions) -> None:
        if source.annotation is not None:
            files = {_modality_of(source.annotation): source.annotation}
        else:
            picked = {
                m: _pick(source.root, f"{m.value}_t2x.json", f"{m.value}_instruction_tuning.json") for m in MODALITIES
            }
            files = {m: p for m, p in picked.items() if p is not None}
        if not files:
            raise FileNotFoundError(
                f"t2m: no image/video/audio _t2x.json (or _instruction_tuning.json) in {source.root}; put the released "
                "T-T+X files there or pass --annotation"
            )
        self.files = files
        self.source_files = list(files.values())
        self._items: list[RawItem] = []
        for m, path in files.items():
            records = read_json_list(path, f"T2M {m.value}")
            self._items += [RawItem(f"{path.name}#{i}", r, group=m.value, index=i) for i, r in enumerate(records)]

    def outputs(self) -> list[OutputSpec]:
        return [
            OutputSpec(f"{m.value}_instruction", f"{m.value}_instruction_tuning.json", "instruction", embeddings=True)
            for m in self.files
        ]

    def items(self) -> list[RawItem]:
        return self._items

    def convert(self, item: RawItem) -> Converted:
        modality = Modality(item.group)
        if self.files[modality].name.endswith("_t2x.json"):
            made, record = convert_t2x(item.record, item.index)
            if made is not modality:
                raise Skip("malformed_record", f"a {made.value} record in the {modality.value} file")
        elif not isinstance(item.record, dict):
            raise Skip("malformed_record", f"record must be a JSON object, got {type(item.record).__name__}")
        else:
            record = item.record  # already the NEW layout: the runner checks it like any output
        return Converted({f"{modality.value}_instruction": record})


class MositConverter:
    """MosIT dialogues -> `mosit_instruction_tuning.json` (catalog `mosit_instruction`)."""

    dataset = "mosit"

    def __init__(self, source: DatasetSource, options: PrepareOptions) -> None:
        path = source.annotation or _pick(source.root, "mosit.json", "mosit_instruction_tuning.json")
        if path is None:
            raise FileNotFoundError(
                f"mosit: neither mosit.json nor mosit_instruction_tuning.json is in {source.root}; put the released "
                "MosIT file there or pass --annotation"
            )
        self.path = path
        self.source_files = [path]
        media_root = source.media_dir or source.root
        self.media_dirs = {m: media_root / f for m, f in MOSIT_FOLDERS.items() if (media_root / f).is_dir()}
        records = read_json_list(path, "MosIT dialogues")
        self._items = [RawItem(record_id(r, ("id",), i), r, index=i) for i, r in enumerate(records)]

    def outputs(self) -> list[OutputSpec]:
        return [OutputSpec("mosit_instruction", "mosit_instruction_tuning.json", "instruction", self.media_dirs, True)]

    def items(self) -> list[RawItem]:
        return self._items

    def convert(self, item: RawItem) -> Converted:
        record = item.record
        if isinstance(record, dict) and "conversations" in record:  # already the NEW layout
            return Converted({"mosit_instruction": record})
        return convert_mosit(record, self.media_dirs)
