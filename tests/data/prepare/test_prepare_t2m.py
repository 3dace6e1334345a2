"""T2M and MosIT downloads -> instruction files whose answers keep their generation targets."""

from __future__ import annotations

from pathlib import Path

from raw_downloads import mosit_download, parsed, run_prepare, skip_counts, t2m_download, t2x_record, write_json

from nextgpt.constants import Modality
from nextgpt.data.catalog import load_catalog
from nextgpt.data.records import Target

IMG, VID, AUD = Modality.IMAGE, Modality.VIDEO, Modality.AUDIO


def test_t2m_released_and_derived_files(tmp_path: Path):
    out = tmp_path / "out"
    report = run_prepare("t2m", t2m_download(tmp_path / "t2m"), out)
    assert report.found == 8
    assert report.written == {
        "image_instruction_tuning.json": 1,
        "video_instruction_tuning.json": 1,
        "audio_instruction_tuning.json": 2,
    }
    assert skip_counts(report) == {"empty_caption": 1, "malformed_record": 2, "conflicting_embedding_name": 1}
    assert report.skipped["conflicting_embedding_name"].examples == ["audio_t2x.json#2"]
    assert set(report.skipped["malformed_record"].examples) == {"image_t2x.json#2", "video_instruction_tuning.json#1"}
    embed = (out / "embed" / "t2m").absolute()
    (image,) = parsed(out, "image_instruction")
    assert image.turns[1].text == "Here is a wolf for you. <image>"  # where the legacy model put its signal tokens
    assert image.targets == [Target(IMG, "gray wolf in the snow", embed / "it_img_0.jpg.npy")]
    assert [s.targets for s in parsed(out, "audio_instruction")] == [
        [Target(AUD, "A vehicle engine works", embed / "34706.wav.npy")]
    ] * 2
    (video,) = parsed(out, "video_instruction")
    assert video.turns[1].text == "Absolutely! <video>"
    assert video.targets == [Target(VID, "woman doing yoga", embed / "it_vid_0.mp4.npy")]
    catalog = load_catalog(out / "datasets.yaml")
    assert {n: e.kind for n, e in catalog.items()} == dict.fromkeys(
        ("image_instruction", "video_instruction", "audio_instruction"), "instruction"
    )
    assert all(e.caption_embed_dir == embed for e in catalog.values())


def test_t2m_released_file_wins_over_the_derived_one(tmp_path: Path):
    root = tmp_path / "t2m"
    write_json(root / "image_t2x.json", [t2x_record("image", "Here.", "a kite", mm_name="k.jpg")])
    write_json(root / "image_instruction_tuning.json", [{"conversations": "stale"}])
    report = run_prepare("t2m", root, tmp_path / "out")
    assert report.source == str(root / "image_t2x.json") and report.num_skipped == 0
    assert [t.caption for s in parsed(tmp_path / "out", "image_instruction") for t in s.targets] == ["a kite"]


def test_mosit_user_tags_without_files_are_dropped_and_counted(tmp_path: Path):
    out = tmp_path / "out"
    report = run_prepare("mosit", mosit_download(tmp_path / "mosit"), out)
    assert report.found == 2 and skip_counts(report) == {"malformed_record": 1}
    assert set(report.changed) == {"user_media_dropped", "unlisted_tag_removed", "stray_placeholder_removed"}
    (sample,) = parsed(out, "mosit_instruction")
    assert [t.text for t in sample.turns] == [
        "Look at and tell me about waterfalls.",
        "Waterfalls are tall. Here is one: <image>",
        "And the sound of rain?",
        "Sure <audio>",
    ]
    embed = (out / "embed" / "mosit").absolute()
    assert sample.targets == [
        Target(IMG, "a waterfall", embed / "mosit_i_0000000_00.jpg.npy"),
        Target(AUD, "rain", embed / "mosit_a_0000000_00.wav.npy"),
    ]
    assert sample.input_media == []


def test_mosit_user_tags_with_their_file_become_inputs(tmp_path: Path):
    root = mosit_download(tmp_path / "mosit", with_user_image=True)
    report = run_prepare("mosit", root, tmp_path / "out")
    assert "user_media_dropped" not in report.changed
    (sample,) = parsed(tmp_path / "out", "mosit_instruction")
    assert sample.turns[0].text == "Look at <image> and tell me about waterfalls."
    assert sample.input_media == [(IMG, (root / "images" / "my_photo.jpg").absolute())]
    assert (
        load_catalog(tmp_path / "out" / "datasets.yaml")["mosit_instruction"].image_dir == (root / "images").absolute()
    )


def test_mosit_derived_file_is_checked_and_passed_through(tmp_path: Path):
    record = {
        "image_captions": ["An image of a basketball court"],
        "image_caption_embeddings": ["mosit_i_0000002_00.jpg.npy"],
        "conversations": [{"from": "human", "value": "Show me a court."}, {"from": "gpt", "value": "Here: <image>"}],
    }
    path = write_json(tmp_path / "mosit" / "mosit_instruction_tuning.json", [record, {"conversations": []}])
    report = run_prepare("mosit", tmp_path / "mosit", tmp_path / "out", annotation=path)
    assert report.written == {"mosit_instruction_tuning.json": 1} and skip_counts(report) == {"malformed_record": 1}
    (sample,) = parsed(tmp_path / "out", "mosit_instruction")
    assert sample.targets[0].embedding_path.name == "mosit_i_0000002_00.jpg.npy"
