"""The tool library file: checked entries, one runner at most, importable-looking callables, no reserved id."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nextgpt.tiny.tools import tiny_tool_library, write_tiny_tool_library
from nextgpt.tools.library import load_tool_library


def _write(tmp_path: Path, tools: list) -> Path:
    path = tmp_path / "tools.json"
    path.write_text(json.dumps({"tools": tools}))
    return path


def test_the_tiny_library_round_trips_through_its_file(tmp_path: Path):
    library = load_tool_library(write_tiny_tool_library(tmp_path / "tools.json"))
    assert list(library.tools) == list(tiny_tool_library().tools)
    assert library.get("tiny/shape-counter").runner == "callable"
    assert library.get("nextgpt/image-decoder").decoder == "image"
    assert library.is_known_answer("unknown") and not library.is_known_answer("tiny/made-up")


def test_a_pipeline_path_resolves_against_the_library_folder(tmp_path: Path):
    entry = {"id": "a/b", "input_modality": "audio", "output_modality": "text", "description": "asr"}
    library = load_tool_library(_write(tmp_path, [{**entry, "pipeline": {"path": "models/asr", "task": "x"}}]))
    assert library.get("a/b").pipeline.path == tmp_path / "models" / "asr"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"callable": "os.system"}, "module:function"),
        ({"callable": "x:y; rm -rf"}, "module:function"),
        ({"decoder": "image", "callable": "a:b"}, "at most one"),
        ({"input_modality": "speech"}, "input_modality"),
        ({"id": "unknown"}, "reserved"),
        ({"colour": "red"}, "unknown field"),
    ],
)
def test_bad_entries_are_refused_naming_the_field(tmp_path: Path, change: dict, message: str):
    entry = {"id": "a/b", "input_modality": "text", "output_modality": "text", "description": "d", **change}
    with pytest.raises(ValueError, match=message):
        load_tool_library(_write(tmp_path, [entry]))


def test_repeated_ids_and_missing_files_are_refused(tmp_path: Path):
    entry = {"id": "a/b", "input_modality": "text", "output_modality": "text", "description": "d"}
    with pytest.raises(ValueError, match="repeats"):
        load_tool_library(_write(tmp_path, [entry, entry]))
    with pytest.raises(FileNotFoundError, match="--tools"):
        load_tool_library(tmp_path / "missing.json")
