"""The synthetic world: seeded, fast, every official format present, and every record validates and parses."""

from __future__ import annotations

import json
import time
import wave
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nextgpt.constants import Modality
from nextgpt.data import load_catalog, parse_record, validate_datasets
from nextgpt.data.records import load_records
from nextgpt.llm.conversation import build_training_example
from nextgpt.signals import find_signal_spans
from nextgpt.tiny.data import COLOURS, PITCHES, POSITIONS, caption_of, write_synthetic_world

OFFICIAL_NAMES = [
    "cc3m_enc", "cc3m_dec", "webvid_enc", "webvid_dec", "audiocap_enc", "audiocap_dec", "llava_instruction",
    "alpaca_instruction", "videochat_instruction", "image_instruction", "video_instruction", "audio_instruction",
    "mosit_instruction",
]  # fmt: skip


def test_catalog_has_train_and_eval_entry_for_every_format_and_all_validate(world: Path):
    catalog = load_catalog(world)
    assert set(catalog) == set(OFFICIAL_NAMES) | {f"{n}_eval" for n in OFFICIAL_NAMES}
    validate_datasets(list(catalog), catalog)
    assert catalog["cc3m_enc"].image_dir is not None and catalog["cc3m_enc"].video_dir is None
    assert catalog["alpaca_instruction"].image_dir is None
    assert catalog["cc3m_dec"].caption_embed_dir == world.parent / "embed"
    assert catalog["mosit_instruction"].caption_embed_dir == world.parent / "it" / "embed"


def test_every_record_parses_and_tokenizes_with_one_span_per_target(world: Path, tokenizer, signal_ids):
    counts = {}
    for name, entry in load_catalog(world).items():
        records = load_records(entry.annotation_path)
        counts[name] = len(records)
        for record in records:
            spec = parse_record(record, entry)
            assert all(path.is_file() for _, path in spec.input_media)
            assert all(t.embedding_path is not None and t.embedding_path.is_file() for t in spec.targets)
            ids = build_training_example(tokenizer, spec.turns, signal_ids).input_ids
            scan = find_signal_spans(torch.tensor(ids), signal_ids)
            for m in Modality:
                assert scan.count(m) == sum(t.modality == m for t in spec.targets), name
    assert counts["cc3m_enc"] == 4 and counts["cc3m_enc_eval"] == 2
    mosit = parse_record(load_records(load_catalog(world)["mosit_instruction"].annotation_path)[0],
                         load_catalog(world)["mosit_instruction"])  # fmt: skip
    assert [m for m, _ in mosit.input_media] == [Modality.IMAGE, Modality.AUDIO]
    assert [t.modality for t in mosit.targets] == [Modality.VIDEO, Modality.AUDIO]


def test_media_show_their_attributes(world: Path):
    items = json.loads((world.parent / "metadata.json").read_text())["items"]
    assert {it["split"] for it in items} == {"train", "eval"} and len(items) == 3 * (4 + 2)
    for it in items:
        modality = Modality(it["modality"])
        assert it["caption"] == caption_of(modality, it["attributes"])
        path = world.parent / it["path"]
        if modality == Modality.IMAGE:
            pixel = Image.open(path).convert("RGB").getpixel(POSITIONS[it["attributes"]["position"]])
            assert pixel == COLOURS[it["attributes"]["colour"]]
        elif modality == Modality.AUDIO:
            with wave.open(str(path)) as handle:
                assert (handle.getframerate(), handle.getnchannels(), handle.getnframes()) == (16000, 1, 32000)
                samples = np.frombuffer(handle.readframes(32000), dtype="<i2").astype(np.float64)
            peak_hz = np.argmax(np.abs(np.fft.rfft(samples))) * 16000 / len(samples)
            assert peak_hz == pytest.approx(PITCHES[it["attributes"]["pitch"]], abs=2)
        else:
            from nextgpt.encoders.media import probe_video

            info = probe_video(path)
            assert info.num_frames == 16 and info.fps == pytest.approx(8)


def test_same_seed_same_world_and_fast(tmp_path: Path):
    start = time.perf_counter()
    first = write_synthetic_world(tmp_path / "a", num_train=30, num_eval=4, seed=7)
    elapsed = time.perf_counter() - start
    second = write_synthetic_world(tmp_path / "b", num_train=30, num_eval=4, seed=7)
    other = write_synthetic_world(tmp_path / "c", num_train=30, num_eval=4, seed=8)
    files = sorted(p.relative_to(first.parent) for p in first.parent.rglob("*") if p.is_file())
    assert len([f for f in files if f.suffix in {".png", ".mp4", ".wav"}]) == 3 * 34
    for relative in files:
        if relative.suffix in {".json", ".png", ".wav"}:
            assert (first.parent / relative).read_bytes() == (second.parent / relative).read_bytes(), relative
    assert (first.parent / "metadata.json").read_text() != (other.parent / "metadata.json").read_text()
    assert elapsed < 10.0
    with pytest.raises(ValueError, match="num_train >= 1"):
        write_synthetic_world(tmp_path / "d", num_train=0, num_eval=1)
