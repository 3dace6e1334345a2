"""LLaVA-Instruct-150K, Alpaca and VideoChat downloads -> instruction files the training parser reads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from raw_downloads import (
    alpaca_download,
    llava_download,
    parsed,
    run_prepare,
    skip_counts,
    videochat_download,
    write_json,
    write_mp4,
)

from nextgpt.constants import Modality

IMG, VID = Modality.IMAGE, Modality.VIDEO


def test_llava_puts_one_image_at_every_user_turn_like_nextgpt(tmp_path: Path):
    root = llava_download(tmp_path / "llava")
    report = run_prepare("llava", root, tmp_path / "out")
    assert report.found == 4 and skip_counts(report) == {"missing_media": 1, "malformed_record": 1}
    assert report.skipped["missing_media"].examples == ["000000052846"]
    assert "must alternate" in report.skipped["malformed_record"].detail
    first, second = parsed(tmp_path / "out", "llava_instruction")  # two records of one image: both kept
    image = (root / "train2017" / "000000033471.jpg").absolute()
    assert first.input_media == [(IMG, image)] * 2 and second.input_media == [(IMG, image)]
    questions = [t.text for t in first.turns if t.role == "user"]
    assert [q.replace("<image>", "").strip() for q in questions] == [
        "What are the colors of the bus in the image?",
        "What feature can be seen on the back of the bus?",
    ]
    assert all(q.count("<image>") == 1 and (q.startswith("<image>\n") or q.endswith("\n<image>")) for q in questions)
    assert [t.text for t in first.turns if t.role == "assistant"] == ["The bus is white and red.", "An advertisement."]


def test_llava_first_turn_only_keeps_llavas_own_mark(tmp_path: Path):
    root = llava_download(tmp_path / "llava")
    run_prepare("llava", root, tmp_path / "out", llava_image_every_turn=False)
    first, _ = parsed(tmp_path / "out", "llava_instruction")
    assert first.turns[0].text == "What are the colors of the bus in the image?\n<image>"
    assert first.turns[2].text == "What feature can be seen on the back of the bus?"
    assert len(first.input_media) == 1


def test_llava_finds_coco_train2014_file_names(tmp_path: Path):
    root = llava_download(tmp_path / "llava")
    shutil.move(root / "train2017", root / "train2014")
    image = root / "train2014" / "000000033471.jpg"
    image.rename(image.with_name("COCO_train2014_000000033471.jpg"))
    run_prepare("llava", root, tmp_path / "out")
    first, _ = parsed(tmp_path / "out", "llava_instruction")
    assert first.input_media[0][1].name == "COCO_train2014_000000033471.jpg"


def test_llava_prompt_placement_is_fixed_by_the_seed(tmp_path: Path):
    root = llava_download(tmp_path / "llava")

    def texts(out: str, seed: int) -> list[str]:
        run_prepare("llava", root, tmp_path / out, seed=seed)
        return [t.text for s in parsed(tmp_path / out, "llava_instruction") for t in s.turns]

    assert texts("a", 0) == texts("b", 0)
    assert json.loads((tmp_path / "a" / "report.json").read_text())["datasets"]["llava"]["seed"] == 0


def test_alpaca(tmp_path: Path):
    report = run_prepare("alpaca", alpaca_download(tmp_path / "alpaca"), tmp_path / "out")
    assert report.found == 3 and skip_counts(report) == {"empty_caption": 1}
    assert report.skipped["empty_caption"].examples == ["#2"]
    samples = parsed(tmp_path / "out", "alpaca_instruction")
    assert [[t.text for t in s.turns] for s in samples] == [
        ["Give three tips for staying healthy.", "Eat, sleep, move."],
        ["Translate to French.\nGood morning", "Bonjour"],
    ]
    assert all(s.input_media == [] and s.targets == [] for s in samples)


def test_videochat_qa_rounds_and_the_nextgpt_layout(tmp_path: Path):
    root = videochat_download(tmp_path / "videochat")
    report = run_prepare("videochat", root, tmp_path / "out")
    assert report.found == 3 and skip_counts(report) == {"missing_media": 1}
    description, rounds = parsed(tmp_path / "out", "videochat_instruction")
    clip = (root / "videos" / "1066659781.mp4").absolute()
    assert description.input_media == [(VID, clip)]
    assert [t.text for t in description.turns] == ["<video>\nDescribe the video in detail.", "A dog runs."]
    assert [t.text for t in rounds.turns] == [
        "<video>\nWhat animal is it?",
        "A dog.",
        "Where does it go?",
        "To the lake.",
    ]
    # a videochat.json already in NExT-GPT's layout is checked and passed through
    new = {"input_video": "1066659781.mp4", "conversations": [{"from": "human", "value": "<video>\nWhat?"}]}
    new["conversations"].append({"from": "gpt", "value": "A dog."})
    write_mp4(tmp_path / "vc2" / "videos" / "1066659781.mp4")
    write_json(tmp_path / "vc2" / "videochat.json", [new, {**new, "input_video": "../escape.mp4"}])
    report = run_prepare("videochat", tmp_path / "vc2", tmp_path / "out2")
    assert skip_counts(report) == {"unsafe_path": 1}
    (sample,) = parsed(tmp_path / "out2", "videochat_instruction")
    assert sample.turns[0].text == "<video>\nWhat?"
