"""A full disk or a read-only folder while saving: one line with the fix, the older checkpoints intact; damaged weight
files are named in one line; metrics.jsonl keeps each step once."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
from stage_helpers import QUICK_STAGE_2, REPO_ROOT, error_lines, stage_overrides

from nextgpt.manifest import CorruptCheckpointError, verify_manifest
from nextgpt.training import checkpoint as ckpt
from nextgpt.training.metrics import truncate_metrics


def _failing_after(calls: int, error: BaseException, real):
    """A stand-in for a write function that works `calls` times, then raises `error`."""
    count = {"n": 0}

    def write(*args, **kwargs):
        count["n"] += 1
        if count["n"] > calls:
            raise error
        return real(*args, **kwargs)

    return write


def _full_disk_error() -> BaseException:
    from safetensors import SafetensorError

    return SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")


@pytest.mark.parametrize(
    ("target", "error", "expected"),
    [
        ("weights", "full_disk", "No space left on device: {run}; free space on that disk or write somewhere else"),
        ("deepspeed", "read_only", "Read-only file system: {run}/.final.tmp/x; the file system is read-only"),
        ("deepspeed", "torch_full_disk", "No space left on device: {run}; free space"),
    ],
)
def test_a_failed_save_is_one_line_and_keeps_the_older_checkpoints(
    tiny_root: Path, tiny_world: Path, tmp_path: Path, monkeypatch, capsys, target: str, error: str, expected: str
):
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    from nextgpt.cli import train

    run_dir = tmp_path / "run"
    if target == "weights":  # the step-2 save works, the final one hits a full disk
        monkeypatch.setattr(ckpt, "save_file", _failing_after(1, _full_disk_error(), ckpt.save_file))
    else:  # DeepSpeed's own torch.save of the final state fails (it writes 2 files per save at ZeRO 2)
        exc = (
            OSError(errno.EROFS, "Read-only file system", f"{run_dir}/.final.tmp/x")
            if error == "read_only"
            else RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
        )
        monkeypatch.setattr(TorchCheckpointEngine, "save", _failing_after(2, exc, TorchCheckpointEngine.save))
        if error == "torch_full_disk":  # what torch.save says on a full disk; the free space tells the cause
            monkeypatch.setattr(ckpt.shutil, "disk_usage", lambda path: type("U", (), {"free": 0})())
    extra = ("train.max_steps=3", "train.save_every=2", "train.deepspeed_config=configs/deepspeed/zero2.json")
    overrides = stage_overrides(tiny_root, tiny_world, run_dir, *QUICK_STAGE_2, *extra)
    code = train.main(["--config", str(REPO_ROOT / "configs" / "tiny_stage_2.yaml"), *overrides])
    err = capsys.readouterr().err
    lines = error_lines(err)
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert expected.format(run=run_dir) in lines[0]
    assert verify_manifest(run_dir / "step-000002", required=True)
    assert (run_dir / "latest").read_text().strip() == "step-000002"
    assert not (run_dir / "final").exists() and not list(run_dir.glob(".*.tmp")), "the staging folder is removed"


def test_truncated_or_damaged_weights_are_named_in_one_line(tiny_root: Path, tmp_path: Path):
    from nextgpt.config import load_config
    from nextgpt.model import build_nextgpt
    from nextgpt.tiny.build import tiny_path_overrides

    cfg = load_config(REPO_ROOT / "configs" / "tiny_stage_1.yaml", overrides=tiny_path_overrides(tiny_root))
    model = build_nextgpt(cfg.model, load_encoder=False)
    folder = ckpt.save_checkpoint(tmp_path / "final", model, cfg, step=1)
    weights = folder / ckpt.WEIGHTS_FILE
    intact = weights.read_bytes()
    for damaged in (intact[: len(intact) // 2], b"\xff" * 8 + intact[8:]):
        weights.write_bytes(damaged)
        with pytest.raises(CorruptCheckpointError) as info:
            ckpt.load_project_weights(model, folder, cfg)
        assert str(weights) in str(info.value) and "truncated or damaged" in str(info.value)
        assert "\n" not in str(info.value)


def test_write_errors_reported_as_something_else_become_os_errors(tmp_path: Path, monkeypatch):
    assert ckpt.as_os_error(_full_disk_error(), tmp_path).errno == errno.ENOSPC
    assert ckpt.as_os_error(RuntimeError("... (os error 13)"), tmp_path).errno == errno.EACCES
    assert ckpt.as_os_error(RuntimeError("unexpected pos 5 vs 3"), tmp_path) is None  # the disk has room: a bug
    monkeypatch.setattr(ckpt.shutil, "disk_usage", lambda path: type("U", (), {"free": 1024})())
    assert ckpt.as_os_error(RuntimeError("unexpected pos 5 vs 3"), tmp_path).errno == errno.ENOSPC
    assert ckpt.as_os_error(KeyError("x"), tmp_path) is None and ckpt.as_os_error(OSError(1, "x"), tmp_path) is None


def test_metrics_keep_each_step_once_up_to_the_resume_point(tmp_path: Path):
    path = tmp_path / "metrics.jsonl"
    records = [{"step": s, "loss": float(s)} for s in (1, 2, 3, 4, 2, 3, 5)]
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"step": 6, "lo')  # cut short by a kill
    assert truncate_metrics(path, last_step=3) == 5
    kept = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["step"] for r in kept] == [1, 2, 3]
    assert kept[1]["loss"] == 2.0
    assert truncate_metrics(path, last_step=3) == 0  # nothing to drop: the file is not rewritten
    assert truncate_metrics(tmp_path / "none.jsonl", last_step=0) == 0
