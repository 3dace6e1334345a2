"""The loop's per-step records: every step once, with its timings, though loss values are read only at flushes."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from stage_helpers import quick_cfg

from nextgpt.training import metrics as metrics_module
from nextgpt.training.loop import LOOP_PHASES, run


def test_deferred_records_hold_every_step_with_its_timings(
    tiny_root: Path, tiny_world: Path, tmp_path: Path, monkeypatch, caplog
):
    reads = []
    real_read = metrics_module.read_scalars
    monkeypatch.setattr(
        metrics_module, "read_scalars", lambda tensors: reads.append(len(tensors)) or real_read(tensors)
    )
    out = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="nextgpt"):
        result = run(quick_cfg(tiny_root, tiny_world, out, "train.max_steps=5", "train.log_every=3"))
    assert len(reads) == 2, "one transfer for steps 1-3, one at the end for steps 4-5"
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5]
    assert [r["loss"] for r in records] == result.losses
    timing_keys = {f"ms_{p}" for p in LOOP_PHASES} | {"ms_gc", "ms_step"}
    for record in records:
        assert {"loss", "ce", "lr", "tokens_per_s"} <= set(record) and record["tokens_per_s"] > 0
        assert timing_keys <= set(record), timing_keys - set(record)
        assert not [k for k in record if k.startswith("host_ms_")], "on the CPU every time is a host time"
        assert all(record[k] >= 0 for k in record if k.startswith("ms_"))
        assert record["ms_step"] >= record["ms_forward"] + record["ms_backward"]
    assert sum("metrics.jsonl times every step in ms: ms_data, ms_to_device" in m for m in caplog.messages) == 1


def test_steps_before_an_error_are_written(tiny_root: Path, tiny_world: Path, tmp_path: Path, monkeypatch):
    from nextgpt.training import loop

    real_accumulate, calls = loop._accumulate, []

    def fail_in_step_4(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("boom")
        return real_accumulate(*args, **kwargs)

    monkeypatch.setattr(loop, "_accumulate", fail_in_step_4)
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="boom"):
        run(quick_cfg(tiny_root, tiny_world, out, "train.max_steps=6", "train.log_every=10", "train.save_every=2"))
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3], "steps 1-2 flushed before the step-2 save, step 3 after the error (log_every is 10)"


def test_a_non_finite_loss_stops_the_run_before_its_weights_are_saved(
    tiny_root: Path, tiny_world: Path, tmp_path: Path, monkeypatch
):
    import torch

    from nextgpt.training import loop

    real_accumulate, calls = loop._accumulate, []

    def nan_in_step_3(*args, **kwargs):
        values, tokens = real_accumulate(*args, **kwargs)
        calls.append(1)
        if len(calls) == 3:
            values = {**values, "loss": values["loss"] * torch.nan}
        return values, tokens

    monkeypatch.setattr(loop, "_accumulate", nan_in_step_3)
    out = tmp_path / "run"
    with pytest.raises(loop.TrainingDivergedError, match="not finite at step 3"):
        run(quick_cfg(tiny_root, tiny_world, out, "train.max_steps=6", "train.log_every=10", "train.save_every=2"))
    assert (out / "step-000002").is_dir() and not (out / "step-000004").exists() and not (out / "final").exists()
