"""The exact trainable set of each stage, as its YAML declares it."""

from __future__ import annotations

from pathlib import Path

import pytest
from stage_helpers import REPO_ROOT

from nextgpt.config import load_config
from nextgpt.model import build_nextgpt
from nextgpt.training.stages import apply_trainable_groups, parameter_group

EXPECTED = {
    1: {"input_projector", "token_rows"},
    2: {"output_projectors", "token_rows"},
    3: {"lora", "input_projector", "output_projectors", "token_rows"},
}


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_stage_yaml_trains_exactly_its_groups(stage: int, tiny_root: Path):
    from nextgpt.tiny.build import tiny_path_overrides

    for prefix in ("stage", "tiny_stage"):
        cfg = load_config(REPO_ROOT / "configs" / f"{prefix}_{stage}.yaml")
        assert set(cfg.train.trainable) == EXPECTED[stage], prefix
    cfg = load_config(REPO_ROOT / "configs" / f"tiny_stage_{stage}.yaml", overrides=tiny_path_overrides(tiny_root))
    model = build_nextgpt(cfg.model, load_encoder=False)
    counts = apply_trainable_groups(model, cfg.train.trainable)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {parameter_group(n) for n in trainable} == EXPECTED[stage]
    # Every parameter of a named group trains; nothing else does (the original froze LoRA in stage 3).
    for name, param in model.named_parameters():
        assert param.requires_grad == (parameter_group(name) in EXPECTED[stage]), name
    num_new = sum(len(v) for v in model.signal_ids.values())
    assert counts["token_rows"] == (2 * num_new * model.llm.config.hidden_size,) * 2
    assert counts["frozen base"][0] == 0


def test_unknown_or_empty_group_is_an_error(tiny_root: Path):
    from nextgpt.tiny.build import tiny_path_overrides

    cfg = load_config(REPO_ROOT / "configs" / "tiny_stage_1.yaml", overrides=tiny_path_overrides(tiny_root))
    model = build_nextgpt(cfg.model, load_encoder=False)
    with pytest.raises(ValueError, match=r"set model.lora.enabled=true"):
        apply_trainable_groups(model, ("lora",))
    with pytest.raises(ValueError, match="unknown trainable groups"):
        apply_trainable_groups(model, ("vision_tower",))
