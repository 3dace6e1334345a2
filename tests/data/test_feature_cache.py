"""ImageBind feature cache: preprocess_features.py writes what the encoder computes, training reads it instead.

The cache of the tiny world's three stage-1 datasets is written once per module (3-row shards, so resuming and
shard boundaries are exercised) by the real script and the real tiny ImageBind.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nextgpt.config import DataConfig, load_config
from nextgpt.constants import Modality
from nextgpt.data.catalog import load_catalog
from nextgpt.data.collate import Collator
from nextgpt.data.datasets import BadSampleError, SkippedSample, build_datasets, expected_caption_shapes
from nextgpt.data.features import PARTS_DIR, FeatureCacheError, load_feature_cache, media_key
from nextgpt.data.records import load_records
from nextgpt.encoders.transforms import load_media
from nextgpt.jobs.feature_cache import cache_dataset_features, input_media_files, part_folder_name
from nextgpt.tiny.build import tiny_path_overrides

REPO_ROOT = Path(__file__).resolve().parents[2]
STAGE_1 = REPO_ROOT / "configs" / "tiny_stage_1.yaml"
DATASETS = ("cc3m_enc", "webvid_enc", "audiocap_enc")
SHARD_ROWS = 3
FLOAT16_ATOL = 1e-3
"""Vectors are stored as float16; unit-length ImageBind vectors round by at most ~2.5e-4 per value."""


def _stage_1_cfg(tiny_root: Path, catalog: Path, *extra: str):
    overrides = [*tiny_path_overrides(tiny_root), f"data.catalog_path={catalog}", *extra]
    return load_config(STAGE_1, overrides=overrides)


def _preprocess(tiny_root: Path, catalog: Path, cache_dir: Path, *datasets: str) -> int:
    from nextgpt.cli import preprocess_features

    argv = ["--config", str(STAGE_1), "--catalog", str(catalog), "--datasets", *datasets, "--device", "cpu"]
    argv += ["--cache-dir", str(cache_dir), "--num-workers", "0", "--shard-size", str(SHARD_ROWS)]
    return preprocess_features.main([*argv, *tiny_path_overrides(tiny_root)])


@pytest.fixture(scope="module")
def feature_cache(tmp_path_factory: pytest.TempPathFactory, tiny_root: Path, tiny_world: Path) -> Path:
    """`data.feature_cache_dir` holding the three stage-1 datasets of the tiny world."""
    cache_dir = tmp_path_factory.mktemp("features")
    assert _preprocess(tiny_root, tiny_world, cache_dir, *DATASETS) == 0
    return cache_dir


@pytest.fixture(scope="module")
def encoder(tiny_root: Path, tiny_world: Path):
    from nextgpt.encoders.imagebind import load_imagebind

    return load_imagebind(_stage_1_cfg(tiny_root, tiny_world).model.encoder)


@pytest.mark.numerics
def test_cached_vectors_equal_the_encoder_output(feature_cache: Path, encoder, tiny_world: Path):
    catalog = load_catalog(tiny_world)
    for name in DATASETS:
        entry = catalog[name]
        files = input_media_files(load_records(Path(entry.annotation_path)), entry)
        cache = load_feature_cache(feature_cache, name, encoder.cfg)
        assert len(files) == len(cache) == 8
        for modality, path in files:
            expected = encoder(modality, load_media(modality, path, encoder.cfg)[None])[0]  # (1, D) -> (D,)
            cached = cache.lookup(modality, media_key(getattr(entry, f"{modality.value}_dir"), path))
            assert cached.dtype == torch.float32 and cached.shape == expected.shape == (encoder.cfg.out_embed_dim,)
            torch.testing.assert_close(cached, expected, atol=FLOAT16_ATOL, rtol=0)
    manifest = json.loads((feature_cache / "cc3m_enc" / "manifest.json").read_text())
    assert manifest["dtype"] == "float16" and [s["rows"] for s in manifest["shards"]] == [3, 3, 2]


def _first_items(tiny_root: Path, catalog: Path, model, cache_dir: Path | None) -> list:
    cfg = _stage_1_cfg(tiny_root, catalog)
    data_cfg = DataConfig(datasets=DATASETS, feature_cache_dir=cache_dir)
    datasets = build_datasets(
        data_cfg,
        load_catalog(catalog),
        model.tokenizer,
        model.signal_ids,
        cfg.model.encoder,
        caption_embed_shapes=expected_caption_shapes(cfg.model.output_projectors),
    )
    return [dataset[index] for dataset in datasets for index in (0, 1)]


@pytest.mark.numerics
def test_cached_batch_gives_the_raw_media_loss(feature_cache: Path, tiny_root: Path, tiny_world: Path):
    from nextgpt.model import build_nextgpt

    cfg = _stage_1_cfg(tiny_root, tiny_world)
    model = build_nextgpt(cfg.model).eval()
    collate = Collator(model.tokenizer.pad_token_id, cfg.model.llm.max_length, model.input_projector.num_tokens)
    raw = collate(_first_items(tiny_root, tiny_world, model, None)).batch
    cached = collate(_first_items(tiny_root, tiny_world, model, feature_cache)).batch
    assert set(raw.media) == set(Modality) and raw.media_features == {}
    assert cached.media == {} and {m: tuple(t.shape) for m, t in cached.media_features.items()} == {
        m: (2, cfg.model.encoder.out_embed_dim) for m in Modality
    }
    assert torch.equal(raw.input_ids, cached.input_ids) and torch.equal(raw.labels, cached.labels)
    with torch.no_grad():
        raw_loss, cached_loss = model(raw).loss.item(), model(cached).loss.item()
    assert cached_loss == pytest.approx(raw_loss, rel=1e-3)


def test_cache_of_another_encoder_fails_with_one_line_naming_the_fix(
    feature_cache: Path, tiny_root: Path, tiny_world: Path, tmp_path: Path
):
    from nextgpt.tiny.imagebind import write_tiny_imagebind

    cfg = _stage_1_cfg(tiny_root, tiny_world)
    other = tmp_path / Path(cfg.model.encoder.checkpoint_path).name  # same file name, other weights
    write_tiny_imagebind(other, cfg.model.encoder, seed=1)
    cfg = _stage_1_cfg(tiny_root, tiny_world, f"model.encoder.checkpoint_path={other}")
    with pytest.raises(FeatureCacheError) as caught:
        load_feature_cache(feature_cache, "cc3m_enc", cfg.model.encoder)
    message = str(caught.value)
    assert "\n" not in message and "encoder.checkpoint" in message and "same name, different file" in message
    assert "re-run preprocess_features.py" in message and "cc3m_enc" in message
    # A preprocessing change of the cached modality is stale too; one of another modality is not.
    video_cfg = _stage_1_cfg(tiny_root, tiny_world, "model.encoder.video_num_clips=3").model.encoder
    with pytest.raises(FeatureCacheError, match="encoder.video_num_clips: 5 != 3"):
        load_feature_cache(feature_cache, "webvid_enc", video_cfg)
    assert len(load_feature_cache(feature_cache, "cc3m_enc", video_cfg)) == 8
    with pytest.raises(FileNotFoundError, match="run preprocess_features.py"):
        load_feature_cache(feature_cache, "mosit_instruction", cfg.model.encoder)


def test_interrupted_cache_is_usable_and_resumes(feature_cache: Path, tiny_root: Path, tiny_world: Path, tmp_path):
    cfg = _stage_1_cfg(tiny_root, tiny_world)
    complete = load_feature_cache(feature_cache, "cc3m_enc", cfg.model.encoder)
    cache_dir = tmp_path / "features"
    shutil.copytree(feature_cache / "cc3m_enc", cache_dir / "cc3m_enc")
    # A run killed after writing shard 2 but before listing it, and a half-written temporary file.
    manifest_path = cache_dir / "cc3m_enc" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["shards"] = manifest["shards"][:2]
    manifest_path.write_text(json.dumps(manifest))
    (cache_dir / "cc3m_enc" / ".shard-00002.safetensors.x1.tmp").write_bytes(b"\x00" * 10)
    # The partial cache is readable; the samples of the two missing files are bad samples naming the fix.
    partial = load_feature_cache(cache_dir, "cc3m_enc", cfg.model.encoder)
    assert len(partial) == 6
    model_parts = _tokenizer_parts(cfg)
    catalog = load_catalog(tiny_world)
    data_cfg = DataConfig(datasets=("cc3m_enc",), feature_cache_dir=cache_dir)
    dataset = build_datasets(data_cfg, catalog, *model_parts, cfg.model.encoder)[0]
    skipped = [item for item in (dataset[i] for i in range(len(dataset))) if isinstance(item, SkippedSample)]
    assert len(skipped) == 2 and all("run preprocess_features.py" in s.reason for s in skipped)
    strict = build_datasets(
        DataConfig(**{**vars(data_cfg), "bad_sample_policy": "error"}), catalog, *model_parts, cfg.model.encoder
    )[0]
    with pytest.raises(BadSampleError, match="not in the ImageBind feature cache"):
        strict[skipped[0].index]
    # Resuming encodes only the two missing files and ends with the complete cache.
    assert _preprocess(tiny_root, tiny_world, cache_dir, "cc3m_enc") == 0
    manifest = json.loads(manifest_path.read_text())
    assert [s["rows"] for s in manifest["shards"]] == [3, 3, 2]
    assert sorted(p.name for p in (cache_dir / "cc3m_enc").iterdir()) == [
        "manifest.json",
        *(f"shard-0000{i}.safetensors" for i in range(3)),
    ]
    resumed = load_feature_cache(cache_dir, "cc3m_enc", cfg.model.encoder)
    entry = catalog["cc3m_enc"]
    for modality, path in input_media_files(load_records(Path(entry.annotation_path)), entry):
        key = media_key(entry.image_dir, path)
        assert torch.equal(resumed.lookup(modality, key), complete.lookup(modality, key))


def _tokenizer_parts(cfg) -> tuple:
    from nextgpt.llm.tokenizer import load_tokenizer, signal_token_ids

    tokenizer = load_tokenizer(cfg.model.llm.model_path, cfg.model.signal_tokens)
    return tokenizer, signal_token_ids(tokenizer, cfg.model.signal_tokens)


def test_unreadable_file_is_reported_and_its_sample_skipped(encoder, tiny_world: Path, tmp_path: Path):
    from nextgpt.config import DatasetEntryConfig

    entry = load_catalog(tiny_world)["cc3m_enc"]
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    good = sorted(Path(entry.image_dir).iterdir())[0]
    shutil.copy(good, image_dir / "good.png")
    (image_dir / "broken.png").write_bytes(b"not an image")
    records = [
        {"input_image": name, "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "x"}]}
        for name in ("good.png", "broken.png", "absent.png")
    ]
    local = DatasetEntryConfig(annotation_path=tmp_path / "a.json", kind="x_to_text", image_dir=image_dir)
    report = cache_dataset_features(records, local, "local", encoder, tmp_path / "features", batch_size=2)
    assert (report.num_files, report.num_encoded, len(report.failures)) == (3, 1, 2)
    cache = load_feature_cache(tmp_path / "features", "local", encoder.cfg)
    assert cache.lookup(Modality.IMAGE, "good.png") is not None and cache.lookup(Modality.IMAGE, "broken.png") is None
    assert "could not read it" in cache.missing_reason(Modality.IMAGE, "broken.png")
    # Fixing the file and re-running encodes just that one.
    shutil.copy(good, image_dir / "broken.png")
    again = cache_dataset_features(records, local, "local", encoder, tmp_path / "features")
    assert (again.num_already_cached, again.num_encoded, len(again.failures)) == (1, 1, 1)
    assert cache_dataset_features(records, local, "local", encoder, tmp_path / "features").num_encoded == 0


def test_training_with_the_cache_runs_without_the_encoder(
    feature_cache: Path, tiny_root: Path, tiny_world: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    from nextgpt.training.loop import build_model_for_training, run

    overrides = [f"data.feature_cache_dir={feature_cache}", f"train.output_dir={tmp_path / 'run'}"]
    overrides += ["train.max_steps=3", "train.micro_batch_size=4", "train.save_every=1000"]
    cfg = _stage_1_cfg(tiny_root, tiny_world, *overrides)
    assert build_model_for_training(cfg).encoder is None
    with caplog.at_level(logging.INFO):
        result = run(cfg)
    assert "ImageBind loaded" not in caplog.text
    assert len(result.losses) == 3 and all(torch.isfinite(torch.tensor(result.losses)))
    assert result.num_skipped == 0 and (result.final_dir / "trainable.safetensors").is_file()


def _part_command(tiny_root: Path, catalog: Path, cache_dir: Path, *extra: str) -> list[str]:
    argv = ["--config", str(STAGE_1), "--catalog", str(catalog), "--datasets", *DATASETS, "--device", "cpu"]
    argv += ["--cache-dir", str(cache_dir), "--num-workers", "0", "--shard-size", str(SHARD_ROWS), *extra]
    return [sys.executable, str(REPO_ROOT / "preprocess_features.py"), *argv, *tiny_path_overrides(tiny_root)]


@pytest.mark.numerics
def test_parts_written_at_once_merge_into_the_single_process_cache(
    feature_cache: Path, encoder, tiny_root: Path, tiny_world: Path, tmp_path: Path
):
    """Two processes encode their halves into the same cache folder at the same time; the merge gives the cache one
    process writes (same files, same vectors), an unfinished part is left alone, and a second merge adds nothing."""
    cache_dir = tmp_path / "features"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(key, None)
    running = [
        subprocess.Popen(_part_command(tiny_root, tiny_world, cache_dir, "--part", f"{i}/2"), env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]  # fmt: skip
    for process in running:
        assert process.wait(timeout=600) == 0, process.stderr.read()[-2000:]
    unfinished = cache_dir / "cc3m_enc" / PARTS_DIR / part_folder_name(5, 7)
    unfinished.mkdir()
    halves = {}
    for name in DATASETS:
        parts = cache_dir / name / PARTS_DIR
        halves[name] = [len(load_feature_cache(parts, part_folder_name(i, 2), encoder.cfg)) for i in range(2)]
        assert not (cache_dir / name / "manifest.json").exists()  # nothing is merged before --merge-parts
    assert all(min(sizes) > 0 and sum(sizes) == 8 for sizes in halves.values()), halves
    from nextgpt.cli import preprocess_features

    merge = _part_command(tiny_root, tiny_world, cache_dir, "--merge-parts")[2:]
    assert preprocess_features.main(merge) == 0
    for name in DATASETS:
        merged = load_feature_cache(cache_dir, name, encoder.cfg)
        single = load_feature_cache(feature_cache, name, encoder.cfg)
        assert sorted((m, k) for m, k, _ in merged.entries()) == sorted((m, k) for m, k, _ in single.entries())
        for modality, key, stamp in merged.entries():
            assert stamp == single.stamp(modality, key)
            torch.testing.assert_close(
                merged.lookup(modality, key), single.lookup(modality, key), atol=2 * FLOAT16_ATOL, rtol=0
            )
    assert [p.name for p in (cache_dir / "cc3m_enc" / PARTS_DIR).iterdir()] == [unfinished.name]
    assert not (cache_dir / "webvid_enc" / PARTS_DIR).exists()
    shards = json.loads((cache_dir / "webvid_enc" / "manifest.json").read_text())["shards"]
    assert preprocess_features.main(merge) == 0  # nothing complete is left: the caches do not change
    assert json.loads((cache_dir / "webvid_enc" / "manifest.json").read_text())["shards"] == shards
