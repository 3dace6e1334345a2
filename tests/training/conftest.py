"""Fixtures for the training tests: a synthetic world with real caption embeddings, and a stage runner."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory: pytest.TempPathFactory, tiny_root: Path, tiny_cfg_path: Path) -> Path:
    """A small synthetic world in every format, with caption embeddings written by preprocess_embeddings.py."""
    import preprocess_embeddings
    from nextgpt.tiny.build import tiny_path_overrides
    from nextgpt.tiny.data import write_synthetic_world

    root = tmp_path_factory.mktemp("world")
    catalog = write_synthetic_world(root, num_train=8, num_eval=2, seed=0)
    names = [n for n, e in _catalog_entries(catalog).items() if e.get("caption_embed_dir")]
    argv = ["--config", str(tiny_cfg_path), "--catalog", str(catalog), "--datasets", *names, "--device", "cpu"]
    assert preprocess_embeddings.main([*argv, *tiny_path_overrides(tiny_root)]) == 0
    return catalog


def _catalog_entries(catalog: Path) -> dict:
    import yaml

    return yaml.safe_load(catalog.read_text())["datasets"]
