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


def _legacy_t2x(modality: str, answer: str, caption: str, **names: object) -> dict:
    """A released `*_t2x.json` record: one human turn, one answer carrying output_modality and caption."""
    return {
        **names,
        "conversation": [
            {"from": "human", "value": "Could you make this for me?", "input_modality": "text"},
            {"from": "gpt", "value": answer, "caption": caption, "output_modality": modality},
        ],
    }


@pytest.mark.parametrize(
    ("modality", "names", "embedding"),
    [
        (IMG, {"mm_name": "t2x0031.jpg"}, "t2x0031.jpg.npy"),
        (VID, {"mm_name": "videos/t2x0107.mp4", "source_data": {"videoid": 7}}, "t2x0107.mp4.npy"),
        (AUD, {"mm_name": "34706.wav", "source_data": {"audiocap_id": 34706}}, "34706.wav.npy"),
        # the T2M construction script's own keys: the same file name under `image_name`, for every modality
        (AUD, {"image_name": "t2x0052.wav", "output_modality": "audio"}, "t2x0052.wav.npy"),
    ],
)
def test_legacy_t2x_answer_keeps_its_target(entry: DatasetEntryConfig, modality: Modality, names: dict, embedding: str):
    record = _legacy_t2x(modality.value, "Sure, here it is.", "a wolf in the snow", **names)
    spec = parse_record(record, entry)
    assert [(t.role, t.text) for t in spec.turns] == [
        ("user", "Could you make this for me?"),
        ("assistant", f"Sure, here it is. <{modality.value}>"),  # the legacy model appended its signal tokens here
    ]
    assert spec.targets == [Target(modality, "a wolf in the snow", entry.caption_embed_dir / embedding)]
    assert spec.target_media == [None] and spec.input_media == []


def test_legacy_t2x_targets_match_the_new_layout_of_the_same_record(entry: DatasetEntryConfig):
    legacy = _legacy_t2x("image", "Here you go!", "a red kite", mm_name="kite.jpg")
    new = {
        "image_captions": ["a red kite"],
        "image_caption_embeddings": ["kite.jpg.npy"],
        "conversations": [
            {"from": "human", "value": "Could you make this for me?", "input_modality": "text"},
            {"from": "gpt", "value": "Here you go! <image>", "caption": "a red kite", "output_modality": "image"},
        ],
    }
    assert parse_record(legacy, entry) == parse_record(new, entry)


def test_new_instruction_tuning_record_is_read_as_released(entry: DatasetEntryConfig):
    """The audio example of the official data README: placeholder already in the answer, caption lists paired."""
    caption = "A vehicle engine works at regular pace and a man speeches"
    record = {
        "audio_captions": [caption],
        "audio_caption_embeddings": ["34706.wav.npy"],
        "conversations": [
            {"from": "human", "value": "I need the sound of an engine and a speech.", "input_modality": "text"},
            {"from": "gpt", "value": "Absolutely! <audio>", "caption": caption, "output_modality": "audio"},
        ],
        "source_data": {"audiocap_id": 34706},
    }
    spec = parse_record(record, entry)
    assert spec.turns[1].text == "Absolutely! <audio>"
    assert spec.targets == [Target(AUD, caption, entry.caption_embed_dir / "34706.wav.npy")]


def test_text_answers_and_placed_placeholders_are_not_doubled(entry: DatasetEntryConfig):
    record = {
        "mm_name": "a.jpg",
        "conversation": [
            {"from": "human", "value": "hi", "input_modality": "text"},
            {"from": "gpt", "value": "hello", "caption": "", "output_modality": "text"},
            {"from": "human", "value": "draw a cat", "input_modality": "text"},
            {"from": "gpt", "value": "<image> a cat", "caption": "a cat", "output_modality": "image"},
        ],
    }
    spec = parse_record(record, entry)
    assert [t.text for t in spec.turns if t.role == "assistant"] == ["hello", "<image> a cat"]
    assert spec.targets == [Target(IMG, "a cat", entry.caption_embed_dir / "a.jpg.npy")]


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (_legacy_t2x("image", "ok", "", mm_name="a.jpg"), "has no 'caption'"),
        (_legacy_t2x("image", "ok", "a cat"), "add 'mm_name'"),
        (_legacy_t2x("3d", "ok", "a cat", mm_name="a.jpg"), "output_modality must be text, image, video or audio"),
        (
            {
                "mm_name": "a.jpg",
                "conversation": _legacy_t2x("image", "one", "a")["conversation"]
                + _legacy_t2x("image", "two", "b")["conversation"],
            },
            "2 answers that make media but one 'mm_name'",
        ),
    ],
)
def test_malformed_legacy_t2x_records(entry: DatasetEntryConfig, record: dict, message: str):
    with pytest.raises(MalformedRecordError, match=message):
        parse_record(record, entry)
