"""Dataset catalog: strict loading, per-dataset folders, validation errors naming every problem."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nextgpt.config import DatasetEntryConfig
from nextgpt.config_loader import ConfigError
from nextgpt.data.catalog import load_catalog, needed_folders, validate_datasets

REPO_ROOT = Path(__file__).resolve().parents[2]
OFFICIAL_NAMES = {
    "cc3m_enc", "cc3m_dec", "webvid_enc", "webvid_dec", "audiocap_enc", "audiocap_dec", "llava_instruction",
    "alpaca_instruction", "videochat_instruction", "image_instruction", "video_instruction", "audio_instruction",
    "mosit_instruction",
}  # fmt: skip
TOOL_NAMES = {"tool_image", "tool_video", "tool_audio", "tool_text", "tool_combined"}


def test_shipped_catalog_has_every_official_dataset_with_its_own_folders():
    catalog = load_catalog(REPO_ROOT / "configs" / "datasets.yaml")
    assert set(catalog) == OFFICIAL_NAMES | TOOL_NAMES
    assert catalog["cc3m_enc"].annotation_path == REPO_ROOT / "data/T_X_pair_data/cc3m/cc3m_comprehension.json"
    assert catalog["llava_instruction"].image_dir == REPO_ROOT / "data/IT_data/T+X-T_data/llava/images"
    assert catalog["mosit_instruction"].image_dir == REPO_ROOT / "data/IT_data/MosIT_data/images"
    assert catalog["cc3m_enc"].video_dir is None  # no folder leaks in from another entry
    assert catalog["audiocap_dec"].caption_embed_dir == REPO_ROOT / "data/embed"
    assert {catalog[n].kind for n in ("cc3m_enc", "cc3m_dec", "mosit_instruction")} == {
        "x_to_text", "text_to_x", "instruction",
    }  # fmt: skip
    # MLLM-Tool's layout: video paths start with "video/" and are read from mm_dataset/ itself.
    assert {catalog[n].kind for n in TOOL_NAMES} == {"tool"}
    assert catalog["tool_video"].video_dir == REPO_ROOT / "data/IT_data_ins/T+X-T_data/mm_dataset"
    assert catalog["tool_audio"].audio_dir == REPO_ROOT / "data/IT_data_ins/T+X-T_data/mm_dataset/audio"


def _write_catalog(tmp_path: Path, datasets: dict) -> Path:
    import yaml

    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump({"datasets": datasets}))
    return path


def test_unknown_entry_key_and_bad_type_name_the_entry(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"cc3m_enc\.image_folder.*image_dir"):
        load_catalog(_write_catalog(tmp_path, {"cc3m_enc": {"annotation_path": "a.json", "image_folder": "x"}}))
    with pytest.raises(ConfigError, match=r"cc3m_enc\.kind must be one of"):
        load_catalog(_write_catalog(tmp_path, {"cc3m_enc": {"annotation_path": "a.json", "kind": "pairs"}}))
    with pytest.raises(ConfigError, match="needs 'annotation_path'"):
        load_catalog(_write_catalog(tmp_path, {"cc3m_enc": {"kind": "x_to_text"}}))
    bad_layout = tmp_path / "flat.yaml"
    bad_layout.write_text("cc3m_enc: {annotation_path: a.json}\n")
    with pytest.raises(ConfigError, match="'datasets'"):
        load_catalog(bad_layout)
    with pytest.raises(FileNotFoundError, match="data.catalog_path"):
        load_catalog(tmp_path / "nope.yaml")


def test_relative_paths_resolve_against_the_catalog_file(tmp_path: Path):
    catalog = load_catalog(_write_catalog(tmp_path, {"x": {"annotation_path": "ann/x.json", "image_dir": "/abs/img"}}))
    assert catalog["x"].annotation_path == tmp_path / "ann/x.json"
    assert catalog["x"].image_dir == Path("/abs/img")


def test_unknown_name_suggests_the_closest():
    catalog = {"cc3m_enc": DatasetEntryConfig(annotation_path=Path("a")), "webvid_enc": DatasetEntryConfig(Path("b"))}
    with pytest.raises(ValueError, match="'cc3m_encc' is not in the catalog; did you mean 'cc3m_enc'"):
        validate_datasets(["cc3m_encc"], catalog)


def test_every_missing_file_and_needed_folder_is_listed_at_once(tmp_path: Path):
    records = [
        {"input_image": "a.jpg", "conversations": []},
        {"output_audio": "b.wav", "audio_caption_embeddings": "b.wav.npy", "conversations": []},
        {"conversations": [{"from": "human", "value": "<Video>v.mp4</Video> hi"}]},
    ]
    annotation = tmp_path / "ok.json"
    annotation.write_text(json.dumps(records))
    catalog = {
        "gone": DatasetEntryConfig(annotation_path=tmp_path / "missing.json"),
        "mixed": DatasetEntryConfig(
            annotation_path=annotation, image_dir=tmp_path / "no_images", caption_embed_dir=tmp_path / "no_embed"
        ),
    }
    with pytest.raises(ValueError) as err:
        validate_datasets(["gone", "mixed"], catalog)
    message = str(err.value)
    assert message.startswith("5 dataset problem(s)")
    assert f"gone: annotation file {tmp_path / 'missing.json'} does not exist" in message
    assert f"mixed: image_dir {tmp_path / 'no_images'} does not exist" in message
    assert "mixed: records need audio_dir but the entry does not set it" in message
    assert "mixed: records need video_dir" in message
    assert f"mixed: caption_embed_dir {tmp_path / 'no_embed'} does not exist (run preprocess_embeddings.py)" in message
    assert "\n" not in message


def test_needed_folders_ignores_assistant_tags():
    records = [{"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "<Image>a.jpg</Image>"}]}]
    assert needed_folders(records) == set()
    assert needed_folders([{"image_list": [], "input_audio": ["x.wav"]}]) == {"audio_dir"}


def test_legacy_t2x_records_need_the_caption_embed_dir():
    answer = {"from": "gpt", "value": "ok", "caption": "a cat", "output_modality": "image"}
    record = {"mm_name": "a.jpg", "conversation": [{"from": "human", "value": "q"}, answer]}
    assert needed_folders([record]) == {"caption_embed_dir"}
    assert (
        needed_folders([{"conversation": [{"from": "human", "value": "q"}, {**answer, "output_modality": "text"}]}])
        == set()
    )


def _image_dataset(tmp_path: Path, num: int, junk_entry: bool = False) -> DatasetEntryConfig:
    """`num` image-caption records (plus one non-object entry) whose images live in tmp_path/images."""
    records = [
        {"input_image": f"{i}.png", "conversations": [{"from": "human", "value": "<image>\nWhat?"},
                                                      {"from": "gpt", "value": "A thing."}]}
        for i in range(num)
    ]  # fmt: skip
    annotation = tmp_path / "ann.json"
    annotation.write_text(json.dumps([*records, 42] if junk_entry else records))
    (tmp_path / "images").mkdir(exist_ok=True)
    return DatasetEntryConfig(annotation_path=annotation, image_dir=tmp_path / "images")


def test_a_folder_none_of_whose_files_exist_is_named_with_its_key(tmp_path: Path):
    entry = _image_dataset(tmp_path, num=100)
    with pytest.raises(ValueError) as info:
        validate_datasets(["pairs"], {"pairs": entry})
    assert "pairs: none of the first 64 files its records name exists under image_dir" in str(info.value)
    assert str(tmp_path / "images") in str(info.value) and "check it in the catalog" in str(info.value)
    validate_datasets(["pairs"], {"pairs": entry}, media=False)  # a feature cache replaces the files


def test_empty_files_are_named_but_a_few_bad_ones_are_left_to_the_dataset(tmp_path: Path):
    entry = _image_dataset(tmp_path, num=5, junk_entry=True)
    for i in range(5):
        (tmp_path / "images" / f"{i}.png").write_bytes(b"")
    with pytest.raises(ValueError, match=r"pairs: the first 5 files under image_dir .* are all empty"):
        validate_datasets(["pairs"], {"pairs": entry})
    (tmp_path / "images" / "3.png").write_bytes(b"\x89PNG")  # one real file: the rest are skipped while training
    (tmp_path / "images" / "4.png").unlink()
    validate_datasets(["pairs"], {"pairs": entry})


def test_caption_embeddings_are_checked_unless_they_are_about_to_be_written(tmp_path: Path):
    records = [
        {"output_image": "a.png", "image_captions": ["a cat"], "image_caption_embeddings": "a.npy",
         "conversations": [{"from": "human", "value": "Draw a cat."}, {"from": "gpt", "value": "<image>"}]}
    ]  # fmt: skip
    (tmp_path / "ann.json").write_text(json.dumps(records))
    entry = DatasetEntryConfig(
        annotation_path=tmp_path / "ann.json", image_dir=tmp_path, caption_embed_dir=tmp_path / "embed"
    )
    with pytest.raises(ValueError, match=r"caption_embed_dir .*embed does not exist \(run preprocess_embeddings"):
        validate_datasets(["gen"], {"gen": entry})
    validate_datasets(["gen"], {"gen": entry}, embeddings=False)  # what preprocess_embeddings.py checks
    (tmp_path / "embed").mkdir()
    with pytest.raises(ValueError, match="none of the first 1 files its records name exists under caption_embed_dir"):
        validate_datasets(["gen"], {"gen": entry})
