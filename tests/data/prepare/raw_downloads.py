"""Tiny fake official downloads, each in its documented layout, with one record per way a record can be bad."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from nextgpt.inference.media_io import save_audio, save_video


def write_jpg(path: Path, colour: tuple[int, int, int] = (200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path, "JPEG")
    return path


def write_mp4(path: Path) -> Path:
    frames = np.zeros((8, 32, 32, 3), np.uint8)
    frames[4:] = 255
    return save_video(frames, path, fps=4)


def write_wav(path: Path) -> Path:
    return save_audio(0.1 * np.sin(np.linspace(0, 200, 1600)).astype(np.float32), path, sample_rate=16000)


def write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))
    return path


CC3M_SKIPS = {
    "missing_media": 1,
    "empty_caption": 1,
    "duplicate_id": 1,
    "unsafe_path": 2,
    "unknown_extension": 1,
    "empty_media": 1,
    "duplicate_media": 1,
    "malformed_record": 1,
}


def cc3m_download(root: Path) -> Path:
    """cc3m.json + images/: three good records and one of each skip reason of `CC3M_SKIPS` (12 records)."""
    for name in ("001.jpg", "002.jpg", "003.jpg"):
        write_jpg(root / "images" / name)
    (root / "images" / "005.jpg").write_bytes(b"")
    (root / "images" / "notes.txt").write_text("not an image")
    write_jpg(root / "secret.jpg")  # exists, but outside images/
    write_json(
        root / "cc3m.json",
        [
            {"caption": "a dog on a beach", "id": "001", "image_name": "001.jpg"},
            {"caption": "  two  cats\r\n", "id": "002", "image_name": "002.jpg"},
            {"caption": "a red car", "id": "003", "image_name": "003.jpg"},
            {"caption": "a lost photo", "id": "004", "image_name": "004.jpg"},
            {"caption": "   ", "id": "006", "image_name": "001.jpg"},
            {"caption": "the same id again", "id": "001", "image_name": "003.jpg"},
            {"caption": "escape", "id": "007", "image_name": "../secret.jpg"},
            {"caption": "absolute", "id": "008", "image_name": str(root / "secret.jpg")},
            {"caption": "a text file", "id": "009", "image_name": "notes.txt"},
            {"caption": "an empty file", "id": "005", "image_name": "005.jpg"},
            {"caption": "the same picture", "id": "010", "image_name": "002.jpg"},
            ["not", "a", "record"],
        ],
    )
    return root


def webvid_download(root: Path) -> Path:
    """webvid.json + videos/: two clips (integer ids, a caption ending in CRLF) and one missing."""
    write_mp4(root / "videos" / "00169473.mp4")
    write_mp4(root / "videos" / "00123086.mp4")
    write_json(
        root / "webvid.json",
        [
            {"caption": "Roses in the garden\r\n", "id": 12949985, "video_name": "00169473.mp4"},
            {"caption": "Aerial view of a field", "id": 1026827060, "video_name": "00123086.mp4"},
            {"caption": "Gone", "id": 4999553, "video_name": "00077761.mp4"},
        ],
    )
    return root


def audiocap_download(root: Path) -> Path:
    """audiocap.json + audios/: two clips and one id of the authors' broken list (its file present)."""
    for clip in ("106158", "107819", "508"):
        write_wav(root / "audios" / f"{clip}.wav")
    write_json(
        root / "audiocap.json",
        [
            {"audio_id": 106158, "audio_name": "106158.wav", "caption": "A train running and then a horn honking"},
            {"audio_id": 107819, "audio_name": "107819.wav", "caption": "A man speaks over gunfire"},
            {"audio_id": 508, "audio_name": "508.wav", "caption": "Broken"},
        ],
    )
    return root


def llava_download(root: Path) -> Path:
    """llava_instruct_150k.json + train2017/: an image used by two records (same id), a missing image, bad roles."""
    write_jpg(root / "train2017" / "000000033471.jpg")
    conversation = [
        {"from": "human", "value": "What are the colors of the bus in the image?\n<image>"},
        {"from": "gpt", "value": "The bus is white and red."},
        {"from": "human", "value": "What feature can be seen on the back of the bus?"},
        {"from": "gpt", "value": "An advertisement."},
    ]
    write_json(
        root / "llava_instruct_150k.json",
        [
            {"id": "000000033471", "image": "000000033471.jpg", "conversations": conversation},
            {
                "id": "000000033471",
                "image": "000000033471.jpg",
                "conversations": [
                    {"from": "human", "value": "<image>\nDescribe the scene."},
                    {"from": "gpt", "value": "A bus at a stop."},
                ],
            },
            {"id": "000000052846", "image": "000000052846.jpg", "conversations": conversation},
            {"id": "000000000009", "image": "000000033471.jpg", "conversations": conversation[1:]},
        ],
    )
    return root


def alpaca_download(root: Path) -> Path:
    """alpaca_data.json: with an input, without one, and with an empty output."""
    write_json(
        root / "alpaca_data.json",
        [
            {"instruction": "Give three tips for staying healthy.", "input": "", "output": "Eat, sleep, move."},
            {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"},
            {"instruction": "Say nothing.", "input": "", "output": ""},
        ],
    )
    return root


def videochat_download(root: Path) -> Path:
    """videochat_instruct_11k.json + videos/: a description, a two-round QA, a missing clip."""
    write_mp4(root / "videos" / "1066659781.mp4")
    write_json(
        root / "videochat_instruct_11k.json",
        [
            {"video": "1066659781.mp4", "QA": [{"i": "Describe the video in detail.", "q": "", "a": "A dog runs."}]},
            {
                "video": "1066659781.mp4",
                "QA": [{"q": "What animal is it?", "a": "A dog."}, {"q": "Where does it go?", "a": "To the lake."}],
            },
            {"video": "absent.mp4", "QA": [{"q": "What?", "a": "Nothing."}]},
        ],
    )
    return root


def t2x_record(modality: str, answer: str, caption: str, **extra: Any) -> dict[str, Any]:
    """A released `*_t2x.json` record (legacy layout: output_modality and caption on the answer)."""
    return {
        **extra,
        "conversation": [
            {"from": "human", "value": f"Please make a {modality} for my project.", "input_modality": "text"},
            {"from": "gpt", "value": answer, "caption": caption, "output_modality": modality},
        ],
    }


def t2m_download(root: Path) -> Path:
    """image_t2x.json, audio_t2x.json (released layout) and video_instruction_tuning.json (derived layout)."""
    write_json(
        root / "image_t2x.json",
        [
            t2x_record("image", "Here is a wolf for you.", "gray wolf in the snow", mm_name="t2x0010.jpg"),
            t2x_record("image", "Sure.", "", mm_name="t2x0020.jpg"),
            t2x_record("video", "A clip in the image file.", "a clip", mm_name="t2x0030.mp4"),
        ],
    )
    audio = {"audiocap_id": 34706}
    write_json(
        root / "audio_t2x.json",
        [
            t2x_record("audio", "Listen.", "A vehicle engine works", source_data=audio),
            t2x_record("audio", "Here it is.", "A vehicle engine works", source_data=audio),
            t2x_record("audio", "Another one.", "Birds singing", source_data=audio),
        ],
    )
    new = {
        "video_captions": ["woman doing yoga"],
        "video_caption_embeddings": ["it_vid_0.mp4.npy"],
        "conversations": [
            {"from": "human", "value": "A yoga clip, please.", "input_modality": "text"},
            {"from": "gpt", "value": "Absolutely! <video>", "caption": "woman doing yoga", "output_modality": "video"},
        ],
        "source_data": {"videoid": 3},
    }
    broken = {**new, "video_captions": ["a", "b"], "video_caption_embeddings": ["x.npy", "y.npy"]}
    write_json(root / "video_instruction_tuning.json", [new, broken])
    return root


def mosit_download(root: Path, with_user_image: bool = False) -> Path:
    """mosit.json: a user-side tag (its file present only `with_user_image`), assistant tags of listed files, an
    assistant tag that is not listed, and an inline `<image>caption</image>` pair."""
    if with_user_image:
        write_jpg(root / "images" / "my_photo.jpg")
    write_json(
        root / "mosit.json",
        [
            {
                "image_list": [
                    {"image_name": "mosit_i_0000000_00.jpg", "data_source": "mosit", "caption": "a waterfall"}
                ],
                "video_list": [],
                "audio_list": [{"audio_name": "mosit_a_0000000_00.wav", "data_source": "mosit", "caption": "rain"}],
                "conversation": [
                    {"from": "human", "value": "Look at <Image>my_photo.jpg</Image> and tell me about waterfalls."},
                    {"from": "gpt", "value": "Waterfalls are tall. Here is one: <Image>mosit_i_0000000_00.jpg</Image>"},
                    {"from": "human", "value": "And the sound of rain?"},
                    {
                        "from": "gpt",
                        "value": "Sure <Audio>mosit_a_0000000_00.wav</Audio> <Video>not_listed.mp4</Video>"
                        " <image>a caption</image>",
                    },
                ],
            },
            {"image_list": "oops", "conversation": [{"from": "human", "value": "x"}, {"from": "gpt", "value": "y"}]},
        ],
    )
    return root


def run_prepare(dataset: str, root: Path, out: Path, **options: Any):
    """`prepare` for one dataset; returns its report."""
    from nextgpt.data.prepare import PrepareOptions, prepare

    (report,) = prepare(PrepareOptions(dataset=dataset, root=root, out=out, progress=False, **options))
    return report


def parsed(out: Path, name: str) -> list:
    """The written records of catalog entry `name`, read back through the catalog fragment and the training parser."""
    from nextgpt.data.catalog import load_catalog
    from nextgpt.data.records import load_records, parse_record

    entry = load_catalog(out / "datasets.yaml")[name]
    return [parse_record(record, entry) for record in load_records(entry.annotation_path)]


def skip_counts(report) -> dict[str, int]:
    return {reason: entry.count for reason, entry in report.skipped.items()}
