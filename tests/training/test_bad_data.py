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


@pytest.fixture()
def unreadable_images(tiny_world: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the session world whose cc3m training images are all present, non-empty and not images."""
    import shutil

    from nextgpt.data.catalog import load_catalog

    world = Path(shutil.copytree(tiny_world.parent, tmp_path / "world"))
    catalog = world / tiny_world.name
    images = Path(load_catalog(catalog)["cc3m_enc"].image_dir)
    for image in images.glob("train_*.png"):
        image.write_bytes(b"not an image at all")
    return catalog, images


def test_a_run_whose_every_sample_is_bad_stops_naming_the_dataset_and_folder(tiny_root, unreadable_images, tmp_path):
    from nextgpt.training.data_health import NoUsableDataError

    catalog, images = unreadable_images
    overrides = stage_overrides(
        tiny_root, catalog, tmp_path / "run", "data.datasets=[cc3m_enc]", "train.micro_batch_size=4",
        "train.max_steps=1000",
    )  # fmt: skip
    with pytest.raises(NoUsableDataError) as info:
        run(load_config(REPO_ROOT / "configs" / "tiny_stage_1.yaml", overrides=overrides))
    message = str(info.value)
    assert message.startswith("no usable sample in epoch 0 (2 micro-batches): every sample of cc3m_enc was skipped")
    assert "(8 of 8; first: cc3m_enc[" in message and f"check image_dir {images} in the catalog {catalog}" in message
    assert "\n" not in message
    assert not (tmp_path / "run" / "final").exists()


def test_a_dataset_without_a_usable_sample_is_named_while_the_others_train(
    tiny_root, unreadable_images, tmp_path, caplog
):
    catalog, images = unreadable_images
    overrides = stage_overrides(
        tiny_root, catalog, tmp_path / "run", "data.datasets=[cc3m_enc,audiocap_enc]", "train.micro_batch_size=4",
        "train.max_steps=null", "train.epochs=1", "train.save_every=1000",
    )  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="nextgpt"):
        result = run(load_config(REPO_ROOT / "configs" / "tiny_stage_1.yaml", overrides=overrides))
    assert len(result.losses) == 4 and result.num_skipped == 16  # 2 epochs: the cc3m batches trained nothing
    warnings = [r.getMessage() for r in caplog.records if "every sample of cc3m_enc was skipped" in r.getMessage()]
    assert len(warnings) == 1 and f"check image_dir {images}" in warnings[0]  # epoch 1 ends at step 4, mid-epoch
    assert warnings[0].endswith("the other datasets keep training")
