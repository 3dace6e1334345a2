"""Caption-embedding files: the shared naming rule, atomic float16 writes, checked float32 reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from nextgpt.data.embeddings import (
    caption_embedding_path,
    caption_embedding_shape,
    load_caption_embedding,
    save_caption_embedding,
)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("happy.npy", "happy.npy"),  # str.strip('.npy') would give "ha"
        ("a.jpg", "a.jpg.npy"),
        ("001312382.jpg.npy", "001312382.jpg.npy"),
        ("mosit_i_0000002_00.jpg", "mosit_i_0000002_00.jpg.npy"),
        ("pony", "pony.npy"),
    ],
)
def test_names_keep_every_character(tmp_path: Path, name: str, expected: str):
    assert caption_embedding_path(tmp_path, name) == tmp_path / expected


@pytest.mark.parametrize("name", ["", "sub/a.jpg", "..\\a.jpg", "/abs.npy", "..", "  "])
def test_names_with_folders_or_nothing_are_rejected(tmp_path: Path, name: str):
    with pytest.raises(ValueError, match="caption embedding name"):
        caption_embedding_path(tmp_path, name)


def test_round_trip_is_float16_on_disk_and_float32_in_memory(tmp_path: Path):
    values = torch.randn(77, 8)
    path = save_caption_embedding(caption_embedding_path(tmp_path / "embed", "x.png"), values)
    assert np.load(path).dtype == np.float16
    loaded = load_caption_embedding(path, expected_shape=(77, 8))
    assert loaded.dtype == torch.float32
    torch.testing.assert_close(loaded, values.half().float())
    assert [p.name for p in path.parent.iterdir()] == ["x.png.npy"]  # no temporary file left behind


def test_failed_write_leaves_no_file(tmp_path: Path):
    with pytest.raises(ValueError, match="finite"):
        save_caption_embedding(tmp_path / "bad.npy", np.array([1.0, np.nan]))
    assert list(tmp_path.iterdir()) == []


def test_audio_shape_and_one_query_squeeze(tmp_path: Path):
    assert caption_embedding_shape(1, 512) == (512,)
    assert caption_embedding_shape(77, 768) == (77, 768)
    path = save_caption_embedding(tmp_path / "a.npy", np.ones((1, 16), dtype=np.float32))
    assert load_caption_embedding(path, expected_shape=(16,)).shape == (16,)


def test_load_errors_are_one_line_and_name_the_file(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="missing.npy.*preprocess_embeddings"):
        load_caption_embedding(tmp_path / "missing.npy")
    path = save_caption_embedding(tmp_path / "w.npy", np.zeros((77, 16), dtype=np.float32))
    with pytest.raises(ValueError, match=r"w\.npy has shape \(77, 16\), expected \(77, 32\)") as err:
        load_caption_embedding(path, expected_shape=(77, 32))
    assert "\n" not in str(err.value)
    corrupt = tmp_path / "corrupt.npy"
    corrupt.write_bytes(b"not a numpy file")
    with pytest.raises(ValueError, match="corrupt.npy is not a readable"):
        load_caption_embedding(corrupt)
