"""The DeepSpeed config the engine gets: "auto" values filled from the train config, bf16 without the overflow scan,
and ZeRO-1/2's communication overlap switched off when one process trains."""

from __future__ import annotations

import json

import pytest

from nextgpt.config import ConfigError, load_config
from nextgpt.training.engine import SINGLE_PROCESS_ZERO, resolve_deepspeed_config, zero_stage


def _resolved(tiny_cfg_path, tmp_path, zero: dict, num_processes: int, *overrides: str) -> dict:
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"train_micro_batch_size_per_gpu": "auto", "zero_optimization": zero}))
    cfg = load_config(tiny_cfg_path, overrides=[f"train.deepspeed_config={path}", *overrides])
    return resolve_deepspeed_config(cfg, num_processes=num_processes)


def test_auto_values_come_from_the_train_config(tiny_cfg_path, tmp_path):
    ds = _resolved(
        tiny_cfg_path,
        tmp_path,
        {"stage": 2},
        1,
        "train.micro_batch_size=3",
        "train.grad_clip=0.5",
        "train.precision=bf16",
    )
    assert ds["train_micro_batch_size_per_gpu"] == 3
    assert ds["gradient_clipping"] == 0.5
    assert ds["bf16"] == {"enabled": True, "check_grad_overflow": False}
    assert "train_batch_size" not in ds
    assert zero_stage(ds) == 2


@pytest.mark.parametrize("stage", [1, 2])
def test_one_process_turns_off_the_overlap_that_only_multi_rank_reduction_uses(tiny_cfg_path, tmp_path, stage):
    zero = {"stage": stage, "overlap_comm": True, "contiguous_gradients": True, "reduce_bucket_size": 123}
    alone = _resolved(tiny_cfg_path, tmp_path, zero, 1)["zero_optimization"]
    assert alone == {**zero, **SINGLE_PROCESS_ZERO}
    assert alone["reduce_bucket_size"] == 123  # the rest of the section is the file's
    assert _resolved(tiny_cfg_path, tmp_path, zero, 2)["zero_optimization"] == zero  # several ranks: as written


def test_zero3_and_no_zero_keep_their_section(tiny_cfg_path, tmp_path):
    zero3 = {"stage": 3, "overlap_comm": True, "contiguous_gradients": True}
    assert _resolved(tiny_cfg_path, tmp_path, zero3, 1)["zero_optimization"] == zero3
    assert _resolved(tiny_cfg_path, tmp_path, {"stage": 0}, 1)["zero_optimization"] == {"stage": 0}


def test_the_process_count_defaults_to_world_size(tiny_cfg_path, tmp_path, monkeypatch):
    zero = {"stage": 2, "overlap_comm": True, "contiguous_gradients": True}
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": zero}))
    cfg = load_config(tiny_cfg_path, overrides=[f"train.deepspeed_config={path}"])
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert resolve_deepspeed_config(cfg)["zero_optimization"] == zero
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert resolve_deepspeed_config(cfg)["zero_optimization"]["overlap_comm"] is False


def test_a_bad_file_or_stage_names_the_fix(tiny_cfg_path, tmp_path):
    path = tmp_path / "ds.json"
    path.write_text("{not json")
    cfg = load_config(tiny_cfg_path, overrides=[f"train.deepspeed_config={path}"])
    with pytest.raises(ConfigError, match="is not readable JSON"):
        resolve_deepspeed_config(cfg)
    with pytest.raises(ConfigError, match="must be 0, 1, 2 or 3, got 5"):
        zero_stage({"zero_optimization": {"stage": 5}})
