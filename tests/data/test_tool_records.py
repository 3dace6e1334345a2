"""MLLM-Tool records parse as released: the per-modality files (one right tool per record), combined_data.json (a list
of right tools, top-level `ambiguity` as a string on text records), grouping of records that share input and request,
"unknown" answers and tools outside the library counted, media kept inside the dataset folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nextgpt.config import DatasetEntryConfig
from nextgpt.constants import Modality
from nextgpt.data.records import MalformedRecordError, parse_record
from nextgpt.data.tool_records import expand_tool_records, group_tool_records, read_tool_record
from nextgpt.tools.library import ToolLibrary, ToolSpec

REQUEST = (
    "I'm testing different accents and how they give commands. Can you help determine what the command in this "
    "recording is?"
)


def _audio_record(record_id: int, tool: str, ambiguity: int = -1) -> dict:
    """A record of audio_tx2t.json, key for key as released."""
    return {
        "id": record_id,
        "image_path": "",
        "video_path": "",
        "audio_path": "audioset2/1/4.wav",
        "input_modality": "audio",
        "output_modality": "text",
        "conversations": [
            {"from": "human", "value": REQUEST, "input_modality": "audio"},
            {"from": "gpt", "value": tool, "ambiguity": ambiguity, "output_modality": "text"},
        ],
    }


COMBINED_VIDEO = {
    "id": 1,
    "image_path": "",
    "video_path": "video/9Kz9o3B4MNg.mp4",
    "audio_path": "",
    "input_modality": "video",
    "output_modality": "text",
    "conversations": [
        {
            "from": "human",
            "value": "Categorize the action of the person and then provide a fitting caption.",
            "input_modality": "video",
        },
        {
            "from": "gpt",
            "value": [
                "MCG-NJU/videomae-base-finetuned-kinetics",
                "facebook/timesformer-base-finetuned-k600",
                "facebook/timesformer-hr-finetuned-k400",
                "microsoft/xclip-base-patch32",
            ],
            "ambiguity": -1,
            "output_modality": "text",
        },
    ],
    "ifambiguity": False,
    "onetomulti": True,
    "ambiguity": -1,
}
COMBINED_TEXT = {
    "id": 7,
    "image_path": "",
    "video_path": "",
    "audio_path": "",
    "input_modality": "text",
    "output_modality": "text",
    "conversations": [
        {"from": "human", "value": "Change the breed of the dog in my story.", "input_modality": "text"},
        {"from": "gpt", "value": ["unknown"], "ambiguity": -1, "output_modality": "text"},
    ],
    "ifambiguity": False,
    "onetomulti": False,
    "modality": "text",
    "ambiguity": "-1",
}


@pytest.fixture()
def entry(tmp_path: Path) -> DatasetEntryConfig:
    """The catalog entry of the released layout: mm_dataset/image, mm_dataset (video paths start with video/), audio."""
    mm = tmp_path / "mm_dataset"
    return DatasetEntryConfig(
        annotation_path=tmp_path / "combined_data.json",
        kind="tool",
        image_dir=mm / "image",
        video_dir=mm,
        audio_dir=mm / "audio",
    )


def test_a_released_audio_record_becomes_the_media_then_request_and_the_api_name_answer(entry: DatasetEntryConfig):
    spec = parse_record(_audio_record(1, "MIT/ast-finetuned-speech-commands-v2"), entry)
    assert spec.input_media == [(Modality.AUDIO, entry.audio_dir / "audioset2" / "1" / "4.wav")]
    assert [t.role for t in spec.turns] == ["user", "assistant"]
    assert spec.turns[0].text == f"<audio>\n{REQUEST}"
    assert spec.turns[1].text == "{'api_name': MIT/ast-finetuned-speech-commands-v2}"
    assert spec.targets == []


def test_combined_records_read_video_paths_from_the_media_root_and_string_ambiguity(entry: DatasetEntryConfig):
    video = read_tool_record(COMBINED_VIDEO, entry)
    assert video.media == entry.video_dir / "video" / "9Kz9o3B4MNg.mp4"
    assert len(video.tools) == 4 and video.ambiguity == -1
    text = read_tool_record(COMBINED_TEXT, entry)
    assert text.media is None and text.tools == ("unknown",) and text.ambiguity == -1
    assert parse_record(COMBINED_TEXT, entry).turns[0].text == "Change the breed of the dog in my story."


def test_records_sharing_input_and_request_are_one_example_with_every_right_tool(entry: DatasetEntryConfig):
    tools = ["MIT/ast-finetuned-speech-commands-v2", "superb/hubert-base-superb-ks", "made/up-tool"]
    records = [_audio_record(i + 1, tool, ambiguity=5) for i, tool in enumerate(tools)]
    records += [COMBINED_VIDEO, COMBINED_TEXT, {"id": 9, "conversations": []}]
    library = ToolLibrary({t: ToolSpec(t, "audio", "text", "") for t in tools[:2]})
    examples, stats = group_tool_records(records, entry, library)
    assert [e.right_tools for e in examples][0] == tools
    assert examples[0].record_ids == [1, 2, 3] and examples[0].ambiguity == 5
    assert stats.num_records == 6 and stats.num_malformed == 1 and stats.num_examples == 3
    assert stats.num_multi_answer == 2 and stats.num_unknown == 1
    assert stats.per_modality == {"audio": 1, "video": 1, "text": 1}
    # Every tool of the video example and the invented one are missing from this library; "unknown" never is.
    assert stats.not_in_library["made/up-tool"] == 1 and "unknown" not in stats.not_in_library
    assert len(stats.not_in_library) == 5


def test_training_reads_one_sample_per_right_tool():
    expanded = expand_tool_records([COMBINED_VIDEO, COMBINED_TEXT, "not a record"])
    assert [r["conversations"][1]["value"] for r in expanded[:4]] == COMBINED_VIDEO["conversations"][1]["value"]
    assert expanded[4] is COMBINED_TEXT and expanded[5] == "not a record"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"audio_path": "../../etc/passwd"}, "inside"),
        ({"audio_path": "/abs/4.wav"}, "inside"),
        ({"image_path": "x.png"}, "no other file"),
        ({"input_modality": "speech"}, "input_modality"),
    ],
)
def test_bad_records_are_refused_with_the_reason(entry: DatasetEntryConfig, change: dict, message: str):
    with pytest.raises(MalformedRecordError, match=message):
        read_tool_record({**_audio_record(1, "a/b"), **change}, entry)


def test_a_request_holding_a_media_placeholder_is_refused(entry: DatasetEntryConfig):
    record = json.loads(json.dumps(COMBINED_TEXT))
    record["conversations"][0]["value"] = "What is <image> here?"
    with pytest.raises(MalformedRecordError, match="placeholder|mark media"):
        read_tool_record(record, entry)


def test_a_library_is_made_from_the_records_right_tools(tmp_path: Path, entry: DatasetEntryConfig):
    from nextgpt.cli import make_tool_library
    from nextgpt.tools.library import load_tool_library

    records = [_audio_record(1, "MIT/ast-finetuned-speech-commands-v2"), COMBINED_VIDEO, COMBINED_TEXT]
    entry.annotation_path.write_text(json.dumps(records))
    catalog = tmp_path / "catalog.yaml"
    mm = "mm_dataset"
    catalog.write_text(
        "datasets:\n  tools:\n    annotation_path: combined_data.json\n    kind: tool\n"
        f"    image_dir: {mm}/image\n    video_dir: {mm}\n    audio_dir: {mm}/audio\n"
    )
    argv = ["--catalog", str(catalog), "--datasets", "tools", "--output", str(tmp_path / "tools.json")]
    assert make_tool_library.main(argv) == 0
    library = load_tool_library(tmp_path / "tools.json")
    assert list(library.tools)[:2] == [
        "MIT/ast-finetuned-speech-commands-v2",
        "MCG-NJU/videomae-base-finetuned-kinetics",
    ]
    assert len(library) == 5 and "unknown" not in library
    assert library.get("microsoft/xclip-base-patch32").input_modality == "video"
