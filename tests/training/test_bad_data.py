"""A run over data with a corrupt media file finishes, skipping and counting it; policy `error` stops naming it."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from stage_helpers import REPO_ROOT, stage_overrides

from nextgpt.config import load_config
from nextgpt.data.datasets import BadSampleError
from nextgpt.training.loop import run


@pytest.fixture(scope="module")
def corrupt_world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """100 image-caption pairs, one of whose images is not an image (1% corrupt)."""
    from nextgpt.tiny.data import write_synthetic_world

    root = tmp_path_factory.mktemp("corrupt_world")
    catalog = write_synthetic_world(root, num_train=100, num_eval=1, seed=1)
    victim = sorted((root / "T_X_pair_data" / "cc3m" / "images").glob("*.png"))[7]
    victim.write_bytes(b"\x89PNG but not really")
    return catalog, victim


def _cfg(tiny_root: Path, catalog: Path, out_dir: Path, *extra: str):
    overrides = stage_overrides(
        tiny_root,
        catalog,
        out_dir,
        "data.datasets=[cc3m_enc]",
        "data.sampler=random",
        "train.micro_batch_size=10",
        "train.max_steps=10",
        "train.save_every=1000",
        *extra,
    )
    return load_config(REPO_ROOT / "configs" / "tiny_stage_1.yaml", overrides=overrides)


def test_one_percent_corrupt_samples_are_skipped_and_counted(tiny_root, corrupt_world, tmp_path, caplog):
    catalog, victim = corrupt_world
    with caplog.at_level(logging.INFO, logger="nextgpt"):
        result = run(_cfg(tiny_root, catalog, tmp_path / "run"))
    assert result.num_skipped == 1
    assert len(result.losses) == 10 and (result.final_dir / "trainable.safetensors").is_file()
    messages = [r.getMessage() for r in caplog.records]
    assert any(str(victim) in m for m in messages), "the bad file's path is logged"
    assert "skipped 1 bad samples" in messages[-1]


def test_policy_error_stops_with_the_path(tiny_root, corrupt_world, tmp_path):
    catalog, victim = corrupt_world
    with pytest.raises(BadSampleError, match=victim.name):
        run(_cfg(tiny_root, catalog, tmp_path / "run", "data.bad_sample_policy=error"))
