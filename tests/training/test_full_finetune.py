"""Full fine-tuning: a stage that trains the LLM itself (`llm`, `embeddings`) saves it as a sharded HF folder in each
checkpoint; under ZeRO-3 with every parameter partitioned the saved backbone equals a ZeRO-2 run's, and prediction,
merging and the next stage all start from the trained backbone, not from the base LLM."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from stage_helpers import assert_same_trained_weights, quick_cfg

from nextgpt.config import ConfigError
from nextgpt.training import full_finetune
from nextgpt.training.loop import run

LR = 3e-3
"""configs/tiny_stage_2.yaml's learning rate."""
FULL = "train.trainable=[llm,embeddings,output_projectors,token_rows]"
ZERO = {
    "zero2": {"stage": 2},
    "zero3": {"stage": 3, "stage3_param_persistence_threshold": 0, "stage3_max_live_parameters": 0},
}


def _shards(folder: Path) -> dict[str, torch.Tensor]:
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(set(index["weight_map"].values())):
        state.update(load_file(folder / shard))
    assert set(state) == set(index["weight_map"])
    return state


@pytest.fixture(scope="module")
def full_runs(tiny_root: Path, tiny_world: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Quick stage 2 training the whole LLM for 2 steps under ZeRO-2 and under ZeRO-3 (every parameter partitioned),
    with shards small enough that the tiny backbone takes several files."""
    tmp = tmp_path_factory.mktemp("full")
    runs = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(full_finetune, "SHARD_SIZE", "300KB")
        for name, zero in ZERO.items():
            ds = tmp / f"{name}.json"
            ds.write_text(json.dumps({"train_micro_batch_size_per_gpu": "auto", "zero_optimization": zero}))
            out = tmp / name
            run(quick_cfg(tiny_root, tiny_world, out, "train.max_steps=2", FULL, f"train.deepspeed_config={ds}"))
            runs[name] = out / "final"
    return runs


@pytest.mark.slow
def test_zero3_saves_the_trained_backbone_sharded_and_equal_to_zero2s(full_runs, tiny_root: Path):
    got, want = _shards(full_runs["zero3"] / "llm"), _shards(full_runs["zero2"] / "llm")
    assert len(set(json.loads((full_runs["zero3"] / "llm" / "model.safetensors.index.json").read_text())["weight_map"]
                   .values())) > 1  # fmt: skip
    assert_same_trained_weights(got, want, lr=LR)
    base = {}
    for path in sorted((tiny_root / "llm").glob("*.safetensors")):
        base.update(load_file(path))
    config = json.loads((full_runs["zero3"] / "llm" / "config.json").read_text())
    num_base = config["nextgpt_num_base_tokens"]
    assert config["vocab_size"] == got["model.embed_tokens.weight"].shape[0] > num_base
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.norm.weight", "lm_head.weight"):
        trained, original = got[name][: base[name].shape[0]], base[name]
        assert trained.shape == original.shape and not torch.equal(trained, original), name  # it trained
    saved_cfg = yaml.safe_load((full_runs["zero3"] / "config.yaml").read_text())
    assert saved_cfg["model"]["llm"]["model_path"] == "llm"


@pytest.mark.slow
def test_prediction_and_merge_use_the_trained_backbone(full_runs, tmp_path: Path):
    from nextgpt.inference.pipeline import NextGPTPipeline
    from nextgpt.inference.requests import Message
    from nextgpt.training.merge import merge_checkpoint

    folder = full_runs["zero3"]
    saved = _shards(folder / "llm")
    pipeline = NextGPTPipeline.from_pretrained(folder, device="cpu")
    layer = pipeline.model.llm.get_decoder().layers[0].self_attn.q_proj.weight
    assert torch.equal(layer.detach(), saved["model.layers.0.self_attn.q_proj.weight"])
    generation = pipeline.generation_config(temperature=0.0, max_new_tokens=6)
    reply = pipeline.reply([Message("user", "Describe the sound.")], tmp_path, generation=generation)
    assert reply.message.role == "assistant" and 0 < len(reply.result.token_ids) <= 6
    merged = merge_checkpoint(folder, tmp_path / "merged")
    assert _shards_or_single(merged / "llm")["model.layers.0.self_attn.q_proj.weight"].equal(
        saved["model.layers.0.self_attn.q_proj.weight"]
    )


def _shards_or_single(folder: Path) -> dict[str, torch.Tensor]:
    if (folder / "model.safetensors.index.json").is_file():
        return _shards(folder)
    return load_file(folder / "model.safetensors")


@pytest.mark.slow
def test_the_next_stage_starts_from_the_trained_backbone(full_runs, tiny_root: Path, tiny_world: Path, tmp_path):
    from nextgpt.training.loop import build_model_for_training

    folder = full_runs["zero3"]
    cfg = quick_cfg(tiny_root, tiny_world, tmp_path / "next", "train.max_steps=1", f"train.init_from={folder}")
    model = build_model_for_training(cfg)
    saved = _shards(folder / "llm")
    weight = model.llm.get_decoder().layers[0].mlp.up_proj.weight
    assert torch.equal(weight.detach(), saved["model.layers.0.mlp.up_proj.weight"])
    assert cfg.model.llm.model_path == folder / "llm"
    assert len(run(cfg).losses) == 1


def test_full_finetuning_with_lora_is_refused_when_the_config_is_built(tiny_root: Path, tiny_world: Path, tmp_path):
    with pytest.raises(ConfigError, match=r"train\.trainable includes llm .* set model\.lora\.enabled=false"):
        quick_cfg(tiny_root, tiny_world, tmp_path, FULL, "model.lora.enabled=true")
