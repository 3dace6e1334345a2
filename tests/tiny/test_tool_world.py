"""The synthetic ToolMMBench: records key for key in MLLM-Tool's released layout, a catalog that validates, several
right tools grouped, held-out requests never seen in training, and media the tiny tools read correctly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nextgpt.data.catalog import load_catalog, validate_datasets
from nextgpt.data.records import load_records
from nextgpt.data.tool_records import group_tool_records
from nextgpt.tiny.tool_world import write_tool_world
from nextgpt.tiny.tools import count_shapes
from nextgpt.tools.library import load_tool_library

RECORD_KEYS = ["id", "image_path", "video_path", "audio_path", "input_modality", "output_modality", "conversations"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tool_world(tmp_path_factory.mktemp("tool_world"), num_train=3, num_eval=2, seed=0)


def test_records_are_written_as_released(world: Path):
    audio = json.loads((world.parent / "IT_data_ins/T+X-T_data/audio_tx2t.json").read_text())
    record = audio[0]
    assert list(record) == RECORD_KEYS and record["id"] == 1
    assert record["image_path"] == record["video_path"] == "" and record["audio_path"].endswith(".wav")
    human, gpt = record["conversations"]
    assert list(human) == ["from", "value", "input_modality"] and human["from"] == "human"
    assert list(gpt) == ["from", "value", "ambiguity", "output_modality"] and gpt["from"] == "gpt"
    video = json.loads((world.parent / "IT_data_ins/T+X-T_data/video_tx2t.json").read_text())
    assert all(r["video_path"].startswith("video/") for r in video)


def test_the_catalog_validates_and_groups_synonymous_tools(world: Path):
    catalog = load_catalog(world)
    validate_datasets(list(catalog), catalog)
    library = load_tool_library(world.parent / "tools.json")
    examples, stats = group_tool_records(load_records(catalog["tool_image"].annotation_path), catalog["tool_image"])
    assert stats.num_malformed == 0 and stats.num_multi_answer > 0
    assert {"tiny/colour-namer", "tiny/hue-reader"} in [set(e.right_tools) for e in examples]
    _, text_stats = group_tool_records(
        load_records(catalog["tool_text"].annotation_path), catalog["tool_text"], library
    )
    assert text_stats.num_unknown >= 1 and text_stats.not_in_library == {}


def test_heldout_requests_are_never_trained_on(world: Path):
    catalog = load_catalog(world)
    for modality in ("text", "image", "video", "audio"):
        train = {r["conversations"][0]["value"] for r in load_records(catalog[f"tool_{modality}"].annotation_path)}
        heldout = load_records(catalog[f"tool_{modality}_eval"].annotation_path)
        assert heldout and not train & {r["conversations"][0]["value"] for r in heldout}


def test_counting_images_hold_what_the_shape_counter_reads(world: Path):
    catalog = load_catalog(world)
    examples, _ = group_tool_records(load_records(catalog["tool_image"].annotation_path), catalog["tool_image"])
    counts = {count_shapes("", [e.media]) for e in examples}
    assert counts <= {"1 shape", "2 shapes", "3 shapes"} and len(counts) > 1
