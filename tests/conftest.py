"""Shared fixtures: tiny checkpoints in the real formats, built once per test session.

Every fixture writes files through the same builders as `scripts/build_tiny_checkpoints.py`, and the
code under test loads them through the same loaders as real checkpoints.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]
ASSETS_DIR = Path(__file__).resolve().parent / "assets"


@pytest.fixture(scope="session")
def tiny_cfg_path() -> Path:
    """The CPU config whose paths point at checkpoints/tiny/."""
    return REPO_ROOT / "configs" / "tiny.yaml"


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory: pytest.TempPathFactory, tiny_cfg_path: Path) -> Path:
    """A complete tiny checkpoint tree (LLM, ImageBind, three decoders), written once per session."""
    from nextgpt.config import load_config
    from nextgpt.tiny.build import build_tiny_checkpoints

    root = tmp_path_factory.mktemp("tiny")
    build_tiny_checkpoints(root, load_config(tiny_cfg_path))
    return root


@pytest.fixture()
def tiny_cfg(tiny_root: Path, tiny_cfg_path: Path):
    """configs/tiny.yaml with every checkpoint path moved into the session's tiny tree."""
    from nextgpt.config import load_config
    from nextgpt.tiny.build import tiny_path_overrides

    return load_config(tiny_cfg_path, overrides=tiny_path_overrides(tiny_root))
