"""CC3M, WebVid and AudioCaps downloads -> comprehension and generation files the training parser reads."""

from __future__ import annotations

from pathlib import Path

import pytest
from raw_downloads import (
    CC3M_SKIPS,
    audiocap_download,
    cc3m_download,
    parsed,
    run_prepare,
    skip_counts,
    webvid_download,
    write_jpg,
)

from nextgpt.constants import Modality
from nextgpt.data.catalog import load_catalog
from nextgpt.data.records import Target, load_records

IMG, VID, AUD = Modality.IMAGE, Modality.VIDEO, Modality.AUDIO


def test_cc3m_report_counts_every_skip_reason_with_examples(tmp_path: Path):
    report = run_prepare("cc3m", cc3m_download(tmp_path / "cc3m"), tmp_path / "out")
    assert report.found == 12
    assert report.written == {"cc3m_comprehension.json": 3, "cc3m_generation.json": 3}
    assert skip_counts(report) == CC3M_SKIPS
    assert report.skipped["missing_media"].examples == ["004"]
    assert report.skipped["duplicate_id"].examples == ["001"]
    assert report.skipped["unsafe_path"].examples == ["007", "008"]
    assert "relative path inside" in report.skipped["unsafe_path"].detail
    assert report.skipped["malformed_record"].examples == ["#11"]
    assert report.catalog_names == ["cc3m_enc", "cc3m_dec"]


def test_cc3m_files_parse_into_the_expected_samples(tmp_path: Path):
    out = tmp_path / "out"
    run_prepare("cc3m", cc3m_download(tmp_path / "cc3m"), out)
    images = (tmp_path / "cc3m" / "images").absolute()
    comprehension = parsed(out, "cc3m_enc")
    assert [s.input_media for s in comprehension] == [[(IMG, images / n)] for n in ("001.jpg", "002.jpg", "003.jpg")]
    assert [s.turns[1].text for s in comprehension] == ["a dog on a beach", "two cats", "a red car"]
    assert all(s.turns[0].text.startswith("<image>\n") and s.targets == [] for s in comprehension)
    generation = parsed(out, "cc3m_dec")
    embed = (out / "embed" / "cc3m").absolute()
    assert [s.targets for s in generation] == [
        [Target(IMG, "a dog on a beach", embed / "001.jpg.npy")],
        [Target(IMG, "two cats", embed / "002.jpg.npy")],
        [Target(IMG, "a red car", embed / "003.jpg.npy")],
    ]
    assert [s.target_media for s in generation] == [[images / "001.jpg"], [images / "002.jpg"], [images / "003.jpg"]]
    assert all(s.turns[1].text.endswith(" <image>") and "a dog" not in s.turns[1].text for s in generation)
    assert "a dog on a beach" in generation[0].turns[0].text
    assert not any("secret" in str(p) for s in comprehension for _, p in s.input_media)


def test_generation_embedding_names_are_the_ones_preprocess_embeddings_writes(tmp_path: Path):
    from nextgpt.jobs.caption_cache import iter_caption_targets

    out = tmp_path / "out"
    run_prepare("cc3m", cc3m_download(tmp_path / "cc3m"), out, splits=("generation",))
    entry = load_catalog(out / "datasets.yaml")["cc3m_dec"]
    pairs = list(iter_caption_targets(load_records(entry.annotation_path), entry, IMG))
    assert [(caption, path.name) for caption, path in pairs] == [
        ("a dog on a beach", "001.jpg.npy"),
        ("two cats", "002.jpg.npy"),
        ("a red car", "003.jpg.npy"),
    ]
    assert all(path.parent == (out / "embed" / "cc3m").absolute() for _, path in pairs)
    assert set(load_catalog(out / "datasets.yaml")) == {"cc3m_dec"}


def test_webvid_and_audiocaps(tmp_path: Path):
    out = tmp_path / "out"
    webvid = run_prepare("webvid", webvid_download(tmp_path / "webvid"), out)
    assert webvid.found == 3 and skip_counts(webvid) == {"missing_media": 1}
    assert webvid.skipped["missing_media"].examples == ["4999553"]
    assert [s.turns[1].text for s in parsed(out, "webvid_enc")] == ["Roses in the garden", "Aerial view of a field"]
    assert [t.embedding_path.name for s in parsed(out, "webvid_dec") for t in s.targets] == [
        "00169473.mp4.npy",
        "00123086.mp4.npy",
    ]
    audiocap = run_prepare("audiocap", audiocap_download(tmp_path / "audiocap"), out)
    assert skip_counts(audiocap) == {"known_bad_clip": 1} and audiocap.skipped["known_bad_clip"].examples == ["508"]
    samples = parsed(out, "audiocap_enc")
    assert [p.name for s in samples for _, p in s.input_media] == ["106158.wav", "107819.wav"]
    assert all(s.turns[0].text.startswith("<audio>\n") for s in samples)
    assert set(load_catalog(out / "datasets.yaml")) == {"webvid_enc", "webvid_dec", "audiocap_enc", "audiocap_dec"}


def test_audiocaps_release_csvs_stand_in_for_audiocap_json(tmp_path: Path):
    root = audiocap_download(tmp_path / "audiocap")
    (root / "audiocap.json").unlink()
    (root / "train.csv").write_text(
        "audiocap_id,youtube_id,start_time,caption\n106158,abc,30,A train horn\n99,def,0,Missing clip\n"
    )
    (root / "val.csv").write_text("audiocap_id,youtube_id,start_time,caption\n107819,ghi,10,Gunfire\n")
    report = run_prepare("audiocap", root, tmp_path / "out", splits=("comprehension",))
    assert report.found == 3 and skip_counts(report) == {"missing_media": 1}
    assert [s.turns[1].text for s in parsed(tmp_path / "out", "audiocap_enc")] == ["A train horn", "Gunfire"]


def test_cc3m_img2dataset_folder_of_images_and_caption_files(tmp_path: Path):
    root = tmp_path / "cc3m"
    for key, caption in (("000000001", "a boat at sea"), ("000000002", None), ("000000003", "")):
        write_jpg(root / "00000" / f"{key}.jpg")
        if caption is not None:
            (root / "00000" / f"{key}.txt").write_text(caption)
    (root / "00000" / "000000001.json").write_text("{}")
    report = run_prepare("cc3m", root, tmp_path / "out")
    assert report.found == 3 and skip_counts(report) == {"missing_caption_file": 1, "empty_caption": 1}
    (sample,) = parsed(tmp_path / "out", "cc3m_dec")
    assert sample.target_media == [root.absolute() / "00000" / "000000001.jpg"]
    assert sample.targets[0].embedding_path.name == "00000__000000001.jpg.npy"  # embedding names are bare file names


def test_img2dataset_tar_shards_are_refused_with_the_fix(tmp_path: Path):
    (tmp_path / "cc3m").mkdir()
    (tmp_path / "cc3m" / "00000.tar").write_bytes(b"tar")
    with pytest.raises(ValueError, match="extract them .*--output_format files"):
        run_prepare("cc3m", tmp_path / "cc3m", tmp_path / "out")
