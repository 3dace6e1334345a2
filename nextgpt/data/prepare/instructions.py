"""LLaVA-Instruct-150K, Alpaca and VideoChat -> the instruction records of stage 3 (text answers only).

Official layouts, one folder per dataset:
    llava/      llava_instruct_150k.json [{id, image, conversations}] + COCO images in train2017/ (or train2014/,
                images/; a train2014 file named COCO_train2014_<image> is found too)
    alpaca/     alpaca_data.json [{instruction, input, output}]
    videochat/  videochat_instruct_11k.json [{video, QA: [{i, q, a}]}] + videos/; a videochat.json already in the
                NExT-GPT layout ({input_video, conversations}) is checked and passed through

LLaVA's own `<image>` mark sits in the first user turn; NExT-GPT's builder instead puts the image before or after every
user turn (a coin flip per turn), which `PrepareOptions.llava_image_every_turn` keeps by default.

    converter = LlavaConverter(DatasetSource(Path("raw/llava")), options)
    converter.convert(converter.items()[0]).records["llava_instruction"]["input_image"]   # ["000000033471.jpg", ...]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nextgpt.constants import PLACEHOLDERS, Modality
from nextgpt.data.prepare.converter import Converted, DatasetSource, OutputSpec, RawItem, make_turns
from nextgpt.data.prepare.options import PrepareOptions
from nextgpt.data.prepare.prompts import record_rng
from nextgpt.data.prepare.report import Skip, record_object
from nextgpt.data.prepare.sources import (
    checked_media_name,
    first_existing,
    read_json_list,
    record_id,
    require_folder,
    text_field,
)

IMAGE, VIDEO = PLACEHOLDERS[Modality.IMAGE], PLACEHOLDERS[Modality.VIDEO]
LLAVA_IMAGE_FOLDERS = ("train2017", "train2014", "images", "coco/train2017", "coco/train2014")
COCO2014_PREFIX = "COCO_train2014_"


def _annotation(source: DatasetSource, names: tuple[str, ...], dataset: str) -> Path:
    found = source.annotation or first_existing(source.root, names)
    if found is None:
        raise FileNotFoundError(
            f"{dataset}: none of {', '.join(names)} is in {source.root}; put the official file there or pass --annotation"
        )
    return found


def _items(path: Path, dataset: str, id_keys: tuple[str, ...]) -> list[RawItem]:
    records = read_json_list(path, dataset)
    return [RawItem(record_id(r, id_keys, i), r, index=i) for i, r in enumerate(records)]


def _turn_values(record: dict[str, Any], key: str = "conversations") -> list[tuple[str, str]]:
    """(from, value) pairs of a `{from, value}` list, every value non-empty.

    Raises:
        Skip: malformed_record (missing list, bad turn) or empty_caption (an empty turn).
    """
    turns = record.get(key)
    if not isinstance(turns, list) or not turns:
        raise Skip("malformed_record", f"record needs a non-empty '{key}' list")
    pairs = []
    for i, turn in enumerate(turns):
        if (
            not isinstance(turn, dict)
            or not isinstance(turn.get("from"), str)
            or not isinstance(turn.get("value"), str)
        ):
            raise Skip("malformed_record", f"{key}[{i}] must be {{'from': str, 'value': str}}")
        if not turn["value"].strip():
            raise Skip("empty_caption", f"{key}[{i}] is empty")
        pairs.append((turn["from"], turn["value"]))
    return pairs


class LlavaConverter:
    """LLaVA-Instruct-150K conversations over COCO images -> `preprocessed_llava.json`."""

    dataset = "llava"

    def __init__(self, source: DatasetSource, options: PrepareOptions) -> None:
        self.seed = options.seed
        self.every_turn = options.llava_image_every_turn
        annotation = _annotation(source, ("llava_instruct_150k.json",), "llava")
        self.source_files = [annotation]
        default = first_existing(source.root, LLAVA_IMAGE_FOLDERS)
        self.image_dir = require_folder(
            source.media_dir or default, "llava COCO image", LLAVA_IMAGE_FOLDERS, source.root
        )
        self._items = _items(annotation, "LLaVA-Instruct-150K conversations", ("id", "image"))

    def outputs(self) -> list[OutputSpec]:
        return [
            OutputSpec("llava_instruction", "preprocessed_llava.json", "instruction", {Modality.IMAGE: self.image_dir})
        ]

    def items(self) -> list[RawItem]:
        return self._items

    def _image_name(self, name: Any) -> str:
        """The COCO file: the name as given, or its train2014 spelling `COCO_train2014_<name>`."""
        try:
            return checked_media_name(self.image_dir, name, Modality.IMAGE)
        except Skip as skip:
            if skip.reason != "missing_media" or not (self.image_dir / f"{COCO2014_PREFIX}{name}").is_file():
                raise
            return checked_media_name(self.image_dir, f"{COCO2014_PREFIX}{name}", Modality.IMAGE)

    def convert(self, item: RawItem) -> Converted:
        record = record_object(item.record)
        turns = _turn_values(record)
        if "image" not in record:  # a text-only conversation: kept as it is
            return Converted({"llava_instruction": {"conversations": _as_turns(turns)}})
        image = self._image_name(record["image"])
        if self.every_turn:
            rng = record_rng(self.seed, "llava", str(item.index))
            turns = [
                (role, _place_image(value, rng.random() < 0.5) if role == "human" else value) for role, value in turns
            ]
        num_images = sum(value.count(IMAGE) for role, value in turns if role == "human")
        return Converted(
            {"llava_instruction": {"input_image": [image] * num_images, "conversations": _as_turns(turns)}}
        )


def _place_image(value: str, before: bool) -> str:
    """The turn with LLaVA's own image mark removed and one placeholder put before or after it."""
    text = value.replace(IMAGE, "").strip()
    return f"{IMAGE}\n{text}" if before else f"{text}\n{IMAGE}"


def _as_turns(pairs: list[tuple[str, str]]) -> list[dict[str, str]]:
    """`{from, value}` turns keeping the raw roles (the training parser checks their order)."""
    return [{"from": role, "value": value} for role, value in pairs]


class AlpacaConverter:
    """Alpaca instructions -> `preprocessed_alpaca.json` (text only)."""

    dataset = "alpaca"

    def __init__(self, source: DatasetSource, options: PrepareOptions) -> None:
        annotation = _annotation(source, ("alpaca_data.json",), "alpaca")
        self.source_files = [annotation]
        self._items = _items(annotation, "Alpaca instructions", ())

    def outputs(self) -> list[OutputSpec]:
        return [OutputSpec("alpaca_instruction", "preprocessed_alpaca.json", "instruction")]

    def items(self) -> list[RawItem]:
        return self._items

    def convert(self, item: RawItem) -> Converted:
        record = record_object(item.record)
        instruction = text_field(record, "instruction", collapse=False)
        extra = record.get("input", "")
        if not isinstance(extra, str):
            raise Skip("malformed_record", f"field 'input' must be a string, got {type(extra).__name__}")
        question = f"{instruction}\n{extra.strip()}" if extra.strip() else instruction
        answer = text_field(record, "output", collapse=False)
        return Converted({"alpaca_instruction": {"conversations": make_turns(question, answer)}})


class VideoChatConverter:
    """VideoChat instructions over WebVid clips -> `videochat.json`."""

    dataset = "videochat"

    def __init__(self, source: DatasetSource, options: PrepareOptions) -> None:
        annotation = _annotation(source, ("videochat_instruct_11k.json", "videochat.json"), "videochat")
        self.source_files = [annotation]
        default = first_existing(source.root, ("videos",))
        self.video_dir = require_folder(source.media_dir or default, "videochat video", ("videos",), source.root)
        self._items = _items(annotation, "VideoChat instructions", ("id", "video", "input_video"))

    def outputs(self) -> list[OutputSpec]:
        return [OutputSpec("videochat_instruction", "videochat.json", "instruction", {Modality.VIDEO: self.video_dir})]

    def items(self) -> list[RawItem]:
        return self._items

    def convert(self, item: RawItem) -> Converted:
        record = record_object(item.record)
        if "input_video" in record:  # already the NExT-GPT layout
            checked_media_name(self.video_dir, record["input_video"], Modality.VIDEO)
            return Converted({"videochat_instruction": record})
        video = checked_media_name(self.video_dir, record.get("video"), Modality.VIDEO)
        qa = record.get("QA")
        if not isinstance(qa, list) or not qa or not all(isinstance(x, dict) for x in qa):
            raise Skip("malformed_record", "record needs a non-empty 'QA' list of {i, q, a} objects")
        values = []
        for k, pair in enumerate(qa):
            parts = [pair.get(key) for key in ("i", "q")]
            if not all(p is None or isinstance(p, str) for p in parts) or not isinstance(pair.get("a"), str):
                raise Skip("malformed_record", f"QA[{k}] must hold strings 'i', 'q' and 'a'")
            question = "\n".join(p.strip() for p in parts if p and p.strip())
            if not question or not pair["a"].strip():
                raise Skip("empty_caption", f"QA[{k}] has an empty question or answer")
            values += [question, pair["a"].strip()]
        values[0] = f"{VIDEO}\n{values[0]}"
        return Converted({"videochat_instruction": {"input_video": video, "conversations": make_turns(*values)}})
