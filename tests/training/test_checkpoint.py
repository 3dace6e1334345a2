"""Checkpoints: only project weights, bit-equal round trip, atomic saves, loud architecture mismatches."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from stage_helpers import REPO_ROOT

from nextgpt.config import load_config
from nextgpt.model import build_nextgpt
from nextgpt.training import checkpoint as ckpt
from nextgpt.training.stages import parameter_group, project_state_dict


@pytest.fixture()
def stage3(tiny_root: Path):
    from nextgpt.tiny.build import tiny_path_overrides

    cfg = load_config(REPO_ROOT / "configs" / "tiny_stage_3.yaml", overrides=tiny_path_overrides(tiny_root))
    torch.manual_seed(0)
    return build_nextgpt(cfg.model, load_encoder=False), cfg


def test_round_trip_is_bit_equal_and_holds_only_project_weights(stage3, tmp_path: Path):
    model, cfg = stage3
    with torch.no_grad():
        for name, param in model.named_parameters():
            if parameter_group(name) is not None:
                param.add_(torch.randn_like(param))
    saved = ckpt.save_checkpoint(tmp_path / "step-000001", model, cfg, step=1)
    stored = load_file(str(saved / ckpt.WEIGHTS_FILE))
    assert {parameter_group(k) for k in stored} == {"input_projector", "output_projectors", "token_rows"}
    assert not any("base_weight" in k or "self_attn.q_proj.weight" in k for k in stored)
    assert (saved / "lora" / "adapter_model.safetensors").is_file()
    torch.manual_seed(1)
    fresh, _ = build_nextgpt(cfg.model, load_encoder=False), None
    ckpt.load_project_weights(fresh, saved, cfg)
    before, after = project_state_dict(model), project_state_dict(fresh)
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key], after[key]), key


def test_a_save_killed_midway_leaves_the_latest_checkpoint_intact(stage3, tmp_path: Path):
    model, cfg = stage3
    ckpt.save_checkpoint(tmp_path / "step-000001", model, cfg, step=1)
    # A crash while step 2 is being written leaves only its staging folder behind.
    staging = ckpt.staging_dir(tmp_path / "step-000002")
    staging.mkdir()
    (staging / ckpt.WEIGHTS_FILE).write_bytes(b"partial")
    assert ckpt.latest_checkpoint(tmp_path) == tmp_path / "step-000001"
    ckpt.prune_checkpoints(tmp_path, keep_last=2)
    assert not staging.exists()


def test_architecture_mismatch_names_the_field(stage3, tmp_path: Path):
    model, cfg = stage3
    saved = ckpt.save_checkpoint(tmp_path / "final", model, cfg, step=1)
    other = dataclasses.replace(cfg.model, input_projector=dataclasses.replace(cfg.model.input_projector, type="mlp"))
    other_cfg = dataclasses.replace(cfg, model=other)
    with pytest.raises(ValueError, match=r"model\.input_projector\.type is 'linear' in the checkpoint but 'mlp'"):
        ckpt.load_project_weights(build_nextgpt(other, load_encoder=False), saved, other_cfg)


def test_missing_checkpoint_folder_is_one_clear_error(stage3, tmp_path: Path):
    model, cfg = stage3
    with pytest.raises(FileNotFoundError, match="train.init_from must name a checkpoint folder"):
        ckpt.load_project_weights(model, tmp_path / "nope", cfg)
