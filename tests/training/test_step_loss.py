"""A step trains on the mean over all its samples, however they are split into micro-batches and ranks (the loss terms
are renormalised over the step, `nextgpt.training.step_loss`): two data-parallel ranks give the losses and weights of
one process with the same global batch, under ZeRO-0, -2 and -3."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from batch_helpers import STAGE_1, STAGE_2, build_model, collate, make_items
from safetensors.torch import load_file
from stage_helpers import assert_same_trained_weights, metric_steps, quick_cfg, run_two_ranks

from nextgpt.training.loop import run
from nextgpt.training.step_loss import StepLossPlan

STEPS = 3
LR = 3e-3
"""configs/tiny_stage_2.yaml's learning rate."""
ZERO = {"zero0": {"stage": 0}, "zero2": {"stage": 2}, "zero3": {"stage": 3, "stage3_param_persistence_threshold": 0}}


def test_shares_split_each_term_by_its_counts_over_the_step():
    counts = [{"ce": 30, "l2_image": 1}, {"ce": 10, "l2_audio": 2}]
    plan = StepLossPlan.build(counts)
    assert plan.totals["ce"] == 40 and plan.totals["l2_image"] == 1 and plan.totals["l2_video"] == 0
    assert plan.shares[0] == {"ce": 0.75, "l2_image": 1.0, "l2_audio": 0.0}
    assert plan.shares[1] == {"ce": 0.25, "l2_image": 0.0, "l2_audio": 1.0}
    # DeepSpeed divides the loss by the 2 accumulation steps: the factors undo it.
    assert plan.factors[0] == {"ce": 1.5, "l2_image": 2.0, "l2_audio": 0.0}
    terms = {"ce": torch.tensor(2.0), "l2_image": torch.tensor(4.0)}
    assert {k: float(v) for k, v in plan.scaled(0, terms, which="shares").items()} == {"ce": 1.5, "l2_image": 4.0}
    with pytest.raises(ValueError, match=r"loss terms \['l2_video'\] have no count"):
        plan.scaled(0, {"l2_video": torch.tensor(1.0)})
    # No labelled token anywhere in the step: the term weighs nothing rather than failing.
    empty = StepLossPlan.build([{"ce": 0}, {"ce": 0, "l2_image": 1}])
    assert empty.shares == [{"ce": 0.0, "l2_image": 0.0}, {"ce": 0.0, "l2_image": 1.0}] and empty.totals["ce"] == 0
    with pytest.raises(ValueError, match=r"unknown loss terms \['bogus'\]"):
        StepLossPlan.build([{"bogus": 1}])


@pytest.mark.parametrize(
    ("stage", "conversations", "packing", "prefix_reuse"),
    [(2, STAGE_2, False, False), (2, STAGE_2, True, False), (1, STAGE_1, True, True)],
)
def test_split_batches_weighted_by_their_counts_give_the_whole_batchs_terms(
    tiny_root, tiny_cfg_path, stage, conversations, packing, prefix_reuse
):
    model = build_model(tiny_root, tiny_cfg_path, stage)
    items = make_items(model, conversations)
    whole = collate(model, items, packing, prefix_reuse=prefix_reuse).batch
    halves = [collate(model, part, packing, prefix_reuse=prefix_reuse).batch for part in (items[:1], items[1:])]
    plan = StepLossPlan.build([half.loss_counts() for half in halves])
    assert plan.totals == {name: whole.loss_counts().get(name, 0) for name in plan.totals}
    with torch.no_grad():
        want = model(whole).loss_terms
        got: dict[str, torch.Tensor] = {}
        for i, half in enumerate(halves):
            for name, value in plan.scaled(i, model(half).loss_terms, which="shares").items():
                got[name] = got.get(name, 0) + value
    assert got.keys() == want.keys() and len(want) >= (2 if stage == 2 else 1)  # stage 2 also has L2 terms
    for name, value in want.items():
        torch.testing.assert_close(got[name], value.float(), rtol=1e-5, atol=1e-6, msg=name)


def _ds_json(folder: Path, name: str) -> Path:
    path = folder / f"{name}.json"
    path.write_text(json.dumps({"train_micro_batch_size_per_gpu": "auto", "zero_optimization": ZERO[name]}))
    return path


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "final" / "trainable.safetensors")


def _assert_same_training(got: Path, got_losses: list[float], want: Path, want_losses: list[float]) -> None:
    assert got_losses == pytest.approx(want_losses, rel=1e-5)
    assert_same_trained_weights(_weights(got), _weights(want), lr=LR)


@pytest.mark.multiprocess
@pytest.mark.parametrize(
    ("config", "zero", "sampler"),
    [("tiny_stage_2.yaml", "zero0", "modality_blended"), ("tiny_stage_2.yaml", "zero2", "modality_blended"),
     ("tiny_stage_2.yaml", "zero3", "modality_blended"), ("tiny_stage_3.yaml", "zero2", "random"),
     ("tiny_stage_3.yaml", "zero3", "random")],
)  # fmt: skip
def test_two_ranks_train_like_one_process_with_the_same_global_batch(
    tiny_root, tiny_world, tmp_path, config, zero, sampler
):
    """modality_blended gives both ranks one modality a step; random gives them different ones, so one rank runs an
    output projector (stage 3: also the input projector and the encoder) that the other leaves idle; the model's
    `participation` and the encoder running outside DeepSpeed keep their collectives in step."""
    ds = _ds_json(tmp_path, zero)
    one = run(
        quick_cfg(
            tiny_root,
            tiny_world,
            tmp_path / "one",
            f"train.max_steps={STEPS}",
            "train.micro_batch_size=2",
            f"train.deepspeed_config={ds}",
            f"data.sampler={sampler}",
            config=config,
        )
    )
    two = tmp_path / "two"
    losses = run_two_ranks(tiny_root, tiny_world, two, 1, ds, STEPS, config, f"data.sampler={sampler}")
    assert losses[0] == losses[1]  # every rank logs the step's mean over both ranks' samples
    assert metric_steps(two) == list(range(1, STEPS + 1))  # rank 0 alone writes the metrics
    _assert_same_training(two, losses[0], tmp_path / "one", one.losses)
