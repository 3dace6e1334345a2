"""Fixtures of the data tests: a tiny tokenizer with signal tokens and one synthetic world per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from nextgpt.config import load_config
from nextgpt.constants import Modality

REPO_ROOT = Path(__file__).resolve().parents[2]
CAPTION_SHAPES = {Modality.IMAGE: (77, 32), Modality.VIDEO: (77, 24), Modality.AUDIO: (16,)}
"""Caption-embedding shapes of configs/tiny.yaml's output projectors."""


@pytest.fixture(scope="session")
def caption_shapes() -> dict[Modality, tuple[int, ...]]:
    """Caption-embedding shapes of configs/tiny.yaml's output projectors."""
    return dict(CAPTION_SHAPES)


@pytest.fixture(scope="session")
def tiny_model_cfg():
    """configs/tiny.yaml's model section (encoder preprocessing, signal-token counts)."""
    return load_config(REPO_ROOT / "configs" / "tiny.yaml").model


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory: pytest.TempPathFactory, tiny_model_cfg):
    """The tiny LLM's tokenizer with the signal tokens added."""
    from nextgpt.llm.tokenizer import load_tokenizer
    from nextgpt.tiny.llm import write_tiny_llm

    llm_dir = write_tiny_llm(tmp_path_factory.mktemp("llm"))
    return load_tokenizer(llm_dir, tiny_model_cfg.signal_tokens)


@pytest.fixture(scope="session")
def signal_ids(tokenizer, tiny_model_cfg) -> dict[Modality, list[int]]:
    from nextgpt.llm.tokenizer import signal_token_ids

    return signal_token_ids(tokenizer, tiny_model_cfg.signal_tokens)


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Catalog path of a synthetic world (4 train + 2 eval items per modality) with random caption embeddings."""
    from nextgpt.tiny.data import write_random_caption_embeddings, write_synthetic_world

    catalog_path = write_synthetic_world(tmp_path_factory.mktemp("world"), num_train=4, num_eval=2, seed=3)
    write_random_caption_embeddings(catalog_path, CAPTION_SHAPES, seed=0)
    return catalog_path
