"""The runner: reruns change nothing, outputs merge by name, `all` finds the layout, written files train."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from raw_downloads import (
    alpaca_download,
    audiocap_download,
    cc3m_download,
    parsed,
    run_prepare,
    webvid_download,
    write_json,
)

from nextgpt.data.catalog import load_catalog, validate_datasets
from nextgpt.data.prepare import PrepareOptions, prepare


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_rerun_gives_the_same_bytes_and_one_entry_per_name(tmp_path: Path):
    out = tmp_path / "out"
    cc3m, webvid = cc3m_download(tmp_path / "cc3m"), webvid_download(tmp_path / "webvid")
    run_prepare("cc3m", cc3m, out)
    first = _snapshot(out)
    run_prepare("cc3m", cc3m, out)
    assert _snapshot(out) == first
    run_prepare("webvid", webvid, out)
    run_prepare("cc3m", cc3m, out)
    catalog_text = (out / "datasets.yaml").read_text()
    assert sorted(yaml.safe_load(catalog_text)["datasets"]) == ["cc3m_dec", "cc3m_enc", "webvid_dec", "webvid_enc"]
    assert catalog_text.count("cc3m_enc:") == 1
    assert sorted(json.loads((out / "report.json").read_text())["datasets"]) == ["cc3m", "webvid"]
    assert {k: v for k, v in _snapshot(out).items() if k.startswith("cc3m/")} == {
        k: v for k, v in first.items() if k.startswith("cc3m/")
    }
    assert not [p for p in out.rglob(".*tmp*")], "temporary files were left behind"


def test_catalog_fragment_is_a_valid_catalog_with_relative_outputs_and_absolute_media(tmp_path: Path):
    out = tmp_path / "out"
    run_prepare("cc3m", cc3m_download(tmp_path / "cc3m"), out)
    fields = yaml.safe_load((out / "datasets.yaml").read_text())["datasets"]
    assert fields["cc3m_dec"] == {
        "annotation_path": "cc3m/cc3m_generation.json",
        "kind": "text_to_x",
        "image_dir": str((tmp_path / "cc3m" / "images").absolute()),
        "caption_embed_dir": "embed/cc3m",
    }
    catalog = load_catalog(out / "datasets.yaml")
    validate_datasets(["cc3m_enc", "cc3m_dec"], catalog, embeddings=False)
    with pytest.raises(ValueError, match="run preprocess_embeddings.py"):
        validate_datasets(["cc3m_dec"], catalog)  # the embeddings are the next step


def test_limit_split_and_seed(tmp_path: Path):
    cc3m = cc3m_download(tmp_path / "cc3m")
    report = run_prepare("cc3m", cc3m, tmp_path / "a", limit=2, splits=("comprehension",), seed=7)
    assert report.found == 2 and report.written == {"cc3m_comprehension.json": 2} and report.limit == 2
    assert json.loads((tmp_path / "a" / "report.json").read_text())["datasets"]["cc3m"]["seed"] == 7
    # a record's prompt depends on the seed and its own id only, not on --limit or on its neighbours
    run_prepare("cc3m", cc3m, tmp_path / "b", seed=7)
    assert parsed(tmp_path / "a", "cc3m_enc") == parsed(tmp_path / "b", "cc3m_enc")[:2]


def test_an_output_left_without_records_loses_its_file_and_entry(tmp_path: Path):
    out = tmp_path / "out"
    root = alpaca_download(tmp_path / "alpaca")
    run_prepare("alpaca", root, out)
    write_json(root / "alpaca_data.json", [{"instruction": "x", "input": "", "output": ""}])
    report = run_prepare("alpaca", root, out)
    assert report.written == {"preprocessed_alpaca.json": 0} and report.catalog_names == []
    assert not (out / "alpaca" / "preprocessed_alpaca.json").exists()
    assert "alpaca_instruction" not in yaml.safe_load((out / "datasets.yaml").read_text())["datasets"]


def test_all_reads_the_official_repository_layout(tmp_path: Path):
    root = tmp_path / "data"
    cc3m_download(root / "T_X_pair_data" / "cc3m")
    audiocap_download(root / "audiocap")
    alpaca_download(root / "IT_data" / "T+X-T_data" / "alpaca")
    reports = prepare(PrepareOptions(dataset="all", root=root, out=tmp_path / "out", progress=False))
    assert [r.dataset for r in reports] == ["cc3m", "audiocap", "alpaca"]
    assert set(load_catalog(tmp_path / "out" / "datasets.yaml")) == {
        "cc3m_enc", "cc3m_dec", "audiocap_enc", "audiocap_dec", "alpaca_instruction",
    }  # fmt: skip


def test_bad_input_in_one_dataset_stops_all_before_anything_is_written(tmp_path: Path):
    root = tmp_path / "data"
    cc3m_download(root / "cc3m")
    (root / "webvid" / "videos").mkdir(parents=True)
    (root / "webvid" / "webvid.json").write_text("[{")
    with pytest.raises(ValueError, match="webvid.json is not valid JSON"):
        prepare(PrepareOptions(dataset="all", root=root, out=tmp_path / "out", progress=False))
    assert not (tmp_path / "out").exists()


def test_written_files_train_through_the_dataset(tmp_path: Path, tokenizer, signal_ids, tiny_model_cfg):
    """The comprehension files of the three pair datasets load as training items, media decoded."""
    from nextgpt.data import ConversationDataset

    out = tmp_path / "out"
    run_prepare("cc3m", cc3m_download(tmp_path / "cc3m"), out)
    run_prepare("webvid", webvid_download(tmp_path / "webvid"), out)
    run_prepare("audiocap", audiocap_download(tmp_path / "audiocap"), out)
    catalog = load_catalog(out / "datasets.yaml")
    for name in ("cc3m_enc", "webvid_enc", "audiocap_enc"):
        dataset = ConversationDataset(name, catalog[name], None, tokenizer, signal_ids, tiny_model_cfg.encoder, "error")
        items = [dataset[i] for i in range(len(dataset))]
        assert len(items) >= 2 and all(len(item["media"]) == 1 for item in items), name
