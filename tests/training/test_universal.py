"""A checkpoint written by 2 processes resumes on 1 and one written by 1 resumes on 2, with the losses and weights of
an uninterrupted run: the partitioned optimizer state is converted to DeepSpeed's universal format at the resume
(`nextgpt.training.universal`), and processes x micro batch kept equal keeps the data order."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file
from stage_helpers import assert_same_trained_weights, quick_cfg, run_two_ranks

from nextgpt.config import ConfigError
from nextgpt.manifest import verify_manifest
from nextgpt.training.loop import run
from nextgpt.training.resume import check_resume_changes
from nextgpt.training.universal import SCRATCH_DIR, needs_universal

LR = 3e-3
"""configs/tiny_stage_2.yaml's learning rate."""
STEPS, HALF = 4, 2
DECAY = "train.weight_decay=0.1"
"""Weight decay on, so the two param groups (decay / no decay) differ, as DeepSpeed's ZeRO-3 universal load does not
keep them apart by itself."""


def _order(world_size: int, micro: int) -> dict:
    return {"data_order": {"world_size": world_size, "train.micro_batch_size": micro}}


def test_a_new_process_count_with_the_same_global_batch_needs_no_allowance():
    assert check_resume_changes(_order(2, 1), _order(1, 2), (), Path("ckpt")) == {}
    assert check_resume_changes(_order(2, 4), _order(8, 1), (), Path("ckpt")) == {}


def test_a_new_process_count_with_another_global_batch_is_refused_naming_both_keys():
    with pytest.raises(ConfigError, match=r"world_size was 2 and is 1 now") as info:
        check_resume_changes(_order(2, 2), _order(1, 2), (), Path("ckpt"))
    assert "train.allow_resume_changes=[world_size]" in str(info.value)


@pytest.mark.parametrize(
    ("stage", "precision", "wanted"), [(0, "fp32", False), (0, "bf16", True), (2, "fp32", True), (3, "fp32", True)]
)
def test_conversion_only_where_the_optimizer_state_is_split_by_rank(stage: int, precision: str, wanted: bool):
    ds = {"zero_optimization": {"stage": stage}, "bf16": {"enabled": precision == "bf16"}}
    meta = {"data_order": {"world_size": 2}}
    assert needs_universal(meta, 1, ds) is wanted
    assert needs_universal(meta, 2, ds) is False
    assert needs_universal({}, 1, ds) is False  # a checkpoint that predates recorded world sizes


def _weights(run_dir: Path) -> dict:
    return load_file(run_dir / "final" / "trainable.safetensors")


@pytest.mark.multiprocess
@pytest.mark.parametrize("zero", [{"stage": 3, "stage3_param_persistence_threshold": 0}], ids=["zero3"])
def test_checkpoints_move_between_one_and_two_processes(tiny_root, tiny_world, tmp_path, zero):
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"train_micro_batch_size_per_gpu": "auto", "zero_optimization": zero}))

    def one(out: Path, steps: int):
        overrides = (f"train.max_steps={steps}", "train.micro_batch_size=2", f"train.deepspeed_config={ds}", DECAY)
        return run(quick_cfg(tiny_root, tiny_world, out, *overrides))

    whole = one(tmp_path / "whole", STEPS)

    # 2 processes -> 1.
    run_two_ranks(tiny_root, tiny_world, tmp_path / "two_one", 1, ds, HALF, "tiny_stage_2.yaml", DECAY)
    resumed = one(tmp_path / "two_one", STEPS)
    assert resumed.losses == pytest.approx(whole.losses[HALF:], rel=1e-5)
    assert_same_trained_weights(_weights(tmp_path / "two_one"), _weights(tmp_path / "whole"), lr=LR)

    # 1 process -> 2.
    one(tmp_path / "one_two", HALF)
    losses = run_two_ranks(tiny_root, tiny_world, tmp_path / "one_two", 1, ds, STEPS, "tiny_stage_2.yaml", DECAY)
    assert losses[0] == losses[1] and losses[0] == pytest.approx(whole.losses[HALF:], rel=1e-5)
    assert_same_trained_weights(_weights(tmp_path / "one_two"), _weights(tmp_path / "whole"), lr=LR)
    for run_dir in ("two_one", "one_two"):
        assert not (tmp_path / run_dir / SCRATCH_DIR).exists()  # the converted state is removed after the load
        verify_manifest(tmp_path / run_dir / "final")
