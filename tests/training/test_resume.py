"""Re-running a training command never loses or repeats work silently: finished runs say so, longer runs continue
from final/ exactly, changed data orders are refused, broken checkpoints are skipped for older intact ones."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from stage_helpers import (
    QUICK_STAGE_2,
    REPO_ROOT,
    metric_steps,
    no_model_built,
    quick_cfg,
    read_metrics,
    snapshot,
    stage_overrides,
)

from nextgpt.config import ConfigError
from nextgpt.manifest import CorruptCheckpointError, write_manifest
from nextgpt.training.loop import run

BASE = ("train.max_steps=4", "train.save_every=1", "train.keep_last=2")
"""The shared finished run: step-000002, step-000003 and final (step 4), each with DeepSpeed state."""


@pytest.fixture(scope="module")
def base_run(tiny_root: Path, tiny_world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("base") / "run"
    result = run(quick_cfg(tiny_root, tiny_world, out, *BASE))
    assert len(result.losses) == 4
    return out


@pytest.fixture()
def run_copy(base_run: Path, tmp_path: Path) -> Path:
    """A private copy of the finished base run."""
    return Path(shutil.copytree(base_run, tmp_path / "run"))


def _messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records]


def test_base_run_checkpoints_carry_resume_state(base_run: Path):
    assert sorted(p.name for p in base_run.iterdir() if not p.name.startswith(".")) == [
        "final", "latest", "metrics.jsonl", "step-000002", "step-000003"
    ]  # fmt: skip
    for name in ("final", "step-000003"):
        assert (base_run / name / "deepspeed" / "state").is_dir()
        files = json.loads((base_run / name / "manifest.json").read_text())["files"]
        assert any(f.startswith("deepspeed/state/") for f in files), "the manifest covers the DeepSpeed state"
    # The DeepSpeed state holds the trainable weights (and buffers) only: the frozen base is rebuilt at every start.
    states = torch.load(base_run / "final" / "deepspeed" / "state" / "mp_rank_00_model_states.pt", weights_only=False)
    weights = set(states["module"]) - set(states["buffer_names"])
    assert weights and all(k.startswith("output_projectors.") or "new_rows" in k for k in weights), sorted(weights)
    meta = json.loads((base_run / "final" / "meta.json").read_text())
    assert meta["step"] == 4 and meta["data_order"]["train.micro_batch_size"] == 2
    assert meta["data_order"]["dataset_sizes"] == {"cc3m_dec": 8, "webvid_dec": 8, "audiocap_dec": 8}


def test_rerun_of_a_finished_run_says_so_and_rewrites_nothing(
    run_copy: Path, tiny_root: Path, tiny_world: Path, monkeypatch, capsys
):
    from nextgpt.cli import train

    before = snapshot(run_copy)
    no_model_built(monkeypatch)
    argv = ["--config", str(REPO_ROOT / "configs" / "tiny_stage_2.yaml")]
    assert train.main([*argv, *stage_overrides(tiny_root, tiny_world, run_copy, *QUICK_STAGE_2, *BASE)]) == 0
    err = capsys.readouterr().err
    finished = [line for line in err.splitlines() if "nothing to do" in line]
    assert len(finished) == 1, err
    assert f"{run_copy / 'final'} already holds step 4" in finished[0] and "train.max_steps=8" in finished[0]
    after = snapshot(run_copy)
    after.pop(".lock"), before.pop(".lock", None)
    assert after == before


def test_more_steps_continue_from_final_like_an_uninterrupted_run(
    run_copy: Path, tiny_root: Path, tiny_world: Path, tmp_path: Path, caplog
):
    longer = ("train.max_steps=6", "train.save_every=1", "train.keep_last=2")
    with caplog.at_level(logging.INFO, logger="nextgpt"):
        resumed = run(quick_cfg(tiny_root, tiny_world, run_copy, *longer))
    assert any(f"resumed from {run_copy / 'final'} at step 4" in m for m in _messages(caplog))
    assert len(resumed.losses) == 2
    reference = run(quick_cfg(tiny_root, tiny_world, tmp_path / "reference", *longer))
    assert metric_steps(run_copy) == [1, 2, 3, 4, 5, 6]
    expected, got = read_metrics(tmp_path / "reference"), read_metrics(run_copy)
    for step in expected:  # Adam's moments came back with final/: the same losses as one uninterrupted run
        assert got[step] == pytest.approx(expected[step], rel=1e-6), step
    assert resumed.losses == pytest.approx(reference.losses[4:], rel=1e-6)
    assert json.loads((run_copy / "final" / "meta.json").read_text())["step"] == 6


@pytest.mark.parametrize(
    ("override", "key", "old", "new"),
    [
        ("train.micro_batch_size=3", "train.micro_batch_size", "2", "3"),
        ("train.grad_accum_steps=2", "train.grad_accum_steps", "1", "2"),
        ("seed=7", "seed", "42", "7"),
        ("data.datasets=[cc3m_dec,webvid_dec]", "data.datasets", "['cc3m_dec', 'webvid_dec', 'audiocap_dec']",
         "['cc3m_dec', 'webvid_dec']"),
        ("data.sampler=random", "data.sampler", "'modality_blended'", "'random'"),
        ("data.packing=false", "data.packing", "True", "False"),
        ("model.llm.max_length=200", "model.llm.max_length", "256", "200"),
        ("train.trainable=[output_projectors]", "train.trainable", "['output_projectors', 'token_rows']",
         "['output_projectors']"),
    ],
)  # fmt: skip
def test_resume_with_a_changed_data_order_is_refused_naming_the_key(
    run_copy: Path, tiny_root: Path, tiny_world: Path, monkeypatch, override: str, key: str, old: str, new: str
):
    no_model_built(monkeypatch)
    before = snapshot(run_copy)
    with pytest.raises(ConfigError) as info:
        run(quick_cfg(tiny_root, tiny_world, run_copy, "train.max_steps=6", override))
    message = str(info.value)
    assert f"{key} was {old} and is {new} now" in message and "\n" not in message
    fix = "train.init_from=" if key == "train.trainable" else f"train.allow_resume_changes=[{key}]"
    assert fix in message
    after = snapshot(run_copy)
    after.pop(".lock"), before.pop(".lock", None)
    assert after == before


def test_an_allowed_change_continues_with_a_warning(run_copy: Path, tiny_root: Path, tiny_world: Path, caplog):
    extra = ("train.max_steps=6", "train.micro_batch_size=3", "train.allow_resume_changes=[train.micro_batch_size]")
    with caplog.at_level(logging.INFO, logger="nextgpt"):
        result = run(quick_cfg(tiny_root, tiny_world, run_copy, *extra))
    assert len(result.losses) == 2 and metric_steps(run_copy) == [1, 2, 3, 4, 5, 6]
    assert any("train.micro_batch_size changed from 2 to 3" in m for m in _messages(caplog))


def test_an_edited_annotation_file_is_refused(run_copy: Path, tiny_root: Path, tiny_world: Path, tmp_path: Path):
    world = Path(shutil.copytree(tiny_world.parent, tmp_path / "world"))
    catalog = world / tiny_world.name
    from nextgpt.data.catalog import load_catalog

    annotation = Path(load_catalog(catalog)["webvid_dec"].annotation_path)
    records = json.loads(annotation.read_text())
    annotation.write_text(json.dumps(records[:-1]))
    with pytest.raises(ConfigError, match=r"dataset_sizes was .*'webvid_dec': 8.* and is .*'webvid_dec': 7"):
        run(quick_cfg(tiny_root, catalog, run_copy, "train.max_steps=6"))


def test_a_checkpoint_past_the_asked_steps_is_refused(run_copy: Path, tiny_root: Path, tiny_world: Path, monkeypatch):
    shutil.rmtree(run_copy / "final")  # killed before final/: step-000003 is the newest
    no_model_built(monkeypatch)
    with pytest.raises(ConfigError, match=r"step-000003 is at step 3, past the 2 steps the config asks for"):
        run(quick_cfg(tiny_root, tiny_world, run_copy, "train.max_steps=2", "train.save_every=1"))


def test_resume_drops_the_interrupted_runs_later_metrics(run_copy: Path, tiny_root: Path, tiny_world: Path):
    original = read_metrics(run_copy)
    # As if killed after logging step 4 but before final/ was renamed into place: step-000003 is the newest.
    shutil.rmtree(run_copy / "final")
    (run_copy / "latest").write_text("step-000003\n")
    result = run(quick_cfg(tiny_root, tiny_world, run_copy, *BASE))
    assert len(result.losses) == 1
    assert metric_steps(run_copy) == [1, 2, 3, 4]
    assert read_metrics(run_copy)[4] == pytest.approx(original[4], rel=1e-6)


def _flip_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(b ^ 0xFF for b in data[middle : middle + 64])
    path.write_bytes(bytes(data))


CORRUPTIONS = {
    "flipped_deepspeed_state": (lambda f: _flip_bytes(f / "deepspeed/state/mp_rank_00_model_states.pt"), "checksum"),
    "truncated_weights": (
        lambda f: (f / "trainable.safetensors").write_bytes((f / "trainable.safetensors").read_bytes()[:100]),
        "size 100",
    ),
    "missing_meta": (lambda f: (f / "meta.json").unlink(), "meta.json is missing"),
    "missing_manifest": (lambda f: (f / "manifest.json").unlink(), "has no manifest.json"),
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_a_broken_newest_checkpoint_falls_back_to_the_older_intact_one(
    run_copy: Path, tiny_root: Path, tiny_world: Path, caplog, corruption: str
):
    original = read_metrics(run_copy)
    damage, reason = CORRUPTIONS[corruption]
    damage(run_copy / "final")
    with caplog.at_level(logging.INFO, logger="nextgpt"):
        result = run(quick_cfg(tiny_root, tiny_world, run_copy, *BASE))
    skipped = [m for m in _messages(caplog) if m.startswith(f"skipping checkpoint {run_copy / 'final'}")]
    assert len(skipped) == 1 and reason in skipped[0], _messages(caplog)
    assert any(f"resumed from {run_copy / 'step-000003'} at step 3" in m for m in _messages(caplog))
    assert len(result.losses) == 1 and metric_steps(run_copy) == [1, 2, 3, 4]
    assert read_metrics(run_copy)[4] == pytest.approx(original[4], rel=1e-6)  # not a model resumed from bad bytes


def test_no_intact_checkpoint_is_an_error_not_a_silent_restart(
    run_copy: Path, tiny_root: Path, tiny_world: Path, monkeypatch
):
    for name in ("step-000002", "step-000003", "final"):
        _flip_bytes(run_copy / name / "trainable.safetensors")
    before = snapshot(run_copy)
    no_model_built(monkeypatch)
    with pytest.raises(CorruptCheckpointError) as info:
        run(quick_cfg(tiny_root, tiny_world, run_copy, *BASE))
    message = str(info.value)
    assert message.startswith(f"none of the 3 checkpoints in {run_copy} can be resumed from") and "\n" not in message
    for name in ("step-000002", "step-000003", "final"):
        assert f"{name}: checkpoint" in message
    after = snapshot(run_copy)
    after.pop(".lock"), before.pop(".lock", None)
    assert after == before


class _Planted:
    """Unpickling this runs `touch <marker>`: what a planted checkpoint file would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def _plant(folder: Path, marker: Path) -> Path:
    import torch

    target = folder / "deepspeed" / "state" / "mp_rank_00_model_states.pt"
    torch.save({"module": _Planted(marker)}, target)
    return target


def test_planted_pickle_is_refused_even_with_a_matching_manifest(
    run_copy: Path, tiny_root: Path, tiny_world: Path, tmp_path: Path, monkeypatch
):
    from nextgpt.training.safe_load import UnsafeCheckpointError

    marker = tmp_path / "pwned"
    planted = _plant(run_copy / "final", marker)
    write_manifest(run_copy / "final")  # the attacker also rewrote the checksums
    no_model_built(monkeypatch)
    with pytest.raises(UnsafeCheckpointError) as info:
        run(quick_cfg(tiny_root, tiny_world, run_copy, "train.max_steps=6"))
    message = str(info.value)
    assert str(planted) in message and "system" in message and "train.trust_checkpoint_pickles=true" in message
    assert not marker.exists()


def test_planted_pickle_is_refused_by_the_engine_load_itself(
    run_copy: Path, tiny_root: Path, tiny_world: Path, tmp_path: Path, monkeypatch
):
    """Past the up-front scan (switched off here), DeepSpeed's own read of the file is weights-only."""
    import nextgpt.training.loop as loop
    from nextgpt.training.safe_load import UnsafeCheckpointError

    marker = tmp_path / "pwned"
    _plant(run_copy / "final", marker)
    write_manifest(run_copy / "final")
    monkeypatch.setattr(loop, "check_pickles", lambda *args, **kwargs: None)
    with pytest.raises(UnsafeCheckpointError, match="mp_rank_00_model_states.pt needs more than the allow-list"):
        run(quick_cfg(tiny_root, tiny_world, run_copy, "train.max_steps=6"))
    assert not marker.exists()


def test_planted_pickle_with_the_old_manifest_is_skipped_as_corrupt(
    run_copy: Path, tiny_root: Path, tiny_world: Path, tmp_path: Path, caplog
):
    marker = tmp_path / "pwned"
    _plant(run_copy / "final", marker)
    with caplog.at_level(logging.INFO, logger="nextgpt"):
        run(quick_cfg(tiny_root, tiny_world, run_copy, *BASE))
    assert any(m.startswith(f"skipping checkpoint {run_copy / 'final'}") for m in _messages(caplog))
    assert not marker.exists() and metric_steps(run_copy) == [1, 2, 3, 4]
