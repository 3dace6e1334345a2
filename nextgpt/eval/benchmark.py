"""Benchmark files: the records an evaluation task reads, with every media path kept inside the media folder.

A benchmark file is a JSON list of records `{"id": "391895", "media": "val2014/COCO_val2014_000000391895.jpg",
"captions": ["A man riding a bike ...", ...]}`: "media" is relative to the protocol's `media_dir` (the input of a
caption task, the reference of a generation task) and "captions" are the references (caption tasks) or the prompt
source (generation tasks: the first caption). `prepare_data.py`-style converters write this format; the tiny world
writes its own (`nextgpt.tiny.benchmarks`).

    records = load_benchmark(Path("data/eval/coco/karpathy_test.json"), Path("data/eval/coco/images"), limit=5000)
    records[0].media_path, records[0].captions
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


@dataclass(frozen=True)
class BenchmarkRecord:
    """One record: a safe `id` (names its output files), the resolved `media_path` and the reference `captions`."""

    id: str
    media_path: Path
    captions: tuple[str, ...]


def resolve_inside(root: Path, relative: str) -> Path:
    """`root / relative`, refusing absolute paths and paths that leave `root` (`..`, symlinks out).

    Raises:
        ValueError: the path is absolute or resolves outside `root`.
    """
    if Path(relative).is_absolute():
        raise ValueError(f"media path {relative!r} is absolute; benchmark media paths are relative to the media folder")
    resolved = (Path(root) / relative).resolve()
    if not resolved.is_relative_to(Path(root).resolve()):
        raise ValueError(f"media path {relative!r} leaves the media folder {root}; fix the benchmark file")
    return resolved


def load_benchmark(annotation_path: Path, media_dir: Path, limit: int = 0) -> list[BenchmarkRecord]:
    """Read and check the first `limit` records (0: all) of a benchmark file.

    Raises:
        FileNotFoundError: the file, or a record's media file, is missing.
        ValueError: not a JSON list, a record without id / media / captions, a duplicate or unsafe id, a media path
            outside `media_dir`, or fewer records than `limit`.
    """
    annotation_path = Path(annotation_path)
    if not annotation_path.is_file():
        raise FileNotFoundError(f"benchmark file not found: {annotation_path}; see the README's evaluation section")
    raw = json.loads(annotation_path.read_text())
    if not isinstance(raw, list):
        raise ValueError(f"{annotation_path} must hold a JSON list of records, got {type(raw).__name__}")
    if limit and len(raw) < limit:
        raise ValueError(f"{annotation_path} holds {len(raw)} records but the protocol evaluates {limit}")
    records, seen = [], set()
    for index, item in enumerate(raw[: limit or None]):
        where = f"{annotation_path}[{index}]"
        if not isinstance(item, dict) or not {"id", "media", "captions"} <= set(item):
            raise ValueError(f"{where} needs keys id, media and captions")
        record_id, captions = str(item["id"]), item["captions"]
        if not _ID.match(record_id) or record_id in seen:
            raise ValueError(f"{where}: id {record_id!r} is a duplicate or not letters, digits, '.', '_', '-'")
        if not isinstance(captions, list) or not captions or not all(isinstance(c, str) and c for c in captions):
            raise ValueError(f"{where}: captions must be a non-empty list of strings")
        media_path = resolve_inside(media_dir, str(item["media"]))
        if not media_path.is_file():
            raise FileNotFoundError(f"{where}: media file not found: {media_path}")
        seen.add(record_id)
        records.append(BenchmarkRecord(record_id, media_path, tuple(captions)))
    return records
