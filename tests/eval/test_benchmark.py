"""Benchmark files: records read in order, media kept inside the media folder, malformed files refused by name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nextgpt.eval.benchmark import load_benchmark


def _write(tmp_path: Path, records: list) -> Path:
    (tmp_path / "media").mkdir(exist_ok=True)
    for name in ("a.png", "b.png"):
        (tmp_path / "media" / name).write_bytes(b"x")
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(records))
    return path


def test_reads_records_in_order_up_to_the_limit(tmp_path: Path):
    records = [{"id": "1", "media": "a.png", "captions": ["one"]}, {"id": "2", "media": "b.png", "captions": ["two"]}]
    loaded = load_benchmark(_write(tmp_path, records), tmp_path / "media", limit=1)
    assert [(r.id, r.media_path.name, r.captions) for r in loaded] == [("1", "a.png", ("one",))]
    with pytest.raises(ValueError, match="holds 2 records but the protocol evaluates 3"):
        load_benchmark(_write(tmp_path, records), tmp_path / "media", limit=3)


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"id": "1", "media": "../bench.json", "captions": ["c"]}, "leaves the media folder"),
        ({"id": "1", "media": "/etc/passwd", "captions": ["c"]}, "is absolute"),
        ({"id": "../x", "media": "a.png", "captions": ["c"]}, "not letters"),
        ({"id": "1", "media": "a.png", "captions": []}, "non-empty list"),
        ({"id": "1", "media": "a.png"}, "needs keys"),
    ],
)
def test_unsafe_or_malformed_records_are_refused(tmp_path: Path, record: dict, message: str):
    with pytest.raises(ValueError, match=message):
        load_benchmark(_write(tmp_path, [record]), tmp_path / "media")


def test_missing_files_are_named(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="benchmark file not found"):
        load_benchmark(tmp_path / "absent.json", tmp_path)
    path = _write(tmp_path, [{"id": "1", "media": "c.png", "captions": ["c"]}])
    with pytest.raises(FileNotFoundError, match="c.png"):
        load_benchmark(path, tmp_path / "media")
