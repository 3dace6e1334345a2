"""Fixtures for the LLM tests: one tiny Vicuna-format folder per session, fresh tokenizer/model per test."""

from __future__ import annotations

from pathlib import Path

import pytest

from nextgpt.config import LLMConfig, SignalTokenConfig
from nextgpt.constants import Modality


@pytest.fixture(scope="session")
def tiny_llm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny LLaMA folder in the Vicuna layout (legacy: false tokenizer), written once."""
    from nextgpt.tiny.llm import write_tiny_llm

    return write_tiny_llm(tmp_path_factory.mktemp("tiny_llm") / "llm")


@pytest.fixture(scope="session")
def legacy_llm_dir(tiny_llm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same folder with a `legacy: true` tokenizer config (dummy prefix after special tokens too)."""
    import json
    import shutil

    out_dir = tmp_path_factory.mktemp("tiny_llm_legacy") / "llm"
    shutil.copytree(tiny_llm_dir, out_dir)
    config_path = out_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["legacy"] = True
    config_path.write_text(json.dumps(config))
    return out_dir


@pytest.fixture()
def signal_cfg() -> SignalTokenConfig:
    """The paper's counts: 4 image, 24 video, 8 audio signal tokens."""
    return SignalTokenConfig()


@pytest.fixture()
def tokenizer(tiny_llm_dir: Path, signal_cfg: SignalTokenConfig):
    from nextgpt.llm.tokenizer import load_tokenizer

    return load_tokenizer(tiny_llm_dir, signal_cfg)


@pytest.fixture()
def signal_ids(tokenizer, signal_cfg: SignalTokenConfig) -> dict[Modality, list[int]]:
    from nextgpt.llm.tokenizer import signal_token_ids

    return signal_token_ids(tokenizer, signal_cfg)


@pytest.fixture()
def llm_cfg(tiny_llm_dir: Path) -> LLMConfig:
    return LLMConfig(model_path=tiny_llm_dir)


@pytest.fixture()
def llm(llm_cfg: LLMConfig, tokenizer):
    """The tiny LLM loaded through load_llm (frozen, new token rows trainable)."""
    from nextgpt.llm.backbone import load_llm

    return load_llm(llm_cfg, tokenizer)
