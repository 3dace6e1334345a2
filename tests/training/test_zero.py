"""ZeRO-3 keeps only shards of each parameter on a rank; saves gather them, so a ZeRO-3 run writes the same whole
weights as a ZeRO-2 run of the same steps, and the next stage starts from them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from stage_helpers import assert_same_trained_weights, quick_cfg

from nextgpt.training.loop import run
from nextgpt.training.zero import full_numel, gathered_checkpoint_weights, is_partitioned

STEPS = ("train.max_steps=3", "train.save_every=2")


def _deepspeed_json(tmp_path: Path, name: str, zero: dict) -> Path:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"train_micro_batch_size_per_gpu": "auto", "zero_optimization": zero}))
    return path


@pytest.fixture(scope="module")
def zero_runs(tiny_root: Path, tiny_world: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple]:
    """The quick stage-2 run under ZeRO-2 and under ZeRO-3 with every parameter partitioned (the tiny model's tensors
    are all below DeepSpeed's default persistence threshold, which would keep them whole)."""
    tmp = tmp_path_factory.mktemp("zero")
    configs = {
        "zero2": {"stage": 2},
        "zero3": {"stage": 3, "stage3_param_persistence_threshold": 0, "stage3_max_live_parameters": 0},
    }
    runs = {}
    for name, zero in configs.items():
        out = tmp / name
        ds = _deepspeed_json(tmp, name, zero)
        result = run(quick_cfg(tiny_root, tiny_world, out, *STEPS, f"train.deepspeed_config={ds}"))
        runs[name] = (out, result)
    return runs


def test_zero3_saves_whole_weights_equal_to_zero2s(zero_runs):
    (out2, result2), (out3, result3) = zero_runs["zero2"], zero_runs["zero3"]
    assert result3.losses == pytest.approx(result2.losses, rel=1e-5)
    for checkpoint in ("step-000002", "final"):
        want = load_file(out2 / checkpoint / "trainable.safetensors")
        got = load_file(out3 / checkpoint / "trainable.safetensors")
        assert len(got) > 50
        # Without clearing ZeRO-3's gradient buffer, whole projectors moved by lr / 4 (their last gradient, again): the
        # mean difference, not only the largest, shows it.
        assert_same_trained_weights(got, want, lr=3e-3)
        counts2 = json.loads((out2 / checkpoint / "meta.json").read_text())["parameter_counts"]
        counts3 = json.loads((out3 / checkpoint / "meta.json").read_text())["parameter_counts"]
        assert counts3 == counts2 and counts3["frozen base"] > 0


def test_the_next_run_starts_from_a_zero3_checkpoint(zero_runs, tiny_root: Path, tiny_world: Path, tmp_path: Path):
    from nextgpt.training.loop import build_model_for_training

    out3, _ = zero_runs["zero3"]
    cfg = quick_cfg(tiny_root, tiny_world, tmp_path / "next", "train.max_steps=1", f"train.init_from={out3 / 'final'}")
    model = build_model_for_training(cfg)
    saved = load_file(out3 / "final" / "trainable.safetensors")
    state = {name: p for name, p in model.output_projectors.named_parameters(prefix="output_projectors")}
    assert state and all(torch.equal(p.detach(), saved[name]) for name, p in state.items() if name in saved)
    assert len(run(cfg).losses) == 1


def test_gathering_is_a_no_op_outside_zero3(tiny_cfg):
    from nextgpt.model import build_nextgpt

    model = build_nextgpt(tiny_cfg.model)
    assert not any(is_partitioned(p) for p in model.parameters())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with gathered_checkpoint_weights(model, zero_stage=3), gathered_checkpoint_weights(model, zero_stage=2):
        assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert all(full_numel(p) == p.numel() for p in model.parameters())


def test_zero3_resume_continues_like_the_uninterrupted_run(zero_runs, tiny_root: Path, tiny_world: Path, tmp_path):
    out3, result3 = zero_runs["zero3"]
    run_dir = Path(shutil.copytree(out3, tmp_path / "run"))
    # As if killed after step 3 but before final/ was in place: step-000002 is the newest checkpoint.
    shutil.rmtree(run_dir / "final")
    (run_dir / "latest").write_text("step-000002\n")
    ds = next(p for p in out3.parent.glob("zero3.json"))
    resumed = run(quick_cfg(tiny_root, tiny_world, run_dir, *STEPS, f"train.deepspeed_config={ds}"))
    assert resumed.losses == pytest.approx(result3.losses[2:], rel=1e-6)
    want = load_file(out3 / "final" / "trainable.safetensors")
    for key, tensor in load_file(run_dir / "final" / "trainable.safetensors").items():
        torch.testing.assert_close(tensor, want[key], rtol=1e-6, atol=1e-7)
