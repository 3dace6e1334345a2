"""Fixtures for the tiny-world tests: the session's pretrained tiny checkpoints, their config, a small world."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from nextgpt.config import Config

WORLD_SEED = 1
"""Seed of the small synthetic world the alignment tests train on."""
NUM_WORLD_ITEMS = 8
"""Training items per modality: one batch of the alignment tests."""


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Run every test here with one torch thread: the tiny models gain little from more, busy machines lose a lot."""
    from nextgpt.tiny.pretrain_encoder import one_torch_thread

    with one_torch_thread():
        yield


@pytest.fixture(scope="session")
def pretrained_cfg(tiny_root: Path, tiny_cfg_path: Path) -> Config:
    """configs/tiny.yaml pointing at the session's tiny tree (LLM and ImageBind pretrained by the builder)."""
    from nextgpt.config import load_config
    from nextgpt.tiny.build import tiny_path_overrides

    return load_config(tiny_cfg_path, overrides=tiny_path_overrides(tiny_root))


@pytest.fixture(scope="session")
def world_catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic world with a few training items per modality; returns its catalog."""
    from nextgpt.tiny.data import write_synthetic_world

    return write_synthetic_world(tmp_path_factory.mktemp("world"), NUM_WORLD_ITEMS, 0, seed=WORLD_SEED)


@pytest.fixture(scope="session")
def world_media(pretrained_cfg: Config):
    """Every attribute combination of every modality, preprocessed for the encoder."""
    from nextgpt.tiny.pretrain_encoder import one_torch_thread, render_world_media

    # Session fixtures are set up before the per-test one-thread fixture.
    with one_torch_thread():
        return render_world_media(pretrained_cfg.model.encoder)
