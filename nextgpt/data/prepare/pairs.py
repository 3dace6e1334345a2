"""CC3M, WebVid and AudioCaps: caption pairs -> `*_comprehension.json` (stage 1) and `*_generation.json` (stage 2).

Official layouts (spec 3.2), one folder per dataset:
    cc3m/      cc3m.json [{caption, id, image_name}] + images/   (or an img2dataset "files" folder: *.jpg + *.txt)
    webvid/    webvid.json [{caption, id, video_name}] + videos/
    audiocap/  audiocap.json [{audio_id, audio_name, caption}] + audios/   (or the AudioCaps train/val/test.csv)

A generation record names its caption embedding `<media name>.npy`, the name preprocess_embeddings.py writes.

    converter = PairConverter(CC3M, DatasetSource(Path("raw/cc3m")), options)
    converter.convert(converter.items()[0]).records["cc3m_enc"]["conversations"][0]["value"]   # "<image>\\n..."
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nextgpt.constants import PLACEHOLDERS, Modality
from nextgpt.data.prepare.converter import Converted, DatasetSource, OutputSpec, RawItem, make_turns
from nextgpt.data.prepare.options import PrepareOptions
from nextgpt.data.prepare.prompts import comprehension_prompt, generation_reply, generation_request, record_rng
from nextgpt.data.prepare.report import Skip, record_object
from nextgpt.data.prepare.sources import (
    checked_media_name,
    embedding_name,
    first_existing,
    read_json_list,
    record_id,
    require_folder,
    text_field,
)
from nextgpt.encoders.media import SUPPORTED_EXTENSIONS

AUDIOCAPS_BROKEN_IDS = frozenset(
    str(clip_id)
    for clip_id in (
        11251, 103491, 105063, 105067, 102977, 106789, 106641, 508, 107392, 104140,
        103586, 104593, 103479, 104600, 107259, 105723, 106016, 103468, 104639, 106267,
        107382, 103799, 107306, 102931, 102749, 103905, 104663, 105022, 17223, 105609,
    )
)  # fmt: skip
"""AudioCaps ids the original authors dropped as broken downloads (their audiocap.json holds 44,665 after it)."""

AUDIOCAPS_CSVS = ("train.csv", "val.csv", "test.csv")


@dataclass(frozen=True)
class PairLayout:
    """Where one pair dataset keeps its files and how its records name them."""

    dataset: str
    modality: Modality
    annotation_name: str
    media_folder: str
    name_key: str
    id_key: str


CC3M = PairLayout("cc3m", Modality.IMAGE, "cc3m.json", "images", "image_name", "id")
WEBVID = PairLayout("webvid", Modality.VIDEO, "webvid.json", "videos", "video_name", "id")
AUDIOCAP = PairLayout("audiocap", Modality.AUDIO, "audiocap.json", "audios", "audio_name", "audio_id")
PAIR_LAYOUTS = {layout.dataset: layout for layout in (CC3M, WEBVID, AUDIOCAP)}


def _sidecar_items(media_dir: Path) -> list[RawItem]:
    """img2dataset's "files" output: `<shard>/<key>.jpg` with the caption in `<key>.txt` beside it."""
    items = []
    images = sorted(
        p for p in media_dir.rglob("*") if p.suffix.lower() in SUPPORTED_EXTENSIONS[Modality.IMAGE] and p.is_file()
    )
    for path in images:
        name = path.relative_to(media_dir).as_posix()
        caption_file = path.with_suffix(".txt")
        record = {"id": path.stem, "image_name": name, "caption": None}
        if not caption_file.is_file():
            items.append(RawItem(path.stem, record, Skip("missing_caption_file", f"{caption_file} does not exist")))
            continue
        record["caption"] = caption_file.read_text(encoding="utf-8", errors="replace")
        items.append(RawItem(path.stem, record))
    return items


def _audiocaps_csv_items(csv_paths: list[Path]) -> list[RawItem]:
    """The AudioCaps release CSVs (audiocap_id, youtube_id, start_time, caption); clips are `<audiocap_id>.wav`."""
    items = []
    for path in csv_paths:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if not {"audiocap_id", "caption"} <= set(reader.fieldnames or ()):
                raise ValueError(f"AudioCaps: {path} needs the columns audiocap_id and caption; use the release CSVs")
            for row in reader:
                clip_id = (row["audiocap_id"] or "").strip()
                record = {"audio_id": clip_id, "audio_name": f"{clip_id}.wav", "caption": row["caption"]}
                items.append(RawItem(clip_id or f"#{len(items)}", record))
    return items


class PairConverter:
    """One caption-pair dataset -> comprehension and/or generation records."""

    def __init__(self, layout: PairLayout, source: DatasetSource, options: PrepareOptions) -> None:
        self.layout = layout
        self.dataset = layout.dataset
        self.seed = options.seed
        self.splits = options.splits
        self.source_files: list[Path] = []
        annotation = source.annotation or source.root / layout.annotation_name
        from_file = source.annotation is not None or annotation.is_file()
        default_dir = first_existing(source.root, (layout.media_folder,))
        if default_dir is None and layout is CC3M and not from_file:
            default_dir = source.root  # an img2dataset folder: images and caption files side by side
        what = f"{layout.dataset} {layout.modality.value}"
        self.media_dir = require_folder(source.media_dir or default_dir, what, (layout.media_folder,), source.root)
        self._items = self._read(annotation, from_file, source.root)

    def _read(self, annotation: Path, from_file: bool, root: Path) -> list[RawItem]:
        layout = self.layout
        if from_file:
            self.source_files = [annotation]
            records = read_json_list(annotation, f"{layout.dataset} captions")
            return [RawItem(record_id(r, (layout.id_key, layout.name_key), i), r) for i, r in enumerate(records)]
        csvs = [root / name for name in AUDIOCAPS_CSVS if (root / name).is_file()]
        if layout is AUDIOCAP and csvs:
            self.source_files = csvs
            return _audiocaps_csv_items(csvs)
        if layout is CC3M:
            items = _sidecar_items(self.media_dir)
            if items:
                self.source_files = [self.media_dir]
                return items
            if any(self.media_dir.glob("*.tar")):
                raise ValueError(
                    f"cc3m: {self.media_dir} holds webdataset .tar shards; extract them (tar -xf) or rerun "
                    "img2dataset with --output_format files"
                )
        raise FileNotFoundError(
            f"{layout.dataset}: {annotation} does not exist; put the official {layout.annotation_name} there "
            "or pass --annotation"
        )

    def outputs(self) -> list[OutputSpec]:
        layout, dirs = self.layout, {self.layout.modality: self.media_dir}
        specs = []
        if "comprehension" in self.splits:
            specs.append(OutputSpec(f"{layout.dataset}_enc", f"{layout.dataset}_comprehension.json", "x_to_text", dirs))
        if "generation" in self.splits:
            specs.append(
                OutputSpec(f"{layout.dataset}_dec", f"{layout.dataset}_generation.json", "text_to_x", dirs, True)
            )
        return specs

    def items(self) -> list[RawItem]:
        return self._items

    def convert(self, item: RawItem) -> Converted:
        layout, m = self.layout, self.layout.modality
        record = record_object(item.record)
        raw_id = record.get(layout.id_key)
        if layout is AUDIOCAP and str(raw_id).strip() in AUDIOCAPS_BROKEN_IDS:
            raise Skip("known_bad_clip", f"AudioCaps clip {raw_id} is on the authors' list of broken downloads")
        caption = text_field(record, "caption")
        name = checked_media_name(self.media_dir, record.get(layout.name_key), m)
        out: dict[str, dict[str, Any]] = {}
        if "comprehension" in self.splits:
            rng = record_rng(self.seed, f"{layout.dataset}_comprehension", item.id)
            question = f"{PLACEHOLDERS[m]}\n{comprehension_prompt(rng, m)}"
            out[f"{layout.dataset}_enc"] = {f"input_{m.value}": name, "conversations": make_turns(question, caption)}
        if "generation" in self.splits:
            rng = record_rng(self.seed, f"{layout.dataset}_generation", item.id)
            request, reply = generation_request(rng, m, caption), f"{generation_reply(rng, m)} {PLACEHOLDERS[m]}"
            out[f"{layout.dataset}_dec"] = {
                f"output_{m.value}": name,
                f"{m.value}_captions": caption,
                f"{m.value}_caption_embeddings": embedding_name(name),
                "conversations": make_turns(request, reply),
            }
        unique = {"duplicate_id": str(raw_id)} if raw_id is not None else {}
        unique["duplicate_media"] = name
        return Converted(out, unique)
