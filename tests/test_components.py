"""Component paths: saved absolute or folder-relative so checkpoint folders move; missing ones named all at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from nextgpt.components import absolute_paths, check_components, resolve_folder_paths
from nextgpt.config import load_config
from nextgpt.constants import MODALITIES, Modality


def test_relative_paths_become_absolute_and_folder_relative_ones_come_back(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "weights").mkdir()
    cfg = load_config(overrides=["model.llm.model_path=weights", "model.encoder.checkpoint_path=gone.pth"])
    saved = absolute_paths(cfg, Path.cwd())
    assert saved.model.llm.model_path == tmp_path / "weights"
    assert saved.model.encoder.checkpoint_path == Path("gone.pth")  # absent: kept as written, reported later
    assert saved.train.deepspeed_config.is_absolute() and saved.train.deepspeed_config.is_file()  # shipped file
    folder = tmp_path / "merged"
    (folder / "llm").mkdir(parents=True)
    merged = load_config(overrides=["model.llm.model_path=llm"])
    monkeypatch.chdir(tmp_path / "weights")  # anywhere else
    assert resolve_folder_paths(merged, folder).model.llm.model_path == folder / "llm"


def test_every_missing_component_is_named_with_its_key(tiny_cfg, tmp_path: Path):
    check_components(tiny_cfg.model, encoder=True, decoders=MODALITIES)  # the tiny tree is complete
    broken = load_config(
        overrides=[
            f"model.llm.model_path={tmp_path}",
            "model.decoders.video.pipeline_path=/nowhere/zeroscope",
        ]
    )
    with pytest.raises(FileNotFoundError) as info:
        check_components(broken.model, encoder=True, decoders=[Modality.VIDEO, Modality.AUDIO])
    message = str(info.value)
    assert message.startswith("4 missing component(s)") and "\n" not in message
    for key in (
        "model.llm.model_path",
        "model.encoder.checkpoint_path is not set",
        "model.decoders.video.pipeline_path = /nowhere/zeroscope",
        "model.decoders.audio.pipeline_path is not set",
    ):
        assert key in message
    check_components(broken.model, encoder=False, decoders=(), llm=False)  # nothing needed, nothing missing
