"""Strict loading of ImageBind checkpoints: official key layout, skipped towers, and the errors for bad files."""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from pathlib import Path

import pytest
import torch

from nextgpt.config import ImageBindConfig
from nextgpt.encoders.imagebind import UNUSED_MODALITIES, ImageBindEncoder, load_imagebind, split_unused_keys


def _rewrite(cfg: ImageBindConfig, tmp_path: Path, state: dict[str, torch.Tensor]) -> ImageBindConfig:
    path = tmp_path / "edited.pth"
    torch.save(state, path)
    return dataclasses.replace(cfg, checkpoint_path=path)


def _file_state(cfg: ImageBindConfig) -> dict[str, torch.Tensor]:
    return torch.load(cfg.checkpoint_path, weights_only=True)


def test_tiny_file_has_official_names_and_unused_towers(encoder_cfg: ImageBindConfig) -> None:
    state = _file_state(encoder_cfg)
    assert state["modality_preprocessors.vision.rgbt_stem.proj.1.weight"].shape == (32, 3, 2, 14, 14)
    assert state["modality_preprocessors.vision.pos_embedding_helper.pos_embed"].shape == (1, 257, 32)
    assert state["modality_preprocessors.audio.rgbt_stem.proj.weight"].shape == (32, 1, 16, 16)
    assert state["modality_preprocessors.audio.pos_embedding_helper.pos_embed"].shape == (1, 229, 32)
    assert state["modality_trunks.vision.blocks.1.attn.in_proj_weight"].shape == (96, 32)
    assert state["modality_trunks.audio.blocks.0.attn.bias_k"].shape == (1, 1, 32)
    assert "modality_trunks.vision.blocks.0.attn.bias_k" not in state
    assert state["modality_heads.audio.2.weight"].shape == (32, 32)
    assert math.isclose(state["modality_postprocessors.audio.1.log_logit_scale"].exp().item(), 20.0, rel_tol=1e-6)
    assert state["modality_preprocessors.text.token_embedding.weight"].shape == (49408, 8)
    assert "modality_preprocessors.depth.depth_stem.proj.weight" in state
    assert "modality_heads.imu.3.weight" in state
    _, skipped = split_unused_keys(state)
    assert set(skipped) == set(UNUSED_MODALITIES) and all(n > 0 for n in skipped.values())


def test_load_assigns_every_tensor_frozen_and_logs_skips(
    encoder_cfg: ImageBindConfig, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="nextgpt.encoders.imagebind"):
        encoder = load_imagebind(encoder_cfg)
    state = _file_state(encoder_cfg)
    kept, skipped = split_unused_keys(state)
    loaded = encoder.state_dict()
    assert set(loaded) == set(kept)
    assert all(torch.equal(loaded[k], kept[k]) for k in kept)
    assert not any(p.requires_grad for p in encoder.parameters())
    assert not encoder.training
    assert encoder.out_dim == 32
    message = next(r.getMessage() for r in caplog.records if "skipped unused modalities" in r.getMessage())
    for modality in UNUSED_MODALITIES:
        assert f"{modality} {skipped[modality]}" in message


def test_missing_key_is_an_error_naming_it(encoder_cfg: ImageBindConfig, tmp_path: Path) -> None:
    state = _file_state(encoder_cfg)
    del state["modality_heads.audio.2.weight"]
    with pytest.raises(ValueError, match=r"lacks 1 keys: modality_heads\.audio\.2\.weight.*ImageBind-Huge"):
        load_imagebind(_rewrite(encoder_cfg, tmp_path, state))


def test_missing_logit_scale_buffer_is_an_error(encoder_cfg: ImageBindConfig, tmp_path: Path) -> None:
    state = _file_state(encoder_cfg)
    del state["modality_postprocessors.audio.1.log_logit_scale"]
    with pytest.raises(ValueError, match=r"modality_postprocessors\.audio\.1\.log_logit_scale"):
        load_imagebind(_rewrite(encoder_cfg, tmp_path, state))


@pytest.mark.parametrize("key", ["modality_trunks.vision.blocks.7.norm_1.weight", "encoder.extra"])
def test_unexpected_key_is_an_error_naming_it(encoder_cfg: ImageBindConfig, tmp_path: Path, key: str) -> None:
    state = _file_state(encoder_cfg)
    state[key] = torch.zeros(32)
    with pytest.raises(ValueError, match="1 unexpected keys: " + re.escape(key)):
        load_imagebind(_rewrite(encoder_cfg, tmp_path, state))


def test_shape_mismatch_is_an_error(encoder_cfg: ImageBindConfig) -> None:
    wider = dataclasses.replace(encoder_cfg, out_embed_dim=64)
    with pytest.raises(ValueError, match=r"mis-shaped keys: modality_heads\.audio\.2\.weight \(32, 32\) vs model"):
        load_imagebind(wider)


def test_unused_tower_keys_are_skipped_by_exact_prefix() -> None:
    state = {
        "modality_trunks.text.blocks.0.norm_1.weight": torch.zeros(1),
        "modality_postprocessors.imu.1.log_logit_scale": torch.zeros(()),
        "modality_trunks.textual.blocks.0.norm_1.weight": torch.zeros(1),
        "text.weight": torch.zeros(1),
    }
    kept, skipped = split_unused_keys(state)
    assert set(kept) == {"modality_trunks.textual.blocks.0.norm_1.weight", "text.weight"}
    assert dict(skipped) == {"text": 1, "imu": 1}


def test_missing_file_names_path_and_config_key(encoder_cfg: ImageBindConfig, tmp_path: Path) -> None:
    cfg = dataclasses.replace(encoder_cfg, checkpoint_path=tmp_path / "nope.pth")
    with pytest.raises(FileNotFoundError, match=r"nope\.pth.*model\.encoder\.checkpoint_path"):
        load_imagebind(cfg)
    with pytest.raises(ValueError, match=r"model\.encoder\.checkpoint_path is not set"):
        load_imagebind(dataclasses.replace(encoder_cfg, checkpoint_path=None))


def test_non_state_dict_files_are_rejected(encoder_cfg: ImageBindConfig, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match=r"could not read ImageBind checkpoint .*garbage\.pth"):
        load_imagebind(dataclasses.replace(encoder_cfg, checkpoint_path=garbage))
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"model": _file_state(encoder_cfg)}, wrapped)
    with pytest.raises(ValueError, match=r"not a flat name -> tensor state dict"):
        load_imagebind(dataclasses.replace(encoder_cfg, checkpoint_path=wrapped))


def test_dtype_from_config(encoder_cfg: ImageBindConfig) -> None:
    encoder = load_imagebind(dataclasses.replace(encoder_cfg, dtype="bfloat16"))
    assert {p.dtype for p in encoder.parameters()} == {torch.bfloat16}
    from nextgpt.constants import Modality

    out = encoder(Modality.IMAGE, torch.randn(1, 3, 224, 224))
    assert out.dtype == torch.bfloat16 and out.shape == (1, 32)


def test_default_config_builds_imagebind_huge_shapes() -> None:
    with torch.device("meta"):
        encoder = ImageBindEncoder(ImageBindConfig())
    shapes = {k: tuple(v.shape) for k, v in encoder.state_dict().items()}
    assert shapes["modality_preprocessors.vision.rgbt_stem.proj.1.weight"] == (1280, 3, 2, 14, 14)
    assert shapes["modality_preprocessors.vision.pos_embedding_helper.pos_embed"] == (1, 257, 1280)
    assert shapes["modality_preprocessors.audio.pos_embedding_helper.pos_embed"] == (1, 229, 768)
    assert shapes["modality_trunks.vision.blocks.31.mlp.fc1.weight"] == (5120, 1280)
    assert shapes["modality_trunks.audio.blocks.11.attn.bias_v"] == (1, 1, 768)
    assert shapes["modality_heads.vision.2.weight"] == (1024, 1280)
    assert shapes["modality_heads.audio.2.weight"] == (1024, 768)
    assert not any(k.startswith("modality_trunks.vision.blocks.32") for k in shapes)
    num_params = sum(p.numel() for p in encoder.parameters())
    assert 700e6 < num_params < 730e6  # ViT-H/14 vision (~630M) + ViT-B audio (~86M)
