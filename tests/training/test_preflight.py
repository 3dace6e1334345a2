"""Config, catalog, component and folder problems are found before any model is built, named by their key, all at
once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from stage_helpers import no_model_built, quick_cfg

from nextgpt.training.loop import run
from nextgpt.training.preflight import PreflightError


def _catalog_with(tmp_path: Path, world_catalog: Path, **changes: dict) -> Path:
    """A copy of the world's catalog (absolute paths) with some entries' fields changed."""
    from nextgpt.config_loader import to_dict
    from nextgpt.data.catalog import load_catalog

    entries = {name: to_dict(entry) for name, entry in load_catalog(world_catalog).items()}
    for name, fields in changes.items():
        entries[name].update(fields)
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump({"datasets": entries}))
    return path


def _bad_checkpoint(tmp_path: Path) -> Path:
    folder = tmp_path / "stage_1_final"
    folder.mkdir()
    (folder / "config.yaml").write_text("seed: 1\n")
    (folder / "trainable.safetensors").write_bytes(b"partial")
    (folder / "manifest.json").write_text(
        json.dumps({"format": 1, "algorithm": "sha256", "files": {"trainable.safetensors": {"size": 9, "sha256": "0"}}})
    )
    return folder


def _bad_json(tmp_path: Path) -> Path:
    path = tmp_path / "zero2.json"
    path.write_text('{"zero_optimization": {"stage": 2,}')
    return path


def _a_file(tmp_path: Path) -> Path:
    path = tmp_path / "run_is_a_file"
    path.write_text("x")
    return path


CASES = {
    "unknown_dataset": (lambda t: ["data.datasets=[cc3m_decc]"], "dataset 'cc3m_decc' is not in the catalog; did you mean 'cc3m_dec'"),
    "missing_catalog": (lambda t: [f"data.catalog_path={t / 'nope.yaml'}"], "data.catalog_path: dataset catalog"),
    "bf16_llm_with_fp32": (lambda t: ["model.llm.dtype=bfloat16"], "model.llm.dtype=bfloat16 with train.precision=fp32"),
    "missing_llm": (lambda t: [f"model.llm.model_path={t / 'vicuna'}"], "model.llm.model_path = {t}/vicuna"),
    "missing_init_from": (lambda t: [f"train.init_from={t / 'stage_1'}"], "train.init_from {t}/stage_1 is not a folder"),
    "corrupt_init_from": (lambda t: [f"train.init_from={_bad_checkpoint(t)}"], "train.init_from: checkpoint {t}/stage_1_final is corrupt"),
    "bad_deepspeed_json": (lambda t: [f"train.deepspeed_config={_bad_json(t)}"], "train.deepspeed_config {t}/zero2.json is not readable JSON"),
    "output_is_a_file": (lambda t: [f"train.output_dir={_a_file(t)}"], "train.output_dir {t}/run_is_a_file is a file"),
    "no_feature_cache": (lambda t: [f"data.feature_cache_dir={t}", "data.datasets=[cc3m_dec]"], "data.feature_cache_dir {t} has no cache for cc3m_dec"),
    "lora_not_enabled": (lambda t: ["train.trainable=[lora,output_projectors]"], "train.trainable names lora but model.lora.enabled is false"),
    "decoders_for_denoising": (
        lambda t: ["model.loss.denoise_weight=1.0", f"model.decoders.video.pipeline_path={t / 'zs'}"],
        "model.decoders.video.pipeline_path = {t}/zs (no diffusers TextToVideoSDPipeline folder there)",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_problem_is_reported_before_the_model_is_built(
    tiny_root: Path, tiny_world: Path, tmp_path: Path, monkeypatch, case: str
):
    make_overrides, expected = CASES[case]
    cfg = quick_cfg(tiny_root, tiny_world, tmp_path / "run", "train.max_steps=2", *make_overrides(tmp_path))
    no_model_built(monkeypatch)
    with pytest.raises(PreflightError) as info:
        run(cfg)
    message = str(info.value)
    assert message.startswith("1 problem(s) found before building the model: ") and "\n" not in message
    assert expected.format(t=tmp_path) in message
    assert not (tmp_path / "run").exists(), "nothing was written"


def test_every_problem_is_listed_in_one_error(tiny_root: Path, tiny_world: Path, tmp_path: Path, monkeypatch):
    catalog = _catalog_with(tmp_path, tiny_world, cc3m_dec={"annotation_path": str(tmp_path / "gone.json")})
    overrides = [
        f"data.catalog_path={catalog}",
        "data.datasets=[cc3m_dec,webvid_decc]",
        "model.llm.dtype=bfloat16",
        f"train.init_from={tmp_path / 'stage_1'}",
    ]
    no_model_built(monkeypatch)
    with pytest.raises(PreflightError) as info:
        run(quick_cfg(tiny_root, tiny_world, tmp_path / "run", *overrides))
    message = str(info.value)
    assert message.startswith("4 problem(s) found before building the model")
    for part in (
        "model.llm.dtype=bfloat16",
        f"train.init_from {tmp_path / 'stage_1'} is not a folder",
        f"cc3m_dec: annotation file {tmp_path / 'gone.json'} does not exist",
        "dataset 'webvid_decc' is not in the catalog; did you mean 'webvid_dec'",
    ):
        assert part in message


def test_a_read_only_output_folder_is_reported(tiny_root: Path, tiny_world: Path, tmp_path: Path, monkeypatch):
    import os

    read_only = tmp_path / "readonly"
    read_only.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == read_only else real_access(p, mode))
    no_model_built(monkeypatch)
    with pytest.raises(PreflightError, match=f"train.output_dir {read_only}/run cannot be written"):
        run(quick_cfg(tiny_root, tiny_world, read_only / "run"))


@pytest.mark.parametrize("damage", ["wrong_folder", "empty_files"])
def test_a_media_folder_without_usable_files_is_reported(
    tiny_root: Path, tiny_world: Path, tmp_path: Path, monkeypatch, damage: str
):
    from nextgpt.data.catalog import load_catalog

    images = Path(load_catalog(tiny_world)["cc3m_enc"].image_dir)
    folder = tmp_path / "images"
    folder.mkdir()
    if damage == "empty_files":
        for image in images.iterdir():
            (folder / image.name).write_bytes(b"")
    catalog = _catalog_with(tmp_path, tiny_world, cc3m_enc={"image_dir": str(folder)})
    no_model_built(monkeypatch)
    with pytest.raises(PreflightError) as info:
        run(quick_cfg(tiny_root, catalog, tmp_path / "run", "data.datasets=[cc3m_enc]"))
    problem = "none of the first 8 files its records name exists" if damage == "wrong_folder" else "are all empty"
    assert "cc3m_enc: " in str(info.value) and problem in str(info.value)
    assert f"image_dir {folder}" in str(info.value)
