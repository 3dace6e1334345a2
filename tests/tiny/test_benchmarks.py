"""The tiny world's benchmark files: its held-out items per modality, readable by the evaluation tasks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nextgpt.eval.benchmark import load_benchmark
from nextgpt.tiny.benchmarks import write_tiny_benchmarks
from nextgpt.tiny.data import write_synthetic_world


def test_one_benchmark_per_modality_of_the_held_out_items(tmp_path: Path):
    root = write_synthetic_world(tmp_path / "world", num_train=1, num_eval=3, seed=0).parent
    metadata = json.loads((root / "metadata.json").read_text())["items"]
    for modality in ("image", "video", "audio"):
        records = load_benchmark(root / "benchmarks" / f"{modality}.json", root)
        held_out = [it for it in metadata if it["split"] == "eval" and it["modality"] == modality]
        assert [r.captions for r in records] == [(it["caption"],) for it in held_out]
        assert all(r.media_path.is_file() and r.id.startswith("eval_") for r in records)


def test_needs_a_world(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="metadata.json"):
        write_tiny_benchmarks(tmp_path)
