"""`model.llm.compile_layers`: compiled decoder layers (with LoRA, packed rows, varlen attention) train like the plain
eager model on padded rows."""

from __future__ import annotations

import pytest
from batch_helpers import (
    STAGE_1,
    STAGE_2,
    assert_close_to_float64,
    build_model,
    collate,
    float64_step,
    make_items,
    run_step,
)

from nextgpt.llm.backbone import compile_decoder_layers, layers_compiled
from nextgpt.training.stages import apply_trainable_groups

STAGE_3 = ("lora", "input_projector", "output_projectors", "token_rows")
LORA = ("model.lora.enabled=true", "model.lora.dropout=0")


@pytest.mark.numerics
@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "gradient-checkpointing"])
def test_compiled_layers_give_the_plain_loss_and_gradients(tiny_root, tiny_cfg_path, checkpointing):
    plain_model = build_model(tiny_root, tiny_cfg_path, 2, *LORA)
    fast_model = build_model(
        tiny_root,
        tiny_cfg_path,
        2,
        *LORA,
        "model.llm.compile_layers=true",
        f"model.llm.gradient_checkpointing={str(checkpointing).lower()}",
    )
    if checkpointing:
        fast_model.train()  # transformers recomputes layers only in training mode
    fast_model.load_state_dict(plain_model.state_dict())
    compile_decoder_layers(fast_model.llm)  # what the training build does with model.llm.compile_layers=true
    for model in (plain_model, fast_model):
        apply_trainable_groups(model, STAGE_3)
    assert layers_compiled(fast_model.llm) and not layers_compiled(plain_model.llm)
    items = make_items(plain_model, STAGE_1 + STAGE_2)
    padded, packed = collate(plain_model, items, packing=False), collate(fast_model, items, packing=True)
    exact = float64_step(plain_model, padded.batch)
    plain = run_step(plain_model, padded.batch)
    fast = run_step(fast_model, packed.batch)

    assert any(name.startswith("llm.") and "lora_" in name for name in plain.grads)
    # Both float32 passes within float32 rounding of the exact (float64) eager pass: see tests/numerics.py.
    k = plain_model.input_projector.num_tokens
    assert_close_to_float64("eager", plain, padded, exact, padded, items, k)
    assert_close_to_float64("compiled", fast, packed, exact, padded, items, k)


@pytest.mark.numerics
def test_compiled_layers_with_prefix_reuse_give_the_plain_loss_and_gradients(tiny_root, tiny_cfg_path):
    plain_model = build_model(tiny_root, tiny_cfg_path, 1)
    fast_model = build_model(tiny_root, tiny_cfg_path, 1, "model.llm.compile_layers=true")
    fast_model.load_state_dict(plain_model.state_dict())
    compile_decoder_layers(fast_model.llm)
    items = make_items(plain_model, STAGE_1)
    padded = collate(plain_model, items, packing=False)
    packed = collate(fast_model, items, packing=True, prefix_reuse=True)
    exact = float64_step(plain_model, padded.batch)
    plain = run_step(plain_model, padded.batch)
    fast = run_step(fast_model, packed.batch)

    assert fast.out.num_prefix_tokens > 0 and fast_model.prefix_kv.num_computed == 1
    k = plain_model.input_projector.num_tokens
    assert_close_to_float64("eager", plain, padded, exact, padded, items, k)
    assert_close_to_float64("compiled with prefix reuse", fast, packed, exact, padded, items, k)


def test_training_build_compiles_the_layers_only_when_asked(tiny_root, tiny_cfg_path):
    from nextgpt.config import load_config
    from nextgpt.tiny.build import tiny_path_overrides
    from nextgpt.training.loop import build_model_for_training

    for flag in (False, True):
        overrides = [*tiny_path_overrides(tiny_root), f"model.llm.compile_layers={str(flag).lower()}"]
        model = build_model_for_training(load_config(tiny_cfg_path, overrides=overrides))
        assert layers_compiled(model.llm) == flag
