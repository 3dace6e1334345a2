"""Shared-prefix reuse (`train.prefix_reuse`): with a frozen LLM, the collator strips the system prompt from every
sample, its KV is computed once and each sample runs only its rest, with the same loss, conditioning and gradients as
the plain pass, packed or not; the config turns it on exactly where it is valid."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
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
from nextgpt.data.layout import shared_prefix_length, strip_prefix
from nextgpt.llm.conversation import system_prefix_ids
from nextgpt.training.loop import run
from nextgpt.training.stages import apply_trainable_groups

X = IGNORE_INDEX


def _item(ids: list[int], labels: list[int] | None = None) -> dict:
    labels = [X] * len(ids) if labels is None else labels
    return {
        "input_ids": torch.tensor(ids),
        "labels": torch.tensor(labels),
        "signal_span_starts": {},
        "length": len(ids),
    }


def test_shared_prefix_stops_at_the_first_difference_and_before_supervised_labels():
    template = [1, 5, 6, 7]
    first, second = _item([1, 5, 6, 7, 9, 9]), _item([1, 5, 6, 8, 9, 9, 9])
    assert shared_prefix_length(template, [first, second]) == 3
    assert shared_prefix_length(template, [first]) == 4
    supervised = _item([1, 5, 6, 7, 9, 9], [X, X, X, 7, X, X])  # label 3 is predicted from position 2
    assert shared_prefix_length(template, [supervised]) == 2
    assert shared_prefix_length([2, 5], [first, second]) == 0
    assert shared_prefix_length(template, [_item([1, 5, 6, 7])]) == 3  # one token must remain
    assert shared_prefix_length(template, []) == 0
    spans = {**_item([1, 5, 6, 7, 40, 41]), "signal_span_starts": {"image": [4]}}
    rest = strip_prefix(spans, 3)
    assert rest["input_ids"].tolist() == [7, 40, 41] and rest["length"] == 3
    assert rest["signal_span_starts"] == {"image": [1]} and spans["input_ids"].numel() == 6


def test_config_turns_prefix_reuse_on_exactly_where_it_is_valid():
    stage_2 = load_config(REPO_ROOT / "configs" / "stage_2.yaml")
    assert stage_2.train.prefix_reuse is True
    assert load_config(REPO_ROOT / "configs" / "stage_3.yaml").train.prefix_reuse is False  # LoRA trains
    assert load_config(overrides=["model.llm.gradient_checkpointing=true"]).train.prefix_reuse is False
    assert load_config(overrides=["train.prefix_reuse=false"]).train.prefix_reuse is False
    with pytest.raises(ConfigError, match="gradient_checkpointing"):
        load_config(overrides=["train.prefix_reuse=true", "model.llm.gradient_checkpointing=true"])


def test_system_prefix_opens_every_rendered_conversation(tiny_root, tiny_cfg_path):
    model = build_model(tiny_root, tiny_cfg_path, 1)
    prefix = system_prefix_ids(model.tokenizer)
    for item in make_items(model, STAGE_1 + STAGE_2):
        assert item["input_ids"][: len(prefix)].tolist() == prefix
        assert (item["labels"][: len(prefix) + 1] == X).all()


@pytest.mark.numerics
@pytest.mark.parametrize("packing", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("stage", [1, 2])
def test_prefix_reuse_trains_like_the_plain_pass(tiny_root, tiny_cfg_path, stage, packing):
    model = build_model(tiny_root, tiny_cfg_path, stage, "model.input_projector.type=group")
    items = make_items(model, STAGE_1 if stage == 1 else STAGE_2)
    plain_batch = collate(model, items, packing=packing)
    reused_batch = collate(model, items, packing=packing, prefix_reuse=True)
    exact = float64_step(model, plain_batch.batch)
    plain = run_step(model, plain_batch.batch)
    reused = run_step(model, reused_batch.batch)

    num_prefix = len(system_prefix_ids(model.tokenizer))
    assert reused.out.num_prefix_tokens == num_prefix > 0 and plain.out.num_prefix_tokens == 0
    assert reused_batch.batch.input_ids.numel() < plain_batch.batch.input_ids.numel()
    k = model.input_projector.num_tokens
    plain_signals = signal_embeds_by_sample(plain.out, plain_batch.datasets, items)
    assert (stage == 1) == (not plain_signals)
    # Both float32 passes within float32 rounding of the exact (float64) plain pass: see tests/numerics.py.
    assert_close_to_float64("plain", plain, plain_batch, exact, plain_batch, items, k)
    assert_close_to_float64("prefix reuse", reused, reused_batch, exact, plain_batch, items, k)
    assert model.prefix_kv.num_computed == 1


@pytest.mark.numerics
def test_prefix_kv_is_computed_once_and_stays_valid_while_the_projectors_train(tiny_root, tiny_cfg_path):
    model = build_model(tiny_root, tiny_cfg_path, 2)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    first = collate(model, make_items(model, STAGE_1 + STAGE_2[:2], seed=1), packing=True, prefix_reuse=True).batch
    second_items = make_items(model, STAGE_2, seed=2)
    second = collate(model, second_items, packing=False)
    second_reused = collate(model, second_items, packing=False, prefix_reuse=True)
    run_step(model, first)
    cached = model.prefix_kv.key_values(model.llm, model.embed_tokens, system_prefix_ids(model.tokenizer), "cpu")
    optimizer.step()  # moves the projectors and signal-token rows; the prefix does not depend on them
    reused = run_step(model, second_reused.batch)
    assert model.prefix_kv.num_computed == 1
    again = model.prefix_kv.key_values(model.llm, model.embed_tokens, system_prefix_ids(model.tokenizer), "cpu")
    assert all(k is k2 and v is v2 for (k, v), (k2, v2) in zip(cached, again, strict=True))
    plain = run_step(model, second.batch)
    exact = float64_step(model, second.batch)
    k = model.input_projector.num_tokens
    assert_close_to_float64("plain", plain, second, exact, second, second_items, k)
    assert_close_to_float64("cached prefix", reused, second_reused, exact, second, second_items, k)
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
    collated, stripped = collate(model, items, packing=False), collate(model, items, packing=False, prefix_reuse=True)
    exact = float64_step(model, collated.batch)
    reused = run_step(model, stripped.batch)
    assert reused.out.num_prefix_tokens > 0
    assert_close_to_float64("prefix reuse", reused, stripped, exact, collated, items, model.input_projector.num_tokens)
    apply_trainable_groups(model, ("lora", "input_projector"))
    with pytest.raises(ValueError, match=r"train\.prefix_reuse needs a frozen LLM.*lora_.*set train\.prefix_reuse"):
        model(stripped.batch)


@pytest.mark.numerics
def test_default_training_run_packs_and_reuses_the_prefix_and_starts_with_the_plain_loss(
    tiny_root, tiny_world, tmp_path: Path
):
    micro_batch = 6
    extra = [
        "train.max_steps=2",
        f"train.micro_batch_size={micro_batch}",
        "train.save_every=100000",
        "train.warmup_ratio=0",
    ]
    runs = {"plain": ["data.packing=false", "train.prefix_reuse=false"], "fast": []}  # the defaults are the fast path
    for name, switches in runs.items():
        overrides = stage_overrides(tiny_root, tiny_world, tmp_path / name, *extra, *switches)
        result = run(load_config(REPO_ROOT / "configs" / "tiny_stage_1.yaml", overrides=overrides))
        assert len(result.losses) == 2 and (result.final_dir / "trainable.safetensors").is_file()
    saved = yaml.safe_load((tmp_path / "fast" / "final" / "config.yaml").read_text())
    assert saved["train"]["prefix_reuse"] is True and saved["data"]["packing"] is True
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
