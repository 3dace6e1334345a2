"""Shared-prefix reuse (`train.prefix_reuse`): with a frozen LLM, the system prompt's KV is computed once and each
sample runs only its rest, with the same loss, conditioning and gradients as the plain pass, packed or not."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from batch_helpers import (
    STAGE_1,
    STAGE_2,
    assert_close_to_float64,
    build_model,
    collate,
    float64_step,
    make_items,
    run_step,
    signal_embeds_by_sample,
)
from numerics import rounding_bound
from stage_helpers import REPO_ROOT, read_metrics, stage_overrides

from nextgpt.config import ConfigError, load_config
from nextgpt.constants import IGNORE_INDEX
from nextgpt.llm.conversation import system_prefix_ids
from nextgpt.llm.prefix_cache import TokenRows, shared_prefix_length, strip_prefix
from nextgpt.training.loop import run
from nextgpt.training.stages import apply_trainable_groups

X = IGNORE_INDEX


def test_shared_prefix_stops_at_the_first_difference_and_before_supervised_labels():
    template = [1, 5, 6, 7]
    ids = torch.tensor([[1, 5, 6, 7, 9, 9, 0], [1, 5, 6, 8, 9, 9, 9]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1, 1]])
    labels = torch.full_like(ids, X)
    assert shared_prefix_length(template, ids, mask, labels, None) == 3
    assert shared_prefix_length(template, ids[:1], mask[:1], labels[:1], None) == 4
    labels[0, 3] = 7  # predicted from position 2, so positions 0..2 must keep their logits
    assert shared_prefix_length(template, ids[:1], mask[:1], labels[:1], None) == 2
    assert shared_prefix_length([2, 5], ids, mask, labels, None) == 0
    # Packed: two samples in one row; the second is only 4 tokens long, one of which must remain.
    packed_ids = torch.tensor([[1, 5, 6, 7, 9, 1, 5, 6, 7]])
    positions = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 3]])
    packed_mask = torch.ones_like(packed_ids)
    assert shared_prefix_length(template, packed_ids, packed_mask, None, positions) == 3
    rest = strip_prefix(TokenRows(packed_ids, packed_mask, torch.full_like(packed_ids, X), positions), 3)
    assert rest.input_ids.tolist() == [[7, 9, 7]] and rest.position_ids.tolist() == [[0, 1, 0]]
    assert rest.attention_mask.tolist() == [[1, 1, 1]]


def test_system_prefix_opens_every_rendered_conversation(tiny_root, tiny_cfg_path):
    model = build_model(tiny_root, tiny_cfg_path, 1)
    prefix = system_prefix_ids(model.tokenizer)
    for item in make_items(model, STAGE_1 + STAGE_2):
        assert item["input_ids"][: len(prefix)].tolist() == prefix
        assert (item["labels"][: len(prefix) + 1] == X).all()


@pytest.mark.numerics
@pytest.mark.parametrize("attention", ["sdpa", "varlen"])
@pytest.mark.parametrize("packing", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("stage", [1, 2])
def test_prefix_reuse_trains_like_the_plain_pass(tiny_root, tiny_cfg_path, stage, packing, attention):
    model = build_model(
        tiny_root,
        tiny_cfg_path,
        stage,
        "model.input_projector.type=group",
        f"model.llm.attn_implementation={attention}",
    )
    items = make_items(model, STAGE_1 if stage == 1 else STAGE_2)
    collated = collate(model, items, packing=packing)
    exact = float64_step(model, collated.batch)
    plain = run_step(model, collated.batch)
    model.prefix_reuse = True
    reused = run_step(model, collated.batch)

    assert reused.out.num_prefix_tokens == len(system_prefix_ids(model.tokenizer)) > 0
    k = model.input_projector.num_tokens
    plain_signals = signal_embeds_by_sample(plain.out, collated.datasets, items)
    assert (stage == 1) == (not plain_signals)
    # Both float32 passes within float32 rounding of the exact (float64) plain pass: see tests/numerics.py.
    for name, step in (("plain", plain), ("prefix reuse", reused)):
        assert_close_to_float64(name, step, collated, exact, collated, items, k)
    assert model.prefix_kv.num_computed == 1


@pytest.mark.numerics
def test_prefix_kv_is_computed_once_and_stays_valid_while_the_projectors_train(tiny_root, tiny_cfg_path):
    model = build_model(tiny_root, tiny_cfg_path, 2)
    model.prefix_reuse = True
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    first = collate(model, make_items(model, STAGE_1 + STAGE_2[:2], seed=1), packing=True).batch
    second_items = make_items(model, STAGE_2, seed=2)
    second = collate(model, second_items, packing=False)
    run_step(model, first)
    cached = model.prefix_kv.key_values(model.llm, model.embed_tokens, system_prefix_ids(model.tokenizer), "cpu")
    optimizer.step()  # moves the projectors and signal-token rows; the prefix does not depend on them
    reused = run_step(model, second.batch)
    assert model.prefix_kv.num_computed == 1
    again = model.prefix_kv.key_values(model.llm, model.embed_tokens, system_prefix_ids(model.tokenizer), "cpu")
    assert all(k is k2 and v is v2 for (k, v), (k2, v2) in zip(cached, again, strict=True))
    model.prefix_reuse = False
    plain = run_step(model, second.batch)
    exact = float64_step(model, second.batch)
    for name, step in (("plain", plain), ("cached prefix", reused)):
        assert_close_to_float64(name, step, second, exact, second, second_items, model.input_projector.num_tokens)
    # Another prefix (here: a shorter one) is computed once more.
    model.prefix_kv.key_values(model.llm, model.embed_tokens, system_prefix_ids(model.tokenizer)[:5], "cpu")
    assert model.prefix_kv.num_computed == 2


@pytest.mark.numerics
def test_prefix_reuse_is_refused_while_lora_trains(tiny_root, tiny_cfg_path, tiny_world, tmp_path):
    overrides = stage_overrides(tiny_root, tiny_world, tmp_path, "train.prefix_reuse=true")
    with pytest.raises(ConfigError, match=r"train\.prefix_reuse needs a frozen LLM.*set train\.prefix_reuse=false"):
        load_config(REPO_ROOT / "configs" / "tiny_stage_3.yaml", overrides=overrides)
    # Model level: LoRA present but frozen is fine (same loss as plain); trainable LoRA is refused.
    model = build_model(tiny_root, tiny_cfg_path, 1, "model.lora.enabled=true")
    items = make_items(model, STAGE_1)
    collated = collate(model, items, packing=False)
    batch = collated.batch
    exact = float64_step(model, batch)
    model.prefix_reuse = True
    reused = run_step(model, batch)
    assert reused.out.num_prefix_tokens > 0
    assert_close_to_float64("prefix reuse", reused, collated, exact, collated, items, model.input_projector.num_tokens)
    apply_trainable_groups(model, ("lora", "input_projector"))
    with pytest.raises(ValueError, match=r"train\.prefix_reuse needs a frozen LLM.*lora_.*set train\.prefix_reuse"):
        model(batch)


@pytest.mark.numerics
def test_packed_training_run_with_prefix_reuse_starts_with_the_plain_loss(tiny_root, tiny_world, tmp_path: Path):
    micro_batch = 6
    extra = [
        "train.max_steps=2",
        f"train.micro_batch_size={micro_batch}",
        "train.save_every=100000",
        "train.warmup_ratio=0",
    ]
    runs = {"plain": [], "fast": ["data.packing=true", "train.prefix_reuse=true"]}
    for name, switches in runs.items():
        overrides = stage_overrides(tiny_root, tiny_world, tmp_path / name, *extra, *switches)
        result = run(load_config(REPO_ROOT / "configs" / "tiny_stage_1.yaml", overrides=overrides))
        assert len(result.losses) == 2 and (result.final_dir / "trainable.safetensors").is_file()
    plain, fast = read_metrics(tmp_path / "plain"), read_metrics(tmp_path / "fast")
    # Step 1: the same loss up to float32 rounding (tests/numerics.py), n bounded by the step's LLM positions.
    cfg = load_config(
        REPO_ROOT / "configs" / "tiny_stage_1.yaml", overrides=stage_overrides(tiny_root, tiny_world, tmp_path)
    )
    num_positions = micro_batch * cfg.model.llm.max_length
    assert abs(fast[1] - plain[1]) <= 2 * rounding_bound(abs(plain[1]), num_positions)
    # Step 2 follows one AdamW step from gradients equal up to rounding. Adam's first update is lr * sign(gradient), so
    # entries whose exact gradient is ~0 move by +-lr on either path, which no rounding bound covers; their effect on
    # the loss is second order. This bound stays empirical: observed at most 2.2e-7 relative on default, AVX2 and
    # AVX-512, so rel 1e-4 leaves a factor of about 500.
    assert fast[2] == pytest.approx(plain[2], rel=1e-4)
