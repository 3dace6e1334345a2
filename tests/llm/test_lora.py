"""LoRA: target modules, parameter counts, trainable token rows under peft, merging, presets."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from numerics import assert_float32_paths_close
from torch import nn

from nextgpt.config import Config, LoRAConfig, load_config
from nextgpt.config_loader import from_dict, merge_dicts, read_yaml_chain
from nextgpt.llm.backbone import get_num_base_tokens, load_llm, save_merged_llm
from nextgpt.llm.lora import apply_lora, list_linear_module_names, merge_lora
from nextgpt.llm.tokenizer import load_tokenizer

REPO_ROOT = Path(__file__).resolve().parents[2]
PRESETS = REPO_ROOT / "configs" / "presets"
IDS = torch.tensor([[1, 300, 512, 47, 530, 547, 2]])
DIM, FF_DIM, NUM_LAYERS, NEW = 64, 128, 2, 36
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")


def _perturb_lora(model: nn.Module) -> None:
    """LoRA B starts at zero (a no-op); give every adapter weight a value so merging is a real test."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)


def test_paper_preset_targets_attention_with_the_expected_count(llm) -> None:
    cfg = load_config(PRESETS / "lora_paper.yaml").model.lora
    model = apply_lora(llm, replace(cfg, r=8))
    carriers = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if hasattr(m, "lora_A")}
    assert carriers == set(ATTENTION)
    num_lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    assert num_lora == 8 * (DIM + DIM) * NUM_LAYERS * len(ATTENTION)


def test_all_linear_preset_count(llm) -> None:
    cfg = load_config(PRESETS / "lora_all_linear.yaml").model.lora
    model = apply_lora(llm, replace(cfg, r=4))
    per_layer = 4 * (DIM + DIM) * 4 + 4 * (DIM + FF_DIM) * 3  # q,k,v,o + gate,up,down
    assert sum(p.numel() for n, p in model.named_parameters() if "lora_" in n) == per_layer * NUM_LAYERS
    assert not any("lm_head" in n and "lora_" in n for n, _ in model.named_parameters())


def test_new_rows_stay_trainable_and_get_gradients_under_lora(llm) -> None:
    model = apply_lora(llm, LoRAConfig(enabled=True, r=4, alpha=8, dropout=0.0))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    rows = {n for n in trainable if n.endswith("new_rows")}
    assert rows == {"base_model.model.model.embed_tokens.new_rows", "base_model.model.lm_head.new_rows"}
    assert all("lora_" in n for n in trainable - rows)
    num_lora = 4 * (DIM + DIM) * NUM_LAYERS * len(ATTENTION)
    assert sum(p.numel() for n, p in model.named_parameters() if p.requires_grad) == num_lora + 2 * NEW * DIM
    assert get_num_base_tokens(model) == 512
    _perturb_lora(model)
    model.train()
    model(input_ids=IDS, labels=IDS).loss.backward()
    for name, param in model.named_parameters():
        assert (param.grad is not None) == (name in trainable), name


@pytest.mark.numerics
def test_merge_gives_the_same_logits(llm) -> None:
    model = apply_lora(llm, LoRAConfig(enabled=True, r=4, alpha=8, dropout=0.1))
    _perturb_lora(model)
    model.eval()
    with torch.no_grad():
        unmerged = model(IDS).logits
        merged_model = merge_lora(model)
        assert not any("lora_" in n for n, _ in merged_model.named_parameters())
        # W + BA folded changes float32 summation order only (tests/numerics.py); n: the widest dot product.
        n = merged_model.config.intermediate_size
        assert_float32_paths_close(merged_model(IDS).logits, unmerged, n, "merged logits")


@pytest.mark.numerics
def test_export_with_lora_reloads_to_the_same_logits(llm, llm_cfg, signal_cfg, tokenizer, tmp_path: Path) -> None:
    model = apply_lora(llm, LoRAConfig(enabled=True, r=4, alpha=8, dropout=0.0))
    _perturb_lora(model)
    with torch.no_grad():
        expected = model(IDS).logits
    out_dir = save_merged_llm(model, tokenizer, tmp_path / "export")
    reloaded = load_llm(replace(llm_cfg, model_path=out_dir), load_tokenizer(out_dir, signal_cfg))
    with torch.no_grad():
        n = reloaded.config.intermediate_size
        assert_float32_paths_close(reloaded(IDS).logits, expected, n, "reloaded merged logits")


def test_bad_targets_and_disabled_lora_raise(llm) -> None:
    assert list_linear_module_names(llm) == [
        "down_proj",
        "gate_proj",
        "k_proj",
        "o_proj",
        "q_proj",
        "up_proj",
        "v_proj",
    ]
    with pytest.raises(ValueError, match=r"\['qkv_proj'\].*choose from \['down_proj'"):
        apply_lora(llm, LoRAConfig(enabled=True, target_modules=("q_proj", "qkv_proj")))
    with pytest.raises(ValueError, match="model.lora.enabled=false"):
        apply_lora(llm, LoRAConfig(enabled=False))
    with pytest.raises(ValueError, match="expects a peft model"):
        merge_lora(llm)


@pytest.mark.parametrize(
    "preset,expected",
    [
        ("lora_paper.yaml", LoRAConfig(enabled=True, r=32, alpha=32, dropout=0.1, target_modules=ATTENTION)),
        (
            "lora_all_linear.yaml",
            LoRAConfig(
                enabled=True,
                r=128,
                alpha=256,
                dropout=0.05,
                target_modules=ATTENTION + ("gate_proj", "up_proj", "down_proj"),
            ),
        ),
    ],
)
def test_presets_overlay_only_model_lora(preset: str, expected: LoRAConfig) -> None:
    assert load_config(PRESETS / preset).model.lora == expected
    tiny = read_yaml_chain(REPO_ROOT / "configs" / "tiny.yaml")
    overlaid = from_dict(Config, merge_dicts(tiny, read_yaml_chain(PRESETS / preset)))
    plain = from_dict(Config, tiny)
    assert overlaid.model.lora == expected
    assert replace(overlaid.model, lora=plain.model.lora) == plain.model
