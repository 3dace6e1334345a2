"""`model.llm.compile_layers`: compiled decoder layers (with LoRA, packed rows, varlen attention) train like the plain
eager model on padded rows."""

from __future__ import annotations

import pytest
import torch
from batch_helpers import STAGE_1, STAGE_2, build_model, collate, make_items, max_grad_difference, run_step

from nextgpt.llm.backbone import decoder_layers
from nextgpt.training.stages import apply_trainable_groups

STAGE_3 = ("lora", "input_projector", "output_projectors", "token_rows")
LORA = ("model.lora.enabled=true", "model.lora.dropout=0")


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "gradient-checkpointing"])
def test_compiled_layers_give_the_plain_loss_and_gradients(tiny_root, tiny_cfg_path, checkpointing):
    plain_model = build_model(tiny_root, tiny_cfg_path, 2, *LORA)
    fast_model = build_model(
        tiny_root,
        tiny_cfg_path,
        2,
        *LORA,
        "model.llm.compile_layers=true",
        "model.llm.attn_implementation=varlen",
        f"model.llm.gradient_checkpointing={str(checkpointing).lower()}",
    )
    if checkpointing:
        fast_model.train()  # transformers recomputes layers only in training mode
    fast_model.load_state_dict(plain_model.state_dict())
    for model in (plain_model, fast_model):
        apply_trainable_groups(model, STAGE_3)
    layers = decoder_layers(fast_model.llm)
    assert all(layer._compiled_call_impl is not None for layer in layers)
    assert all(layer._compiled_call_impl is None for layer in decoder_layers(plain_model.llm))
    items = make_items(plain_model, STAGE_1 + STAGE_2)
    plain = run_step(plain_model, collate(plain_model, items, packing=False).batch)
    fast = run_step(fast_model, collate(fast_model, items, packing=True).batch)

    assert any(name.startswith("llm.") and "lora_" in name for name in plain.grads)
    assert torch.allclose(fast.out.loss, plain.out.loss, atol=1e-5)
    assert max_grad_difference(plain, fast) < 1e-4


def test_prefix_reuse_refuses_compiled_layers(tiny_root, tiny_cfg_path):
    model = build_model(tiny_root, tiny_cfg_path, 1, "model.llm.compile_layers=true")
    model.prefix_reuse = True
    batch = collate(model, make_items(model, STAGE_1), packing=False).batch
    with pytest.raises(ValueError, match="compile_layers"):
        model(batch)
