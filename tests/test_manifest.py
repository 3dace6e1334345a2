"""Checkpoint manifests: every file's size and SHA-256 recorded, any changed byte or missing file named."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from nextgpt.manifest import MANIFEST_FILE, CorruptCheckpointError, verify_manifest, write_manifest


def _folder(tmp_path: Path) -> Path:
    folder = tmp_path / "ckpt"
    (folder / "deepspeed" / "state").mkdir(parents=True)
    (folder / "trainable.safetensors").write_bytes(bytes(range(256)) * 64)
    (folder / "config.yaml").write_text("seed: 1\n")
    (folder / "deepspeed" / "state" / "model.pt").write_bytes(b"\x00" * 4096)
    write_manifest(folder)
    return folder


def test_manifest_lists_every_file_and_verifies(tmp_path: Path):
    folder = _folder(tmp_path)
    files = json.loads((folder / MANIFEST_FILE).read_text())["files"]
    assert sorted(files) == ["config.yaml", "deepspeed/state/model.pt", "trainable.safetensors"]
    assert files["trainable.safetensors"]["size"] == 256 * 64
    assert verify_manifest(folder) is True


@pytest.mark.parametrize("name", ["trainable.safetensors", "config.yaml", "deepspeed/state/model.pt"])
def test_one_flipped_byte_is_named(tmp_path: Path, name: str):
    folder = _folder(tmp_path)
    data = bytearray((folder / name).read_bytes())
    data[len(data) // 2] ^= 0x01
    (folder / name).write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpointError, match=f"{name} \\(checksum differs\\)"):
        verify_manifest(folder)


def test_truncated_missing_and_excluded_files(tmp_path: Path):
    folder = _folder(tmp_path)
    (folder / "deepspeed" / "state" / "model.pt").write_bytes(b"\x00" * 10)
    assert verify_manifest(folder, exclude=("deepspeed",)) is True  # the weights alone are intact
    with pytest.raises(CorruptCheckpointError, match="model.pt \\(size 10, expected 4096\\)"):
        verify_manifest(folder)
    (folder / "config.yaml").unlink()
    with pytest.raises(CorruptCheckpointError, match="config.yaml \\(missing\\)"):
        verify_manifest(folder, exclude=("deepspeed",))


def test_folder_without_manifest_warns_or_refuses(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    folder = _folder(tmp_path)
    (folder / MANIFEST_FILE).unlink()
    with caplog.at_level(logging.WARNING):
        assert verify_manifest(folder) is False
    assert "cannot be verified" in caplog.text
    with pytest.raises(CorruptCheckpointError, match="has no manifest.json"):
        verify_manifest(folder, required=True)
    (folder / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(CorruptCheckpointError, match="unreadable"):
        verify_manifest(folder)
