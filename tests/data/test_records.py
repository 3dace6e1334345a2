"""One parser for every official record format: turns with placeholders, input media, generation targets."""

from __future__ import annotations

from pathlib import Path

import pytest

from nextgpt.config import DatasetEntryConfig
from nextgpt.constants import Modality
from nextgpt.data.records import MalformedRecordError, Target, parse_record

IMG, VID, AUD = Modality.IMAGE, Modality.VIDEO, Modality.AUDIO


@pytest.fixture()
def entry(tmp_path: Path) -> DatasetEntryConfig:
    return DatasetEntryConfig(
        annotation_path=tmp_path / "a.json",
        image_dir=tmp_path / "images",
        video_dir=tmp_path / "videos",
        audio_dir=tmp_path / "audios",
        caption_embed_dir=tmp_path / "embed",
    )


def _conv(*values: str) -> list[dict[str, str]]:
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": v} for i, v in enumerate(values)]


def test_comprehension(entry: DatasetEntryConfig):
    record = {"input_image": "001312382.jpg", "conversations": _conv("<image>\nWhat's the image about?", "a dog")}
    spec = parse_record(record, entry)
    assert [(t.role, t.text) for t in spec.turns] == [
        ("user", "<image>\nWhat's the image about?"),
        ("assistant", "a dog"),
    ]
    assert spec.input_media == [(IMG, entry.image_dir / "001312382.jpg")]
    assert spec.targets == [] and spec.modalities == [IMG]


def test_generation_with_output_media(entry: DatasetEntryConfig):
    record = {
        "output_audio": "106158.wav",
        "audio_captions": "A train running",
        "audio_caption_embeddings": "106158.wav.npy",
        "conversations": _conv("render a audio recording of A train running", "Here it is <audio>"),
    }
    spec = parse_record(record, entry)
    assert spec.turns[1].text == "Here it is <audio>"
    assert spec.input_media == []
    assert spec.targets == [Target(AUD, "A train running", entry.caption_embed_dir / "106158.wav.npy")]
    assert spec.target_media == [entry.audio_dir / "106158.wav"]


def test_t2m_caption_lists(entry: DatasetEntryConfig):
    conversations = _conv("I need a clip of a yoga class.", "Absolutely! <video>")
    conversations[0]["input_modality"] = "text"
    conversations[1].update(caption="woman doing yoga", output_modality="video")
    record = {
        "video_captions": ["woman doing yoga"],
        "video_caption_embeddings": ["it_vid_0.mp4.npy"],
        "conversations": conversations,
        "source_data": {"id": 3},
    }
    spec = parse_record(record, entry)
    assert spec.targets == [Target(VID, "woman doing yoga", entry.caption_embed_dir / "it_vid_0.mp4.npy")]
    assert spec.target_media == [None]


def test_llava_one_image_per_human_turn(entry: DatasetEntryConfig):
    record = {
        "input_image": ["coco_1.jpg", "coco_1.jpg"],
        "conversations": _conv("<image>\nWhat colour?", "red", "Where is it?\n<image>", "left"),
    }
    spec = parse_record(record, entry)
    assert [t.role for t in spec.turns] == ["user", "assistant", "user", "assistant"]
    assert spec.input_media == [(IMG, entry.image_dir / "coco_1.jpg")] * 2


def test_alpaca_text_only(entry: DatasetEntryConfig):
    spec = parse_record({"conversations": _conv("Give three tips.", "Eat, sleep, walk.")}, entry)
    assert spec.input_media == [] and spec.targets == [] and spec.modalities == []


def test_videochat(tmp_path: Path):
    entry = DatasetEntryConfig(annotation_path=tmp_path / "v.json", video_dir=tmp_path / "v")
    spec = parse_record({"input_video": "x/1.mp4", "conversations": _conv("<video>\nWhat happens?", "A run.")}, entry)
    assert spec.input_media == [(VID, tmp_path / "v" / "x" / "1.mp4")]


def test_mosit_media_on_both_sides(entry: DatasetEntryConfig):
    record = {
        "image_list": [{"image_name": "mosit_i_0_01.jpg", "data_source": "mosit", "caption": "a waterfall"}],
        "input_audio": ["bird.wav"],
        "video_captions": ["a dancing cat"],
        "video_caption_embeddings": ["mosit_v_0_00.mp4.npy"],
        "conversations": _conv(
            "<Video>clip.mp4</Video> what is this? <audio>",
            "A cat and a bird.",
            "Show me a waterfall and the cat again.",
            "Here: <Image>mosit_i_0_01.jpg</Image> and <video>",
        ),
    }
    spec = parse_record(record, entry)
    assert spec.turns[0].text == "<video> what is this? <audio>"
    assert spec.turns[3].text == "Here: <image> and <video>"
    assert spec.input_media == [(VID, entry.video_dir / "clip.mp4"), (AUD, entry.audio_dir / "bird.wav")]
    assert spec.targets == [
        Target(IMG, "a waterfall", entry.caption_embed_dir / "mosit_i_0_01.jpg.npy"),
        Target(VID, "a dancing cat", entry.caption_embed_dir / "mosit_v_0_00.mp4.npy"),
    ]
    assert spec.modalities == [IMG, VID, AUD]


@pytest.mark.parametrize("name", ["../secret.jpg", "/etc/passwd", "a/../../b.jpg", "..\\up.jpg"])
def test_paths_leaving_the_dataset_folder_are_malformed(entry: DatasetEntryConfig, name: str):
    record = {"input_image": name, "conversations": _conv("<image>", "x")}
    with pytest.raises(MalformedRecordError, match="relative path inside"):
        parse_record(record, entry)
    tagged = {"conversations": _conv(f"<Image>{name}</Image>", "x")}
    with pytest.raises(MalformedRecordError, match="relative path inside"):
        parse_record(tagged, entry)


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"input_image": ["a.jpg", "b.jpg"], "conversations": _conv("<image>", "x")}, "more 'input_image' entries"),
        ({"conversations": _conv("<image> <image>", "x"), "input_image": "a.jpg"}, "more <image> placeholders"),
        ({"image_captions": "c", "conversations": _conv("make it", "ok")}, "more 'image_captions' entries"),
        (
            {"conversations": _conv("make it", "ok <audio>")},
            "more <audio> placeholders than the record's audio_captions",
        ),
        (
            {"image_captions": ["a", "b"], "image_caption_embeddings": ["a.npy"], "conversations": _conv("q", "a")},
            "pair by position",
        ),
        ({"conversations": _conv("q", "a <Image>x.jpg</Image>")}, "no entry in 'image_list'"),
        ({"conversations": _conv("<Image>a caption with spaces</Image>", "a")}, "must name a file"),
        ({"conversations": [{"from": "gpt", "value": "hi"}, {"from": "human", "value": "q"}]}, "must alternate"),
        ({"conversations": _conv("q", "a", "dangling question")}, "without an answer"),
        ({"conversations": [{"from": "bot", "value": "x"}]}, "conversations\\[0\\] must be"),
        ({"input_image": 3, "conversations": _conv("<image>", "a")}, "must be a string or a list"),
        ({"turns": []}, "non-empty 'conversations'"),
    ],
)
def test_malformed_records(entry: DatasetEntryConfig, record: dict, message: str):
    with pytest.raises(MalformedRecordError, match=message):
        parse_record(record, entry)


def test_missing_folder_or_embed_dir_is_malformed(tmp_path: Path):
    bare = DatasetEntryConfig(annotation_path=tmp_path / "a.json")
    with pytest.raises(MalformedRecordError, match="no image_dir"):
        parse_record({"input_image": "a.jpg", "conversations": _conv("<image>", "a")}, bare)
    record = {"image_captions": "c", "image_caption_embeddings": "c.npy", "conversations": _conv("q", "<image>")}
    with pytest.raises(MalformedRecordError, match="no caption_embed_dir"):
        parse_record(record, bare)
